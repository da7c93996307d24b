import Foundation

/// What `archip gc` found (and, with `apply`, removed).
public struct GCReport: Codable, Sendable {
    public var applied: Bool
    public var graceSeconds: Double
    public var deadLayers: [String] = []
    public var orphanOwnedBlocks = 0
    public var unreferencedContentBlocks = 0
    public var staleLogs = 0
    public var temporaries = 0
    public var bytes: UInt64 = 0
    /// Layers skipped because a node holds their volume open.
    public var busyLayers: [String] = []
    /// Names (or fill checkpoints) whose record or maps could not be read.
    /// A damaged map may reference any layer or content block, so while
    /// there are any, no dead layer and no content block is removed (only
    /// owned blocks of readable maps and leftovers of interrupted writes):
    /// never delete data on partial knowledge.
    public var damaged: [String] = []
    /// True when `damaged` held removals back.
    public var withheld: Bool { !damaged.isEmpty }
    /// Checkpoints of fills that are not running and older than the fill
    /// grace: dropped (with `apply`), their blocks then garbage like any other.
    public var reclaimedFills: [String] = []
    /// Checkpoints of interrupted fills younger than the fill grace: kept
    /// (with their blocks) for `fill NAME --resume` or `--abort`.
    public var interruptedFills: [String] = []
    /// Bytes of content blocks the kept interrupted fills stored.
    public var interruptedFillBytes: UInt64 = 0
}

extension VolumeStore {
    /// Removes objects that no map references: layers no name reaches, owned
    /// blocks a live layer no longer lists, content blocks nothing lists, and
    /// leftovers of interrupted writes. Never touches the hot path.
    ///
    /// Objects younger than `grace` are spared: a clone or fill in progress
    /// writes objects before the name or map that references them.
    ///
    /// A fill's checkpoint keeps its blocks while the fill runs (it holds its
    /// fill lock) and, once interrupted, for `fillGrace` after its last
    /// checkpoint (for a `--resume`); after that it is dropped and its blocks
    /// are garbage. A running fill is never touched.
    public func gc(apply: Bool, grace: TimeInterval = 600, fillGrace: TimeInterval = 86_400) throws -> GCReport {
        var report = GCReport(applied: apply, graceSeconds: grace)
        let cutoff = Date().addingTimeInterval(-grace)
        let fillCutoff = Date().addingTimeInterval(-fillGrace)

        // Listing costs a pass over the whole store on some backends (RADOS
        // lists a pool only whole), so gc lists twice, whatever the number of
        // layers: the roots (names, fill checkpoints), then every layer object
        // and content block together; a third pass removes dead layers.
        var nameObjects: [ObjectName] = []
        var fillObjects: [ObjectName] = []
        try objects.enumerate(prefixes: [StoreLayout.namesPrefix, FillStage.fillsPrefix]) { obj in
            if obj.path.hasPrefix(StoreLayout.namesPrefix) { nameObjects.append(obj) } else { fillObjects.append(obj) }
            return true
        }
        let (records, damagedRecords) = recordsTolerant(listed: nameObjects)
        let (live, damagedChains, unreadable) = liveLayersTolerant(records)
        report.damaged = (damagedRecords + damagedChains).map(\.description)

        // Top layers of volumes someone holds: their owned objects may be
        // writes not flushed yet, so they are not "unreferenced".
        var busy = Set<LayerID>()
        for (name, rec) in records where rec.kind == .volume {
            if let st = try lockState(name), !st.holders.isEmpty { busy.insert(rec.layer) }
        }
        report.busyLayers = busy.map(\.hex).sorted()

        // Blocks of interrupted or running fills are kept for their resume.
        var referenced = Set<ContentHash>()
        for obj in fillObjects {
            do {
                let checkpoint = try FillStage.decode(try objects.readAll(obj), what: obj.path)
                if let target = try? VolumeName(obj.lastComponent),
                   try reclaimFill(target, checkpoint: obj, olderThan: fillCutoff, apply: apply) {
                    report.reclaimedFills.append(target.value)
                    continue
                }
                if let target = try? VolumeName(obj.lastComponent), try FillStage.runningHolder(store: self, target: target) == nil {
                    report.interruptedFills.append(target.value)
                    report.interruptedFillBytes += UInt64(checkpoint.done.values.filter { $0 != ContentHash.ofEmpty }.count) * UInt64(checkpoint.blockSize)
                }
                referenced.formUnion(checkpoint.done.values)
            } catch let e as StoreError where e.code == .notFound {
                continue   // finished or dropped since the listing
            } catch {
                report.damaged.append("fill checkpoint \(obj): \(error)")
            }
        }
        let partial = !report.damaged.isEmpty
        for m in live.values {
            m.forEachEntry { _, e in if case .content(let h) = e { referenced.insert(h) } }
        }

        func old(_ obj: ObjectName) throws -> (Bool, UInt64) {
            guard let st = try objects.stat(obj) else { return (false, 0) }
            return (st.modified < cutoff, st.size)
        }

        // Layers nothing reaches: their size and their youngest object. Young
        // ones may be a clone or snapshot being made right now.
        struct Unreached { var bytes: UInt64 = 0; var youngest = Date.distantPast }
        var unreached: [String: Unreached] = [:]
        var staleOwned: [(ObjectName, UInt64)] = []
        var unreferenced: [(ObjectName, UInt64)] = []
        try objects.enumerate(prefixes: [StoreLayout.layersPrefix, StoreLayout.blocksPrefix]) { obj in
            if obj.path.hasPrefix(StoreLayout.blocksPrefix) {
                guard !partial, let h = ContentHash(hex: obj.lastComponent), !referenced.contains(h) else { return true }
                let (isOld, size) = try old(obj)
                if isOld { unreferenced.append((obj, size)) }
                return true
            }
            let parts = obj.path.split(separator: "/")
            guard parts.count >= 3, let id = LayerID(hex: String(parts[1])) else { return true }
            if let map = live[id] {
                // Owned blocks a live layer no longer lists.
                guard !busy.contains(id), let b = StoreLayout.ownedIndex(obj.lastComponent) else { return true }
                if case .owned? = map.entry(b) { return true }
                let (isOld, size) = try old(obj)
                if isOld { staleOwned.append((obj, size)) }
            } else if partial || unreadable.contains(id) {
                return true   // a damaged map may reach it
            } else if let st = try objects.stat(obj) {
                var u = unreached[id.hex] ?? Unreached()
                u.bytes += st.size
                u.youngest = max(u.youngest, st.modified)
                unreached[id.hex] = u
            }
            return true
        }

        let dead = unreached.filter { $0.value.youngest < cutoff }.keys.sorted()
        report.deadLayers = dead
        for hex in dead { report.bytes += unreached[hex]!.bytes }
        if apply, !dead.isEmpty {
            try objects.removeAll(prefixes: dead.compactMap { LayerID(hex: $0) }.map(StoreLayout.layerPrefix))
        }

        report.orphanOwnedBlocks = staleOwned.count
        report.unreferencedContentBlocks = unreferenced.count
        for (obj, size) in staleOwned + unreferenced {
            report.bytes += size
            if apply { try objects.remove(obj) }
        }

        if apply {
            report.temporaries = try objects.removeStaleTemporaries(olderThan: cutoff)
        }
        return report
    }

    /// Whether `target`'s fill checkpoint is abandoned: no fill runs it and
    /// it was last written before `cutoff`. With `apply` it is then dropped,
    /// under the fill's lock (a resume starting now waits or fails, and a
    /// fill that started since keeps it).
    private func reclaimFill(_ target: VolumeName, checkpoint: ObjectName, olderThan cutoff: Date, apply: Bool) throws -> Bool {
        guard try FillStage.runningHolder(store: self, target: target) == nil,
              let st = try objects.stat(checkpoint), st.modified < cutoff else { return false }
        guard apply else { return true }
        let owner: LockOwner
        do {
            owner = try FillStage.claim(store: self, target: target, doing: "reclaim its checkpoint").owner
        } catch let e as StoreError where e.code == .locked {
            return false   // a fill of it started meanwhile
        }
        defer { FillStage.release(store: self, target: target, owner: owner) }
        guard let again = try objects.stat(checkpoint), again.modified < cutoff else { return false }
        try objects.remove(checkpoint)
        return true
    }
}
