import Foundation

/// A Pithos-compatible hashmap: what Pithos serves for `?format=json&hashmap`.
public struct PithosHashmap: Codable, Sendable, Equatable {
    public var blockSize: UInt64
    public var blockHash: String
    public var hashes: [String]
    public var bytes: UInt64

    enum CodingKeys: String, CodingKey {
        case blockSize = "block_size", blockHash = "block_hash", hashes, bytes
    }

    public init(blockSize: UInt64, bytes: UInt64, hashes: [ContentHash]) {
        self.blockSize = blockSize
        self.blockHash = "sha256"
        self.hashes = hashes.map(\.hex)
        self.bytes = bytes
    }

    public var contentHashes: [ContentHash] {
        get throws {
            try hashes.enumerated().map { i, h in
                guard let c = ContentHash(hex: h) else {
                    throw StoreError(.corrupt, "hashmap entry \(i) is not a SHA-256 hex digest: '\(h)'")
                }
                return c
            }
        }
    }

    /// Top hash: Merkle root over the block hashes, zero-padded to a power of two.
    public static func topHash(_ hashes: [ContentHash]) -> ContentHash {
        if hashes.isEmpty { return ContentHash.ofEmpty }
        if hashes.count == 1 { return hashes[0] }
        var level = hashes
        var width = 1
        while width < level.count { width <<= 1 }
        level.append(contentsOf: repeatElement(ContentHash.zero, count: width - level.count))
        var pair = [UInt8](repeating: 0, count: 64)
        while level.count > 1 {
            var next = [ContentHash]()
            next.reserveCapacity(level.count / 2)
            var i = 0
            while i < level.count {
                pair.replaceSubrange(0..<32, with: level[i].bytes)
                pair.replaceSubrange(32..<64, with: level[i + 1].bytes)
                next.append(SHA256.digest(pair))
                i += 2
            }
            level = next
        }
        return level[0]
    }

    public var topHash: ContentHash {
        get throws { PithosHashmap.topHash(try contentHashes) }
    }

    public func jsonData() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return try e.encode(self)
    }

    public static func decode(_ data: Data) throws -> PithosHashmap {
        do {
            let m = try JSONDecoder().decode(PithosHashmap.self, from: data)
            guard m.blockHash.lowercased() == "sha256" else {
                throw StoreError(.unsupported, "hashmap block_hash '\(m.blockHash)' is not supported (only sha256)")
            }
            guard m.blockSize > 0 else { throw StoreError(.corrupt, "hashmap block_size must be positive") }
            let expected = m.bytes == 0 ? 0 : (m.bytes + m.blockSize - 1) / m.blockSize
            guard UInt64(m.hashes.count) == expected else {
                throw StoreError(.corrupt, "hashmap has \(m.hashes.count) hashes but \(m.bytes) bytes need \(expected)")
            }
            return m
        } catch let e as StoreError {
            throw e
        } catch {
            throw StoreError(.corrupt, "hashmap is not valid JSON", cause: "\(error)")
        }
    }
}

/// A folder of blocks laid out as Pithos' file blocker does: `aa/bb/cc/<hex>`.
/// Our own content blocks use the same layout, so either serves as a block source.
public struct PithosBlockFolder: Sendable {
    public let root: String
    public init(root: String) { self.root = root }

    public static func relativePath(for hash: ContentHash) -> String {
        let h = hash.hex
        let u = Array(h.utf8)
        func part(_ i: Int) -> String { String(decoding: u[i..<(i + 2)], as: UTF8.self) }
        return "\(part(0))/\(part(2))/\(part(4))/\(h)"
    }

    /// Reads a block, pads it with zeros to `blockSize`, and checks its hash.
    public func read(_ hash: ContentHash, blockSize: Int) throws -> [UInt8] {
        let path = root + "/" + PithosBlockFolder.relativePath(for: hash)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StoreError(.notFound, "block \(hash.hex): not found under \(root)")
        }
        guard data.count <= blockSize else {
            throw StoreError(.corrupt, "block \(hash.hex) under \(root): \(data.count) bytes, larger than the block size \(blockSize)")
        }
        var bytes = [UInt8](data)
        let got = SHA256.blockHash(bytes)
        guard got == hash else {
            throw StoreError(.corrupt, "block \(hash.hex) under \(root): content hashes to \(got.hex)")
        }
        bytes.append(contentsOf: repeatElement(0, count: blockSize - bytes.count))
        return bytes
    }
}
