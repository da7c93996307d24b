import Foundation

/// What `archip info` and `archip list` report about a name.
public struct VolumeInfo: Codable, Sendable {
    public struct Link: Codable, Sendable {
        public var layer: String
        public var kind: String
        public var names: [String]
    }

    public var name: String
    public var kind: String
    public var size: UInt64
    public var blockSize: UInt32
    public var layer: String
    public var epoch: UInt64
    /// The snapshot this layer builds on (its name, or `layer:<id>` if unnamed).
    public var parent: String?
    /// Every layer below, nearest first.
    public var chain: [Link]
    /// Blocks whose data this layer holds (owned or content), and their logical bytes.
    public var blocks: Int
    public var bytes: UInt64
    public var lock: LockState?
    public var metadata: [String: String]
    public var created: Date
}

extension VolumeStore {
    public func info(_ name: VolumeName) throws -> VolumeInfo {
        let rec = try record(name)
        let names = try layerNames(try allRecords())
        return try info(name, rec, names: names)
    }

    public func list() throws -> [VolumeInfo] {
        let records = try allRecords()
        let names = try layerNames(records)
        return try records.map { try info($0.0, $0.1, names: names) }
    }

    private func layerNames(_ records: [(VolumeName, VolumeRecord)]) throws -> [LayerID: [String]] {
        var out: [LayerID: [String]] = [:]
        for (n, r) in records where r.kind == .snapshot { out[r.layer, default: []].append(n.value) }
        return out
    }

    private func info(_ name: VolumeName, _ rec: VolumeRecord, names: [LayerID: [String]]) throws -> VolumeInfo {
        let top = try loadCommitted(rec.layer).map
        let chain = try self.chain(from: top.parent)
        let links = chain.map { VolumeInfo.Link(layer: $0.id.hex, kind: $0.kind.name, names: names[$0.id] ?? []) }
        var parent: String? = nil
        if let first = chain.first { parent = (names[first.id]?.first).map { $0 } ?? "layer:\(first.id.hex)" }
        let blocks = top.dataBlockCount
        return VolumeInfo(name: name.value, kind: rec.kind.name, size: top.size, blockSize: top.blockSize,
                          layer: top.id.hex, epoch: top.epoch, parent: parent, chain: links, blocks: blocks,
                          bytes: UInt64(blocks) * UInt64(top.blockSize),
                          lock: try objects.lockState(StoreLayout.lock(name)), metadata: rec.metadata,
                          created: Date(timeIntervalSince1970: TimeInterval(rec.createdAt)))
    }
}

/// What a caller on a hot path needs to know about a name (the Ganeti
/// provider runs for every disk operation): read from the name's record and
/// its top map only, whatever the number of volumes in the store.
public struct VolumeSummary: Sendable {
    public var name: String
    public var kind: String
    public var size: UInt64
    public var metadata: [String: String]
    public var lock: LockState?
}

extension VolumeStore {
    /// The volumes whose record has `key` = `value` in its metadata, sorted:
    /// for finding a volume by what another system calls it (the Ganeti
    /// provider resolves `disk:NAME` origins by `ganeti.cname`). Reads each
    /// name's record only, never a map (`list` loads every map and chain).
    public func volumes(withMetadata key: String, equalTo value: String) throws -> [VolumeName] {
        try allRecords().filter { $0.1.kind == .volume && $0.1.metadata[key] == value }.map(\.0)
    }

    /// Every volume that has metadata `key`, with its value, sorted by name:
    /// for comparing the store with another system's records (Cyclades'
    /// reconcile looks for `ganeti.cname`). Records only, like
    /// `volumes(withMetadata:equalTo:)`: no map is read, none can fail it.
    public func volumeMetadata(_ key: String) throws -> [(name: VolumeName, value: String)] {
        try allRecords().compactMap { name, rec in
            guard rec.kind == .volume, let v = rec.metadata[key] else { return nil }
            return (name, v)
        }.sorted { $0.name.value < $1.name.value }
    }

    /// nil when the name does not exist.
    public func summary(_ name: VolumeName) throws -> VolumeSummary? {
        guard let rec = try recordIfPresent(name) else { return nil }
        let top = try loadCommitted(rec.layer).map
        return VolumeSummary(name: name.value, kind: rec.kind.name, size: top.size, metadata: rec.metadata,
                             lock: try objects.lockState(StoreLayout.lock(name)))
    }

    /// Opens an existing store in a folder; unlike `directory`, never
    /// initialises one (a mistyped path must not become an empty store).
    public static func existingDirectory(_ path: String, node: String) throws -> VolumeStore {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw StoreError(.notFound, "store \(path) is not reachable (no such folder; is the shared file system mounted?)")
        }
        guard FileManager.default.fileExists(atPath: path + "/" + StoreLayout.marker.path) else {
            throw StoreError(.notFound, "\(path) is not an archip store (no \(StoreLayout.marker.path) marker; an empty folder becomes a store at the first archip command on it)")
        }
        return try directory(path, node: node)
    }
}
