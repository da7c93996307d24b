import ArchipStore
import Foundation

/// What the content of an origin must be, given by whoever registered it:
/// the image's SHA-256 (Cyclades' `checksum`), its Pithos hashmap, or both.
/// For a file, an URL or a Pithos origin the filler checks them while it
/// copies (`FillRequest.sha256`, `.hashmap`); a snapshot is cloned without a
/// copy, so `SnapshotContentCheck` checks the snapshot itself.
public struct ContentExpectation: Sendable, Equatable, CustomStringConvertible {
    public var sha256: ContentHash?
    /// A Pithos hashmap (JSON file or http(s) URL).
    public var hashmap: String?

    public init(sha256: ContentHash? = nil, hashmap: String? = nil) {
        self.sha256 = sha256
        self.hashmap = hashmap
    }

    public var isEmpty: Bool { sha256 == nil && hashmap == nil }

    public var description: String {
        [sha256.map { "sha256 \($0.hex)" }, hashmap.map { "hashmap \($0)" }].compactMap { $0 }.joined(separator: ", ")
    }
}

/// Checks a snapshot's content against an expectation before it is cloned.
///
/// A snapshot never changes, so a check that passed is recorded in the
/// snapshot's metadata and later clones compare with the record: the first
/// clone of a golden image reads it once, the next thousand read nothing
/// (provisioning time must not grow with the image). What a clone later
/// reads is still checked block by block (checked reads), so a block
/// damaged after the record is an error there, never wrong bytes.
public enum SnapshotContentCheck {
    /// `<bytes> <sha256 hex>`: the SHA-256 of the snapshot's first `bytes` bytes.
    public static let sha256Key = "content.sha256"
    /// `<bytes> <block size> <top hash hex>`: the Pithos top hash of its first `bytes` bytes.
    public static let topHashKey = "content.top-hash"

    public enum Outcome: Equatable, Sendable {
        /// Read and checked now (and recorded).
        case checked(bytes: UInt64)
        /// A record of an earlier check matched.
        case recorded
    }

    /// - Parameter bytes: how much of the snapshot is the image (Cyclades'
    ///   `origin_size`); the whole snapshot when nil.
    public static func check(_ snapshot: VolumeName, bytes: UInt64?, expect: ContentExpectation, store: VolumeStore,
                             remote: (any RemoteSourceOpener)? = nil) throws -> Outcome {
        guard let summary = try store.summary(snapshot) else {
            throw StoreError(.notFound, "snapshot '\(snapshot)' does not exist")
        }
        guard summary.kind == "snapshot" else {
            throw StoreError(.wrongKind, "'\(snapshot)' is a volume, which can still change: an expected checksum applies to images and snapshots")
        }
        let length = bytes ?? summary.size
        guard length <= summary.size else {
            throw StoreError(.outOfRange, "snapshot '\(snapshot)' holds \(summary.size) bytes, fewer than the \(length) the origin's size says")
        }
        var expectedHashes: [ContentHash]? = nil
        var blockSize = UInt64(LayerMap.defaultBlockSize)   // any read size will do without a hashmap
        if let hm = expect.hashmap {
            let map = try Filler.loadHashmap(hm, remote: remote)
            guard map.bytes == length else {
                throw StoreError(.corrupt, "hashmap \(hm) describes \(map.bytes) bytes, the origin \(length): not this image")
            }
            blockSize = map.blockSize
            expectedHashes = try map.contentHashes
        }
        let meta = summary.metadata
        let wantSHA = expect.sha256.map { "\(length) \($0.hex)" }
        let wantTop = expectedHashes.map { "\(length) \(blockSize) \(PithosHashmap.topHash($0).hex)" }
        let shaRecorded = wantSHA == nil || meta[sha256Key] == wantSHA
        let topRecorded = wantTop == nil || meta[topHashKey] == wantTop
        if shaRecorded && topRecorded { return .recorded }

        // Read it once, checked reads, in the hashmap's blocks.
        let volume = try store.open(snapshot, mode: .readOnly)
        defer { try? volume.close() }
        let whole = SHA256Stream()
        var hashes: [ContentHash] = []
        var buffer = [UInt8](repeating: 0, count: Int(blockSize))
        var offset: UInt64 = 0
        var index = 0
        while offset < length {
            let n = Int(min(blockSize, length - offset))
            try buffer.withUnsafeMutableBytes { raw in
                let piece = UnsafeMutableRawBufferPointer(rebasing: raw[0..<n])
                try volume.read(at: offset, into: piece)
                whole.update(UnsafeRawBufferPointer(piece))
                if let expectedHashes {
                    let h = SHA256.blockHash(UnsafeRawBufferPointer(piece))
                    guard index < expectedHashes.count, expectedHashes[index] == h else {
                        let want = index < expectedHashes.count ? expectedHashes[index].hex : "none (the hashmap ends)"
                        throw StoreError(.corrupt, "snapshot '\(snapshot)': block \(index) hashes to \(h.hex), the hashmap expects \(want); not the registered image")
                    }
                    hashes.append(h)
                }
            }
            offset += UInt64(n)
            index += 1
        }
        if let expectedHashes, hashes.count != expectedHashes.count {
            throw StoreError(.corrupt, "snapshot '\(snapshot)': \(hashes.count) blocks, the hashmap \(expectedHashes.count); not the registered image")
        }
        let got = whole.finish()
        if let want = expect.sha256, got != want {
            throw StoreError(.corrupt, "snapshot '\(snapshot)': its first \(length) bytes hash to SHA-256 \(got.hex), expected \(want.hex); not the registered image")
        }
        var record: [String: String] = [:]
        if expect.sha256 != nil || meta[sha256Key] == nil { record[sha256Key] = "\(length) \(got.hex)" }
        if let wantTop { record[topHashKey] = wantTop }
        // A failed record only costs the next clone another read.
        try? store.setMetadata(snapshot, record)
        return .checked(bytes: length)
    }
}
