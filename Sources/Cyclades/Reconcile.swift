import ArchipStore
import Foundation
import GRDB

/// One difference between the database, Ganeti and the store.
public struct Difference: Codable, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Codable, Sendable {
        case serverMissingInGaneti = "server-missing-in-ganeti"
        case diskMissingInGaneti = "disk-missing-in-ganeti"
        case unknownGanetiDisk = "unknown-ganeti-disk"
        case sizeMismatch = "size-mismatch"
        case indexMismatch = "index-mismatch"
        case missingInStore = "missing-in-store"
        case orphanStoreVolume = "orphan-store-volume"
        case stuckCommission = "stuck-commission"
        case jobEnded = "job-ended"
        /// Detachable volumes (ReconcileAttachments.swift).
        case detachedInGaneti = "detached-in-ganeti"
        case attachedInGaneti = "attached-in-ganeti"
        case helperDisk = "disk-on-helper"
    }
    public var kind: Kind
    public var server: Int64?
    public var volume: Int64?
    public var detail: String
    /// What --fix did, if anything.
    public var fixed: String?

    public var description: String {
        var s = "\(kind.rawValue)"
        if let server { s += " server \(server)" }
        if let volume { s += " volume \(volume)" }
        s += ": \(detail)"
        if let fixed { s += " [fixed: \(fixed)]" }
        return s
    }
}

extension Registry {
    /// Compares the database with Ganeti (and the store, when given) and
    /// reports every difference; with `fix`, repairs what is safe: settles
    /// jobs that ended, marks disks Ganeti no longer has as deleted (giving
    /// the quota back), takes Ganeti's sizes and indexes, and resolves
    /// commissions stranded by a crash between charge and job.
    public func reconcile(store: VolumeStore?, fix: Bool) throws -> [Difference] {
        var out: [Difference] = []
        // 1. Jobs that ended: settle them (always safe; it is what the job said).
        if fix {
            for (job, state) in try processJobs() {
                let how: String
                switch state { case .success: how = "succeeded"; case .failed(let m): how = "failed: \(m)"; case .pending: how = "pending" }
                out.append(Difference(kind: .jobEnded, server: job.serverID, volume: job.volumeIDs.first,
                                      detail: "job \(job.jobID) (\(job.what)) \(how)", fixed: "settled"))
            }
        } else {
            for (job, backend) in try pendingJobs() {
                let state = try backendClient(backend).job(job.jobID)
                if state != .pending {
                    out.append(Difference(kind: .jobEnded, server: job.serverID, volume: job.volumeIDs.first,
                                          detail: "job \(job.jobID) (\(job.what)) ended but is not recorded", fixed: nil))
                }
            }
        }
        // 2. Servers against Ganeti.
        let inStore = try storeDiskNames(store)
        let servers = try db.read { db in try Server.filter(Column("deleted") == false).order(Column("id")).fetchAll(db) }
        var ganetiDisks: [Int64: InstanceDisks] = [:]
        for s in servers {
            let backend = try db.read { db in try backendOf(db, s) }
            let info = try backendClient(backend).instanceDisks(s.instanceName)
            if s.pendingAction == Self.detachThenRemove { continue }   // its detaches are jobs of their own
            if s.backendJobID == nil && s.pendingAction != nil {
                // Charged and recorded, but the job was never recorded as sent (a crash in between).
                out.append(try strandedServer(s, ganeti: info, fix: fix))
                continue
            }
            if s.pendingAction != nil { continue }   // a job is in flight: its result will say
            guard let info else {
                var d = Difference(kind: .serverMissingInGaneti, server: s.id, volume: nil,
                                   detail: "\(s.instanceName) is not in Ganeti (\(backend.name))", fixed: nil)
                if fix {
                    try db.write { db in try settle(db, change: .serverRemove, serverID: s.id, volumeIDs: [], jobID: nil, result: .success) }
                    d.fixed = "server and its volumes marked deleted"
                }
                out.append(d)
                continue
            }
            ganetiDisks[s.id!] = info
            out += try compareDisks(s, info, fix: fix, inStore: inStore)
        }
        // 3. Stranded volume commissions (volume create/remove whose job was never recorded).
        out += try strandedVolumes(ganetiDisks, fix: fix)
        // Attach and detach whose job was never recorded; disks left on a helper server.
        out += try strandedAttachments(fix: fix)
        out += try compareHelpers(fix: fix)
        // 4. Commissions left pending by a job that was settled without them.
        out += try orphanedCommissions(fix: fix)
        // 5. The store.
        if let store { out += try compareStore(store) }
        return out
    }

    private func compareDisks(_ s: Server, _ info: InstanceDisks, fix: Bool, inStore: Set<String>? = nil) throws -> [Difference] {
        var out: [Difference] = []
        let vols = try db.read { db in try liveVolumes(db, server: s.id!) }
        let byName = Dictionary(info.disks.compactMap { d in d.name.map { ($0, d) } }, uniquingKeysWith: { a, _ in a })
        for v in vols where v.status == .inUse || v.status == .error {
            guard let d = byName[v.diskName] else {
                if v.status == .error { continue }   // a failed create: Ganeti never had it
                if inStore?.contains(v.diskName) == true {   // detached, not removed: the store keeps it
                    out.append(try detachedBehindOurBack(v, s, fix: fix))
                    continue
                }
                var diff = Difference(kind: .diskMissingInGaneti, server: s.id, volume: v.id,
                                      detail: "\(v.diskName) (\(v.size) GB) is not a disk of \(s.instanceName)", fixed: nil)
                if fix {
                    try db.write { db in
                        guard var v = try Volume.fetchOne(db, key: v.id!) else { return }
                        v.status = .deleted; v.deleted = true; v.machineID = nil; v.updated = now()
                        try v.update(db)
                        var c = try charge(db, project: v.project, delta: -v.sizeBytes, serverID: s.id, volumeIDs: [v.id!])
                        try resolveCommissions(db, where: Column("id") == c.id!, accept: true)
                        c.state = .accepted
                    }
                    diff.fixed = "volume marked deleted, \(v.sizeBytes) bytes of quota given back"
                }
                out.append(diff)
                continue
            }
            if d.sizeMiB != v.size * 1024 {
                var diff = Difference(kind: .sizeMismatch, server: s.id, volume: v.id,
                                      detail: "\(v.diskName): Ganeti \(d.sizeMiB) MiB, database \(v.size) GB", fixed: nil)
                if fix && d.sizeMiB % 1024 == 0 {
                    try db.write { db in
                        guard var v = try Volume.fetchOne(db, key: v.id!) else { return }
                        let delta = (Int64(d.sizeMiB) << 20) - v.sizeBytes
                        v.size = d.sizeMiB / 1024; v.updated = now()
                        try v.update(db)
                        let c = try charge(db, project: v.project, delta: min(delta, 0), serverID: s.id, volumeIDs: [v.id!])
                        try resolveCommissions(db, where: Column("id") == c.id!, accept: true)
                        if delta > 0 {   // what Ganeti holds is charged, limit or not: it exists
                            try db.execute(sql: "UPDATE projects SET diskUsage = diskUsage + ? WHERE id = ?", arguments: [delta, v.project])
                        }
                    }
                    diff.fixed = "database size set to \(d.sizeMiB / 1024) GB"
                }
                out.append(diff)
            }
            if v.status == .inUse, let idx = v.index, idx != d.index {
                var diff = Difference(kind: .indexMismatch, server: s.id, volume: v.id,
                                      detail: "\(v.diskName): Ganeti index \(d.index), database \(idx)", fixed: nil)
                if fix {
                    try db.write { db in try db.execute(sql: "UPDATE volumes SET \"index\" = ? WHERE id = ?", arguments: [d.index, v.id!]) }
                    diff.fixed = "database index set to \(d.index)"
                }
                out.append(diff)
            }
        }
        let known = Set(vols.filter { $0.status != .error }.map(\.diskName))
        for d in info.disks where !(d.name.map(known.contains) ?? false) {
            if let vid = d.name.flatMap(Volume.id(fromDiskName:)), let av = try db.read({ db in try Volume.fetchOne(db, key: vid) }),
               !av.deleted, av.machineID == nil, av.status == .available || av.status == .attaching {
                if av.status == .attaching && av.backendJobID != nil { continue }   // its job will say
                out.append(try attachedBehindOurBack(av, s, index: d.index, fix: fix))
                continue
            }
            out.append(Difference(kind: .unknownGanetiDisk, server: s.id, volume: d.name.flatMap(Volume.id(fromDiskName:)),
                                  detail: "disk \(d.index) of \(s.instanceName) (\(d.name ?? "no name"), \(d.sizeMiB) MiB) is not a live volume of server \(s.id!)",
                                  fixed: nil))
        }
        return out
    }

    private func strandedServer(_ s: Server, ganeti: InstanceDisks?, fix: Bool) throws -> Difference {
        let exists = ganeti != nil
        var d = Difference(kind: .stuckCommission, server: s.id, volume: nil,
                           detail: "\(s.pendingAction!) of \(s.instanceName) was charged but its job was never recorded; Ganeti \(exists ? "has" : "does not have") the instance",
                           fixed: nil)
        guard fix else { return d }
        // Ganeti's state decides: the job either ran (the instance exists / is gone) or never did.
        let change: Change = s.pendingAction == "remove" ? .serverRemove : .serverCreate
        let ok = change == .serverCreate ? exists : !exists
        try db.write { db in try settle(db, change: change, serverID: s.id, volumeIDs: [], jobID: nil, result: ok ? .success : .failed("no job")) }
        d.fixed = ok ? "settled as done" : "settled as failed, charge rejected"
        return d
    }

    private func strandedVolumes(_ ganeti: [Int64: InstanceDisks], fix: Bool) throws -> [Difference] {
        let stuck = try db.read { db in
            try Volume.filter([VolumeStatus.creating.rawValue, VolumeStatus.deleting.rawValue].contains(Column("status"))
                              && Column("backendJobID") == nil && Column("machineID") != nil).fetchAll(db)
        }
        var out: [Difference] = []
        for v in stuck {
            guard let sid = v.machineID, let info = ganeti[sid] else { continue }
            let has = info.disks.contains { $0.name == v.diskName }
            let creating = v.status == .creating
            var d = Difference(kind: .stuckCommission, server: sid, volume: v.id,
                               detail: "\(creating ? "create" : "remove") of \(v.diskName) was charged but its job was never recorded; Ganeti \(has ? "has" : "does not have") the disk",
                               fixed: nil)
            if fix {
                let ok = creating ? has : !has
                try db.write { db in try settle(db, change: creating ? .volumeCreate : .volumeRemove, serverID: nil, volumeIDs: [v.id!], jobID: nil, result: ok ? .success : .failed("no job")) }
                d.fixed = ok ? "settled as done" : "settled as failed, charge rejected"
            }
            out.append(d)
        }
        return out
    }

    /// A commission is resolved in the transaction that settles its job, so one
    /// still pending whose server and volumes have no job in flight was missed:
    /// before 80d3e4c, a server remove could be settled by the server's previous
    /// job and its refund then stayed pending for ever. Decided by what the
    /// records say happened: a refund is accepted if its volumes are all
    /// deleted (rejected if all are still in use), a charge accepted if its
    /// volumes were all created (rejected if all failed); anything mixed is
    /// only reported.
    private func orphanedCommissions(fix: Bool) throws -> [Difference] {
        struct Orphan { var commission: Commission; var accept: Bool? }
        let busy: Set<String> = [VolumeStatus.creating.rawValue, VolumeStatus.deleting.rawValue, VolumeStatus.extending.rawValue]
        func decide(_ db: GRDB.Database, _ c: Commission) throws -> Orphan? {
            if let sid = c.serverID, let s = try Server.fetchOne(db, key: sid), s.pendingAction != nil { return nil }
            let ids = c.volumeIDs.split(separator: ",").compactMap { Int64($0) }
            let vols = try ids.compactMap { try Volume.fetchOne(db, key: $0) }
            if vols.contains(where: { busy.contains($0.status.rawValue) }) { return nil }
            guard !vols.isEmpty else { return Orphan(commission: c, accept: nil) }
            if c.delta < 0 {
                if vols.allSatisfy(\.deleted) { return Orphan(commission: c, accept: true) }
                if vols.allSatisfy({ $0.status == .inUse }) { return Orphan(commission: c, accept: false) }
            } else {
                if vols.allSatisfy({ $0.status == .error }) { return Orphan(commission: c, accept: false) }
                if vols.allSatisfy({ $0.status != .error }) { return Orphan(commission: c, accept: true) }
            }
            return Orphan(commission: c, accept: nil)
        }
        let orphans = try db.read { db in
            try Commission.filter(Column("state") == Commission.State.pending.rawValue && Column("backendJobID") != nil)
                .order(Column("id")).fetchAll(db).compactMap { try decide(db, $0) }
        }
        var out: [Difference] = []
        for o in orphans {
            let c = o.commission
            var d = Difference(kind: .stuckCommission, server: c.serverID, volume: nil,
                               detail: "commission \(c.id!) (\(c.delta) bytes, job \(c.backendJobID!), volumes \(c.volumeIDs.isEmpty ? "none" : c.volumeIDs)) is pending, but no job of its server or volumes is in flight",
                               fixed: nil)
            if fix, let accept = o.accept {
                try db.write { db in
                    // Decide again inside the write: the API may have moved on meanwhile.
                    guard let fresh = try Commission.fetchOne(db, key: c.id!), fresh.state == .pending,
                          let again = try decide(db, fresh), again.accept == accept else { return }
                    try resolveCommissions(db, where: Column("id") == c.id!, accept: accept)
                    d.fixed = accept ? "accepted (\(c.delta) bytes)" : "rejected"
                }
            }
            out.append(d)
        }
        return out
    }

    /// Store volumes carry the disk name Ganeti gave them (`ganeti.cname`).
    /// Read from the volumes' records only: a store with thousands of volumes
    /// costs one record read each, and a damaged map is `archip verify`'s
    /// business, not a reason for reconcile to fail.
    private func compareStore(_ store: VolumeStore) throws -> [Difference] {
        var out: [Difference] = []
        var inStore: [String: String] = [:]   // snf-vol-N -> store name
        for (name, c) in try store.volumeMetadata(GanetiMetadata.cname) where c.hasPrefix("snf-vol-") { inStore[c] = name.value }
        let held = [VolumeStatus.inUse, .available, .attaching, .detaching].map(\.rawValue)
        let vols = try db.read { db in try Volume.filter(Column("deleted") == false && held.contains(Column("status"))).fetchAll(db) }
        var live = Set<String>()
        for v in vols {
            live.insert(v.diskName)
            if inStore[v.diskName] == nil {
                out.append(Difference(kind: .missingInStore, server: v.machineID, volume: v.id,
                                      detail: "\(v.diskName) is \(v.status.rawValue) but no store volume records it (\(store.objects.location))", fixed: nil))
            }
        }
        for (cname, name) in inStore.sorted(by: { $0.key < $1.key }) where !live.contains(cname) {
            let id = Volume.id(fromDiskName: cname)
            let status = try id.flatMap { id in try db.read { db in try Volume.fetchOne(db, key: id)?.status } }
            if status == .creating || status == .deleting { continue }
            out.append(Difference(kind: .orphanStoreVolume, server: nil, volume: id,
                                  detail: "store volume \(name) records \(cname), which is \(status?.rawValue ?? "unknown to the database")", fixed: nil))
        }
        return out
    }
}
