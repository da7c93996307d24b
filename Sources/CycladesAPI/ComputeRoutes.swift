import Cyclades
import Foundation
import GRDB

/// The compute extensions at /compute/v2.1 and /compute/v2.0: servers with
/// block_device_mapping_v2, flavors, images, os-volume_attachments.
extension CycladesAPI {
    static let computePrefixes = ["/compute/v2.1", "/compute/v2.0"]

    func computeRoutes() -> [Route] {
        var r: [Route] = []
        func add(_ m: Method, _ path: String, auth: Bool = true, _ h: @escaping @Sendable (Call) throws -> Reply) {
            r.append(Route(method: m, path: path, auth: auth, handler: h))
        }
        add(.GET, "/compute", auth: false) { try Self.computeVersions($0, one: nil) }
        for p in Self.computePrefixes {
            let v = p.hasSuffix("2.1") ? "v2.1" : "v2.0"
            add(.GET, p, auth: false) { try Self.computeVersions($0, one: v) }
            add(.GET, "\(p)/servers") { [unowned self] in try listServers($0, detail: false) }
            add(.GET, "\(p)/servers/detail") { [unowned self] in try listServers($0, detail: true) }
            add(.POST, "\(p)/servers") { [unowned self] in try createServer($0) }
            add(.GET, "\(p)/servers/{server_id}") { [unowned self] in try showServer($0) }
            add(.DELETE, "\(p)/servers/{server_id}") { [unowned self] in try deleteServer($0) }
            add(.GET, "\(p)/servers/{server_id}/os-volume_attachments") { [unowned self] in try listAttachments($0) }
            add(.POST, "\(p)/servers/{server_id}/os-volume_attachments") { [unowned self] in try attach($0) }
            add(.GET, "\(p)/servers/{server_id}/os-volume_attachments/{volume_id}") { [unowned self] in try showAttachment($0) }
            add(.DELETE, "\(p)/servers/{server_id}/os-volume_attachments/{volume_id}") { [unowned self] in try detach($0) }
            add(.GET, "\(p)/flavors") { [unowned self] in try listFlavors($0, detail: false) }
            add(.GET, "\(p)/flavors/detail") { [unowned self] in try listFlavors($0, detail: true) }
            add(.GET, "\(p)/flavors/{flavor_id}") { [unowned self] in try showFlavor($0) }
            add(.GET, "\(p)/flavors/{flavor_id}/os-extra_specs") { [unowned self] in try flavorExtraSpecs($0) }
            add(.GET, "\(p)/images") { [unowned self] in try listImages($0, detail: false) }
            add(.GET, "\(p)/images/detail") { [unowned self] in try listImages($0, detail: true) }
            add(.GET, "\(p)/images/{image_id}") { [unowned self] in try showImage($0) }
        }
        return r
    }

    // MARK: versions

    /// Served without a token (openstacksdk asks unauthenticated). 2.1 with no
    /// microversions: min = max = 2.1.
    static func computeVersions(_ call: Call, one: String?) throws -> Reply {
        func doc(_ id: String) -> [String: Any] {
            ["id": id, "status": id == "v2.1" ? "CURRENT" : "SUPPORTED", "version": id == "v2.1" ? "2.1" : "",
             "min_version": id == "v2.1" ? "2.1" : "", "updated": "2013-07-23T11:33:21Z",
             "links": [["rel": "self", "href": "\(call.base)/compute/\(id)/"]]]
        }
        if let one { return try .json(200, ["version": doc(one)]) }
        return try .json(200, ["versions": [doc("v2.1"), doc("v2.0")]])
    }

    // MARK: servers

    static func serverStatus(_ s: ServerStatus) -> String {
        switch s {
        case .stopped: return "SHUTOFF"
        default: return s.rawValue
        }
    }

    func ownedServer(_ db: GRDB.Database, _ ref: String, _ user: User) throws -> Server {
        guard let id = Int64(ref), let s = try Server.fetchOne(db, key: id), s.userid == user.id, !s.deleted else {
            throw CycladesError(.itemNotFound, "server \(ref) does not exist")
        }
        return s
    }

    /// The servers' volumes (not deleted, by index), in one query for a whole list.
    func serverVolumes(_ db: GRDB.Database, _ servers: [Server]) throws -> [Int64: [Volume]] {
        var out: [Int64: [Volume]] = [:]
        let ids = servers.compactMap(\.id)
        if ids.count == 1 {
            out[ids[0]] = try Volume.filter(Column("machineID") == ids[0] && Column("deleted") == false).order(Column("index")).fetchAll(db)
        } else if !ids.isEmpty {
            let users = Array(Set(servers.map(\.userid)))
            let vols = try Volume.fetchAll(db, sql: """
                SELECT * FROM volumes WHERE deleted = 0 AND machineID IN
                  (SELECT id FROM servers WHERE userid IN (\(users.map { _ in "?" }.joined(separator: ","))))
                ORDER BY machineID, "index"
                """, arguments: StatementArguments(users))
            let wanted = Set(ids)
            for v in vols where wanted.contains(v.machineID!) { out[v.machineID!, default: []].append(v) }
        }
        return out
    }

    /// A server as nova reads it, with the Synnefo keys (`volumes`) and
    /// `os-extended-volumes:volumes_attached`; `vols` from `serverVolumes`.
    func serverView(_ s: Server, _ vols: [Volume], _ call: Call, detail: Bool) -> JSON {
        let id = String(s.id!)
        let href = JSON.string("\(call.base)\(call.prefix)/servers/\(id)")
        let links = JSON.array([.object([("rel", .string("self")), ("href", href)]), .object([("rel", .string("bookmark")), ("href", href)])])
        guard detail else { return .object([("id", .string(id)), ("name", .string(s.name)), ("links", links)]) }
        var out: [(String, JSON)] = [
            ("id", .string(id)), ("name", .string(s.name)), ("links", links),
            ("status", .string(Self.serverStatus(s.status))), ("tenant_id", .string(s.project)), ("user_id", .string(s.userid)),
            ("metadata", .object([])),
            ("image", s.imageID.map { JSON.object([("id", .string($0)), ("links", .array([]))]) } ?? .string("")),
            ("flavor", .object([("id", .string(String(s.flavorID))),
                                ("links", .array([.object([("rel", .string("bookmark")), ("href", .string("\(call.base)\(call.prefix)/flavors/\(s.flavorID)"))])]))])),
            ("created", .string(s.created.openstack + "Z")), ("updated", .string(s.updated.openstack + "Z")),
            ("addresses", .object([])), ("hostId", .string("")), ("accessIPv4", .string("")), ("accessIPv6", .string("")),
            ("progress", .int(s.status == .active ? 100 : 0)), ("key_name", .null), ("config_drive", .string("")),
            ("security_groups", .array([])),
            ("OS-EXT-STS:vm_state", .string(s.status.rawValue.lowercased())),
            ("OS-EXT-STS:task_state", .string(s.pendingAction.map { $0 == "remove" ? "deleting" : "spawning" })),
            ("OS-EXT-STS:power_state", .int(s.status == .active ? 1 : 0)),
            ("OS-EXT-AZ:availability_zone", .string("nova")), ("OS-DCF:diskConfig", .string("MANUAL")),
            ("os-extended-volumes:volumes_attached",
             .array(vols.map { .object([("id", .string(String($0.id!))), ("delete_on_termination", .bool($0.deleteOnTermination))]) })),
            ("volumes", .array(vols.map { .int(Int($0.id!)) })),
        ]
        if s.status == .error {
            out.append(("fault", .object([("code", .int(500)), ("message", .string("the Ganeti job of server \(id) failed")),
                                          ("created", .string(s.updated.openstack + "Z"))])))
        }
        return .object(out)
    }

    func listServers(_ call: Call, detail: Bool) throws -> Reply {
        let user = try call.requireUser
        let limit = try call.query["limit"].map { s -> Int in
            guard let n = Int(s), n >= 0 else { throw CycladesError(.badRequest, "limit must be a whole number >= 0") }
            return n
        }
        return try registry.db.read { db in
            var q = Server.filter(Column("userid") == user.id && Column("deleted") == false)
            if let name = call.query["name"] { q = q.filter(Column("name") == name) }
            if let m = call.query["marker"] { q = q.filter(Column("id") > (Int64(m) ?? 0)) }
            var list = try q.order(Column("id")).fetchAll(db)
            if let limit { list = Array(list.prefix(limit)) }
            let vols = detail ? try serverVolumes(db, list) : [:]
            return .json(200, .object([("servers", .array(list.map { serverView($0, vols[$0.id!] ?? [], call, detail: detail) }))]))
        }
    }

    func showServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        return try registry.db.read { db in
            let s = try ownedServer(db, call.param("server_id"), user)
            return .json(200, .object([("server", serverView(s, try serverVolumes(db, [s])[s.id!] ?? [], call, detail: true))]))
        }
    }

    /// POST /servers: element 0 of block_device_mapping_v2 is the root (never
    /// blank); without it the root is imageRef at the flavor's disk size.
    func createServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let body = try Input.body(call)
        let s = try Input.object(body, "server")
        guard let name = try Input.string(s, "name"), !name.isEmpty else { throw Input.bad("Malformed request. Missing attribute 'name'.") }
        guard let flavorRef = try Input.id(s, "flavorRef") else { throw Input.bad("Malformed request. Missing attribute 'flavorRef'.") }
        let imageRef = try Input.id(s, "imageRef").flatMap { $0.isEmpty ? nil : $0 }
        var volumes: [VolumeRequest] = []
        var keep: [Int] = []   // indexes of volumes with delete_on_termination false
        var attach: [Int64] = []   // source_type volume: AVAILABLE volumes attached once the server is built
        if let raw = s["block_device_mapping_v2"], !(raw is NSNull) {
            guard let list = raw as? [Any], list.allSatisfy({ $0 is [String: Any] }) else { throw Input.bad("Block Device Mapping is Invalid: a list of objects is expected.") }
            for (i, item) in list.enumerated() {
                let d = item as! [String: Any]
                guard let type = try Input.string(d, "source_type") else { throw Input.bad("Block Device Mapping is Invalid: item \(i) has no source_type.") }
                let uuid = try Input.id(d, "uuid")
                let size = try Input.int(d, "volume_size")
                let dest = try Input.string(d, "destination_type")
                let dot = try Input.bool(d, "delete_on_termination")
                switch type {
                case "image", "snapshot":
                    guard let uuid else { throw Input.bad("Block Device Mapping is Invalid: item \(i) (\(type)) has no uuid.") }
                    // novaclient puts --image first as a local disk, followed by the volumes it was given.
                    if dest == "local" && type == "image" && i == 0 && list.count > 1 { continue }
                    if dot == false { keep.append(volumes.count) }
                    volumes.append(VolumeRequest(sizeGB: size, source: "\(type):\(uuid)"))
                case "blank":
                    if volumes.isEmpty { throw Input.bad("Block Device Mapping is Invalid: the root (item 0) cannot be blank.") }
                    if dot == false { keep.append(volumes.count) }
                    volumes.append(VolumeRequest(sizeGB: size, source: nil))
                case "volume":
                    guard i > 0 else {
                        throw CycladesError(.notImplemented, "booting from an existing volume (source_type volume, item 0) is not supported: Ganeti creates an instance with new disks only; boot from an image or a snapshot and attach the volume")
                    }
                    guard let uuid, let vid = Int64(uuid) else { throw CycladesError(.itemNotFound, "volume \((uuid ?? "").prefix(40)) does not exist") }
                    attach.append(vid)
                default:
                    throw Input.bad("Block Device Mapping is Invalid: source_type '\(type.prefix(40))' (image, snapshot, blank, volume).")
                }
                if let size, size < 1 { throw Input.bad("Block Device Mapping is Invalid: volume_size \(size) of item \(i).") }
            }
            if let imageRef, let root = volumes.first?.source, root.hasPrefix("image:"), root != "image:\(imageRef)" {
                throw Input.bad("imageRef \(imageRef) differs from the root volume's image (\(root.dropFirst(6)))")
            }
        }
        if volumes.isEmpty && imageRef == nil { throw Input.bad("give imageRef or a block_device_mapping_v2 whose first item has a source") }
        // The flavor by id (as nova sends it), or by name.
        let flavor = try registry.db.read { db in try Flavor.filter(Column("id") == (Int64(flavorRef) ?? -1) || Column("name") == flavorRef).fetchOne(db) }
        guard let flavor else { throw Input.bad("flavor \(flavorRef.prefix(60)) does not exist") }
        if !attach.isEmpty { try registry.checkAttachable(attach, flavor: String(flavor.id!), user: user.id, newVolumes: max(volumes.count, 1)) }
        let server = try registry.createServer(name: name, user: user.id, flavor: String(flavor.id!), image: volumes.isEmpty ? imageRef : nil, volumes: volumes)
        try keepVolumes(of: server, indexes: keep, user: user)
        if !attach.isEmpty { try registry.attachWhenBuilt(attach, server: server.id!, user: user.id) }
        let links: [[String: Any]] = [["rel": "self", "href": "\(call.base)\(call.prefix)/servers/\(server.id!)"]]
        return try .json(202, ["server": ["id": String(server.id!), "links": links, "adminPass": "", "OS-DCF:diskConfig": "MANUAL",
                                          "security_groups": [["name": "default"]]]])
    }

    func deleteServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.db.read { db in try ownedServer(db, call.param("server_id"), user) }
        _ = try registry.removeServer(s.id!, user: user.id)
        return .empty(204)
    }

    // MARK: attachments

    static func attachmentView(_ v: Volume) -> [String: Any] {
        ["id": String(v.id!), "volumeId": String(v.id!), "serverId": String(v.machineID!), "device": device(v.index),
         "delete_on_termination": v.deleteOnTermination]
    }

    func listAttachments(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        return try registry.db.read { db in
            let s = try ownedServer(db, call.param("server_id"), user)
            let vols = try Volume.filter(Column("machineID") == s.id! && Column("deleted") == false).order(Column("index")).fetchAll(db)
            return try .json(200, ["volumeAttachments": vols.map(Self.attachmentView)])
        }
    }

    func showAttachment(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        return try registry.db.read { db in
            let s = try ownedServer(db, call.param("server_id"), user)
            guard let vid = Int64(call.param("volume_id")), let v = try Volume.fetchOne(db, key: vid), v.machineID == s.id, !v.deleted else {
                throw CycladesError(.itemNotFound, "volume \(call.param("volume_id")) is not attached to server \(s.id!)")
            }
            return try .json(200, ["volumeAttachment": Self.attachmentView(v)])
        }
    }

    /// Attach and detach of existing volumes (Ganeti 3.1): AttachmentRoutes.swift.
    func attach(_ call: Call) throws -> Reply { try attachVolumeRoute(call) }

    func detach(_ call: Call) throws -> Reply { try detachVolumeRoute(call) }

    // MARK: flavors

    func flavorView(_ f: Flavor, _ types: [Int64: VolumeType], _ call: Call, detail: Bool) -> [String: Any] {
        let id = String(f.id!)
        let links: [[String: Any]] = [["rel": "self", "href": "\(call.base)\(call.prefix)/flavors/\(id)"],
                                      ["rel": "bookmark", "href": "\(call.base)\(call.prefix)/flavors/\(id)"]]
        var out: [String: Any] = ["id": id, "name": f.name, "links": links]
        guard detail else { return out }
        out["ram"] = f.ram
        out["disk"] = f.disk
        out["vcpus"] = f.cpu
        out["swap"] = ""
        out["rxtx_factor"] = 1.0
        out["OS-FLV-EXT-DATA:ephemeral"] = 0
        out["OS-FLV-DISABLED:disabled"] = false
        out["os-flavor-access:is_public"] = true
        out["SNF:disk_template"] = types[f.volumeTypeID]?.diskTemplate ?? NSNull()
        out["SNF:volume_type"] = f.volumeTypeID
        return out
    }

    func listFlavors(_ call: Call, detail: Bool) throws -> Reply {
        _ = try call.requireUser
        return try registry.db.read { db in
            let types = Dictionary(uniqueKeysWithValues: try VolumeType.fetchAll(db).map { ($0.id!, $0) })
            return try .json(200, ["flavors": try Flavor.order(Column("id")).fetchAll(db).map { flavorView($0, types, call, detail: detail) }])
        }
    }

    func findFlavor(_ db: GRDB.Database, _ ref: String) throws -> Flavor {
        guard let id = Int64(ref), let f = try Flavor.fetchOne(db, key: id) else { throw CycladesError(.itemNotFound, "flavor \(ref) does not exist") }
        return f
    }

    func showFlavor(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        return try registry.db.read { db in
            let types = Dictionary(uniqueKeysWithValues: try VolumeType.fetchAll(db).map { ($0.id!, $0) })
            return try .json(200, ["flavor": flavorView(try findFlavor(db, call.param("flavor_id")), types, call, detail: true)])
        }
    }

    func flavorExtraSpecs(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        return try registry.db.read { db in
            let f = try findFlavor(db, call.param("flavor_id"))
            let t = try VolumeType.fetchOne(db, key: f.volumeTypeID)
            return try .json(200, ["extra_specs": ["SNF:disk_template": t?.diskTemplate ?? "", "SNF:volume_type": String(f.volumeTypeID)]])
        }
    }

    // MARK: images

    func imageView(_ i: Image, _ call: Call, detail: Bool) -> [String: Any] {
        let links: [[String: Any]] = [["rel": "self", "href": "\(call.base)\(call.prefix)/images/\(i.id)"]]
        var out: [String: Any] = ["id": i.id, "name": i.name, "links": links]
        guard detail else { return out }
        out["status"] = "ACTIVE"
        out["minDisk"] = Int((i.size + (1 << 30) - 1) >> 30)
        out["minRam"] = 0
        out["progress"] = 100
        out["OS-EXT-IMG-SIZE:size"] = i.size
        out["metadata"] = ["owner": i.owner, "public": i.isPublic ? "true" : "false"]
        out["created"] = "1970-01-01T00:00:00Z"
        out["updated"] = "1970-01-01T00:00:00Z"
        return out
    }

    func listImages(_ call: Call, detail: Bool) throws -> Reply {
        let user = try call.requireUser
        let list = try registry.db.read { db in
            try Image.filter(Column("isPublic") == true || Column("owner") == user.id).order(Column("name"), Column("id")).fetchAll(db)
        }
        let named = call.query["name"].map { n in list.filter { $0.name == n } } ?? list
        return try .json(200, ["images": named.map { imageView($0, call, detail: detail) }])
    }

    func showImage(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let ref = call.param("image_id")
        let i = try registry.db.read { db in try Image.fetchOne(db, key: ref) }
        guard let i, i.isPublic || i.owner == user.id else { throw CycladesError(.itemNotFound, "image \(ref) does not exist") }
        return try .json(200, ["image": imageView(i, call, detail: true)])
    }
}
