import ArchipStore
import Foundation

/// What `archip fill --from` accepts.
public enum SourceSpec: Equatable, Sendable, CustomStringConvertible {
    case snapshot(VolumeName)
    case volume(VolumeName)
    case file(String)
    case url(String)
    /// A Pithos hashmap (file or URL); blocks come from `--blocks`.
    case pithos(String)

    public init(parsing text: String) throws {
        func name(_ s: Substring) throws -> VolumeName { try VolumeName(String(s)) }
        if text.hasPrefix("snapshot:") { self = .snapshot(try name(text.dropFirst(9))); return }
        if text.hasPrefix("volume:") { self = .volume(try name(text.dropFirst(7))); return }
        if text.hasPrefix("file:") {
            let p = String(text.dropFirst(5))
            guard !p.isEmpty else { throw StoreError(.invalidArgument, "source 'file:' names no file") }
            self = .file(p)
            return
        }
        if text.hasPrefix("pithos:") {
            let p = String(text.dropFirst(7))
            guard !p.isEmpty else { throw StoreError(.invalidArgument, "source 'pithos:' names no hashmap") }
            self = .pithos(p)
            return
        }
        if text.hasPrefix("http://") || text.hasPrefix("https://") { self = .url(text); return }
        if text.hasPrefix("/") || text.hasPrefix("./") { self = .file(text); return }
        throw StoreError(.invalidArgument, "unknown source '\(text)': use snapshot:NAME, volume:NAME, file:/path, http(s)://..., or pithos:HASHMAP")
    }

    public var description: String {
        switch self {
        case .snapshot(let n): return "snapshot:\(n)"
        case .volume(let n): return "volume:\(n)"
        case .file(let p): return "file:\(p)"
        case .url(let u): return u
        case .pithos(let h): return "pithos:\(h)"
        }
    }
}

/// One fill, as the CLI or the Ganeti provider asks for it.
public struct FillRequest: Sendable {
    public var target: VolumeName
    public var source: SourceSpec
    /// Size for a target that does not exist yet (default: the image's).
    public var createSize: ByteCount?
    /// Per-block hashes the image must match (file path; `pithos:` sources carry their own).
    public var hashmap: String?
    /// Where `pithos:` blocks come from: a folder in Pithos' layout.
    public var blocks: String?
    public var sha256: ContentHash?
    /// Copy an in-store snapshot or volume instead of cloning it.
    public var copy = false
    /// Allow an image larger than an existing target (the target grows).
    public var grow = false
    public var resume = false
    public var metadata: [String: String] = [:]
    public var options = FillOptions()
    /// Opens remote sources (http(s) URLs); nil: only local sources are accepted.
    public var remote: (any RemoteSourceOpener)?

    public init(target: VolumeName, source: SourceSpec) {
        self.target = target
        self.source = source
    }
}

/// Opens http(s) sources; the HTTP client lives behind this so the filler core
/// stays testable without a network.
public protocol RemoteSourceOpener: Sendable {
    func openImage(url: String, blockSize: Int, expectedHashes: [ContentHash]?) throws -> any BlockSource
    func fetchText(url: String, limit: Int) throws -> [UInt8]
    func pithosFetcher(template: String) throws -> any PithosBlockFetcher
}

public enum FillOutcome: Sendable {
    /// An in-store snapshot was cloned: O(1), nothing copied.
    case cloned(from: VolumeName)
    case filled(FillResult)
}

public enum Filler {
    public static func run(_ r: FillRequest, store: VolumeStore) throws -> FillOutcome {
        let existing = (try? store.info(r.target)).map { $0 }
        if let existing, existing.kind != "volume" {
            throw StoreError(.wrongKind, "'\(r.target)' is a snapshot; fill a volume")
        }
        // In-store sources: a clone, O(1), unless a copy is asked for.
        if !r.copy {
            switch r.source {
            case .snapshot(let snap):
                guard existing == nil else {
                    throw StoreError(.alreadyExists, "'\(r.target)' exists; a snapshot is cloned into a new volume (remove it first, or pass --copy to overwrite its content)")
                }
                try store.clone(snap, as: r.target, size: r.createSize, metadata: r.metadata.merging(["origin": r.source.description]) { $1 })
                return .cloned(from: snap)
            case .volume(let vol):
                guard existing == nil else {
                    throw StoreError(.alreadyExists, "'\(r.target)' exists; a volume is cloned into a new volume (remove it first, or pass --copy)")
                }
                // A clone needs a frozen layer: snapshot the source under a name that says why.
                let snap = try VolumeName("\(vol).origin-of-\(r.target)")
                try store.snapshot(vol, as: snap)
                try store.clone(snap, as: r.target, size: r.createSize, metadata: r.metadata.merging(["origin": r.source.description]) { $1 })
                return .cloned(from: snap)
            default:
                break
            }
        }
        let source = try openSource(r, store: store, blockSize: existing.map { Int($0.blockSize) } ?? Int(LayerMap.defaultBlockSize))
        // Size rules, checked before anything is fetched.
        let volumeSize: UInt64
        if let existing {
            if source.size > existing.size && !r.grow {
                throw StoreError(.outOfRange, "\(source.description) is \(source.size) bytes, larger than '\(r.target)' (\(existing.size) bytes); pass --grow to grow the volume")
            }
            volumeSize = max(existing.size, (source.size + 511) / 512 * 512)
        } else {
            let imageSize = max(512, (source.size + 511) / 512 * 512)
            if let s = r.createSize, s.bytes < source.size {
                if !r.grow {
                    throw StoreError(.invalidSize, "\(source.description) is \(source.size) bytes, larger than the requested size \(s.bytes); pass --grow or a larger --size")
                }
            }
            volumeSize = max(r.createSize?.bytes ?? imageSize, imageSize)
        }
        // The whole-image digest is not part of the identity: a fill that failed
        // on a wrong --sha256 may resume with the right one.
        let identity = "\(source.description) bytes=\(source.size) block=\(source.blockSize)"
        let stage = try FillStage.begin(store: store, target: r.target, imageSize: source.size, blockSize: source.blockSize,
                                        sourceID: identity, resume: r.resume)
        let result = try Copier.fill(from: source, into: stage, options: { var o = r.options; o.sha256 = r.sha256; return o }())
        var meta = r.metadata
        meta["origin"] = r.source.description
        meta["origin.top-hash"] = result.topHash.hex
        try stage.commit(volumeSize: volumeSize, metadata: meta, mustCreate: existing == nil)
        return .filled(result)
    }

    static func openSource(_ r: FillRequest, store: VolumeStore, blockSize: Int) throws -> any BlockSource {
        var expected: [ContentHash]? = nil
        if let hm = r.hashmap {
            let map = try loadHashmap(hm, remote: r.remote)
            guard Int(map.blockSize) == blockSize else {
                throw StoreError(.invalidArgument, "hashmap \(hm) has \(map.blockSize)-byte blocks, the volume \(blockSize)")
            }
            expected = try map.contentHashes
        }
        let source: any BlockSource
        switch r.source {
        case .file(let path):
            source = try FileSource(path: path, blockSize: blockSize, expectedHashes: expected)
        case .snapshot(let n), .volume(let n):
            source = try VolumeSource(store: store, name: n)
        case .url(let url):
            guard let remote = r.remote else {
                throw StoreError(.unsupported, "\(url): this build has no HTTP client")
            }
            source = try remote.openImage(url: url, blockSize: blockSize, expectedHashes: expected)
        case .pithos(let hm):
            let map = try loadHashmap(hm, remote: r.remote)
            guard let blocks = r.blocks else {
                throw StoreError(.invalidArgument, "a pithos: source needs --blocks (a folder of blocks, or a URL template with {hash})")
            }
            let fetcher: any PithosBlockFetcher
            if blocks.hasPrefix("http://") || blocks.hasPrefix("https://") {
                guard let remote = r.remote else { throw StoreError(.unsupported, "\(blocks): this build has no HTTP client") }
                fetcher = try remote.pithosFetcher(template: blocks)
            } else {
                fetcher = PithosFolderFetcher(root: blocks)
            }
            source = try PithosSource(hashmap: map, fetcher: fetcher, origin: hm)
        }
        if let expected, expected.count != source.blockCount {
            throw StoreError(.invalidArgument, "the hashmap has \(expected.count) blocks, \(source.description) \(source.blockCount)")
        }
        return source
    }

    static func loadHashmap(_ where_: String, remote: (any RemoteSourceOpener)?) throws -> PithosHashmap {
        let bytes: [UInt8]
        if where_.hasPrefix("http://") || where_.hasPrefix("https://") {
            guard let remote else { throw StoreError(.unsupported, "\(where_): this build has no HTTP client") }
            bytes = try remote.fetchText(url: where_, limit: 64 << 20)
        } else {
            guard let d = FileManager.default.contents(atPath: where_) else {
                throw StoreError(.notFound, "hashmap \(where_): cannot read it")
            }
            bytes = [UInt8](d)
        }
        do {
            return try PithosHashmap.decode(Data(bytes))
        } catch let e as StoreError {
            throw StoreError(e.code, "hashmap \(where_): \(e.message)", cause: e.cause)
        }
    }
}
