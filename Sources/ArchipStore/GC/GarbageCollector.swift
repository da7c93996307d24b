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
}

extension VolumeStore {
    /// Removes objects that no map references: layers no name reaches, owned
    /// blocks a live layer no longer lists, content blocks nothing lists, and
    /// leftovers of interrupted writes. Never touches the hot path.
    ///
    /// Objects younger than `grace` are spared: a clone or fill in progress
    /// writes objects before the name or map that references them.
    public func gc(apply: Bool, grace: TimeInterval = 600) throws -> GCReport {
        var report = GCReport(applied: apply, graceSeconds: grace)
        let cutoff = Date().addingTimeInterval(-grace)
        let records = try allRecords()
        let live = try liveLayers(records)

        // Top layers of volumes someone holds: their owned objects may be
        // writes not flushed yet, so they are not "unreferenced".
        var busy = Set<LayerID>()
        for (name, rec) in records where rec.kind == .volume {
            if let st = try lockState(name), !st.holders.isEmpty { busy.insert(rec.layer) }
        }
        report.busyLayers = busy.map(\.hex).sorted()

        // Blocks of interrupted or running fills are kept for their resume.
        var referenced = try FillStage.checkpointedHashes(self)
        for m in live.values {
            m.forEachEntry { _, e in if case .content(let h) = e { referenced.insert(h) } }
        }

        func old(_ obj: ObjectName) throws -> (Bool, UInt64) {
            guard let st = try objects.stat(obj) else { return (false, 0) }
            return (st.modified < cutoff, st.size)
        }

        // Layers.
        var layerIDs = Set<String>()
        try objects.enumerate(prefix: StoreLayout.layersPrefix) { obj in
            let parts = obj.path.split(separator: "/")
            if parts.count >= 3 { layerIDs.insert(String(parts[1])) }
            return true
        }
        for hex in layerIDs.sorted() {
            guard let id = LayerID(hex: hex) else { continue }
            let prefix = StoreLayout.layerPrefix(id)
            if let map = live[id] {
                if busy.contains(id) { continue }
                var stale: [(ObjectName, UInt64)] = []
                try objects.enumerate(prefix: prefix) { obj in
                    let last = obj.lastComponent
                    if let b = StoreLayout.ownedIndex(last) {
                        if case .owned? = map.entry(b) { return true }
                        let (isOld, size) = try old(obj)
                        if isOld { stale.append((obj, size)); report.orphanOwnedBlocks += 1 }
                    }
                    return true
                }
                for (obj, size) in stale {
                    report.bytes += size
                    if apply { try objects.remove(obj) }
                }
            } else {
                // Dead layer: nothing reaches it. Young ones may be a clone or
                // snapshot being made right now.
                let (isOld, _) = try old(StoreLayout.map(id))
                let hasMap = try objects.exists(StoreLayout.map(id))
                if hasMap && !isOld { continue }
                var bytes: UInt64 = 0
                var youngest = Date.distantPast
                try objects.enumerate(prefix: prefix) { obj in
                    if let st = try objects.stat(obj) {
                        bytes += st.size
                        youngest = max(youngest, st.modified)
                    }
                    return true
                }
                if youngest >= cutoff { continue }
                report.deadLayers.append(hex)
                report.bytes += bytes
                if apply { try objects.removeAll(prefix: prefix) }
            }
        }

        // Content blocks.
        var unreferenced: [(ObjectName, UInt64)] = []
        try objects.enumerate(prefix: StoreLayout.blocksPrefix) { obj in
            guard let h = ContentHash(hex: obj.lastComponent), !referenced.contains(h) else { return true }
            let (isOld, size) = try old(obj)
            if isOld { unreferenced.append((obj, size)) }
            return true
        }
        report.unreferencedContentBlocks = unreferenced.count
        for (obj, size) in unreferenced {
            report.bytes += size
            if apply { try objects.remove(obj) }
        }

        if apply {
            report.temporaries = try objects.removeStaleTemporaries(olderThan: cutoff)
        }
        return report
    }
}
