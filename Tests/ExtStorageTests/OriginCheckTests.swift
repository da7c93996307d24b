import ArchipFill
import ArchipStore
@testable import ExtStorage
import Foundation
import Testing

/// `origin_sha256` / `origin_hashmap` and Archipelago's bare-name origins,
/// over a store in memory, a fake node and image files in a temporary folder
/// (the only folder `[fill] image_dirs` names).
@Suite struct OriginChecks {
    let store: VolumeStore
    let node = FakeNode()
    let vol = "0b1c2d3e-1111-2222-3333-444455556666.ext.disk0"
    let images: String
    let notes = NoteLog()

    final class NoteLog: @unchecked Sendable {
        private let lock = NSLock()
        private var lines: [String] = []
        func add(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
        var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
    }

    init() throws {
        store = try VolumeStore(objects: MemoryObjectStore(), node: "node-a")
        images = NSTemporaryDirectory() + "origin-checks-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
    }

    func run(_ action: Action, _ vars: [String: String] = [:]) throws -> [String] {
        var env = ["VOL_NAME": vol, "VOL_SIZE": "16", "EXTP_PROVIDER": "archipelago", "EXTP_ACCESS": "kernelspace"]
        for (k, v) in vars { env[k] = v }
        let config = try ProviderConfig(["store.path": "/memory", "node.name": "node-a", "fill.image_dirs": images], path: "test.conf")
        let store = self.store
        let notes = self.notes
        return try Provider(env: GanetiEnvironment(env), config: config, node: node, openStore: { store },
                            note: { notes.add($0) }).run(action)
    }

    func name(_ s: String) throws -> VolumeName { try VolumeName(s) }

    /// 6 MiB + 1 KiB of a pattern (two blocks, the second partial), its SHA-256 and its hashmap file.
    func image() throws -> (path: String, bytes: [UInt8], sha256: ContentHash, hashmap: String) {
        let bytes = (0..<(6 << 20) + 1024).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ ($0 >> 12)) }
        let path = images + "/img.raw"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let bs = 4 << 20
        let hashes = stride(from: 0, to: bytes.count, by: bs).map { SHA256.blockHash(Array(bytes[$0..<min($0 + bs, bytes.count)])) }
        let map = PithosHashmap(blockSize: UInt64(bs), bytes: UInt64(bytes.count), hashes: hashes)
        let hm = images + "/img.hashmap"
        try map.jsonData().write(to: URL(fileURLWithPath: hm))
        return (path, bytes, SHA256.digest(bytes), hm)
    }

    /// A snapshot holding `bytes` at its start (a golden image in the store).
    func golden(_ bytes: [UInt8], as snap: String = "debian-img-v1") throws {
        try store.create(try name("golden"), size: .mebibytes(8))
        try store.withVolume(try name("golden")) { v in try v.write(at: 0, bytes) }
        try store.snapshot(try name("golden"), as: try name(snap))
    }

    @Test func aFileOriginIsFilledOnlyIfItHashesToOriginSHA256() throws {
        let img = try image()
        let wrong = String(repeating: "0", count: 64)
        let e = #expect(throws: ExtStorageError.self) {
            try run(.create, ["EXTP_ORIGIN": "file:\(img.path)", "EXTP_ORIGIN_SHA256": wrong])
        }
        #expect(e?.description.contains(img.sha256.hex) == true && e?.description.contains(wrong) == true, "\(e.map { "\($0)" } ?? "")")
        #expect(try store.summary(try name(vol)) == nil, "no volume")
        #expect(try store.interruptedFills().isEmpty, "no checkpoint left to resume from")
        _ = try run(.create, ["EXTP_ORIGIN": "file:\(img.path)", "EXTP_ORIGIN_SHA256": "sha256:" + img.sha256.hex.uppercased()])
        #expect(try store.withVolume(try name(vol)) { try $0.read(at: 0, length: img.bytes.count) } == img.bytes)
    }

    @Test func aFileOriginIsCheckedAgainstOriginHashmap() throws {
        let img = try image()
        // A hashmap of other content: the first block differs.
        var other = img.bytes
        other[5] ^= 0xff
        let hm = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: img.hashmap))) as? [String: Any])
        var hashes = hm["hashes"] as? [String] ?? []
        hashes[0] = SHA256.blockHash(Array(other[0..<(4 << 20)])).hex
        var bad = hm
        bad["hashes"] = hashes
        let badPath = images + "/other.hashmap"
        try JSONSerialization.data(withJSONObject: bad).write(to: URL(fileURLWithPath: badPath))
        #expect(throws: ExtStorageError.self) { try run(.create, ["EXTP_ORIGIN": "file:\(img.path)", "EXTP_ORIGIN_HASHMAP": badPath]) }
        #expect(try store.summary(try name(vol)) == nil)
        #expect(try store.interruptedFills().isEmpty)
        // A hashmap outside image_dirs is refused like a file origin there.
        let outside = NSTemporaryDirectory() + "outside-\(UUID().uuidString).hashmap"
        try FileManager.default.copyItem(atPath: img.hashmap, toPath: outside)
        defer { try? FileManager.default.removeItem(atPath: outside) }
        let o = #expect(throws: ExtStorageError.self) { try run(.verify, ["EXTP_ORIGIN": "file:\(img.path)", "EXTP_ORIGIN_HASHMAP": outside]) }
        #expect(o?.exitStatus == 2)
        _ = try run(.create, ["EXTP_ORIGIN": "file:\(img.path)", "EXTP_ORIGIN_HASHMAP": img.hashmap])
        #expect(try store.withVolume(try name(vol)) { try $0.read(at: 0, length: img.bytes.count) } == img.bytes)
    }

    @Test func aSnapshotIsCheckedOnceAndTheMatchIsRecorded() throws {
        let img = try image()
        try golden(img.bytes)
        let size = "\(img.bytes.count)"
        // Wrong digest: refused, nothing made, nothing recorded.
        let e = #expect(throws: ExtStorageError.self) {
            try run(.create, ["EXTP_ORIGIN": "snapshot:debian-img-v1", "EXTP_ORIGIN_SIZE": size,
                              "EXTP_ORIGIN_SHA256": String(repeating: "1", count: 64)])
        }
        #expect(e?.description.contains(img.sha256.hex) == true, "\(e.map { "\($0)" } ?? "")")
        #expect(try store.summary(try name(vol)) == nil)
        #expect(try store.summary(try name("debian-img-v1"))?.metadata[SnapshotContentCheck.sha256Key] == nil)
        // Right digest and hashmap: cloned, and the match recorded.
        _ = try run(.create, ["EXTP_ORIGIN": "snapshot:debian-img-v1", "EXTP_ORIGIN_SIZE": size,
                              "EXTP_ORIGIN_SHA256": img.sha256.hex, "EXTP_ORIGIN_HASHMAP": img.hashmap])
        #expect(try store.info(try name(vol)).parent == "debian-img-v1", "an O(1) clone")
        let meta = try #require(try store.summary(try name("debian-img-v1"))?.metadata)
        #expect(meta[SnapshotContentCheck.sha256Key] == "\(img.bytes.count) \(img.sha256.hex)")
        #expect(meta[SnapshotContentCheck.topHashKey] != nil)
        #expect(notes.all.contains { $0.contains("bytes read") })
        // The next clone compares with the record.
        try store.remove(try name(vol))
        _ = try run(.create, ["EXTP_ORIGIN": "snapshot:debian-img-v1", "EXTP_ORIGIN_SIZE": size, "EXTP_ORIGIN_SHA256": img.sha256.hex])
        #expect(notes.all.last?.contains("recorded by an earlier check") == true || notes.all.contains { $0.contains("recorded by an earlier check") })
        // A different image size is a different question: read again.
        try store.remove(try name(vol))
        #expect(throws: ExtStorageError.self) {
            try run(.create, ["EXTP_ORIGIN": "snapshot:debian-img-v1", "EXTP_ORIGIN_SIZE": "\(6 << 20)", "EXTP_ORIGIN_SHA256": img.sha256.hex])
        }
    }

    @Test func aVolumeOriginTakesNoChecksumAndABadOneIsRefusedUpFront() throws {
        try store.create(try name("src"), size: .mebibytes(8), metadata: [Provider.Key.cname: "snf-vol-3"])
        for origin in ["volume:src", "disk:snf-vol-3", "src"] {
            let e = #expect(throws: ExtStorageError.self) {
                try run(.verify, ["EXTP_ORIGIN": origin, "EXTP_ORIGIN_SHA256": String(repeating: "a", count: 64)])
            }
            #expect(e?.exitStatus == 2 && e?.description.contains("can still change") == true, "\(origin): \(e.map { "\($0)" } ?? "")")
        }
        for (vars, what) in [(["EXTP_ORIGIN": "snapshot:x", "EXTP_ORIGIN_SHA256": "abc"], "not a SHA-256"),
                             (["EXTP_ORIGIN_SHA256": String(repeating: "a", count: 64)], "EXTP_ORIGIN is not set"),
                             (["EXTP_ORIGIN": "snapshot:x", "EXTP_ORIGIN_HASHMAP": "relative.json"], "absolute path")] {
            let e = #expect(throws: ExtStorageError.self) { try run(.create, vars) }
            #expect(e?.exitStatus == 2 && e?.description.contains(what) == true, "\(vars): \(e.map { "\($0)" } ?? "")")
        }
        #expect(try store.summary(try name(vol)) == nil)
        #expect(node.calls.isEmpty)
    }

    @Test func aBareNameIsTheSnapshotOrTheVolumeOfThatName() throws {
        try golden([1, 2, 3], as: "snf-snap-7-1")
        _ = try run(.create, ["EXTP_ORIGIN": "snf-snap-7-1"])
        #expect(try store.info(try name(vol)).parent == "snf-snap-7-1")
        // A volume of that name is frozen first, as volume:NAME is.
        try store.remove(try name(vol))
        _ = try run(.create, ["EXTP_ORIGIN": "golden"])
        #expect(try store.info(try name(vol)).parent == "golden.origin-of-\(vol)")
        // A name the store does not hold.
        let e = #expect(throws: ExtStorageError.self) { try run(.verify, ["EXTP_ORIGIN": "archip_4f0c2d"]) }
        #expect(e?.exitStatus == 2 && e?.description.contains("no snapshot or volume") == true, "\(e.map { "\($0)" } ?? "")")
    }
}
