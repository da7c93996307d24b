import Foundation
import GRDB

extension Registry {
    // MARK: rules

    func liveVolumes(_ db: GRDB.Database, server: Int64) throws -> [Volume] {
        try Volume.filter(Column("machineID") == server && Column("deleted") == false).order(Column("index")).fetchAll(db)
    }

    func checkSize(_ gb: Int) throws {
        guard gb >= 1 else { throw CycladesError(.badRequest, "size \(gb) GB: a volume is at least 1 GB") }
        guard gb <= maxVolumeSizeGB else { throw CycladesError(.badRequest, "size \(gb) GB is above the limit of \(maxVolumeSizeGB) GB") }
    }

    /// `image:UUID` (public or the user's), `snapshot:UUID` (the user's) or
    /// `volume:ID` (the user's, IN_USE or AVAILABLE, of a cloning type: the
    /// provider gets `disk:snf-vol-ID`, the Ganeti disk to clone).
    func resolve(_ db: GRDB.Database, source: String, user: User) throws -> ResolvedSource {
        let parts = source.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[1].isEmpty else {
            throw CycladesError(.badRequest, "source '\(source)': use image:UUID, snapshot:UUID or volume:ID")
        }
        switch parts[0] {
        case "image":
            guard let img = try Image.fetchOne(db, key: parts[1]), img.isPublic || img.owner == user.id else {
                throw CycladesError(.badRequest, "image \(parts[1]) does not exist")
            }
            return ResolvedSource(source: source, origin: img.location, sizeBytes: img.size, imageID: img.id, sha256: img.checksum)
        case "snapshot":
            guard let s = try Snapshot.fetchOne(db, key: parts[1]), s.userid == user.id else {
                throw CycladesError(.badRequest, "snapshot \(parts[1]) does not exist")
            }
            guard s.status == "AVAILABLE" else { throw CycladesError(.badRequest, "snapshot \(parts[1]) is \(s.status), not AVAILABLE") }
            return ResolvedSource(source: source, origin: "snapshot:" + s.storeName, sizeBytes: Int64(s.size) << 30, imageID: nil)
        case "volume":
            // A clone of the user's volume: the provider snapshots it where it is
            // attached (every acknowledged write) and clones that, O(1).
            guard let id = Int64(parts[1]), let v = try Volume.fetchOne(db, key: id), v.userid == user.id else {
                throw CycladesError(.itemNotFound, "volume \(parts[1]) does not exist")
            }
            guard !v.deleted, v.status == .inUse || v.status == .available else {
                throw CycladesError(.badRequest, "volume \(id) is \(v.deleted ? "deleted" : v.status.rawValue); only IN_USE or AVAILABLE volumes can be cloned")
            }
            guard let type = try VolumeType.fetchOne(db, key: v.volumeTypeID), type.canClone else {
                throw CycladesError(.badRequest, "volume \(id) cannot be cloned: its volume type's provider does not clone (archipelago does)")
            }
            return ResolvedSource(source: "volume:\(id)", origin: "disk:" + v.diskName, sizeBytes: v.sizeBytes, imageID: nil)
        default:
            throw CycladesError(.badRequest, "source '\(source)' is of an unknown kind: use image:UUID, snapshot:UUID or volume:ID")
        }
    }

    func diskSpec(_ v: Volume, type: VolumeType, source: ResolvedSource?) -> DiskSpec {
        let clone = type.canClone ? source : nil
        return DiskSpec(name: v.diskName, sizeMiB: v.size * 1024, provider: type.provider,
                        origin: clone?.origin, originSize: clone?.sizeBytes, originSHA256: clone?.sha256)
    }

    // MARK: servers

    /// Records the server and its volumes (CREATING), charges their size,
    /// and sends Ganeti's instance create. Root = the first volume, never blank.
    public func createServer(name: String, user userRef: String, flavor flavorRef: String, image: String?,
                             volumes requested: [VolumeRequest], backend backendRef: String? = nil, start: Bool = true) throws -> Server {
        let user = try findUser(userRef)
        let (server, vols, specs, backend, instance) = try db.write { db -> (Server, [Volume], [DiskSpec], Backend, InstanceSpec) in
            guard let flavor = try Flavor.filter(Column("name") == flavorRef || Column("id") == Int64(flavorRef) ?? -1).fetchOne(db) else {
                throw CycladesError(.badRequest, "flavor \(flavorRef) does not exist")
            }
            guard let type = try VolumeType.fetchOne(db, key: flavor.volumeTypeID), !type.deleted else {
                throw CycladesError(.badRequest, "flavor \(flavor.name) has no usable volume type")
            }
            let backend: Backend
            if let backendRef {
                guard let b = try Backend.filter(Column("name") == backendRef).fetchOne(db) else { throw CycladesError.notFound("backend", backendRef) }
                backend = b
            } else {
                guard let b = try Backend.filter(Column("drained") == false).order(Column("id")).fetchOne(db) else {
                    throw CycladesError(.badRequest, "no backend to create servers on (snf-manage backend-add)")
                }
                backend = b
            }
            var reqs = requested
            if reqs.isEmpty {
                guard let image else { throw CycladesError(.badRequest, "a server needs --image or at least one --volume with a source") }
                reqs = [VolumeRequest(sizeGB: flavor.disk, source: "image:\(image)")]
            } else if let image, reqs[0].source == nil {
                reqs[0].source = "image:\(image)"
            }
            guard reqs[0].source != nil else { throw CycladesError(.badRequest, "the root volume (the first) cannot be blank: give it an image or a snapshot") }
            guard reqs.count <= maxDisks else { throw CycladesError(.badRequest, "a server has at most \(maxDisks) volumes; \(reqs.count) requested") }
            var resolved: [ResolvedSource?] = []
            for (i, r) in reqs.enumerated() {
                let size = r.sizeGB ?? flavor.disk
                try checkSize(size)
                let src = try r.source.map { try resolve(db, source: $0, user: user) }
                if let src {
                    if i > 0 && !type.canClone {
                        throw CycladesError(.badRequest, "volume \(i): a source on a non-root volume needs a volume type whose provider clones (archipelago); \(type.name) is \(type.diskTemplate)")
                    }
                    if src.sizeBytes > Int64(size) << 30 {
                        throw CycladesError(.badRequest, "volume \(i): the source \(src.source) (\(src.sizeBytes) bytes) is larger than \(size) GB")
                    }
                }
                resolved.append(src)
            }
            let t = now()
            var server = Server(id: nil, name: name, userid: user.id, project: user.defaultProject, flavorID: flavor.id!, backendID: backend.id!,
                                imageID: resolved[0]?.imageID, status: .build, backendJobID: nil, pendingAction: "create",
                                deleted: false, created: t, updated: t)
            try server.insert(db)
            var vols: [Volume] = []
            for (i, r) in reqs.enumerated() {
                var v = Volume(id: nil, name: r.name, description: nil, userid: user.id, project: user.defaultProject,
                               size: r.sizeGB ?? flavor.disk, volumeTypeID: type.id!, machineID: server.id, index: i,
                               source: resolved[i]?.source, origin: resolved[i]?.origin, status: .creating,
                               deleteOnTermination: true, deleted: false, backendJobID: nil, created: t, updated: t)
                try v.insert(db)
                vols.append(v)
            }
            let total = vols.reduce(Int64(0)) { $0 + $1.sizeBytes }
            _ = try charge(db, project: user.defaultProject, delta: total, serverID: server.id, volumeIDs: vols.compactMap(\.id))
            let specs = zip(vols, resolved).map { diskSpec($0.0, type: type, source: $0.1) }
            let inst = InstanceSpec(name: server.instanceName, diskTemplate: type.template, disks: specs, os: backend.os,
                                    node: backend.node, hypervisor: backend.hypervisor, start: start,
                                    memoryMiB: flavor.ram, vcpus: flavor.cpu)
            return (server, vols, specs, backend, inst)
        }
        _ = specs
        return try send(serverID: server.id!, volumeIDs: vols.compactMap(\.id), failing: .serverCreate) {
            try backendClient(backend).createInstance(instance)
        }
    }

    /// Removes a server and every volume on it (Cyclades never preserves volumes).
    public func removeServer(_ id: Int64, user userRef: String? = nil) throws -> Server {
        // Volumes with delete_on_termination false are detached first (Attachments.swift).
        if try db.read({ db in try !keptVolumes(db, server: id).isEmpty }) { return try removeServerKeeping(id, user: userRef) }
        let (server, backend) = try db.write { db -> (Server, Backend) in
            var s = try ownedServer(db, id, userRef)
            guard s.pendingAction == nil else {
                throw CycladesError(.conflict, "server \(id) has a job in progress (\(s.pendingAction!), job \(s.backendJobID ?? 0)); wait for it")
            }
            try checkNoJobInFlight(db, s)
            let live = try liveVolumes(db, server: id)
            // A server that never built holds no disks worth refunding twice: its charge was rejected.
            let held = (s.status == .build || s.status == .error) ? live.filter { $0.status != .error } : live.filter { $0.status == .inUse }
            let refund = held.reduce(Int64(0)) { $0 + $1.sizeBytes }
            if refund > 0 { _ = try charge(db, project: s.project, delta: -refund, serverID: id, volumeIDs: held.compactMap(\.id)) }
            s.pendingAction = "remove"
            // Until the remove's job id is recorded, the poller must not take
            // the previous (ended) job for it and settle the remove early.
            s.backendJobID = nil
            s.updated = now()
            try s.update(db)
            return (s, try backendOf(db, s))
        }
        return try send(serverID: server.id!, volumeIDs: [], failing: .serverRemove) {
            try backendClient(backend).removeInstance(server.instanceName)
        }
    }

    // MARK: volumes

    /// Cyclades keeps at most this many metadata keys per volume.
    public static let maxMetadata = 10

    public func createVolume(server serverID: Int64, user userRef: String, sizeGB: Int, source: String?, volumeType: String?,
                             name: String?, description: String? = nil, metadata: [String: String] = [:]) throws -> Volume {
        let user = try findUser(userRef)
        try Self.checkMetadata(metadata)
        let (volume, spec, server, backend) = try db.write { db -> (Volume, DiskSpec, Server, Backend) in
            let s = try ownedServer(db, serverID, user.id)
            try checkServerAcceptsChanges(s)
            try checkNoJobInFlight(db, s)
            guard let flavor = try Flavor.fetchOne(db, key: s.flavorID), let type = try VolumeType.fetchOne(db, key: flavor.volumeTypeID) else {
                throw CycladesError(.backend, "server \(serverID) has no flavor or volume type")
            }
            if let volumeType, volumeType != type.name && volumeType != String(type.id!) {
                throw CycladesError(.badRequest, "volume type \(volumeType) differs from the server's (\(type.name)); a server's volumes share its flavor's type")
            }
            try checkSize(sizeGB)
            let live = try liveVolumes(db, server: serverID)
            guard live.count < maxDisks else { throw CycladesError(.badRequest, "server \(serverID) already has \(live.count) volumes; the limit is \(maxDisks)") }
            var src: ResolvedSource? = nil
            if let source {
                guard type.canClone else {
                    throw CycladesError(.badRequest, "a source on a non-root volume needs a volume type whose provider clones (archipelago); \(type.name) is \(type.diskTemplate)")
                }
                src = try resolve(db, source: source, user: user)
                if src!.sizeBytes > Int64(sizeGB) << 30 {
                    throw CycladesError(.badRequest, "the source \(source) (\(src!.sizeBytes) bytes) is larger than \(sizeGB) GB")
                }
            }
            let t = now()
            let index = (live.compactMap(\.index).max() ?? -1) + 1
            var v = Volume(id: nil, name: name, description: description, userid: user.id, project: s.project, size: sizeGB,
                           volumeTypeID: type.id!, machineID: serverID, index: index, source: src?.source, origin: src?.origin,
                           status: .creating, deleteOnTermination: true, deleted: false, backendJobID: nil, created: t, updated: t)
            try v.insert(db)
            for (k, val) in metadata { try VolumeMetadata(volumeID: v.id!, key: k, value: val).insert(db) }
            _ = try charge(db, project: s.project, delta: v.sizeBytes, serverID: serverID, volumeIDs: [v.id!])
            return (v, diskSpec(v, type: type, source: src), s, try backendOf(db, s))
        }
        _ = try send(serverID: nil, volumeIDs: [volume.id!], failing: .volumeCreate) {
            try backendClient(backend).addDisk(instance: server.instanceName, spec)
        }
        return try db.read { db in try Volume.fetchOne(db, key: volume.id!)! }
    }

    public func removeVolume(_ id: Int64, user userRef: String? = nil) throws -> Volume {
        // A volume without a server goes through the helper server (Attachments.swift).
        if let v = try db.read({ db in try Volume.fetchOne(db, key: id) }), !v.deleted, v.machineID == nil,
           v.status == .available || v.status == .errorDeleting || v.status == .error {
            return try removeAvailableVolume(id, user: userRef)
        }
        // Ganeti refuses to remove a disk from a running instance without hotplug: say so before anything is recorded.
        if let (s, b) = try db.read({ db -> (Server, Backend)? in
            guard let v = try Volume.fetchOne(db, key: id), !v.deleted, let sid = v.machineID, v.index != 0,
                  let s = try Server.fetchOne(db, key: sid), !s.deleted else { return nil }
            return (s, try backendOf(db, s))
        }) {
            try checkStoppedOrHotplug(s, b, doing: "delete volume \(id) of")
        }
        let (volume, server, backend) = try db.write { db -> (Volume, Server, Backend) in
            guard var v = try Volume.fetchOne(db, key: id) else { throw CycladesError.notFound("volume", id) }
            if let userRef, v.userid != (try findUserIn(db, userRef).id) { throw CycladesError.notFound("volume", id) }
            guard !v.deleted else { throw CycladesError(.badRequest, "volume \(id) is already deleted") }
            guard let sid = v.machineID else { throw CycladesError(.badRequest, "volume \(id) is not attached to a server") }
            guard v.index != 0 else { throw CycladesError(.badRequest, "volume \(id) is the root volume of server \(sid); remove the server instead") }
            guard v.status == .inUse || v.status == .error || v.status == .errorDeleting else {
                throw CycladesError(.badRequest, "volume \(id) is \(v.status.rawValue); only IN_USE, ERROR or ERROR_DELETING volumes can be removed")
            }
            let s = try ownedServer(db, sid, nil)
            try checkServerAcceptsChanges(s)
            try checkNoJobInFlight(db, s)
            if v.status == .inUse || v.status == .errorDeleting { _ = try charge(db, project: v.project, delta: -v.sizeBytes, serverID: sid, volumeIDs: [id]) }
            v.status = .deleting
            // The create job recorded here has ended: a concurrent settler (cyclades-api)
            // must not settle the removal with it before the remove job is sent.
            v.backendJobID = nil
            v.updated = now()
            try v.update(db)
            return (v, s, try backendOf(db, s))
        }
        _ = try send(serverID: nil, volumeIDs: [id], failing: .volumeRemove) {
            try backendClient(backend).removeDisk(instance: server.instanceName, name: volume.diskName)
        }
        return try db.read { db in try Volume.fetchOne(db, key: id)! }
    }

    static func checkMetadata(_ m: [String: String]) throws {
        guard m.count <= maxMetadata else { throw CycladesError(.badRequest, "at most \(maxMetadata) metadata keys per volume; \(m.count) given") }
        for (k, v) in m {
            guard !k.isEmpty, k.count <= 64 else { throw CycladesError(.badRequest, "metadata key '\(k)' must be 1 to 64 characters") }
            guard v.count <= 255 else { throw CycladesError(.badRequest, "metadata value of '\(k)' is longer than 255 characters") }
        }
    }

    /// Sets (merges, or replaces) a volume's metadata, at most 10 keys in all.
    public func setMetadata(volume id: Int64, _ m: [String: String], replace: Bool) throws {
        try db.write { db in
            guard let v = try Volume.fetchOne(db, key: id), !v.deleted else { throw CycladesError.notFound("volume", id) }
            var all = replace ? [:] : Dictionary(uniqueKeysWithValues: try VolumeMetadata.filter(Column("volumeID") == id).fetchAll(db).map { ($0.key, $0.value) })
            all.merge(m) { $1 }
            try Self.checkMetadata(all)
            try VolumeMetadata.filter(Column("volumeID") == id).deleteAll(db)
            for (k, val) in all { try VolumeMetadata(volumeID: id, key: k, value: val).insert(db) }
        }
    }

    /// Removes one metadata key of a live volume; a missing key is itemNotFound.
    public func deleteMetadata(volume id: Int64, key: String) throws {
        try db.write { db in
            guard let v = try Volume.fetchOne(db, key: id), !v.deleted else { throw CycladesError.notFound("volume", id) }
            guard try VolumeMetadata.filter(Column("volumeID") == id && Column("key") == key).deleteAll(db) > 0 else {
                throw CycladesError(.itemNotFound, "volume \(id) has no metadata key '\(key)'")
            }
        }
    }

    /// Renames a live volume or changes its description (nil: unchanged).
    public func describeVolume(_ id: Int64, name: String?, description: String?) throws -> Volume {
        try db.write { db in
            guard var v = try Volume.fetchOne(db, key: id) else { throw CycladesError.notFound("volume", id) }
            guard !v.deleted else { throw CycladesError(.badRequest, "volume \(id) is deleted") }
            if let name { v.name = name }
            if let description { v.description = description }
            v.updated = now()
            try v.update(db)
            return v
        }
    }

    public func metadata(volume id: Int64) throws -> [String: String] {
        try db.read { db in
            Dictionary(uniqueKeysWithValues: try VolumeMetadata.filter(Column("volumeID") == id).fetchAll(db).map { ($0.key, $0.value) })
        }
    }

    // MARK: sending jobs

    enum Change { case serverCreate, serverRemove, volumeCreate, volumeRemove, volumeExtend, volumeAttach, volumeDetach, helperStep }

    /// Sends one job; records its id on the server or volumes and on their
    /// pending commission. If sending fails, the change is settled as failed
    /// at once (commission rejected), so nothing waits for a job that does not exist.
    func send(serverID: Int64?, volumeIDs: [Int64], failing change: Change, _ submit: () throws -> Int64) throws -> Server {
        // Fault injection for the crash tests: die after the charge is committed
        // and before Ganeti hears of it (what a power cut there would leave).
        if ProcessInfo.processInfo.environment["SNF_FAULT"] == "before-submit" { exit(99) }
        let jobID: Int64
        do {
            jobID = try submit()
        } catch {
            try db.write { db in try settle(db, change: change, serverID: serverID, volumeIDs: volumeIDs, jobID: nil, result: .failed("\(error)")) }
            throw error
        }
        return try db.write { db -> Server in
            var server: Server? = nil
            if let serverID, var s = try Server.fetchOne(db, key: serverID) {
                s.backendJobID = jobID
                try s.update(db)
                server = s
            }
            for vid in volumeIDs {
                guard var v = try Volume.fetchOne(db, key: vid) else { continue }
                v.backendJobID = jobID
                try v.update(db)
                if server == nil, let sid = v.machineID { server = try Server.fetchOne(db, key: sid) }
            }
            let ids = volumeIDs.map(String.init).joined(separator: ",")
            try db.execute(sql: "UPDATE commissions SET backendJobID = ? WHERE state = 'pending' AND backendJobID IS NULL AND (serverID = ? OR volumeIDs = ?)",
                           arguments: [jobID, serverID, ids])
            guard let server else { throw CycladesError(.backend, "job \(jobID) sent for nothing recorded") }
            return server
        }
    }

    func ownedServer(_ db: GRDB.Database, _ id: Int64, _ userRef: String?) throws -> Server {
        guard let s = try Server.fetchOne(db, key: id), !s.deleted else { throw CycladesError(.badRequest, "server \(id) does not exist") }
        if let userRef, s.userid != (try findUserIn(db, userRef).id) { throw CycladesError(.badRequest, "server \(id) does not exist") }
        return s
    }

    func findUserIn(_ db: GRDB.Database, _ ref: String) throws -> User {
        guard let u = try User.filter(Column("id") == ref || Column("name") == ref).fetchOne(db) else { throw CycladesError.notFound("user", ref) }
        return u
    }

    /// One job at a time per server: Ganeti would queue them anyway, and a
    /// pending commission must map to exactly one job.
    func checkNoJobInFlight(_ db: GRDB.Database, _ s: Server) throws {
        if let busy = try Volume.filter(Column("machineID") == s.id! && Column("deleted") == false
                                        && [VolumeStatus.creating.rawValue, VolumeStatus.deleting.rawValue, VolumeStatus.extending.rawValue].contains(Column("status")))
                                        .fetchOne(db), s.status != .build {
            // Also while its job is not recorded yet (being sent, or lost in a crash: reconcile settles that).
            throw CycladesError(.conflict, "server \(s.id!) has a change in progress (volume \(busy.id!) is \(busy.status.rawValue)); wait for it, or run reconcile-servers if it stays")
        }
    }

    func checkServerAcceptsChanges(_ s: Server) throws {
        if s.status == .build { throw CycladesError(.conflict, "server \(s.id!) is still being built") }
        if s.status == .error { throw CycladesError(.badRequest, "server \(s.id!) is in ERROR") }
        if let a = s.pendingAction { throw CycladesError(.conflict, "server \(s.id!) has a job in progress (\(a))") }
    }

    func backendOf(_ db: GRDB.Database, _ s: Server) throws -> Backend {
        guard let b = try Backend.fetchOne(db, key: s.backendID) else { throw CycladesError(.backend, "server \(s.id!) has no backend") }
        return b
    }
}
