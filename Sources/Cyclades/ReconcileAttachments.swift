import ArchipStore
import Foundation
import GRDB

// What reconcile-servers knows of detachable volumes. Ganeti's RAPI lists no
// disks apart from instances, so a detached disk is seen through what holds
// it: a server of the database, the helper server, or the store (a detach
// keeps the provider's volume; a remove takes it away).
extension Registry {
    /// Store volumes by the Ganeti disk name they carry (`ganeti.cname`).
    func storeDiskNames(_ store: VolumeStore?) throws -> Set<String>? {
        guard let store else { return nil }
        return Set(try store.volumeMetadata(GanetiMetadata.cname).map(\.value))
    }

    /// An IN_USE volume its server no longer holds, whose store volume is still
    /// there: Ganeti detached it (`modify --disk N:detach` behind Cyclades' back).
    /// The fix records it AVAILABLE on the server's backend, its charge kept.
    func detachedBehindOurBack(_ v: Volume, _ s: Server, fix: Bool) throws -> Difference {
        var d = Difference(kind: .detachedInGaneti, server: s.id, volume: v.id,
                           detail: "\(v.diskName) is not a disk of \(s.instanceName) but the store still holds it: detached in Ganeti", fixed: nil)
        guard fix else { return d }
        try db.write { db in
            guard var v = try Volume.fetchOne(db, key: v.id!), v.status == .inUse, v.machineID == s.id else { return }
            if let gone = v.index {
                try db.execute(sql: "UPDATE volumes SET \"index\" = \"index\" - 1 WHERE machineID = ? AND deleted = 0 AND id != ? AND \"index\" > ?",
                               arguments: [s.id!, v.id!, gone])
            }
            v.machineID = nil; v.index = nil; v.status = .available; v.backendID = s.backendID; v.updated = now()
            try v.update(db)
        }
        d.fixed = "recorded AVAILABLE (no server), its size still charged"
        return d
    }

    /// A disk of a server's instance that is an AVAILABLE (or ATTACHING to that
    /// server) volume of the server's user: attached in Ganeti. The fix records it there.
    func attachedBehindOurBack(_ v: Volume, _ s: Server, index: Int, fix: Bool) throws -> Difference {
        var d = Difference(kind: .attachedInGaneti, server: s.id, volume: v.id,
                           detail: "\(v.diskName) (volume \(v.status.rawValue)) is disk \(index) of \(s.instanceName) in Ganeti", fixed: nil)
        guard fix, v.userid == s.userid else { return d }
        try db.write { db in
            guard var v = try Volume.fetchOne(db, key: v.id!), v.machineID == nil, v.status == .available || v.status == .attaching else { return }
            v.machineID = s.id; v.index = index; v.status = .inUse; v.pendingServerID = nil; v.backendID = nil; v.updated = now()
            try v.update(db)
        }
        d.fixed = "recorded IN_USE on server \(s.id!) at index \(index)"
        return d
    }

    /// The helper server of every backend holds no disk once its changes are
    /// done: one left there is a create or delete whose second job failed or
    /// was never sent. The fix sends that job again (detach, or remove for a
    /// volume being deleted).
    func compareHelpers(fix: Bool) throws -> [Difference] {
        var out: [Difference] = []
        for backend in try db.read({ db in try Backend.order(Column("id")).fetchAll(db) }) {
            guard let info = try backendClient(backend).instanceDisks(Self.helperInstance) else { continue }
            for disk in info.disks where disk.name != "\(Self.helperInstance)-root" {   // its own disk
                let id = disk.name.flatMap(Volume.id(fromDiskName:))
                let v = try id.flatMap { id in try db.read { db in try Volume.fetchOne(db, key: id) } }
                if let v, v.backendJobID != nil, v.helperStep != nil { continue }   // a step in flight
                var d = Difference(kind: .helperDisk, server: nil, volume: id,
                                   detail: "\(disk.name ?? "a disk without a name") is on the helper server \(Self.helperInstance) of \(backend.name) (volume \(v.map { $0.deleted ? "deleted" : $0.status.rawValue } ?? "unknown to the database"))",
                                   fixed: nil)
                if fix, let v, !v.deleted, v.machineID == nil {
                    let step: HelperStep = (v.status == .errorDeleting || v.status == .deleting) ? .deleteRemove : .createDetach
                    try db.write { db in
                        guard var v = try Volume.fetchOne(db, key: v.id!) else { return }
                        if step == .deleteRemove && v.status == .errorDeleting {
                            _ = try charge(db, project: v.project, delta: -v.sizeBytes, serverID: nil, volumeIDs: [v.id!])
                        }
                        v.status = step == .deleteRemove ? .deleting : .creating
                        v.helperStep = step; v.backendJobID = nil; v.backendID = backend.id; v.updated = now()
                        try v.update(db)
                    }
                    try sendFollowUps()
                    d.fixed = step == .deleteRemove ? "removal from the helper sent again" : "detach from the helper sent again"
                }
                out.append(d)
            }
        }
        return out
    }

    /// ATTACHING / DETACHING volumes whose job was never recorded (a crash
    /// between the record and the job): Ganeti's disks decide what happened.
    func strandedAttachments(fix: Bool) throws -> [Difference] {
        let stuck = try db.read { db in
            try Volume.filter([VolumeStatus.attaching.rawValue, VolumeStatus.detaching.rawValue].contains(Column("status")) && Column("backendJobID") == nil).fetchAll(db)
                .filter { $0.helperStep != .attachAfterBuild }   // waiting for its server to be built
        }
        var out: [Difference] = []
        for v in stuck {
            let attaching = v.status == .attaching
            guard let sid = attaching ? v.pendingServerID : v.machineID,
                  let (s, backend) = try db.read({ db -> (Server, Backend)? in
                      guard let s = try Server.fetchOne(db, key: sid) else { return nil }
                      return (s, try backendOf(db, s))
                  }) else { continue }
            let holds = try backendClient(backend).instanceDisks(s.instanceName)?.disks.contains { $0.name == v.diskName } ?? false
            var d = Difference(kind: .stuckCommission, server: sid, volume: v.id,
                               detail: "\(attaching ? "attach" : "detach") of \(v.diskName) was recorded but its job was never sent; \(s.instanceName) \(holds ? "holds" : "does not hold") the disk",
                               fixed: nil)
            if fix {
                let ok = attaching ? holds : !holds
                try db.write { db in try settleAttachment(db, change: attaching ? .volumeAttach : .volumeDetach, volumeID: v.id!, jobID: nil, result: ok ? .success : .failed("no job")) }
                d.fixed = ok ? "settled as done" : "settled as not done"
            }
            out.append(d)
        }
        return out
    }
}
