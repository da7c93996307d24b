import ArchipStore
import Foundation

/// The filler's `RemoteSourceOpener` on `HTTPClient`: images by URL, hashmaps
/// by URL, Pithos blocks by URL template. One client (so one pool of kept-alive
/// connections) serves all three.
public struct HTTPRemoteOpener: RemoteSourceOpener {
    public let client: HTTPClient

    public init(client: HTTPClient) { self.client = client }

    /// `--cacert FILE` / `--insecure` as the CLI gets them.
    public init(options: HTTPOptions) throws(HTTPError) {
        client = try HTTPClient(options: options)
    }

    public func openImage(url: String, blockSize: Int, expectedHashes: [ContentHash]?) throws -> any BlockSource {
        try HTTPSource(url: url, blockSize: blockSize, client: client, expectedHashes: expectedHashes)
    }

    public func fetchText(url: String, limit: Int) throws -> [UInt8] {
        try client.getAll(url, limit: limit)
    }

    public func pithosFetcher(template: String) throws -> any PithosBlockFetcher {
        try HTTPPithosFetcher(template: template, client: client)
    }
}

/// Pithos blocks fetched by name: `template` with `{hash}` replaced by the
/// block's hex hash (e.g. `https://pithos.example/blocks/{hash}`). A block is
/// a whole small file, so it is a plain GET bounded by the block size.
public struct HTTPPithosFetcher: PithosBlockFetcher {
    public static let placeholder = "{hash}"
    public let template: String
    public let client: HTTPClient

    public init(template: String, client: HTTPClient) throws(HTTPError) {
        guard template.contains(Self.placeholder) else {
            throw HTTPError(.invalidArgument, operation: "blocks", url: template,
                            message: "the block URL template has no \(Self.placeholder)",
                            remedy: "write it like https://host/blocks/\(Self.placeholder)")
        }
        self.template = template
        self.client = client
    }

    public var description: String { "blocks at \(redactURL(template))" }

    public func url(for hash: ContentHash) -> String {
        template.replacingOccurrences(of: Self.placeholder, with: hash.hex)
    }

    public func fetch(_ hash: ContentHash, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try client.getAll(url(for: hash), into: buffer)
    }
}
