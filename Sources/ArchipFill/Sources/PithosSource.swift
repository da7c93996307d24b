import ArchipStore
import Foundation

/// Where a Pithos image's blocks come from.
public protocol PithosBlockFetcher: Sendable {
    var description: String { get }
    /// The block's bytes (trailing zeros may be missing); not yet verified.
    func fetch(_ hash: ContentHash, into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

/// A folder of blocks laid out as Pithos' file blocker does (`aa/bb/cc/<hash>`).
public struct PithosFolderFetcher: PithosBlockFetcher {
    public let root: String
    public init(root: String) { self.root = root }
    public var description: String { "blocks in \(root)" }

    public func fetch(_ hash: ContentHash, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let path = root + "/" + PithosBlockFolder.relativePath(for: hash)
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw StoreError(.notFound, "block \(hash.hex) is not in \(root) (looked for \(path))")
        }
        defer { try? fh.close() }
        let data = fh.readData(ofLength: buffer.count + 1)
        guard data.count <= buffer.count else {
            throw StoreError(.corrupt, "block file \(path) is larger than the block size \(buffer.count)")
        }
        data.copyBytes(to: buffer.bindMemory(to: UInt8.self), count: data.count)
        return data.count
    }
}

/// An image described by a Pithos hashmap: every block's hash is known before
/// it is fetched, so blocks the store already holds are never fetched at all.
public final class PithosSource: BlockSource, @unchecked Sendable {
    public let hashmap: PithosHashmap
    public let hashes: [ContentHash]
    public let fetcher: any PithosBlockFetcher
    public let origin: String

    public init(hashmap: PithosHashmap, fetcher: any PithosBlockFetcher, origin: String) throws {
        self.hashmap = hashmap
        hashes = try hashmap.contentHashes
        self.fetcher = fetcher
        self.origin = origin
    }

    public var description: String { "pithos:\(origin) (\(fetcher.description))" }
    public var size: UInt64 { hashmap.bytes }
    public var blockSize: Int { Int(hashmap.blockSize) }
    public func expectedHash(_ index: Int) -> ContentHash? { hashes[index] }

    public func read(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let length = Int(min(UInt64(blockSize), size - UInt64(index) * UInt64(blockSize)))
        let out = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
        if hashes[index] == ContentHash.ofEmpty {
            out.initializeMemory(as: UInt8.self, repeating: 0)
            return length
        }
        let n = try fetcher.fetch(hashes[index], into: out)
        guard n <= length else {
            throw StoreError(.corrupt, "block \(index) (\(hashes[index].hex)) from \(fetcher.description) has \(n) bytes, more than the \(length) the hashmap allows")
        }
        if n < length { UnsafeMutableRawBufferPointer(rebasing: out[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
        return length
    }
}
