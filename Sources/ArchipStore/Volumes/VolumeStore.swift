import Foundation

/// The volume store: names, layers, locks, on top of any `ObjectStore`.
/// It knows nothing of Ganeti, HTTP or FUSE.
public final class VolumeStore: @unchecked Sendable {
    public let objects: any ObjectStore
    /// This node's name, recorded in locks it takes.
    public let node: String
    /// Content blocks (and older owned objects) this process checked whole.
    let verified = VerifiedObjects()
    /// Leases of exclusive holds (`[locks]` in archip.conf). Set before opening volumes.
    public var leaseSettings = LeaseSettings()
    /// Where lease events go (breaks, fencing, failed renewals): one line each.
    public var leaseLog: ((String) -> Void)?

    /// Opens a store on `objects`, initialising an empty one.
    public init(objects: any ObjectStore, node: String) throws {
        self.objects = objects
        self.node = node
        if let marker = try objects.stat(StoreLayout.marker) {
            // Read no more than a marker can hold: a damaged one may be huge.
            let limit = StoreLayout.markerText.utf8.count
            guard marker.size <= UInt64(limit) else {
                throw StoreError(.unsupported, "\(objects.location): unknown store format (its \(StoreLayout.marker) marker is \(marker.size) bytes, not '\(StoreLayout.markerText.trimmingCharacters(in: .whitespacesAndNewlines))')")
            }
            var buffer = [UInt8](repeating: 0, count: limit)
            let n = try buffer.withUnsafeMutableBytes { try objects.read(StoreLayout.marker, at: 0, into: $0) }
            let text = String(decoding: buffer[0..<n], as: UTF8.self)
            guard text == StoreLayout.markerText else {
                throw StoreError(.unsupported, "\(objects.location): unknown store format '\(text.trimmingCharacters(in: .whitespacesAndNewlines))'")
            }
            return
        }
        var anything = false
        try objects.enumerate(prefix: "") { _ in anything = true; return false }
        guard !anything else {
            throw StoreError(.invalidArgument, "\(objects.location) is not an archip store (no archip-store marker) and is not empty; point --store at an empty folder or an existing store")
        }
        try objects.put(StoreLayout.marker, Array(StoreLayout.markerText.utf8), durable: true)
    }

    /// A store in a folder (the `dir` backend).
    public static func directory(_ path: String, node: String) throws -> VolumeStore {
        try VolumeStore(objects: DirObjectStore(root: path), node: node)
    }

    // MARK: loading

    func record(_ name: VolumeName) throws -> VolumeRecord {
        let obj = StoreLayout.record(name)
        let bytes: [UInt8]
        do { bytes = try objects.readAll(obj) } catch let e as StoreError where e.code == .notFound {
            throw StoreError(.notFound, "'\(name)' does not exist in store \(objects.location)")
        }
        return try VolumeRecord.decode(bytes, what: "record of '\(name)' (\(obj))")
    }

    func recordIfPresent(_ name: VolumeName) throws -> VolumeRecord? {
        guard try objects.exists(StoreLayout.record(name)) else { return nil }
        return try record(name)
    }

    func loadMap(_ layer: LayerID) throws -> LayerMap {
        let obj = StoreLayout.map(layer)
        let bytes: [UInt8]
        do { bytes = try objects.readAll(obj) } catch let e as StoreError where e.code == .notFound {
            throw StoreError(.corrupt, "map \(obj) is missing", cause: "the store is damaged; run 'archip verify'")
        }
        let map = try MapFormatV1.decode(bytes, what: "map \(obj)")
        guard map.id == layer else { throw StoreError(.corrupt, "map \(obj) names layer \(map.id)") }
        return map
    }

    struct Committed {
        var map: LayerMap
        var logLength: Int
        var mapBytes: Int
        var pendingIntents: Set<UInt32>
        var tornLog: Bool
    }

    /// A layer's map with its log's committed updates applied.
    func loadCommitted(_ layer: LayerID) throws -> Committed {
        var map = try loadMap(layer)
        let mapBytes = MapFormatV1.headerBytes + map.entryCount * MapFormatV1.entryBytes
        let logObj = StoreLayout.log(layer)
        guard try objects.exists(logObj) else {
            return Committed(map: map, logLength: 0, mapBytes: mapBytes, pendingIntents: [], tornLog: false)
        }
        let bytes = try objects.readAll(logObj)
        guard let contents = try LayerLog.read(bytes, layer: layer, generation: map.generation,
                                               blockCount: map.blockCount, what: "log \(logObj)") else {
            // Left over from an interrupted compaction: the map already holds it.
            return Committed(map: map, logLength: 0, mapBytes: mapBytes, pendingIntents: [], tornLog: true)
        }
        map.apply(contents.updates)
        return Committed(map: map, logLength: contents.validLength, mapBytes: mapBytes,
                         pendingIntents: contents.pendingIntents, tornLog: contents.tornTail)
    }

    /// The frozen layers from `layer` up to the root, nearest first.
    func chain(from layer: LayerID) throws -> [LayerMap] {
        var out: [LayerMap] = []
        var next = layer
        var seen = Set<LayerID>()
        while !next.isNone {
            guard seen.insert(next).inserted, out.count < 10_000 else {
                throw StoreError(.corrupt, "layer chain loops at \(next)")
            }
            let m = try loadCommitted(next).map
            out.append(m)
            next = m.parent
        }
        return out
    }

    // MARK: create, open

    /// Creates a thin volume: only its map and name are written.
    public func create(_ name: VolumeName, size: ByteCount, blockSize: UInt32 = LayerMap.defaultBlockSize,
                       metadata: [String: String] = [:]) throws {
        _ = try size.validatedVolumeSize()
        try LayerMap.checkBlockSize(blockSize)
        guard UInt64(size.bytes) / UInt64(blockSize) < UInt64(UInt32.max) else {
            throw StoreError(.invalidSize, "invalid size \(size): too many blocks of \(ByteCount(UInt64(blockSize))); use a larger block size")
        }
        if try objects.exists(StoreLayout.record(name)) {
            throw StoreError(.alreadyExists, "'\(name)' already exists")
        }
        let map = LayerMap(id: LayerID.random(), parent: .none, kind: .base, size: size.bytes,
                           blockSize: blockSize, parentBlocks: 0, epoch: 1)
        try objects.put(StoreLayout.map(map.id), MapFormatV1.encode(map), durable: true)
        let record = VolumeRecord(kind: .volume, layer: map.id, metadata: metadata)
        guard try objects.create(StoreLayout.record(name), record.encode(), durable: true) else {
            try objects.removeAll(prefix: StoreLayout.layerPrefix(map.id))
            throw StoreError(.alreadyExists, "'\(name)' already exists")
        }
        noteIndexed(name, metadata)
    }

    /// Opens a volume or snapshot. Writable modes take the volume's lock for
    /// `owner` (default: this process on this node) and finish any recovery
    /// a crash left behind.
    public func open(_ name: VolumeName, mode: OpenMode = .exclusive, owner: LockOwner? = nil) throws -> Volume {
        var record = try self.record(name)
        var effectiveMode = mode
        if record.kind == .snapshot { effectiveMode = .readOnly }
        var lockOwner: LockOwner? = nil
        var keeper: LeaseKeeper? = nil
        var tookOver: LeaseBreak? = nil
        if effectiveMode == .shared {
            let o = owner ?? LockOwner.forThisProcess(node: node)
            if owner == nil {
                try objects.takeFreshLock(StoreLayout.lock(name), owner: o, mode: .shared)
            } else {
                try objects.acquireLock(StoreLayout.lock(name), owner: o, mode: .shared)
            }
            lockOwner = o
        } else if effectiveMode == .exclusive {
            let o = owner ?? LockOwner.forThisProcess(node: node)
            let started = MonotonicClock.now()
            let (lease, broke) = try takeExclusive(name, owner: o, fresh: owner == nil)
            keeper = LeaseKeeper(store: self, hold: .volume(name), owner: o, epoch: lease.epoch, settings: leaseSettings,
                                 startedAt: started)
            tookOver = broke
            lockOwner = o
        }
        do {
            if lockOwner != nil {
                // The record may have moved (snapshot) between our read and the lock.
                // A new hold starts from what the store holds now, not from what this
                // process saw or wrote before (backends that compare-and-swap maps).
                objects.forgetCached(StoreLayout.record(name))
                record = try self.record(name)
                objects.forgetCached(StoreLayout.map(record.layer))
                objects.forgetCached(StoreLayout.log(record.layer))
            }
            var committed = try loadCommitted(record.layer)
            if effectiveMode == .exclusive && (!committed.pendingIntents.isEmpty || committed.tornLog) {
                committed = try recover(record.layer, committed)
            }
            let ancestors = try chain(from: committed.map.parent)
            var state = Volume.State(record: record, top: committed.map, ancestors: ancestors,
                                     logLength: committed.logLength, mapBytes: committed.mapBytes)
            state.unsettled = committed.pendingIntents
            let v = Volume(store: self, name: name, mode: effectiveMode, owner: lockOwner, state: state,
                           keeper: keeper, tookOver: tookOver)
            keeper?.start()
            return v
        } catch {
                // The open failed; that error is the one to report.
            if let lockOwner {
                if keeper != nil {
                    _ = try? releaseHold(name, owner: lockOwner)
                } else {
                    _ = try? objects.giveBackLock(StoreLayout.lock(name), owner: lockOwner)
                }
            }
            throw error
        }
    }

    /// After a crash: blocks with a logged intent were being written in place,
    /// so their checksums are re-taken from what the objects now hold (writes
    /// that were never flushed may or may not be there, as on a disk), and the
    /// map is rewritten without the log.
    private func recover(_ layer: LayerID, _ c: Committed) throws -> Committed {
        var map = c.map
        var updates: [UInt32: BlockEntry?] = [:]
        var drop: [ObjectName] = []
        var buffer = [UInt8](repeating: 0, count: Int(map.blockSize))
        for b in c.pendingIntents {
            guard case .owned? = map.entry(b) else { continue }
            let obj = StoreLayout.owned(layer, b)
            let n = try buffer.withUnsafeMutableBytes { buf -> Int in
                let n = try objects.read(obj, at: 0, into: buf)
                UnsafeMutableRawBufferPointer(rebasing: buf[n...]).initializeMemory(as: UInt8.self, repeating: 0)
                return n
            }
            let h = SHA256.blockHash(buffer)
            if h == ContentHash.ofEmpty {
                updates[b] = .some(UInt64(b) < map.parentBlocks ? .zero : nil)
                drop.append(obj)
            } else {
                updates[b] = .some(.owned(h))
                // The writes were cut short: the checksums follow what the object holds.
                if n < buffer.count {
                    try buffer.withUnsafeBytes { try objects.write(obj, at: UInt64(n), UnsafeRawBufferPointer(rebasing: $0[n...])) }
                }
                let table = buffer.withUnsafeBytes { BlockChecks.table($0) }
                try table.withUnsafeBytes { try objects.write(obj, at: UInt64(map.blockSize), $0) }
                try objects.syncContents(obj)
            }
        }
        map.apply(updates)
        map.generation += 1
        let bytes = MapFormatV1.encode(map)
        try objects.put(StoreLayout.map(layer), bytes, durable: true)
        try objects.remove(StoreLayout.log(layer))
        for obj in drop { try objects.remove(obj) }
        return Committed(map: map, logLength: 0, mapBytes: bytes.count, pendingIntents: [], tornLog: false)
    }

    /// Opens, runs `body`, and always closes (flush + unlock).
    public func withVolume<R>(_ name: VolumeName, mode: OpenMode = .exclusive, owner: LockOwner? = nil,
                              _ body: (Volume) throws -> R) throws -> R {
        let v = try open(name, mode: mode, owner: owner)
        let result: R
        do {
            result = try body(v)
        } catch {
            // `body`'s error is the one to report; close failing too changes nothing for the caller.
            _ = try? v.close()
            throw error
        }
        try v.close()
        return result
    }

    // MARK: snapshot, clone

    public func snapshot(_ volume: VolumeName, as snapshot: VolumeName, owner: LockOwner? = nil) throws {
        try withVolume(volume, owner: owner) { try $0.snapshot(snapshot) }
    }

    /// A new volume whose parent is `snapshot`: O(1), nothing is copied.
    public func clone(_ snapshot: VolumeName, as name: VolumeName, size: ByteCount? = nil,
                      metadata: [String: String] = [:]) throws {
        let rec = try record(snapshot)
        guard rec.kind == .snapshot else {
            throw StoreError(.wrongKind, "'\(snapshot)' is a volume; clone a snapshot (take one with 'archip snapshot \(snapshot) SNAP')")
        }
        let parent = try loadMap(rec.layer)
        var newSize = parent.size
        if let size {
            _ = try size.validatedVolumeSize()
            guard size.bytes >= parent.size else {
                throw StoreError(.invalidSize, "clone size \(size) is smaller than snapshot '\(snapshot)' (\(ByteCount(parent.size)))")
            }
            newSize = size.bytes
        }
        if try objects.exists(StoreLayout.record(name)) {
            throw StoreError(.alreadyExists, "'\(name)' already exists")
        }
        let map = LayerMap(id: LayerID.random(), parent: parent.id, kind: .clone, size: newSize,
                           blockSize: parent.blockSize, parentBlocks: parent.blockCount, epoch: parent.epoch + 1)
        try objects.put(StoreLayout.map(map.id), MapFormatV1.encode(map), durable: true)
        var meta = metadata
        meta["clone-of"] = snapshot.value
        let record = VolumeRecord(kind: .volume, layer: map.id, metadata: meta)
        guard try objects.create(StoreLayout.record(name), record.encode(), durable: true) else {
            try objects.removeAll(prefix: StoreLayout.layerPrefix(map.id))
            throw StoreError(.alreadyExists, "'\(name)' already exists")
        }
        noteIndexed(name, meta)
    }

    // MARK: names

    /// Every name in the store with its record, sorted.
    func allRecords() throws -> [(VolumeName, VolumeRecord)] {
        var names: [ObjectName] = []
        try objects.enumerate(prefix: StoreLayout.namesPrefix) { names.append($0); return true }
        return try records(listed: names)
    }

    /// The records of listed `names/...` objects, sorted; names gone since are left out.
    func records(listed: [ObjectName]) throws -> [(VolumeName, VolumeRecord)] {
        let names = listed.compactMap { try? VolumeName($0.lastComponent) }
        return try names.sorted().compactMap { n in
            do { return (n, try record(n)) } catch let e as StoreError where e.code == .notFound { return nil }
        }
    }

    /// A name whose record or maps cannot be read, and why.
    public struct DamagedName: Codable, Sendable, CustomStringConvertible {
        public var name: String
        public var error: String
        public var description: String { "\(name): \(error)" }
    }

    /// As `records(listed:)`, but a record that cannot be read is reported
    /// instead of failing the whole listing.
    func recordsTolerant(listed: [ObjectName]) -> ([(VolumeName, VolumeRecord)], [DamagedName]) {
        var good: [(VolumeName, VolumeRecord)] = []
        var damaged: [DamagedName] = []
        for n in listed.compactMap({ try? VolumeName($0.lastComponent) }).sorted() {
            do { good.append((n, try record(n))) } catch let e as StoreError where e.code == .notFound {
                continue   // removed since the listing
            } catch {
                damaged.append(DamagedName(name: n.value, error: "\(error)"))
            }
        }
        return (good, damaged)
    }

    /// Layers reachable from any name, as far as their maps can be read;
    /// the names whose chain stops at a map that cannot, and that map's layer.
    func liveLayersTolerant(_ records: [(VolumeName, VolumeRecord)]) -> ([LayerID: LayerMap], [DamagedName], Set<LayerID>) {
        var live: [LayerID: LayerMap] = [:]
        var damaged: [DamagedName] = []
        var unreadable = Set<LayerID>()
        for (name, rec) in records {
            var next = rec.layer
            while !next.isNone, live[next] == nil {
                if unreadable.contains(next) {
                    damaged.append(DamagedName(name: name.value, error: "its chain reaches layer \(next.hex), whose map cannot be read"))
                    break
                }
                do {
                    let m = try loadCommitted(next).map
                    live[next] = m
                    next = m.parent
                } catch {
                    damaged.append(DamagedName(name: name.value, error: "\(error)"))
                    unreadable.insert(next)
                    break
                }
            }
        }
        return (live, damaged, unreadable)
    }

    /// Layers reachable from any name.
    func liveLayers(_ records: [(VolumeName, VolumeRecord)]) throws -> [LayerID: LayerMap] {
        var live: [LayerID: LayerMap] = [:]
        for (_, rec) in records {
            var next = rec.layer
            while !next.isNone, live[next] == nil {
                let m = try loadCommitted(next).map
                live[next] = m
                next = m.parent
            }
        }
        return live
    }

    public func rename(_ from: VolumeName, to: VolumeName, owner: LockOwner? = nil) throws {
        _ = try record(from)
        if try objects.exists(StoreLayout.record(to)) {
            throw StoreError(.alreadyExists, "'\(to)' already exists")
        }
        try holdingLock(from, owner: owner) {
            try objects.rename(StoreLayout.record(from), to: StoreLayout.record(to))
            // The last scrub result goes with the name's record.
            moveVerification(of: from, to: to)
        }
    }

    /// Removes a volume (not while anyone holds it) or a snapshot (not while
    /// clones depend on it), and every layer nothing else needs.
    public func remove(_ name: VolumeName, owner: LockOwner? = nil) throws {
        let rec = try record(name)
        let records = try allRecords()
        if rec.kind == .snapshot {
            var clones: [String] = []
            for (other, r) in records where r.kind == .volume || r.kind == .snapshot {
                var next = r.layer
                while !next.isNone {
                    let m = try loadMap(next)
                    if m.parent == rec.layer && m.kind == .clone { clones.append(other.value); break }
                    next = m.parent
                }
            }
            if !clones.isEmpty {
                throw StoreError(.hasChildren, "snapshot '\(name)' has clones (\(clones.joined(separator: ", "))); remove or flatten them first")
            }
        }
        let drop = {
            try self.objects.remove(StoreLayout.record(name))
            if rec.kind == .volume { self.forgetIndexed(name, rec.metadata) }
            // Its last scrub result names a volume that is gone (and a new one
            // made in the same second would pass for it: `createdAt` is seconds).
            self.moveVerification(of: name, to: nil)
            try self.removeUnreferencedLayers(startingAt: rec.layer, remaining: records.filter { $0.0 != name })
        }
        if rec.kind == .volume {
            try holdingLock(name, owner: owner, drop)
        } else {
            try drop()
        }
    }

    /// Deletes `layer` and its ancestors up to the first one still in use.
    func removeUnreferencedLayers(startingAt layer: LayerID, remaining: [(VolumeName, VolumeRecord)]) throws {
        let live = try liveLayers(remaining)
        var next = layer
        var dead: [String] = []
        while !next.isNone, live[next] == nil {
            dead.append(StoreLayout.layerPrefix(next))
            next = (try? loadMap(next).parent) ?? .none
        }
        // Together: one listing pass on backends that list whole (rados).
        try objects.removeAll(prefixes: dead)
    }

    // MARK: metadata, locks

    /// Runs `body` holding `name`'s lock. If `body` fails, its error is the
    /// one reported (a failed release then only leaves a lock an operator can
    /// break); if it succeeds, a failed release is reported.
    /// `owner` nil: one made for this hold (see `takeFreshLock`).
    func holdingLock<R>(_ name: VolumeName, owner given: LockOwner?, _ body: () throws -> R) throws -> R {
        let owner = given ?? LockOwner.forThisProcess(node: node)
        if given == nil {
            try objects.takeFreshLock(StoreLayout.lock(name), owner: owner, mode: .exclusive)
        } else {
            try objects.acquireLock(StoreLayout.lock(name), owner: owner, mode: .exclusive)
        }
        let result: R
        do {
            result = try body()
        } catch {
            _ = try? objects.giveBackLock(StoreLayout.lock(name), owner: owner)
            throw error
        }
        try objects.giveBackLock(StoreLayout.lock(name), owner: owner)
        return result
    }

    public func setMetadata(_ name: VolumeName, _ values: [String: String], replace: Bool = false) throws {
        let lockName = StoreLayout.lock(name)
        let o = LockOwner.forThisProcess(node: node)
        // Short hold on the name so two writers of metadata do not lose updates;
        // if a node holds the volume open, its record's layer can still move, so
        // re-read right before writing.
        // Serialise with other metadata writers when nobody holds the volume;
        // when a node holds it open (Ganeti's setinfo comes after open), write
        // anyway: that holder re-reads the record before it rewrites it.
        let held = (try? objects.takeFreshLock(lockName, owner: o, mode: .exclusive)) != nil
        defer { if held { _ = try? objects.giveBackLock(lockName, owner: o) } }
        var rec = try record(name)
        if replace { rec.metadata = values } else { rec.metadata.merge(values) { $1 } }
        let size = rec.metadata.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
        guard size <= VolumeRecord.maximumMetadataBytes else {
            throw StoreError(.invalidArgument, "metadata of '\(name)' would be \(size) bytes; the limit is \(VolumeRecord.maximumMetadataBytes)")
        }
        try objects.put(StoreLayout.record(name), rec.encode(), durable: true)
    }

    public func lock(_ name: VolumeName, owner: LockOwner, mode: LockMode) throws {
        let rec = try record(name)
        guard rec.kind == .volume || mode == .shared else {
            throw StoreError(.wrongKind, "'\(name)' is a snapshot; snapshots are read-only and need no exclusive lock")
        }
        try objects.acquireLock(StoreLayout.lock(name), owner: owner, mode: mode)
    }

    @discardableResult
    public func unlock(_ name: VolumeName, owner: LockOwner, force: Bool) throws -> Bool {
        if force { return try objects.releaseLock(StoreLayout.lock(name), owner: owner, force: true) }
        return try releaseHolds(name, owner: owner)
    }

    public func lockState(_ name: VolumeName) throws -> LockState? {
        try objects.lockState(StoreLayout.lock(name))
    }
}
