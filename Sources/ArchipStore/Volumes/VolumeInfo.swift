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
    /// The exclusive holders' lease: its epoch, holder and last break (nil: never held).
    public var lease: Lease?
    public var metadata: [String: String]
    public var created: Date
}

extension VolumeStore {
    public func info(_ name: VolumeName) throws -> VolumeInfo {
        let rec = try record(name)
        // Snapshot names for the chain; another name's damaged record does not fail this one.
        var listed: [ObjectName] = []
        try objects.enumerate(prefix: StoreLayout.namesPrefix) { listed.append($0); return true }
        let names = try layerNames(recordsTolerant(listed: listed).0)
        return try info(name, rec, names: names)
    }

    public func list() throws -> [VolumeInfo] {
        let records = try allRecords()
        let names = try layerNames(records)
        return try records.map { try info($0.0, $0.1, names: names) }
    }

    /// Every name that can be read, and the names that cannot (a damaged
    /// record or map), each with its error: one damaged volume does not
    /// hide the others.
    public func listAll() throws -> (items: [VolumeInfo], damaged: [DamagedName]) {
        var listed: [ObjectName] = []
        try objects.enumerate(prefix: StoreLayout.namesPrefix) { listed.append($0); return true }
        let (records, damagedRecords) = recordsTolerant(listed: listed)
        let names = try layerNames(records)
        var items: [VolumeInfo] = []
        var damaged = damagedRecords
        for (n, r) in records {
            do { items.append(try info(n, r, names: names)) } catch let e as StoreError where e.code == .notFound {
                continue   // removed since the listing
            } catch {
                damaged.append(DamagedName(name: n.value, error: "\(error)"))
            }
        }
        return (items, damaged.sorted { $0.name < $1.name })
    }

    /// Fills interrupted or running (their checkpoints, `fills/<name>`):
    /// the blocks they stored so far are kept for `fill --resume` until
    /// `fill --abort` drops them.
    public func interruptedFills() throws -> [InterruptedFill] {
        var out: [InterruptedFill] = []
        try objects.enumerate(prefix: FillStage.fillsPrefix) { obj in
            let name = obj.lastComponent
            if let bytes = try? objects.readAll(obj), let c = try? FillStage.decode(bytes, what: obj.path) {
                out.append(InterruptedFill(name: name, source: StoreError.bounded(c.sourceID), blocksStored: c.done.count,
                                           blocks: Int((c.imageSize + UInt64(c.blockSize) - 1) / UInt64(max(c.blockSize, 1))),
                                           bytesStored: c.done.values.filter { $0 != ContentHash.ofEmpty }.count * Int(c.blockSize)))
            } else {
                out.append(InterruptedFill(name: name, source: "(checkpoint unreadable)", blocksStored: 0, blocks: 0, bytesStored: 0))
            }
            return true
        }
        return out.sorted { $0.name < $1.name }
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
                          lock: try objects.lockState(StoreLayout.lock(name)),
                          lease: rec.kind == .volume ? try lease(name) : nil, metadata: rec.metadata,
                          created: Date(timeIntervalSince1970: TimeInterval(rec.createdAt)))
    }
}

/// A fill checkpoint (`archip list` shows them; `fill NAME --abort` drops one).
public struct InterruptedFill: Codable, Sendable {
    public var name: String
    public var source: String
    public var blocksStored: Int
    public var blocks: Int
    /// Bytes of the non-zero blocks stored (upper bound: whole blocks).
    public var bytesStored: Int
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
            throw StoreError(.notFound, "store \(path) is not reachable (no such folder; is the shared file system mounted? 'archip init' makes a new store)")
        }
        guard FileManager.default.fileExists(atPath: path + "/" + StoreLayout.marker.path) else {
            if let entries = try? FileManager.default.contentsOfDirectory(atPath: path), entries.contains(where: { !$0.hasPrefix(".") }) {
                throw StoreError(.invalidArgument, "\(path) is not an archip store (no \(StoreLayout.marker.path) marker) and is not empty; point --store at an existing store")
            }
            throw StoreError(.notFound, "\(path) is not an archip store (no \(StoreLayout.marker.path) marker; 'archip init' makes one of an empty folder)")
        }
        return try directory(path, node: node)
    }
}
