import ArchipRados
import ArchipServe
import ArchipStore
import Cyclades
import Foundation
import GRDB

/// The volume service at /volume/v3 and /volume/v2.0 (same handlers).
extension CycladesAPI {
    static let volumePrefixes = ["/volume/v3", "/volume/v2.0"]

    func volumeRoutes() -> [Route] {
        var r: [Route] = []
        func add(_ m: Method, _ path: String, auth: Bool = true, _ h: @escaping @Sendable (Call) throws -> Reply) {
            r.append(Route(method: m, path: path, auth: auth, handler: h))
        }
        add(.GET, "/volume", auth: false) { try Self.volumeVersions($0) }
        for p in Self.volumePrefixes {
            add(.GET, p, auth: false) { try Self.volumeVersions($0) }
            add(.GET, "\(p)/volumes") { [unowned self] in try listVolumes($0, detail: false) }
            add(.GET, "\(p)/volumes/detail") { [unowned self] in try listVolumes($0, detail: true) }
            add(.POST, "\(p)/volumes") { [unowned self] in try createVolume($0) }
            add(.GET, "\(p)/volumes/{volume_id}") { [unowned self] in try showVolume($0) }
            add(.PUT, "\(p)/volumes/{volume_id}") { [unowned self] in try updateVolume($0) }
            add(.DELETE, "\(p)/volumes/{volume_id}") { [unowned self] in try deleteVolume($0) }
            add(.GET, "\(p)/volumes/{volume_id}/metadata") { [unowned self] in try volumeMetadata($0) }
            add(.POST, "\(p)/volumes/{volume_id}/metadata") { [unowned self] in try setVolumeMetadata($0, replace: false) }
            add(.PUT, "\(p)/volumes/{volume_id}/metadata") { [unowned self] in try setVolumeMetadata($0, replace: true) }
            add(.DELETE, "\(p)/volumes/{volume_id}/metadata/{key}") { [unowned self] in try deleteVolumeMetadata($0) }
            add(.POST, "\(p)/volumes/{volume_id}/action") { [unowned self] in try volumeAction($0) }
            add(.GET, "\(p)/types") { [unowned self] in try listTypes($0) }
            add(.GET, "\(p)/types/{type_id}") { [unowned self] in try showType($0) }
            add(.GET, "\(p)/snapshots") { [unowned self] in try listSnapshots($0, detail: false) }
            add(.GET, "\(p)/snapshots/detail") { [unowned self] in try listSnapshots($0, detail: true) }
            add(.POST, "\(p)/snapshots") { [unowned self] in try createSnapshot($0) }
            add(.GET, "\(p)/snapshots/{snapshot_id}") { [unowned self] in try showSnapshot($0) }
            add(.DELETE, "\(p)/snapshots/{snapshot_id}") { [unowned self] in try deleteSnapshot($0) }
        }
        return r
    }

    // MARK: versions

    static func volumeVersions(_ call: Call) throws -> Reply {
        func doc(_ id: String, _ status: String, _ path: String) -> [String: Any] {
            ["id": id, "status": status, "version": id == "v3.0" ? "3.0" : "", "min_version": id == "v3.0" ? "3.0" : "",
             "updated": "2024-01-01T00:00:00Z",
             "links": [["rel": "self", "href": "\(call.base)\(path)/"]],
             "media-types": [["base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"]]]
        }
        return try .json(200, ["versions": [doc("v3.0", "CURRENT", "/volume/v3"), doc("v2.0", "SUPPORTED", "/volume/v2.0")]])
    }

    // MARK: views

    static func cinderStatus(_ s: VolumeStatus) -> String {
        switch s {
        case .inUse: return "in-use"
        case .errorDeleting: return "error_deleting"
        default: return s.rawValue.lowercased()
        }
    }

    static func device(_ index: Int?) -> String {
        guard let i = index, i >= 0, i < 26 else { return "" }
        return "/dev/vd" + String(UnicodeScalar(UInt8(97 + i)))
    }

    struct VolumeContext {
        var types: [Int64: VolumeType]
        var metadata: [Int64: [String: String]]
    }

    func volumeContext(_ db: GRDB.Database, _ vols: [Volume]) throws -> VolumeContext {
        let types = Dictionary(uniqueKeysWithValues: try VolumeType.fetchAll(db).map { ($0.id!, $0) })
        var meta: [Int64: [String: String]] = [:]
        let ids = vols.compactMap(\.id)
        if ids.count == 1 {
            for m in try VolumeMetadata.filter(Column("volumeID") == ids[0]).fetchAll(db) { meta[m.volumeID, default: [:]][m.key] = m.value }
        } else if !ids.isEmpty {
            let users = Set(vols.map(\.userid))
            let rows = try Row.fetchAll(db, sql: "SELECT m.volumeID, m.key, m.value FROM volume_metadata m JOIN volumes v ON v.id = m.volumeID WHERE v.userid IN (\(users.map { _ in "?" }.joined(separator: ",")))",
                                        arguments: StatementArguments(Array(users)))
            let wanted = Set(ids)
            for row in rows {
                let vid: Int64 = row[0]
                if wanted.contains(vid) { meta[vid, default: [:]][row[1]] = row[2] }
            }
        }
        return VolumeContext(types: types, metadata: meta)
    }

    /// A volume as Cinder and Synnefo clients read it (keys and types as in
    /// docs/openapi.json's Volume and VolumeSummary), as an ordered JSON value.
    func volumeView(_ v: Volume, _ ctx: VolumeContext, _ call: Call, detail: Bool) -> JSON {
        let id = String(v.id!)
        let href = JSON.string("\(call.base)\(call.prefix)/volumes/\(id)")
        let links = JSON.array([.object([("rel", .string("self")), ("href", href)]), .object([("rel", .string("bookmark")), ("href", href)])])
        let name = JSON.string(v.name)
        guard detail else { return .object([("id", .string(id)), ("name", name), ("display_name", name), ("links", links)]) }
        let type = ctx.types[v.volumeTypeID]
        var attachments: [JSON] = []
        let created = JSON.string(v.created.openstack)
        if let sid = v.machineID, !v.deleted {
            attachments.append(.object([("attachment_id", .string(id)), ("id", .string(id)), ("volume_id", .string(id)),
                                        ("server_id", .string(String(sid))), ("device", .string(Self.device(v.index))),
                                        ("device_index", .int(v.index)), ("host_name", .null), ("attached_at", created)]))
        }
        let src = v.source?.split(separator: ":", maxSplits: 1).map(String.init) ?? []
        let kind = src.first ?? "", ref = src.count == 2 ? src[1] : nil
        let description = JSON.string(v.description)
        let metadata = (ctx.metadata[v.id!] ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, JSON.string($0.value)) }
        return .object([
            ("id", .string(id)), ("name", name), ("display_name", name), ("links", links),
            ("description", description), ("display_description", description),
            ("size", .int(v.size)), ("status", .string(Self.cinderStatus(v.status))),
            ("volume_type", .string(type?.name)), ("volume_type_id", .string(String(v.volumeTypeID))),
            ("SNF:disk_template", .string(type?.diskTemplate)),
            ("attachments", .array(attachments)), ("metadata", .object(metadata)),
            ("bootable", .string(v.index == 0 || kind == "image" ? "true" : "false")),
            ("source_volid", kind == "volume" ? .string(ref) : .null),
            ("snapshot_id", kind == "snapshot" ? .string(ref) : .null),
            ("image_id", kind == "image" ? .string(ref) : .null),
            ("created_at", created), ("updated_at", .string(v.updated.openstack)),
            ("user_id", .string(v.userid)), ("tenant_id", .string(v.project)), ("os-vol-tenant-attr:tenant_id", .string(v.project)),
            ("delete_on_termination", .bool(v.deleteOnTermination)), ("deleted", .bool(v.deleted)),
            ("availability_zone", .string("nova")), ("encrypted", .bool(false)), ("multiattach", .bool(false)),
            ("replication_status", .null), ("consistencygroup_id", .null),
            ("server_id", .string(v.machineID.map { String($0) })), ("device_index", .int(v.index)),
        ])
    }

    // MARK: lookups

    /// The user's volume; another user's and a missing one are the same 404.
    func ownedVolume(_ db: GRDB.Database, _ ref: String, _ user: User) throws -> Volume {
        guard let id = Int64(ref), let v = try Volume.fetchOne(db, key: id), v.userid == user.id else {
            throw CycladesError(.itemNotFound, "volume \(ref) does not exist")
        }
        return v
    }

    // MARK: volumes

    /// ?limit, ?marker (an id), ?changes-since (then deleted ones too), ?name, ?status.
    func listVolumes(_ call: Call, detail: Bool) throws -> Reply {
        let user = try call.requireUser
        let limit = try call.query["limit"].map { s -> Int in
            guard let n = Int(s), n >= 0 else { throw CycladesError(.badRequest, "limit must be a whole number >= 0") }
            return n
        }
        let marker = try call.query["marker"].map { s -> Int64 in
            guard let n = Int64(s) else { throw CycladesError(.badRequest, "marker must be a volume id") }
            return n
        }
        let since = try call.query["changes-since"].map { s -> Date in
            guard let d = Date.parseOpenstack(s) else { throw CycladesError(.badRequest, "changes-since must be an ISO 8601 time") }
            return d
        }
        return try registry.db.read { db in
            var q = Volume.filter(Column("userid") == user.id)
            if let since { q = q.filter(Column("updated") >= since) } else { q = q.filter(Column("deleted") == false) }
            if let marker { q = q.filter(Column("id") > marker) }
            if let name = call.query["name"] { q = q.filter(Column("name") == name) }
            var vols = try q.order(Column("id")).fetchAll(db)
            if let status = call.query["status"]?.lowercased() { vols = vols.filter { Self.cinderStatus($0.status) == status || $0.status.rawValue.lowercased() == status } }
            if let limit { vols = Array(vols.prefix(limit)) }
            let ctx = try detail ? volumeContext(db, vols) : VolumeContext(types: [:], metadata: [:])
            return .json(200, .object([("volumes", .array(vols.map { volumeView($0, ctx, call, detail: detail) }))]))
        }
    }

    func showVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        return try registry.db.read { db in
            let v = try ownedVolume(db, call.param("volume_id"), user)
            return .json(200, .object([("volume", volumeView(v, try volumeContext(db, [v]), call, detail: true))]))
        }
    }

    /// POST /volumes: server_id from the volume or the scheduler hint; one
    /// source at most (imageRef, snapshot_id, source_volid: a clone of the
    /// user's volume, O(1) in the store, for types whose provider clones).
    func createVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let body = try Input.body(call)
        let v = try Input.object(body, "volume")
        var size = try Input.int(v, "size")
        let name = try Input.string(v, "name") ?? Input.string(v, "display_name")
        let description = try Input.string(v, "description") ?? Input.string(v, "display_description")
        var serverRef = try Input.id(v, "server_id")
        for holder in [body, v] where serverRef == nil {
            if let hints = holder["OS-SCH-HNT:scheduler_hints"], !(hints is NSNull) {
                guard let h = hints as? [String: Any] else { throw Input.bad("'OS-SCH-HNT:scheduler_hints' must be an object.") }
                serverRef = try Input.id(h, "server_id")
            }
        }
        // Without a server: an AVAILABLE volume (Synnefo 0.21, Ganeti 3.1); attach it later.
        let serverID = try serverRef.map { ref -> Int64 in
            guard let id = Int64(ref) else { throw Input.bad("server_id '\(ref.prefix(40))' is not a server id.") }
            return id
        }
        let image = try Input.id(v, "imageRef"), snapshot = try Input.id(v, "snapshot_id"), sourceVol = try Input.id(v, "source_volid")
        let sources = [image.map { "image:\($0)" }, snapshot.map { "snapshot:\($0)" }, sourceVol.map { "volume:\($0)" }].compactMap { $0 }
        guard sources.count <= 1 else { throw Input.bad("give one source at most (imageRef, snapshot_id or source_volid), not \(sources.count)") }
        let volumeType = try Input.id(v, "volume_type")
        let metadata = try Input.metadata(v) ?? [:]
        if size == nil {
            // The source's size, rounded up to GB.
            size = try registry.db.read { db -> Int? in
                if let snapshot, let s = try Snapshot.fetchOne(db, key: snapshot), s.userid == user.id { return s.size }
                if let image, let i = try Image.fetchOne(db, key: image), i.isPublic || i.owner == user.id { return Int((i.size + (1 << 30) - 1) >> 30) }
                if let sourceVol {
                    // Another user's volume is as missing as one that never was.
                    guard let id = Int64(sourceVol), let s = try Volume.fetchOne(db, key: id), s.userid == user.id else {
                        throw CycladesError(.itemNotFound, "volume \(sourceVol.prefix(40)) does not exist")
                    }
                    return s.size
                }
                return nil
            }
            guard size != nil else { throw Input.bad("Malformed request. Missing attribute 'size'.") }
        }
        let created = try serverID.map {
            try registry.createVolume(server: $0, user: user.id, sizeGB: size!, source: sources.first, volumeType: volumeType,
                                      name: name, description: description, metadata: metadata)
        } ?? registry.createAvailableVolume(user: user.id, sizeGB: size!, source: sources.first, volumeType: volumeType,
                                            name: name, description: description, metadata: metadata)
        return try registry.db.read { db in
            .json(202, .object([("volume", volumeView(created, try volumeContext(db, [created]), call, detail: true))]))
        }
    }

    func updateVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let body = try Input.body(call)
        let u = try Input.object(body, "volume")
        let name = try Input.string(u, "name") ?? Input.string(u, "display_name")
        let description = try Input.string(u, "description") ?? Input.string(u, "display_description")
        let dot = try Input.bool(u, "delete_on_termination")
        let owned = try registry.db.read { db in try ownedVolume(db, call.param("volume_id"), user) }
        if let dot { _ = try registry.setDeleteOnTermination(volume: owned.id!, dot, user: user.id) }
        let v = try registry.describeVolume(owned.id!, name: name, description: description)
        return try registry.db.read { db in
            .json(200, .object([("volume", volumeView(v, try volumeContext(db, [v]), call, detail: true))]))
        }
    }

    func deleteVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let v = try registry.db.read { db in try ownedVolume(db, call.param("volume_id"), user) }
        _ = try registry.removeVolume(v.id!, user: user.id)
        return .empty(202)
    }

    func volumeMetadata(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let v = try registry.db.read { db in try ownedVolume(db, call.param("volume_id"), user) }
        return try .json(200, ["metadata": try registry.metadata(volume: v.id!)])
    }

    func setVolumeMetadata(_ call: Call, replace: Bool) throws -> Reply {
        let user = try call.requireUser
        let body = try Input.body(call)
        guard let m = try Input.metadata(body) else { throw Input.bad("Malformed request. Missing attribute 'metadata'.") }
        let v = try registry.db.read { db in try ownedVolume(db, call.param("volume_id"), user) }
        try registry.setMetadata(volume: v.id!, m, replace: replace)
        return try .json(200, ["metadata": try registry.metadata(volume: v.id!)])
    }

    func deleteVolumeMetadata(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let key = call.param("key")
        let v = try registry.db.read { db in try ownedVolume(db, call.param("volume_id"), user) }
        try registry.deleteMetadata(volume: v.id!, key: key)
        return .empty(200)
    }

    /// POST /volumes/{id}/action: os-extend grows through Ganeti; others are refused.
    func volumeAction(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let body = try Input.body(call)
        guard body.count == 1, let action = body.keys.first else { throw Input.bad("an action is one key, e.g. {\"os-extend\": {\"new_size\": 2}}") }
        let v = try registry.db.read { db in try ownedVolume(db, call.param("volume_id"), user) }
        switch action {
        case "os-extend":
            let a = try Input.object(body, action)
            guard let size = try Input.int(a, "new_size") else { throw Input.bad("Malformed request. Missing attribute 'new_size'.") }
            _ = try registry.extendVolume(v.id!, user: user.id, newSizeGB: size)
            return .empty(202)
        default:
            throw Input.bad("action '\(action.prefix(60))' is not supported (os-extend)")
        }
    }

    // MARK: types

    static func typeView(_ t: VolumeType) -> [String: Any] {
        ["id": String(t.id!), "name": t.name, "description": NSNull(), "is_public": true, "deleted": t.deleted,
         "extra_specs": ["SNF:disk_template": t.diskTemplate], "SNF:disk_template": t.diskTemplate]
    }

    func listTypes(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        let types = try registry.db.read { db in try VolumeType.filter(Column("deleted") == false).order(Column("id")).fetchAll(db) }
        return try .json(200, ["volume_types": types.map(Self.typeView)])
    }

    func showType(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        let ref = call.param("type_id")
        let t = try registry.db.read { db in
            try VolumeType.filter((Column("id") == (Int64(ref) ?? -1) || Column("name") == ref) && Column("deleted") == false).fetchOne(db)
        }
        guard let t else { throw CycladesError(.itemNotFound, "volume type \(ref) does not exist") }
        return try .json(200, ["volume_type": Self.typeView(t)])
    }

    // MARK: snapshots

    func snapshotView(_ s: Snapshot, _ call: Call, detail: Bool) -> [String: Any] {
        let links: [[String: Any]] = [["rel": "self", "href": "\(call.base)\(call.prefix)/snapshots/\(s.id)"]]
        var out: [String: Any] = ["id": s.id, "name": s.name, "display_name": s.name, "links": links]
        guard detail else { return out }
        out["description"] = NSNull()
        out["display_description"] = NSNull()
        out["volume_id"] = s.volumeID.map { String($0) as Any } ?? NSNull()
        out["size"] = s.size
        out["status"] = s.status.lowercased()
        out["progress"] = s.status == "AVAILABLE" ? "100%" : "0%"
        out["created_at"] = s.created.openstack
        out["updated_at"] = s.created.openstack
        out["metadata"] = [String: String]()
        out["user_id"] = s.userid
        out["os-extended-snapshot-attributes:project_id"] = s.userid
        return out
    }

    func ownedSnapshot(_ db: GRDB.Database, _ ref: String, _ user: User) throws -> Snapshot {
        guard let s = try Snapshot.fetchOne(db, key: ref), s.userid == user.id else {
            throw CycladesError(.itemNotFound, "snapshot \(ref) does not exist")
        }
        return s
    }

    func listSnapshots(_ call: Call, detail: Bool) throws -> Reply {
        let user = try call.requireUser
        let limit = try call.query["limit"].map { s -> Int in
            guard let n = Int(s), n >= 0 else { throw CycladesError(.badRequest, "limit must be a whole number >= 0") }
            return n
        }
        var list = try registry.db.read { db in try Snapshot.filter(Column("userid") == user.id).order(Column("created"), Column("id")).fetchAll(db) }
        if let marker = call.query["marker"] {
            guard let i = list.firstIndex(where: { $0.id == marker }) else { throw CycladesError(.badRequest, "marker \(marker) is not a snapshot") }
            list = Array(list[(i + 1)...])
        }
        if let name = call.query["name"] { list = list.filter { $0.name == name } }
        if let status = call.query["status"]?.lowercased() { list = list.filter { $0.status.lowercased() == status } }
        if let limit { list = Array(list.prefix(limit)) }
        return try .json(200, ["snapshots": list.map { snapshotView($0, call, detail: detail) }])
    }

    func showSnapshot(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.db.read { db in try ownedSnapshot(db, call.param("snapshot_id"), user) }
        return try .json(200, ["snapshot": snapshotView(s, call, detail: true)])
    }

    /// An O(1) snapshot in the store: directly, or through this node's
    /// archip serve when the volume is attached here (so it holds every
    /// acknowledged write). The API server must run where the store is mounted.
    func createSnapshot(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let body = try Input.body(call)
        let o = try Input.object(body, "snapshot")
        guard let volRef = try Input.id(o, "volume_id") else { throw Input.bad("Malformed request. Missing attribute 'volume_id'.") }
        let name = try Input.string(o, "name") ?? Input.string(o, "display_name")
        _ = try Input.bool(o, "force")
        _ = try Input.metadata(o)
        let v = try registry.db.read { db in try ownedVolume(db, volRef, user) }
        let runtimeDir = self.runtimeDir
        let snap = try registry.createSnapshot(of: v, owner: user.id, name: name, store: try store()) { source, target, refusal in
            guard try NodeSnapshot.take(source, as: target, runtimeDir: runtimeDir) else {
                throw CycladesError(.conflict, "\(refusal.description); it is attached on another node")
            }
        }
        return try .json(202, ["snapshot": snapshotView(snap, call, detail: true)])
    }

    func deleteSnapshot(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.db.read { db in try ownedSnapshot(db, call.param("snapshot_id"), user) }
        try registry.removeSnapshot(s.id, store: try store())
        return .empty(202)
    }

    func store() throws -> VolumeStore {
        guard let path = storePath else { throw CycladesError(.notImplemented, "snapshots need the store: set [store] path in the configuration") }
        do {
            // A folder or a pool, as archip and the provider open it; never created here.
            return try StoreOpener.open(path, node: ProcessInfo.processInfo.hostName, mustExist: true)
        } catch let e as StoreError {
            throw CycladesError(.backend, e.description)
        }
    }
}
