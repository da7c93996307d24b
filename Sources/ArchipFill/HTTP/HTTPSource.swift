import ArchipStore

/// An image on an HTTP(S) server, read one block per ranged GET.
///
/// The size (and the file's strong ETag) is read once, in `init`; every block
/// read checks the server still serves that same file, so an image replaced
/// mid-fill fails with `.changed` instead of producing a mix of two images.
/// Thread-safe: the filler reads several blocks at once, each on a pooled
/// connection of `client`.
public final class HTTPSource: BlockSource {
    public let url: String
    public let resource: HTTPResource
    public let blockSize: Int
    public let client: HTTPClient
    private let expectedHashes: [ContentHash]?

    /// - Parameters:
    ///   - expectedHashes: one per block (a hashmap the server or the
    ///     operator vouches for), checked by the filler, not here.
    public init(url: String, blockSize: Int, client: HTTPClient,
                expectedHashes: [ContentHash]? = nil) throws(HTTPError) {
        guard blockSize > 0 else {
            throw HTTPError(.invalidArgument, operation: "open", url: url, message: "block size \(blockSize) is not positive")
        }
        let resource = try client.probe(url)
        let blocks = (resource.size + UInt64(blockSize) - 1) / UInt64(blockSize)
        if let expectedHashes, UInt64(expectedHashes.count) != blocks {
            throw HTTPError(.invalidArgument, operation: "open", url: url,
                            message: "the hashmap has \(expectedHashes.count) hashes but the file has \(blocks) blocks of \(blockSize) bytes (\(resource.size) bytes)",
                            remedy: "check that the hashmap belongs to this image and uses the same block size")
        }
        self.url = url
        self.resource = resource
        self.blockSize = blockSize
        self.client = client
        self.expectedHashes = expectedHashes
    }

    public var size: UInt64 { resource.size }

    public var description: String { redactURL(url) }

    public func expectedHash(_ index: Int) -> ContentHash? {
        guard let expectedHashes, expectedHashes.indices.contains(index) else { return nil }
        return expectedHashes[index]
    }

    /// Block `index`: bytes `[index*blockSize, min(size, (index+1)*blockSize))`.
    public func read(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(HTTPError) -> Int {
        guard index >= 0, index < blockCount else {
            throw HTTPError(.invalidArgument, operation: "read block \(index)", url: url,
                            message: "no such block (the file has \(blockCount))")
        }
        let start = UInt64(index) * UInt64(blockSize)
        let end = min(size, start + UInt64(blockSize))
        return try client.get(url, range: start..<end, into: buffer, validating: resource)
    }
}
