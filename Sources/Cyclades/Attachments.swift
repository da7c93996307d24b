import Foundation
import GRDB

// Detachable volumes (Ganeti 3.1): a volume without a server is a disk in
// Ganeti's configuration that no instance holds. Attach and detach are one
// job each; Ganeti has no job that creates or deletes such a disk, so those go
// through the backend's helper server (a stopped diskless instance, as in
// Synnefo): create = add there, then detach; delete = attach there, then
// remove (the provider's remove takes it out of the store).

extension Registry {
    /// The instance that stands in for "no server" on every backend.
    public static let helperInstance = "snf-helper"
    /// Hypervisors whose Ganeti driver hot-plugs disks; with the others Ganeti
    /// removes (or, safely, detaches) a disk only from a stopped instance.
    public static let hotplugHypervisors: Set<String> = ["kvm"]
    /// Ganeti 3.0 refuses to attach ext disks; 3.1 fixed it (b6608d777).
    static let attachMinimumVersion = [3, 1]

    // MARK: rules

    func detachable(_ backend: Backend) throws -> any DetachableDisks {
        guard let d = backendClient(backend) as? any DetachableDisks else {
            throw CycladesError(.notImplemented, "backend \(backend.name) cannot attach or detach disks")
        }
        return d
    }

    /// Attach (and everything built on it) needs Ganeti 3.1: asked of RAPI /2/info.
    func requireAttach(_ backend: Backend) throws -> any DetachableDisks {
        let d = try detachable(backend)
        let version = try d.softwareVersion()
        guard GanetiVersion.atLeast(version, Self.attachMinimumVersion) else {
            throw CycladesError(.notImplemented, "backend \(backend.name) runs Ganeti \(version); attach, detach and volumes without a server need Ganeti 3.1 or later (3.0 refuses to attach ext disks)")
        }
        return d
    }

    /// Ganeti removes a disk from a running instance only with hotplug, and
    /// a detach without it pulls the disk from under the guest: refused here,
    /// in one line, before anything is recorded. Asks Ganeti whether it runs.
    func checkStoppedOrHotplug(_ s: Server, _ backend: Backend, doing what: String) throws {
        let hv = backend.hypervisor ?? "the cluster's default"
        if Self.hotplugHypervisors.contains(backend.hypervisor ?? "") { return }
        // An instance Ganeti does not know: its job will fail, and reconcile-servers tells.
        if let info = try backendClient(backend).instanceDisks(s.instanceName), info.running {
            throw CycladesError(.conflict, "cannot \(what) server \(s.id!) while it runs: its hypervisor (\(hv)) has no disk hotplug; stop the server first, or use a hypervisor with hotplug (kvm)")
        }
    }

    func volumeType(_ db: GRDB.Database, of s: Server) throws -> VolumeType {
        guard let flavor = try Flavor.fetchOne(db, key: s.flavorID), let type = try VolumeType.fetchOne(db, key: flavor.volumeTypeID) else {
            throw CycladesError(.backend, "server \(s.id!) has no flavor or volume type")
        }
        return type
    }

    func checkDetachableType(_ type: VolumeType, volume id: Int64) throws {
        guard type.isExternallyMirrored else {
            throw CycladesError(.badRequest, "volume \(id) is of type \(type.name) (\(type.diskTemplate)): only volumes of externally mirrored types (ext_archipelago) can be attached or detached")
        }
    }

    /// The user's live volume; another user's is as missing as one that never was.
    func ownedVolume(_ db: GRDB.Database, _ id: Int64, _ userRef: String?) throws -> Volume {
        guard let v = try Volume.fetchOne(db, key: id), !v.deleted else { throw CycladesError.notFound("volume", id) }
        if let userRef, v.userid != (try findUserIn(db, userRef).id) { throw CycladesError.notFound("volume", id) }
        return v
    }

    func ownedServerOr404(_ db: GRDB.Database, _ id: Int64, _ userRef: String?) throws -> Server {
        guard let s = try Server.fetchOne(db, key: id), !s.deleted else { throw CycladesError.notFound("server", id) }
        if let userRef, s.userid != (try findUserIn(db, userRef).id) { throw CycladesError.notFound("server", id) }
        return s
    }

    // MARK: attach

    /// Checks an attach of volume `id` to server `serverID`; returns what it needs.
    func attachPlan(_ db: GRDB.Database, volume id: Int64, server serverID: Int64, user userRef: String?) throws -> (Volume, Server, Backend) {
        let v = try ownedVolume(db, id, userRef)
        let s = try ownedServerOr404(db, serverID, userRef)
        guard v.userid == s.userid else { throw CycladesError.notFound("volume", id) }
        switch v.status {
        case .available: break
        case .inUse, .attaching:
            throw CycladesError(.badRequest, "volume \(id) is \(v.status == .inUse ? "in use" : "being attached") on server \(v.machineID ?? v.pendingServerID ?? 0); detach it first")
        default:
            throw CycladesError(.badRequest, "volume \(id) is \(v.status.rawValue); only AVAILABLE volumes can be attached")
        }
        let vtype = try VolumeType.fetchOne(db, key: v.volumeTypeID)
        let stype = try volumeType(db, of: s)
        guard let vtype, vtype.id == stype.id else {
            throw CycladesError(.badRequest, "volume \(id) is of type \(vtype?.name ?? "?"); server \(serverID)'s volumes are of type \(stype.name): a server's volumes share its flavor's type")
        }
        try checkDetachableType(vtype, volume: id)
        try checkServerAcceptsChanges(s)
        try checkNoJobInFlight(db, s)
        let live = try liveVolumes(db, server: serverID)
        guard live.count < maxDisks else { throw CycladesError(.badRequest, "server \(serverID) already has \(live.count) volumes; the limit is \(maxDisks)") }
        let backend = try backendOf(db, s)
        if let b = v.backendID, b != backend.id {
            throw CycladesError(.badRequest, "volume \(id) lives on backend \(b), server \(serverID) on backend \(backend.name); Ganeti attaches disks within one cluster only")
        }
        return (v, s, backend)
    }

    /// Attaches an AVAILABLE volume to a server of the same user and volume
    /// type (ATTACHING until Ganeti's job ends). Quota is unchanged: the disk
    /// was charged when it was created.
    public func attachVolume(_ id: Int64, server serverID: Int64, user userRef: String? = nil) throws -> Volume {
        let (_, server, backend) = try db.read { db in try attachPlan(db, volume: id, server: serverID, user: userRef) }
        let ganeti = try requireAttach(backend)
        let volume = try markVolume({ db in try attachPlan(db, volume: id, server: serverID, user: userRef) }) { v, s, _ in
            v.status = .attaching
            v.pendingServerID = s.id
        }
        try sendVolumeJob(volume.id!, change: .volumeAttach) { try ganeti.attachDisk(instance: server.instanceName, name: volume.diskName) }
        return try db.read { db in try Volume.fetchOne(db, key: id)! }
    }

    /// Plans again and marks the volume in one transaction: the plan read
    /// before Ganeti was asked may be stale by now (another request won).
    func markVolume(_ plan: (GRDB.Database) throws -> (Volume, Server, Backend),
                    _ change: (inout Volume, Server, Backend) -> Void) throws -> Volume {
        try db.write { db -> Volume in
            var (v, s, b) = try plan(db)
            change(&v, s, b)
            v.backendJobID = nil
            v.updated = now()
            try v.update(db)
            return v
        }
    }

    // MARK: detach

    func detachPlan(_ db: GRDB.Database, volume id: Int64, server serverID: Int64?, user userRef: String?) throws -> (Volume, Server, Backend) {
        let v = try ownedVolume(db, id, userRef)
        guard let sid = v.machineID, v.status == .inUse else {
            if v.status == .available { throw CycladesError(.badRequest, "volume \(id) is not attached to a server") }
            throw CycladesError(.badRequest, "volume \(id) is \(v.status.rawValue); only IN_USE volumes can be detached")
        }
        if let serverID, serverID != sid { throw CycladesError(.itemNotFound, "volume \(id) is not attached to server \(serverID)") }
        let s = try ownedServerOr404(db, sid, userRef)
        guard v.index != 0 else {
            throw CycladesError(.badRequest, "volume \(id) is the root volume of server \(sid); it cannot be detached (delete the server, or keep its root with delete_on_termination false)")
        }
        guard let type = try VolumeType.fetchOne(db, key: v.volumeTypeID) else { throw CycladesError(.backend, "volume \(id) has no volume type") }
        try checkDetachableType(type, volume: id)
        try checkServerAcceptsChanges(s)
        try checkNoJobInFlight(db, s)
        return (v, s, try backendOf(db, s))
    }

    /// Detaches a (non-root) volume from its server: DETACHING, then
    /// AVAILABLE with its data, its size still charged to its project.
    public func detachVolume(_ id: Int64, server serverID: Int64? = nil, user userRef: String? = nil) throws -> Volume {
        let (_, server, backend) = try db.read { db in try detachPlan(db, volume: id, server: serverID, user: userRef) }
        // Without the attach that follows, a detached disk could never come back (Ganeti 3.0).
        let ganeti = try requireAttach(backend)
        try checkStoppedOrHotplug(server, backend, doing: "detach volume \(id) from")
        let volume = try markVolume({ db in try detachPlan(db, volume: id, server: serverID, user: userRef) }) { v, _, b in
            v.status = .detaching
            v.backendID = b.id
        }
        try sendVolumeJob(volume.id!, change: .volumeDetach) { try ganeti.detachDisk(instance: server.instanceName, name: volume.diskName) }
        return try db.read { db in try Volume.fetchOne(db, key: id)! }
    }

    // MARK: volumes without a server

    /// The backend a volume without a server goes to: the first one not drained.
    func defaultBackend(_ db: GRDB.Database) throws -> Backend {
        guard let b = try Backend.filter(Column("drained") == false).order(Column("id")).fetchOne(db) else {
            throw CycladesError(.backend, "no backend accepts new volumes (all drained or none added)")
        }
        return b
    }

    /// The helper server of a backend: created the first time it is needed
    /// (stopped, outside the instance policy), waiting for its job. It holds
    /// a 4 MiB disk of the volume type's template: Ganeti 3.1 attaches an ext
    /// disk to a diskless instance but cannot add one to it ("Conversion from
    /// diskless instance not possible"), checked on the lab.
    func helperInstance(_ backend: Backend, type: VolumeType, timeout: TimeInterval = 300) throws -> String {
        let g = backendClient(backend)
        if try g.instanceDisks(Self.helperInstance) != nil { return Self.helperInstance }
        let root = DiskSpec(name: "\(Self.helperInstance)-root", sizeMiB: 4, provider: type.provider, origin: nil, originSize: nil)
        let spec = InstanceSpec(name: Self.helperInstance, diskTemplate: type.template, disks: [root], os: backend.os, node: backend.node,
                                hypervisor: backend.hypervisor, start: false, memoryMiB: 128, vcpus: 1, ignoreIPolicy: true)
        let job = try g.createInstance(spec)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            switch try g.job(job) {
            case .success: return Self.helperInstance
            case .failed(let m):
                throw CycladesError(.backend, "backend \(backend.name): creating the helper server \(Self.helperInstance) (job \(job)) failed: \(m)")
            case .pending:
                guard Date() < deadline else { throw CycladesError(.backend, "backend \(backend.name): the helper server's job \(job) did not end within \(Int(timeout)) s") }
                usleep(200_000)
            }
        }
    }

    /// A volume without a server (Synnefo 0.21: server_id optional): charged,
    /// CREATING until Ganeti has added it to the helper server and detached
    /// it there, then AVAILABLE.
    public func createAvailableVolume(user userRef: String, sizeGB: Int, source: String?, volumeType: String?,
                                      name: String?, description: String? = nil, metadata: [String: String] = [:]) throws -> Volume {
        let user = try findUser(userRef)
        try Self.checkMetadata(metadata)
        try checkSize(sizeGB)
        func plan(_ db: GRDB.Database) throws -> (VolumeType, Backend, ResolvedSource?) {
            let type: VolumeType
            if let volumeType {
                guard let t = try VolumeType.filter((Column("name") == volumeType || Column("id") == (Int64(volumeType) ?? -1)) && Column("deleted") == false).fetchOne(db) else {
                    throw CycladesError(.badRequest, "volume type \(volumeType) does not exist")
                }
                type = t
            } else {
                guard let t = try VolumeType.filter(Column("deleted") == false).fetchAll(db).first(where: { $0.isExternallyMirrored }) else {
                    throw CycladesError(.badRequest, "no volume type of an externally mirrored template (ext_archipelago) exists; a volume without a server needs one")
                }
                type = t
            }
            guard type.isExternallyMirrored else {
                throw CycladesError(.badRequest, "volume type \(type.name) (\(type.diskTemplate)) cannot hold a volume without a server: only externally mirrored types (ext_archipelago) can")
            }
            var src: ResolvedSource? = nil
            if let source {
                guard type.canClone else {
                    throw CycladesError(.badRequest, "a source needs a volume type whose provider clones (archipelago); \(type.name) is \(type.diskTemplate)")
                }
                src = try resolve(db, source: source, user: user)
                if src!.sizeBytes > Int64(sizeGB) << 30 {
                    throw CycladesError(.badRequest, "the source \(source) (\(src!.sizeBytes) bytes) is larger than \(sizeGB) GB")
                }
            }
            return (type, try defaultBackend(db), src)
        }
        let (type, backend, _) = try db.read { db in try plan(db) }
        _ = try requireAttach(backend)   // without attach, such a volume could never be used
        let helper = try helperInstance(backend, type: type)
        let (volume, spec) = try db.write { db -> (Volume, DiskSpec) in
            let (type, backend, src) = try plan(db)
            let t = now()
            var v = Volume(id: nil, name: name, description: description, userid: user.id, project: user.defaultProject, size: sizeGB,
                           volumeTypeID: type.id!, machineID: nil, index: nil, source: src?.source, origin: src?.origin,
                           status: .creating, deleteOnTermination: true, deleted: false, backendJobID: nil, created: t, updated: t)
            v.helperStep = .createAdd
            v.backendID = backend.id
            try v.insert(db)
            for (k, val) in metadata { try VolumeMetadata(volumeID: v.id!, key: k, value: val).insert(db) }
            _ = try charge(db, project: user.defaultProject, delta: v.sizeBytes, serverID: nil, volumeIDs: [v.id!])
            return (v, diskSpec(v, type: type, source: src))
        }
        try sendVolumeJob(volume.id!, change: .helperStep) { try backendClient(backend).addDisk(instance: helper, spec) }
        return try db.read { db in try Volume.fetchOne(db, key: volume.id!)! }
    }

    func removeAvailablePlan(_ db: GRDB.Database, _ id: Int64, _ userRef: String?) throws -> (Volume, Backend) {
        let v = try ownedVolume(db, id, userRef)
        guard v.machineID == nil, v.status == .available || v.status == .errorDeleting || v.status == .error else {
            throw CycladesError(.badRequest, "volume \(id) is \(v.status.rawValue)")
        }
        guard let bid = v.backendID, let b = try Backend.fetchOne(db, key: bid) else {
            throw CycladesError(.backend, "volume \(id) has no server and no backend recorded; run reconcile-servers")
        }
        return (v, b)
    }

    /// Deletes a volume without a server: DELETING while Ganeti attaches it to
    /// the helper server and removes it there (the provider removes it from
    /// the store); its size goes back to the quota when that is done.
    func removeAvailableVolume(_ id: Int64, user userRef: String?) throws -> Volume {
        let (available, backend) = try db.read { db in try removeAvailablePlan(db, id, userRef) }
        let ganeti = try requireAttach(backend)
        guard let type = try db.read({ db in try VolumeType.fetchOne(db, key: available.volumeTypeID) }) else {
            throw CycladesError(.backend, "volume \(id) has no volume type")
        }
        let helper = try helperInstance(backend, type: type)
        // After a failed removal the disk may already be on the helper: remove it from there.
        let name = "snf-vol-\(id)"
        let onHelper = try backendClient(backend).instanceDisks(helper)?.disks.contains { $0.name == name } ?? false
        if available.status == .error && !onHelper {
            // A create whose add to the helper failed: Ganeti never had the disk, its charge was rejected.
            return try db.write { db in
                var (v, _) = try removeAvailablePlan(db, id, userRef)
                v.status = .deleted; v.deleted = true; v.backendID = nil; v.helperStep = nil; v.updated = now()
                try v.update(db)
                return v
            }
        }
        let volume = try db.write { db -> Volume in
            var (v, _) = try removeAvailablePlan(db, id, userRef)
            _ = try charge(db, project: v.project, delta: -v.sizeBytes, serverID: nil, volumeIDs: [id])
            v.status = .deleting
            v.helperStep = onHelper ? .deleteRemove : .deleteAttach
            v.backendJobID = nil
            v.updated = now()
            try v.update(db)
            return v
        }
        try sendVolumeJob(id, change: .helperStep) {
            onHelper ? try backendClient(backend).removeDisk(instance: helper, name: volume.diskName)
                     : try ganeti.attachDisk(instance: helper, name: volume.diskName)
        }
        return try db.read { db in try Volume.fetchOne(db, key: id)! }
    }

    // MARK: jobs

    /// Sends one job for one volume and records its id on the volume and on
    /// its pending commission; if sending fails, settles it as failed at once.
    func sendVolumeJob(_ id: Int64, change: Change, _ submit: () throws -> Int64) throws {
        let jobID: Int64
        do {
            jobID = try submit()
        } catch {
            try db.write { db in try settleAttachment(db, change: change, volumeID: id, jobID: nil, result: .failed("\(error)")) }
            throw error
        }
        try db.write { db in
            guard var v = try Volume.fetchOne(db, key: id) else { return }
            v.backendJobID = jobID
            try v.update(db)
            try db.execute(sql: "UPDATE commissions SET backendJobID = ? WHERE state = 'pending' AND backendJobID IS NULL AND volumeIDs = ?",
                           arguments: [jobID, String(id)])
        }
    }

    /// Jobs in flight of attach, detach and helper steps.
    func attachmentJobs(_ db: GRDB.Database) throws -> [(PendingJob, Backend)] {
        var out: [(PendingJob, Backend)] = []
        let busy = [VolumeStatus.attaching.rawValue, VolumeStatus.detaching.rawValue]
        for v in try Volume.filter((busy.contains(Column("status")) || Column("helperStep") != nil) && Column("backendJobID") != nil).fetchAll(db) {
            let change: Change = v.helperStep != nil ? .helperStep : v.status == .attaching ? .volumeAttach : .volumeDetach
            let sid = v.status == .attaching ? v.pendingServerID : v.machineID
            let backend: Backend?
            if let sid, let s = try Server.fetchOne(db, key: sid) { backend = try backendOf(db, s) } else { backend = try v.backendID.flatMap { try Backend.fetchOne(db, key: $0) } }
            guard let backend else { continue }
            out.append((PendingJob(jobID: v.backendJobID!, serverID: sid, volumeIDs: [v.id!], change: change), backend))
        }
        return out
    }

    /// Sends the second job of helper-server changes whose first job ended
    /// (recorded without a job id). Returns the volumes it sent for.
    @discardableResult
    public func sendFollowUps() throws -> [Int64] {
        let next = try db.read { db in
            try Volume.filter(Column("helperStep") != nil && Column("backendJobID") == nil
                              && [HelperStep.createDetach.rawValue, HelperStep.deleteRemove.rawValue].contains(Column("helperStep"))).fetchAll(db)
        }
        var sent: [Int64] = []
        for v in next {
            guard let bid = v.backendID, let backend = try db.read({ db in try Backend.fetchOne(db, key: bid) }) else { continue }
            let name = v.diskName
            switch v.helperStep {
            case .createDetach:
                let g = try detachable(backend)
                try sendVolumeJob(v.id!, change: .helperStep) { try g.detachDisk(instance: Self.helperInstance, name: name) }
            case .deleteRemove:
                try sendVolumeJob(v.id!, change: .helperStep) { try backendClient(backend).removeDisk(instance: Self.helperInstance, name: name) }
            default: continue
            }
            sent.append(v.id!)
        }
        try sendServerRemovals()
        try sendDeferredAttaches()
        return sent
    }

    /// Applies the result of an attach, detach or helper step.
    func settleAttachment(_ db: GRDB.Database, change: Change, volumeID vid: Int64, jobID: Int64?, result: JobState) throws {
        guard var v = try Volume.fetchOne(db, key: vid) else { return }
        let ok = result == .success
        let t = now()
        let mine = Column("volumeIDs") == String(vid)
        switch change {
        case .volumeAttach:
            guard v.status == .attaching else { return }
            if ok, let sid = v.pendingServerID {
                v.index = try liveVolumes(db, server: sid).filter { $0.id != vid }.count
                v.machineID = sid
                v.status = .inUse
                v.backendID = nil
            } else {
                v.status = .available
            }
            v.pendingServerID = nil
        case .volumeDetach:
            guard v.status == .detaching else { return }
            if ok, let sid = v.machineID {
                // Ganeti renumbers the disks after the one that left.
                if let gone = v.index {
                    try db.execute(sql: "UPDATE volumes SET \"index\" = \"index\" - 1 WHERE machineID = ? AND deleted = 0 AND id != ? AND \"index\" > ?",
                                   arguments: [sid, vid, gone])
                }
                v.machineID = nil
                v.index = nil
                v.status = .available
            } else {
                v.status = .inUse
            }
        case .helperStep:
            switch v.helperStep {
            case .createAdd:
                // The disk exists from here on: its charge holds.
                try resolveCommissions(db, where: mine, accept: ok)
                v.helperStep = ok ? .createDetach : nil
                if !ok { v.status = .error }
            case .createDetach:
                v.helperStep = nil
                v.status = ok ? .available : .error
            case .deleteAttach:
                if ok {
                    v.helperStep = .deleteRemove
                } else {
                    v.helperStep = nil
                    v.status = .errorDeleting
                    try resolveCommissions(db, where: mine, accept: false)
                }
            case .deleteRemove:
                v.helperStep = nil
                if ok {
                    v.status = .deleted
                    v.deleted = true
                    v.backendID = nil
                } else {
                    v.status = .errorDeleting
                }
                try resolveCommissions(db, where: mine, accept: ok)
            case .attachAfterBuild, nil:
                return
            }
            // The next step's job is sent by sendFollowUps, outside this transaction.
        default:
            return
        }
        v.backendJobID = ok && v.helperStep != nil ? nil : (jobID ?? v.backendJobID)
        v.updated = t
        try v.update(db)
    }
}

extension Registry {
    /// Settles jobs until volume `id` leaves CREATING, DELETING, ATTACHING and
    /// DETACHING (a helper-server change takes two jobs); returns its record.
    public func waitVolume(_ id: Int64, timeout: TimeInterval = 600) throws -> Volume {
        let deadline = Date().addingTimeInterval(timeout)
        let busy: Set<VolumeStatus> = [.creating, .deleting, .attaching, .detaching, .extending]
        while true {
            try processJobs()
            guard let v = try db.read({ db in try Volume.fetchOne(db, key: id) }) else { throw CycladesError.notFound("volume", id) }
            if !busy.contains(v.status) { return v }
            guard Date() < deadline else {
                throw CycladesError(.backend, "volume \(id) is still \(v.status.rawValue) after \(Int(timeout)) s (job \(v.backendJobID.map(String.init) ?? "not sent")); run reconcile-servers")
            }
            usleep(200_000)
        }
    }
}

// MARK: delete_on_termination false

extension Registry {
    /// A server remove that first detaches the volumes to keep.
    public static let detachThenRemove = "detach-then-remove"

    /// Sets whether a volume goes with its server (true) or stays, AVAILABLE,
    /// when the server is deleted (false: only externally mirrored types, which Ganeti detaches).
    public func setDeleteOnTermination(volume id: Int64, _ on: Bool, user userRef: String? = nil) throws -> Volume {
        try db.write { db in
            var v = try ownedVolume(db, id, userRef)
            if !on {
                guard let type = try VolumeType.fetchOne(db, key: v.volumeTypeID) else { throw CycladesError(.backend, "volume \(id) has no volume type") }
                guard type.isExternallyMirrored else {
                    throw CycladesError(.badRequest, "volume \(id) is of type \(type.name) (\(type.diskTemplate)): only volumes of externally mirrored types (ext_archipelago) can outlive their server")
                }
            }
            v.deleteOnTermination = on
            v.updated = now()
            try v.update(db)
            return v
        }
    }

    func keptVolumes(_ db: GRDB.Database, server id: Int64) throws -> [Volume] {
        try liveVolumes(db, server: id).filter { !$0.deleteOnTermination && $0.status == .inUse }
    }

    /// Removes a server that holds volumes to keep: detaches them first (one
    /// job each; they become AVAILABLE, still charged), then removes the
    /// instance with the other volumes (sendFollowUps). A keep that Ganeti
    /// refuses stops the removal: the server stays, nothing is lost.
    func removeServerKeeping(_ id: Int64, user userRef: String?) throws -> Server {
        let backend = try db.read { db in try backendOf(db, try ownedServer(db, id, userRef)) }
        let ganeti = try requireAttach(backend)
        let (server, kept) = try db.write { db -> (Server, [Volume]) in
            var s = try ownedServer(db, id, userRef)
            guard s.pendingAction == nil else {
                throw CycladesError(.conflict, "server \(id) has a job in progress (\(s.pendingAction!), job \(s.backendJobID ?? 0)); wait for it")
            }
            try checkNoJobInFlight(db, s)
            let kept = try keptVolumes(db, server: id)
            let keptIDs = Set(kept.compactMap(\.id))
            let held = try liveVolumes(db, server: id).filter { !keptIDs.contains($0.id!) && $0.status == .inUse }
            let refund = held.reduce(Int64(0)) { $0 + $1.sizeBytes }
            if refund > 0 { _ = try charge(db, project: s.project, delta: -refund, serverID: id, volumeIDs: held.compactMap(\.id)) }
            s.pendingAction = Self.detachThenRemove
            s.backendJobID = nil
            s.updated = now()
            try s.update(db)
            for var v in kept {
                v.status = .detaching
                v.backendID = s.backendID
                v.backendJobID = nil
                v.updated = now()
                try v.update(db)
            }
            return (s, kept)
        }
        for v in kept {
            try? sendVolumeJob(v.id!, change: .volumeDetach) { try ganeti.detachDisk(instance: server.instanceName, name: v.diskName) }
        }
        try sendServerRemovals()
        return try db.read { db in try Server.fetchOne(db, key: id)! }
    }

    /// Servers whose kept volumes are all detached: their remove job is sent;
    /// if a keep failed, the removal is called off (its refund rejected).
    @discardableResult
    func sendServerRemovals() throws -> [Int64] {
        var sent: [Int64] = []
        let waiting = try db.read { db in try Server.filter(Column("pendingAction") == Self.detachThenRemove).fetchAll(db) }
        for s in waiting {
            let next = try db.write { db -> Backend? in
                guard var s = try Server.fetchOne(db, key: s.id!), s.pendingAction == Self.detachThenRemove else { return nil }
                let vols = try liveVolumes(db, server: s.id!)
                if vols.contains(where: { $0.status == .detaching }) { return nil }
                if vols.contains(where: { !$0.deleteOnTermination && $0.status == .inUse }) {
                    s.pendingAction = nil
                    s.updated = now()
                    try s.update(db)
                    try resolveCommissions(db, where: Column("serverID") == s.id! && Column("backendJobID") == nil, accept: false)
                    return nil
                }
                s.pendingAction = "remove"
                s.backendJobID = nil
                s.updated = now()
                try s.update(db)
                return try backendOf(db, s)
            }
            guard let backend = next else { continue }
            _ = try send(serverID: s.id!, volumeIDs: [], failing: .serverRemove) { try backendClient(backend).removeInstance(s.instanceName) }
            sent.append(s.id!)
        }
        return sent
    }
}

// MARK: block_device_mapping_v2 source_type volume

extension Registry {
    /// Checks that AVAILABLE volumes can go to a new server of `flavor`: the
    /// user's, of the flavor's (externally mirrored) type, within the disk
    /// limit with `newVolumes`, on a Ganeti that attaches. Nothing is recorded.
    public func checkAttachable(_ ids: [Int64], flavor flavorRef: String, user userRef: String, newVolumes: Int) throws {
        let backend = try db.read { db -> Backend in
            let user = try findUserIn(db, userRef)
            guard let flavor = try Flavor.filter(Column("name") == flavorRef || Column("id") == Int64(flavorRef) ?? -1).fetchOne(db),
                  let type = try VolumeType.fetchOne(db, key: flavor.volumeTypeID) else {
                throw CycladesError(.badRequest, "flavor \(flavorRef) does not exist")
            }
            guard Set(ids).count == ids.count else { throw CycladesError(.badRequest, "a volume is given twice") }
            guard newVolumes + ids.count <= maxDisks else {
                throw CycladesError(.badRequest, "\(newVolumes + ids.count) volumes for one server; the limit is \(maxDisks)")
            }
            let backend = try defaultBackend(db)
            for id in ids {
                let v = try ownedVolume(db, id, user.id)
                guard v.status == .available, v.machineID == nil else {
                    throw CycladesError(.badRequest, "volume \(id) is \(v.status == .inUse ? "in use on server \(v.machineID ?? 0)" : v.status.rawValue); only AVAILABLE volumes can be attached")
                }
                guard v.volumeTypeID == type.id else {
                    throw CycladesError(.badRequest, "volume \(id) is not of the flavor's volume type (\(type.name)): a server's volumes share its flavor's type")
                }
                try checkDetachableType(type, volume: id)
                if let b = v.backendID, b != backend.id {
                    throw CycladesError(.badRequest, "volume \(id) lives on backend \(b), new servers go to \(backend.name); Ganeti attaches disks within one cluster only")
                }
            }
            return backend
        }
        _ = try requireAttach(backend)
    }

    /// Records AVAILABLE volumes as ATTACHING to a server being built; the
    /// attach jobs are sent once Ganeti has built it (sendDeferredAttaches),
    /// and the volumes go back to AVAILABLE if the build fails.
    public func attachWhenBuilt(_ ids: [Int64], server serverID: Int64, user userRef: String) throws {
        try db.write { db in
            let s = try ownedServerOr404(db, serverID, userRef)
            for id in ids {
                var v = try ownedVolume(db, id, userRef)
                guard v.status == .available, v.machineID == nil, v.userid == s.userid else {
                    throw CycladesError(.badRequest, "volume \(id) is \(v.status.rawValue); only AVAILABLE volumes can be attached")
                }
                v.status = .attaching
                v.pendingServerID = serverID
                v.helperStep = .attachAfterBuild
                v.backendJobID = nil
                v.updated = now()
                try v.update(db)
            }
        }
    }

    /// Sends the attach of volumes waiting for their new server (one job
    /// each; claimed in the database first, so no job is sent twice).
    @discardableResult
    func sendDeferredAttaches() throws -> [Int64] {
        let waiting = try db.read { db in
            try Volume.filter(Column("helperStep") == HelperStep.attachAfterBuild.rawValue && Column("status") == VolumeStatus.attaching.rawValue).fetchAll(db)
        }
        var sent: [Int64] = []
        for w in waiting {
            let claim = try db.write { db -> (Server, Backend)? in
                guard var v = try Volume.fetchOne(db, key: w.id!), v.helperStep == .attachAfterBuild, let sid = v.pendingServerID else { return nil }
                guard let s = try Server.fetchOne(db, key: sid), !s.deleted, s.status != .error else {
                    v.status = .available; v.pendingServerID = nil; v.helperStep = nil; v.updated = now()   // the server never came
                    try v.update(db)
                    return nil
                }
                guard s.status != .build, s.pendingAction == nil else { return nil }   // not built yet
                v.helperStep = nil
                try v.update(db)
                return (s, try backendOf(db, s))
            }
            guard let (s, backend) = claim else { continue }
            let g = try detachable(backend)
            let name = w.diskName
            try sendVolumeJob(w.id!, change: .volumeAttach) { try g.attachDisk(instance: s.instanceName, name: name) }
            sent.append(w.id!)
        }
        return sent
    }
}
