import Cyclades
import Foundation
import Hummingbird

/// The compute extensions at /compute/v2.1 and /compute/v2.0: servers with
/// block_device_mapping_v2, flavors, images, os-volume_attachments.
extension CycladesAPI {
    static let computePrefixes = ["/compute/v2.1", "/compute/v2.0"]

    func addComputeRoutes(_ router: Router<BasicRequestContext>) {
        Endpoints(self, router, "/compute").get(auth: false) { try Self.computeVersions($0, one: nil) }
        for p in Self.computePrefixes {
            let v = p.hasSuffix("2.1") ? "v2.1" : "v2.0"
            let g = Endpoints(self, router, p)
            g.get(auth: false) { try Self.computeVersions($0, one: v) }
            g.get("servers") { try self.listServers($0, detail: false) }
            g.get("servers/detail") { try self.listServers($0, detail: true) }
            g.post("servers") { try self.createServer($0) }
            g.get("servers/{server_id}") { try self.showServer($0) }
            g.delete("servers/{server_id}") { try self.deleteServer($0) }
            g.get("servers/{server_id}/os-volume_attachments") { try self.listAttachments($0) }
            g.post("servers/{server_id}/os-volume_attachments") { try self.attach($0) }
            g.get("servers/{server_id}/os-volume_attachments/{volume_id}") { try self.showAttachment($0) }
            g.delete("servers/{server_id}/os-volume_attachments/{volume_id}") { try self.detach($0) }
            g.get("flavors") { try self.listFlavors($0, detail: false) }
            g.get("flavors/detail") { try self.listFlavors($0, detail: true) }
            g.get("flavors/{flavor_id}") { try self.showFlavor($0) }
            g.get("flavors/{flavor_id}/os-extra_specs") { try self.flavorExtraSpecs($0) }
            g.get("images") { try self.listImages($0, detail: false) }
            g.get("images/detail") { try self.listImages($0, detail: true) }
            g.get("images/{image_id}") { try self.showImage($0) }
        }
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

    /// A server as nova reads it, with the Synnefo keys (`volumes`) and
    /// `os-extended-volumes:volumes_attached`; `vols` from `Registry.volumes(ofServers:)`.
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
        let after = call.query["marker"].map { Int64($0) ?? 0 }
        var list = try registry.servers(ServerFilter(owner: user.id, name: call.query["name"], after: after))
        if let limit { list = Array(list.prefix(limit)) }
        let vols = detail ? try registry.volumes(ofServers: list) : [:]
        return .json(200, .object([("servers", .array(list.map { serverView($0, vols[$0.id!] ?? [], call, detail: detail) }))]))
    }

    func showServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
        return .json(200, .object([("server", serverView(s, try registry.volumes(server: s.id!), call, detail: true))]))
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
        if let raw = s["block_device_mapping_v2"], !(raw is NSNull) {
            guard let list = raw as? [Any], list.allSatisfy({ $0 is [String: Any] }) else { throw Input.bad("Block Device Mapping is Invalid: a list of objects is expected.") }
            for (i, item) in list.enumerated() {
                let d = item as! [String: Any]
                guard let type = try Input.string(d, "source_type") else { throw Input.bad("Block Device Mapping is Invalid: item \(i) has no source_type.") }
                let uuid = try Input.id(d, "uuid")
                let size = try Input.int(d, "volume_size")
                let dest = try Input.string(d, "destination_type")
                if try Input.bool(d, "delete_on_termination") == false {
                    throw CycladesError(.notImplemented, "delete_on_termination false (item \(i)) is not supported: Ganeti 3.0 detaches an ext disk but can neither attach nor remove it afterwards, so a kept volume could never be used or deleted; a server's volumes go with it")
                }
                switch type {
                case "image", "snapshot":
                    guard let uuid else { throw Input.bad("Block Device Mapping is Invalid: item \(i) (\(type)) has no uuid.") }
                    // novaclient puts --image first as a local disk, followed by the volumes it was given.
                    if dest == "local" && type == "image" && i == 0 && list.count > 1 { continue }
                    volumes.append(VolumeRequest(sizeGB: size, source: "\(type):\(uuid)"))
                case "blank":
                    if volumes.isEmpty { throw Input.bad("Block Device Mapping is Invalid: the root (item 0) cannot be blank.") }
                    volumes.append(VolumeRequest(sizeGB: size, source: nil))
                case "volume":
                    throw CycladesError(.notImplemented, "attaching an existing volume (source_type volume, item \(i)) is not supported: every volume is created with its server")
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
        guard let flavor = try registry.flavor(flavorRef) else { throw Input.bad("flavor \(flavorRef.prefix(60)) does not exist") }
        let server = try registry.createServer(name: name, user: user.id, flavor: String(flavor.id!), image: volumes.isEmpty ? imageRef : nil, volumes: volumes)
        let links: [[String: Any]] = [["rel": "self", "href": "\(call.base)\(call.prefix)/servers/\(server.id!)"]]
        return try .json(202, ["server": ["id": String(server.id!), "links": links, "adminPass": "", "OS-DCF:diskConfig": "MANUAL",
                                          "security_groups": [["name": "default"]]]])
    }

    func deleteServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
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
        let s = try registry.server(call.param("server_id"), owner: user.id)
        return try .json(200, ["volumeAttachments": try registry.volumes(server: s.id!).map(Self.attachmentView)])
    }

    func showAttachment(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
        guard let vid = Int64(call.param("volume_id")), let v = try registry.volume(id: vid), v.machineID == s.id, !v.deleted else {
            throw CycladesError(.itemNotFound, "volume \(call.param("volume_id")) is not attached to server \(s.id!)")
        }
        return try .json(200, ["volumeAttachment": Self.attachmentView(v)])
    }

    /// Attach/detach of existing volumes: the registration layer creates every
    /// volume on its server and removes it with DELETE /volumes/{id}. Checked
    /// on the lab's Ganeti 3.0.2: `modify --disk N:detach` works (even while
    /// running), but attaching an ext disk fails ("Missing provider for
    /// template 'ext'", and with the provider "Only one argument is permitted
    /// in attach op") and no operation removes a detached disk.
    func attach(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        _ = try registry.server(call.param("server_id"), owner: user.id)
        let body = try Input.body(call)
        _ = try Input.object(body, "volumeAttachment")
        throw CycladesError(.notImplemented, "attaching an existing volume is not supported: Ganeti 3.0 refuses to attach ext disks (its checks want the provider and allow only the name); create one on the server (POST /volume/v3/volumes with server_id; source_volid clones a volume)")
    }

    func detach(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        _ = try registry.server(call.param("server_id"), owner: user.id)
        throw CycladesError(.notImplemented, "detaching a volume is not supported: Ganeti 3.0 could detach it but never attach or remove it again; delete it (DELETE /volume/v3/volumes/{id})")
    }

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
        let types = try registry.volumeTypesByID()
        return try .json(200, ["flavors": try registry.flavors().map { flavorView($0, types, call, detail: detail) }])
    }

    func findFlavor(_ ref: String) throws -> Flavor {
        guard let id = Int64(ref), let f = try registry.flavor(id: id) else { throw CycladesError(.itemNotFound, "flavor \(ref) does not exist") }
        return f
    }

    func showFlavor(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        let f = try findFlavor(call.param("flavor_id"))
        return try .json(200, ["flavor": flavorView(f, try registry.volumeTypesByID(), call, detail: true)])
    }

    func flavorExtraSpecs(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        let f = try findFlavor(call.param("flavor_id"))
        let t = try registry.volumeType(id: f.volumeTypeID)
        return try .json(200, ["extra_specs": ["SNF:disk_template": t?.diskTemplate ?? "", "SNF:volume_type": String(f.volumeTypeID)]])
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
        let list = try registry.images(visibleTo: user.id)
        let named = call.query["name"].map { n in list.filter { $0.name == n } } ?? list
        return try .json(200, ["images": named.map { imageView($0, call, detail: detail) }])
    }

    func showImage(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let ref = call.param("image_id")
        guard let i = try registry.image(ref, visibleTo: user.id) else { throw CycladesError(.itemNotFound, "image \(ref) does not exist") }
        return try .json(200, ["image": imageView(i, call, detail: true)])
    }
}
