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

    struct ComputeVersion: Encodable, Sendable {
        var id: String
        var status: String
        var version: String
        var minVersion: String
        var updated = "2013-07-23T11:33:21Z"
        var links: [Link]

        enum CodingKeys: String, CodingKey { case id, status, version, minVersion = "min_version", updated, links }

        init(_ id: String, base: String) {
            self.id = id
            status = id == "v2.1" ? "CURRENT" : "SUPPORTED"
            version = id == "v2.1" ? "2.1" : ""
            minVersion = version
            links = [Link(rel: "self", href: "\(base)/compute/\(id)/")]
        }
    }

    /// Served without a token (openstacksdk asks unauthenticated). 2.1 with no
    /// microversions: min = max = 2.1.
    static func computeVersions(_ call: Call, one: String?) throws -> Reply {
        if let one { return try .encoded(200, Keyed("version", ComputeVersion(one, base: call.base))) }
        return try .encoded(200, Keyed("versions", [ComputeVersion("v2.1", base: call.base), ComputeVersion("v2.0", base: call.base)]))
    }

    // MARK: servers

    static func serverStatus(_ s: ServerStatus) -> String {
        switch s {
        case .stopped: return "SHUTOFF"
        default: return s.rawValue
        }
    }

    /// A list entry of a non-detailed list (servers, flavors): id, name and
    /// its self and bookmark links.
    struct Summary: Encodable, Sendable {
        var id: String
        var name: String
        var links: [Link]

        init(id: Int64?, name: String, collection: String, _ call: Call) {
            self.id = id.map { String($0) } ?? ""
            self.name = name
            let href = "\(call.base)\(call.prefix)/\(collection)/\(self.id)"
            links = [Link(rel: "self", href: href), Link(rel: "bookmark", href: href)]
        }
        init(_ s: Server, _ call: Call) { self.init(id: s.id, name: s.name, collection: "servers", call) }
        init(_ f: Flavor, _ call: Call) { self.init(id: f.id, name: f.name, collection: "flavors", call) }
    }

    /// A server as nova reads it, with the Synnefo keys (`volumes`) and
    /// `os-extended-volumes:volumes_attached`; its volumes from `Registry.volumes(ofServers:)`.
    struct ServerDetail: Encodable, Sendable {
        struct Ref: Encodable, Sendable {
            var id: String
            var links: [Link]
        }
        /// The image: `{"id", "links"}`, or "" when the server boots from a volume.
        enum ImageRef: Encodable, Sendable {
            case image(Ref), none
            func encode(to encoder: any Encoder) throws {
                var c = encoder.singleValueContainer()
                switch self {
                case .image(let r): try c.encode(r)
                case .none: try c.encode("")
                }
            }
        }
        struct Attached: Encodable, Sendable {
            var id: String
            var deleteOnTermination: Bool
            enum CodingKeys: String, CodingKey { case id, deleteOnTermination = "delete_on_termination" }
        }
        struct Fault: Encodable, Sendable {
            var code: Int
            var message: String
            var created: String
        }
        var id: String
        var name: String
        var links: [Link]
        var status: String
        var tenantID: String
        var userID: String
        var metadata: [String: String] = [:]
        var image: ImageRef
        var flavor: Ref
        var created: String
        var updated: String
        var addresses: [String: String] = [:]
        var hostId = ""
        var accessIPv4 = ""
        var accessIPv6 = ""
        var progress: Int
        @Nullable var keyName: String? = nil
        var configDrive = ""
        var securityGroups: [String] = []
        var vmState: String
        @Nullable var taskState: String?
        var powerState: Int
        var availabilityZone = "nova"
        var diskConfig = "MANUAL"
        var volumesAttached: [Attached]
        var volumes: [Int64]
        var fault: Fault?

        enum CodingKeys: String, CodingKey {
            case id, name, links, status, tenantID = "tenant_id", userID = "user_id", metadata, image, flavor, created, updated
            case addresses, hostId, accessIPv4, accessIPv6, progress, keyName = "key_name", configDrive = "config_drive"
            case securityGroups = "security_groups", vmState = "OS-EXT-STS:vm_state", taskState = "OS-EXT-STS:task_state"
            case powerState = "OS-EXT-STS:power_state", availabilityZone = "OS-EXT-AZ:availability_zone", diskConfig = "OS-DCF:diskConfig"
            case volumesAttached = "os-extended-volumes:volumes_attached", volumes, fault
        }

        init(_ s: Server, _ vols: [Volume], _ call: Call) {
            let summary = Summary(s, call)
            id = summary.id
            name = s.name
            links = summary.links
            status = CycladesAPI.serverStatus(s.status)
            tenantID = s.project
            userID = s.userid
            image = s.imageID.map { .image(Ref(id: $0, links: [])) } ?? .none
            flavor = Ref(id: String(s.flavorID), links: [Link(rel: "bookmark", href: "\(call.base)\(call.prefix)/flavors/\(s.flavorID)")])
            created = s.created.openstack + "Z"
            updated = s.updated.openstack + "Z"
            progress = s.status == .active ? 100 : 0
            vmState = s.status.rawValue.lowercased()
            taskState = s.pendingAction.map { $0 == "remove" ? "deleting" : "spawning" }
            powerState = s.status == .active ? 1 : 0
            volumesAttached = vols.map { Attached(id: String($0.id!), deleteOnTermination: $0.deleteOnTermination) }
            volumes = vols.map { $0.id! }
            if s.status == .error {
                fault = Fault(code: 500, message: "the Ganeti job of server \(id) failed", created: updated)
            }
        }
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
        guard detail else { return try .encoded(200, Keyed("servers", list.map { Summary($0, call) })) }
        let vols = try registry.volumes(ofServers: list)
        return try .encoded(200, Keyed("servers", list.map { ServerDetail($0, vols[$0.id!] ?? [], call) }))
    }

    func showServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
        return try .encoded(200, Keyed("server", ServerDetail(s, try registry.volumes(server: s.id!), call)))
    }

    /// POST /servers: element 0 of block_device_mapping_v2 is the root (never
    /// blank); without it the root is imageRef at the flavor's disk size.
    struct CreateServerRequest: Decodable {
        var name: String
        var flavorRef: String
        var imageRef: String?
        var volumes: [VolumeRequest] = []
        /// Indexes of volumes with delete_on_termination false: they stay (AVAILABLE) when the server goes.
        var keep: [Int] = []
        /// source_type volume: AVAILABLE volumes attached once the server is built.
        var attach: [Int64] = []

        init(from decoder: any Decoder) throws {
            let s = try Fields(decoder).object("server")
            guard let name = try s.string("name"), !name.isEmpty else { throw Fields.bad("Malformed request. Missing attribute 'name'.") }
            guard let flavorRef = try s.id("flavorRef") else { throw Fields.bad("Malformed request. Missing attribute 'flavorRef'.") }
            self.name = name
            self.flavorRef = flavorRef
            imageRef = try s.id("imageRef").flatMap { $0.isEmpty ? nil : $0 }
            if let list = try s.objects("block_device_mapping_v2", wrong: "Block Device Mapping is Invalid: a list of objects is expected.") {
                for (i, d) in list.enumerated() {
                    guard let type = try d.string("source_type") else { throw Fields.bad("Block Device Mapping is Invalid: item \(i) has no source_type.") }
                    let uuid = try d.id("uuid")
                    let size = try d.int("volume_size")
                    let dest = try d.string("destination_type")
                    let dot = try d.bool("delete_on_termination")
                    switch type {
                    case "image", "snapshot":
                        guard let uuid else { throw Fields.bad("Block Device Mapping is Invalid: item \(i) (\(type)) has no uuid.") }
                        // novaclient puts --image first as a local disk, followed by the volumes it was given.
                        if dest == "local" && type == "image" && i == 0 && list.count > 1 { continue }
                        if dot == false { keep.append(volumes.count) }
                        volumes.append(VolumeRequest(sizeGB: size, source: "\(type):\(uuid)"))
                    case "blank":
                        if volumes.isEmpty { throw Fields.bad("Block Device Mapping is Invalid: the root (item 0) cannot be blank.") }
                        if dot == false { keep.append(volumes.count) }
                        volumes.append(VolumeRequest(sizeGB: size, source: nil))
                    case "volume":
                        guard i > 0 else {
                            throw CycladesError(.notImplemented, "booting from an existing volume (source_type volume, item 0) is not supported: Ganeti creates an instance with new disks only; boot from an image or a snapshot and attach the volume")
                        }
                        guard let uuid, let vid = Int64(uuid) else { throw CycladesError(.itemNotFound, "volume \((uuid ?? "").prefix(40)) does not exist") }
                        attach.append(vid)
                    default:
                        throw Fields.bad("Block Device Mapping is Invalid: source_type '\(type.prefix(40))' (image, snapshot, blank, volume).")
                    }
                    if let size, size < 1 { throw Fields.bad("Block Device Mapping is Invalid: volume_size \(size) of item \(i).") }
                }
                if let imageRef, let root = volumes.first?.source, root.hasPrefix("image:"), root != "image:\(imageRef)" {
                    throw Fields.bad("imageRef \(imageRef) differs from the root volume's image (\(root.dropFirst(6)))")
                }
            }
            if volumes.isEmpty && imageRef == nil { throw Fields.bad("give imageRef or a block_device_mapping_v2 whose first item has a source") }
        }
    }

    struct ServerCreated: Encodable, Sendable {
        struct Group: Encodable, Sendable { var name: String }
        var id: String
        var links: [Link]
        var adminPass = ""
        var diskConfig = "MANUAL"
        var securityGroups = [Group(name: "default")]
        enum CodingKeys: String, CodingKey { case id, links, adminPass, diskConfig = "OS-DCF:diskConfig", securityGroups = "security_groups" }
    }

    func createServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let req = try call.decode(CreateServerRequest.self)
        // The flavor by id (as nova sends it), or by name.
        guard let flavor = try registry.flavor(req.flavorRef) else { throw Fields.bad("flavor \(req.flavorRef.prefix(60)) does not exist") }
        if !req.attach.isEmpty {
            try registry.checkAttachable(req.attach, flavor: String(flavor.id!), user: user.id, newVolumes: max(req.volumes.count, 1))
        }
        let server = try registry.createServer(name: req.name, user: user.id, flavor: String(flavor.id!),
                                               image: req.volumes.isEmpty ? req.imageRef : nil, volumes: req.volumes)
        try keepVolumes(of: server, indexes: req.keep, user: user)
        if !req.attach.isEmpty { try registry.attachWhenBuilt(req.attach, server: server.id!, user: user.id) }
        let id = String(server.id!)
        return try .encoded(202, Keyed("server", ServerCreated(id: id, links: [Link(rel: "self", href: "\(call.base)\(call.prefix)/servers/\(id)")])))
    }

    func deleteServer(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
        _ = try registry.removeServer(s.id!, user: user.id)
        return .empty(204)
    }

    // MARK: attachments

    struct Attachment: Encodable, Sendable {
        var id: String
        var volumeId: String
        var serverId: String
        var device: String
        var deleteOnTermination: Bool
        enum CodingKeys: String, CodingKey { case id, volumeId, serverId, device, deleteOnTermination = "delete_on_termination" }

        init(_ v: Volume, server: Int64? = nil) {
            id = String(v.id!)
            volumeId = id
            serverId = String(server ?? v.machineID ?? 0)
            device = CycladesAPI.device(v.index)
            deleteOnTermination = v.deleteOnTermination
        }
    }

    func listAttachments(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
        return try .encoded(200, Keyed("volumeAttachments", try registry.volumes(server: s.id!).map { Attachment($0) }))
    }

    func showAttachment(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
        guard let vid = Int64(call.param("volume_id")), let v = try registry.volume(id: vid), v.machineID == s.id, !v.deleted else {
            throw CycladesError(.itemNotFound, "volume \(call.param("volume_id")) is not attached to server \(s.id!)")
        }
        return try .encoded(200, Keyed("volumeAttachment", Attachment(v)))
    }

    /// Attach and detach of existing volumes (Ganeti 3.1): AttachmentRoutes.swift.
    func attach(_ call: Call) throws -> Reply { try attachVolumeRoute(call) }

    func detach(_ call: Call) throws -> Reply { try detachVolumeRoute(call) }

    // MARK: flavors

    struct FlavorDetail: Encodable, Sendable {
        var id: String
        var name: String
        var links: [Link]
        var ram: Int
        var disk: Int
        var vcpus: Int
        var swap = ""
        var rxtxFactor = 1.0
        var ephemeral = 0
        var disabled = false
        var isPublic = true
        @Nullable var diskTemplate: String?
        var volumeType: Int64

        enum CodingKeys: String, CodingKey {
            case id, name, links, ram, disk, vcpus, swap, rxtxFactor = "rxtx_factor", ephemeral = "OS-FLV-EXT-DATA:ephemeral"
            case disabled = "OS-FLV-DISABLED:disabled", isPublic = "os-flavor-access:is_public", diskTemplate = "SNF:disk_template"
            case volumeType = "SNF:volume_type"
        }

        init(_ f: Flavor, _ types: [Int64: VolumeType], _ call: Call) {
            let summary = Summary(f, call)
            id = summary.id
            name = f.name
            links = summary.links
            ram = f.ram
            disk = f.disk
            vcpus = f.cpu
            diskTemplate = types[f.volumeTypeID]?.diskTemplate
            volumeType = f.volumeTypeID
        }
    }

    func listFlavors(_ call: Call, detail: Bool) throws -> Reply {
        _ = try call.requireUser
        let flavors = try registry.flavors()
        guard detail else { return try .encoded(200, Keyed("flavors", flavors.map { Summary($0, call) })) }
        let types = try registry.volumeTypesByID()
        return try .encoded(200, Keyed("flavors", flavors.map { FlavorDetail($0, types, call) }))
    }

    func findFlavor(_ ref: String) throws -> Flavor {
        guard let id = Int64(ref), let f = try registry.flavor(id: id) else { throw CycladesError(.itemNotFound, "flavor \(ref) does not exist") }
        return f
    }

    func showFlavor(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        let f = try findFlavor(call.param("flavor_id"))
        return try .encoded(200, Keyed("flavor", FlavorDetail(f, try registry.volumeTypesByID(), call)))
    }

    struct ExtraSpecs: Encodable, Sendable {
        var diskTemplate: String
        var volumeType: String
        enum CodingKeys: String, CodingKey { case diskTemplate = "SNF:disk_template", volumeType = "SNF:volume_type" }
    }

    func flavorExtraSpecs(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        let f = try findFlavor(call.param("flavor_id"))
        let t = try registry.volumeType(id: f.volumeTypeID)
        return try .encoded(200, Keyed("extra_specs", ExtraSpecs(diskTemplate: t?.diskTemplate ?? "", volumeType: String(f.volumeTypeID))))
    }

    // MARK: images

    struct ImageSummary: Encodable, Sendable {
        var id: String
        var name: String
        var links: [Link]

        init(_ i: Image, _ call: Call) {
            id = i.id
            name = i.name
            links = [Link(rel: "self", href: "\(call.base)\(call.prefix)/images/\(i.id)")]
        }
    }

    struct ImageDetail: Encodable, Sendable {
        struct Metadata: Encodable, Sendable {
            var owner: String
            var `public`: String
        }
        var id: String
        var name: String
        var links: [Link]
        var status = "ACTIVE"
        var minDisk: Int
        var minRam = 0
        var progress = 100
        var size: Int64
        var metadata: Metadata
        var created = "1970-01-01T00:00:00Z"
        var updated = "1970-01-01T00:00:00Z"

        enum CodingKeys: String, CodingKey {
            case id, name, links, status, minDisk, minRam, progress, size = "OS-EXT-IMG-SIZE:size", metadata, created, updated
        }

        init(_ i: Image, _ call: Call) {
            let summary = ImageSummary(i, call)
            id = i.id
            name = i.name
            links = summary.links
            minDisk = Int((i.size + (1 << 30) - 1) >> 30)
            size = i.size
            metadata = Metadata(owner: i.owner, public: i.isPublic ? "true" : "false")
        }
    }

    func listImages(_ call: Call, detail: Bool) throws -> Reply {
        let user = try call.requireUser
        let list = try registry.images(visibleTo: user.id)
        let named = call.query["name"].map { n in list.filter { $0.name == n } } ?? list
        if detail { return try .encoded(200, Keyed("images", named.map { ImageDetail($0, call) })) }
        return try .encoded(200, Keyed("images", named.map { ImageSummary($0, call) }))
    }

    func showImage(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let ref = call.param("image_id")
        guard let i = try registry.image(ref, visibleTo: user.id) else { throw CycladesError(.itemNotFound, "image \(ref) does not exist") }
        return try .encoded(200, Keyed("image", ImageDetail(i, call)))
    }
}
