import ArchipRados
import ArchipServe
import ArchipStore
import Cyclades
import Foundation
import Hummingbird

/// The volume service at /volume/v3 and /volume/v2.0 (same handlers).
extension CycladesAPI {
    static let volumePrefixes = ["/volume/v3", "/volume/v2.0"]

    func addVolumeRoutes(_ router: Router<BasicRequestContext>) {
        Endpoints(self, router, "/volume").get(auth: false) { try Self.volumeVersions($0) }
        for p in Self.volumePrefixes {
            let g = Endpoints(self, router, p)
            g.get(auth: false) { try Self.volumeVersions($0) }
            g.get("volumes") { try self.listVolumes($0, detail: false) }
            g.get("volumes/detail") { try self.listVolumes($0, detail: true) }
            g.post("volumes") { try self.createVolume($0) }
            g.get("volumes/{volume_id}") { try self.showVolume($0) }
            g.put("volumes/{volume_id}") { try self.updateVolume($0) }
            g.delete("volumes/{volume_id}") { try self.deleteVolume($0) }
            g.get("volumes/{volume_id}/metadata") { try self.volumeMetadata($0) }
            g.post("volumes/{volume_id}/metadata") { try self.setVolumeMetadata($0, replace: false) }
            g.put("volumes/{volume_id}/metadata") { try self.setVolumeMetadata($0, replace: true) }
            g.delete("volumes/{volume_id}/metadata/{key}") { try self.deleteVolumeMetadata($0) }
            g.post("volumes/{volume_id}/action") { try self.volumeAction($0) }
            g.get("types") { try self.listTypes($0) }
            g.get("types/{type_id}") { try self.showType($0) }
            g.get("snapshots") { try self.listSnapshots($0, detail: false) }
            g.get("snapshots/detail") { try self.listSnapshots($0, detail: true) }
            g.post("snapshots") { try self.createSnapshot($0) }
            g.get("snapshots/{snapshot_id}") { try self.showSnapshot($0) }
            g.delete("snapshots/{snapshot_id}") { try self.deleteSnapshot($0) }
        }
    }

    // MARK: versions

    struct VolumeVersion: Encodable, Sendable {
        struct MediaType: Encodable, Sendable {
            var base = "application/json"
            var type = "application/vnd.openstack.volume+json;version=3"
        }
        var id: String
        var status: String
        var version: String
        var minVersion: String
        var updated = "2024-01-01T00:00:00Z"
        var links: [Link]
        var mediaTypes = [MediaType()]

        enum CodingKeys: String, CodingKey { case id, status, version, minVersion = "min_version", updated, links, mediaTypes = "media-types" }

        init(_ id: String, _ status: String, _ path: String, base: String) {
            self.id = id
            self.status = status
            version = id == "v3.0" ? "3.0" : ""
            minVersion = version
            links = [Link(rel: "self", href: "\(base)\(path)/")]
        }
    }

    static func volumeVersions(_ call: Call) throws -> Reply {
        try .encoded(200, Keyed("versions", [VolumeVersion("v3.0", "CURRENT", "/volume/v3", base: call.base),
                                             VolumeVersion("v2.0", "SUPPORTED", "/volume/v2.0", base: call.base)]))
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

    static func volumeLinks(_ id: String, _ call: Call) -> [Link] {
        let href = "\(call.base)\(call.prefix)/volumes/\(id)"
        return [Link(rel: "self", href: href), Link(rel: "bookmark", href: href)]
    }

    /// docs/openapi.json's VolumeSummary.
    struct VolumeSummary: Encodable, Sendable {
        var id: String
        @Nullable var name: String?
        @Nullable var displayName: String?
        var links: [Link]

        enum CodingKeys: String, CodingKey { case id, name, displayName = "display_name", links }

        init(_ v: Volume, _ call: Call) {
            id = String(v.id!)
            name = v.name
            displayName = v.name
            links = CycladesAPI.volumeLinks(id, call)
        }
    }

    /// A volume as Cinder and Synnefo clients read it (docs/openapi.json's Volume).
    struct VolumeDetail: Encodable, Sendable {
        struct Attachment: Encodable, Sendable {
            var attachmentID: String
            var id: String
            var volumeID: String
            var serverID: String
            var device: String
            @Nullable var deviceIndex: Int?
            @Nullable var hostName: String? = nil
            var attachedAt: String
            enum CodingKeys: String, CodingKey {
                case attachmentID = "attachment_id", id, volumeID = "volume_id", serverID = "server_id", device
                case deviceIndex = "device_index", hostName = "host_name", attachedAt = "attached_at"
            }
        }
        var id: String
        @Nullable var name: String?
        @Nullable var displayName: String?
        var links: [Link]
        @Nullable var description: String?
        @Nullable var displayDescription: String?
        var size: Int
        var status: String
        @Nullable var volumeType: String?
        var volumeTypeID: String
        @Nullable var diskTemplate: String?
        var attachments: [Attachment]
        var metadata: Metadata
        var bootable: String
        @Nullable var sourceVolID: String?
        @Nullable var snapshotID: String?
        @Nullable var imageID: String?
        var createdAt: String
        var updatedAt: String
        var userID: String
        var tenantID: String
        var tenantAttr: String
        var deleteOnTermination: Bool
        var deleted: Bool
        var availabilityZone = "nova"
        var encrypted = false
        var multiattach = false
        @Nullable var replicationStatus: String? = nil
        @Nullable var consistencyGroupID: String? = nil
        @Nullable var serverID: String?
        @Nullable var deviceIndex: Int?

        enum CodingKeys: String, CodingKey {
            case id, name, displayName = "display_name", links, description, displayDescription = "display_description"
            case size, status, volumeType = "volume_type", volumeTypeID = "volume_type_id", diskTemplate = "SNF:disk_template"
            case attachments, metadata, bootable, sourceVolID = "source_volid", snapshotID = "snapshot_id", imageID = "image_id"
            case createdAt = "created_at", updatedAt = "updated_at", userID = "user_id", tenantID = "tenant_id"
            case tenantAttr = "os-vol-tenant-attr:tenant_id", deleteOnTermination = "delete_on_termination", deleted
            case availabilityZone = "availability_zone", encrypted, multiattach, replicationStatus = "replication_status"
            case consistencyGroupID = "consistencygroup_id", serverID = "server_id", deviceIndex = "device_index"
        }

        init(_ v: Volume, _ ctx: VolumeContext, _ call: Call) {
            id = String(v.id!)
            name = v.name
            displayName = v.name
            links = CycladesAPI.volumeLinks(id, call)
            description = v.description
            displayDescription = v.description
            size = v.size
            status = CycladesAPI.cinderStatus(v.status)
            let type = ctx.types[v.volumeTypeID]
            volumeType = type?.name
            volumeTypeID = String(v.volumeTypeID)
            diskTemplate = type?.diskTemplate
            createdAt = v.created.openstack
            updatedAt = v.updated.openstack
            attachments = []
            if let sid = v.machineID, !v.deleted {
                attachments.append(Attachment(attachmentID: id, id: id, volumeID: id, serverID: String(sid), device: CycladesAPI.device(v.index),
                                              deviceIndex: v.index, attachedAt: createdAt))
            }
            metadata = Metadata(ctx.metadata[v.id!] ?? [:])
            let src = v.source?.split(separator: ":", maxSplits: 1).map(String.init) ?? []
            let kind = src.first ?? "", ref = src.count == 2 ? src[1] : nil
            bootable = v.index == 0 || kind == "image" ? "true" : "false"
            sourceVolID = kind == "volume" ? ref : nil
            snapshotID = kind == "snapshot" ? ref : nil
            imageID = kind == "image" ? ref : nil
            userID = v.userid
            tenantID = v.project
            tenantAttr = v.project
            deleteOnTermination = v.deleteOnTermination
            deleted = v.deleted
            serverID = v.machineID.map { String($0) }
            deviceIndex = v.index
        }
    }

    /// Metadata as an object with its keys in order (clients diff it).
    struct Metadata: Encodable, Sendable {
        var pairs: [(String, String)]
        init(_ m: [String: String]) { pairs = m.sorted { $0.key < $1.key } }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: AnyKey.self)
            for (k, v) in pairs { try c.encode(v, forKey: AnyKey(k)) }
        }
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
        var vols = try registry.volumes(VolumeFilter(owner: user.id, name: call.query["name"], after: marker, changedSince: since))
        if let status = call.query["status"]?.lowercased() { vols = vols.filter { Self.cinderStatus($0.status) == status || $0.status.rawValue.lowercased() == status } }
        if let limit { vols = Array(vols.prefix(limit)) }
        guard detail else { return try .encoded(200, Keyed("volumes", vols.map { VolumeSummary($0, call) })) }
        let ctx = try registry.volumeContext(vols)
        return try .encoded(200, Keyed("volumes", vols.map { VolumeDetail($0, ctx, call) }))
    }

    func volumeReply(_ status: Int, _ v: Volume, _ call: Call) throws -> Reply {
        try .encoded(status, Keyed("volume", VolumeDetail(v, try registry.volumeContext([v]), call)))
    }

    func showVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        return try volumeReply(200, try registry.volume(call.param("volume_id"), owner: user.id), call)
    }

    /// POST /volumes: server_id from the volume or the scheduler hint; one
    /// source at most (imageRef, snapshot_id, source_volid: a clone of the
    /// user's volume, O(1) in the store, for types whose provider clones).
    struct CreateVolumeRequest: Decodable {
        var size: Int?
        var name: String?
        var description: String?
        /// nil: a volume without a server (AVAILABLE).
        var serverID: Int64?
        var image: String?
        var snapshot: String?
        var sourceVolume: String?
        var volumeType: String?
        var metadata: [String: String]

        /// The source as the registry takes it (`image:`, `snapshot:`, `volume:`).
        var source: String? { image.map { "image:\($0)" } ?? snapshot.map { "snapshot:\($0)" } ?? sourceVolume.map { "volume:\($0)" } }

        init(from decoder: any Decoder) throws {
            let body = try Fields(decoder)
            let v = try body.object("volume")
            size = try v.int("size")
            name = try v.string("name") ?? v.string("display_name")
            description = try v.string("description") ?? v.string("display_description")
            var serverRef = try v.id("server_id")
            for holder in [body, v] where serverRef == nil {
                if holder.has("OS-SCH-HNT:scheduler_hints") {
                    guard let h = try? holder.object("OS-SCH-HNT:scheduler_hints") else { throw Fields.bad("'OS-SCH-HNT:scheduler_hints' must be an object.") }
                    serverRef = try h.id("server_id")
                }
            }
            serverID = try serverRef.map { ref -> Int64 in
                guard let id = Int64(ref) else { throw Fields.bad("server_id '\(ref.prefix(40))' is not a server id.") }
                return id
            }
            image = try v.id("imageRef")
            snapshot = try v.id("snapshot_id")
            sourceVolume = try v.id("source_volid")
            let given = [image, snapshot, sourceVolume].compactMap { $0 }.count
            guard given <= 1 else { throw Fields.bad("give one source at most (imageRef, snapshot_id or source_volid), not \(given)") }
            volumeType = try v.id("volume_type")
            metadata = try v.metadata() ?? [:]
        }
    }

    func createVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let req = try call.decode(CreateVolumeRequest.self)
        var size = req.size
        if size == nil {
            // The source's size, rounded up to GB.
            size = try registry.sourceSizeGB(snapshot: req.snapshot, image: req.image, volume: req.sourceVolume, user: user.id)
            guard size != nil else { throw Fields.bad("Malformed request. Missing attribute 'size'.") }
        }
        // Without a server: an AVAILABLE volume (Synnefo 0.21, Ganeti 3.1); attach it later.
        let created = try req.serverID.map {
            try registry.createVolume(server: $0, user: user.id, sizeGB: size!, source: req.source, volumeType: req.volumeType,
                                      name: req.name, description: req.description, metadata: req.metadata)
        } ?? registry.createAvailableVolume(user: user.id, sizeGB: size!, source: req.source, volumeType: req.volumeType,
                                            name: req.name, description: req.description, metadata: req.metadata)
        return try volumeReply(202, created, call)
    }

    struct UpdateVolumeRequest: Decodable {
        var name: String?
        var description: String?
        /// false: the volume stays (AVAILABLE) when its server is deleted.
        var deleteOnTermination: Bool?

        init(from decoder: any Decoder) throws {
            let u = try Fields(decoder).object("volume")
            name = try u.string("name") ?? u.string("display_name")
            description = try u.string("description") ?? u.string("display_description")
            deleteOnTermination = try u.bool("delete_on_termination")
        }
    }

    func updateVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let req = try call.decode(UpdateVolumeRequest.self)
        let owned = try registry.volume(call.param("volume_id"), owner: user.id)
        if let dot = req.deleteOnTermination { _ = try registry.setDeleteOnTermination(volume: owned.id!, dot, user: user.id) }
        let v = try registry.describeVolume(owned.id!, name: req.name, description: req.description)
        return try volumeReply(200, v, call)
    }

    func deleteVolume(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let v = try registry.volume(call.param("volume_id"), owner: user.id)
        _ = try registry.removeVolume(v.id!, user: user.id)
        return .empty(202)
    }

    func metadataReply(_ volume: Int64) throws -> Reply {
        try .encoded(200, Keyed("metadata", Metadata(try registry.metadata(volume: volume))))
    }

    func volumeMetadata(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let v = try registry.volume(call.param("volume_id"), owner: user.id)
        return try metadataReply(v.id!)
    }

    struct MetadataRequest: Decodable {
        var metadata: [String: String]
        init(from decoder: any Decoder) throws {
            guard let m = try Fields(decoder).metadata() else { throw Fields.bad("Malformed request. Missing attribute 'metadata'.") }
            metadata = m
        }
    }

    func setVolumeMetadata(_ call: Call, replace: Bool) throws -> Reply {
        let user = try call.requireUser
        let req = try call.decode(MetadataRequest.self)
        let v = try registry.volume(call.param("volume_id"), owner: user.id)
        try registry.setMetadata(volume: v.id!, req.metadata, replace: replace)
        return try metadataReply(v.id!)
    }

    func deleteVolumeMetadata(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let key = call.param("key")
        let v = try registry.volume(call.param("volume_id"), owner: user.id)
        try registry.deleteMetadata(volume: v.id!, key: key)
        return .empty(200)
    }

    /// POST /volumes/{id}/action: one key, the action. os-extend grows
    /// through Ganeti; others are refused. What is wrong inside the action is
    /// told after the volume is found (a missing volume is a 404 first).
    enum VolumeActionRequest: Decodable {
        case extend(newSize: Result<Int, CycladesError>)
        case unsupported(String)

        init(from decoder: any Decoder) throws {
            let body = try Fields(decoder)
            guard body.keys.count == 1, let action = body.keys.first else { throw Fields.bad("an action is one key, e.g. {\"os-extend\": {\"new_size\": 2}}") }
            switch action {
            case "os-extend":
                self = .extend(newSize: Result {
                    guard let size = try body.object(action).int("new_size") else { throw Fields.bad("Malformed request. Missing attribute 'new_size'.") }
                    return size
                }.mapError { $0 as? CycladesError ?? Fields.bad("Malformed request: '\(action)' is not valid.") })
            default:
                self = .unsupported(action)
            }
        }
    }

    func volumeAction(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let req = try call.decode(VolumeActionRequest.self)
        let v = try registry.volume(call.param("volume_id"), owner: user.id)
        switch req {
        case .extend(let size):
            _ = try registry.extendVolume(v.id!, user: user.id, newSizeGB: try size.get())
            return .empty(202)
        case .unsupported(let action):
            throw Fields.bad("action '\(action.prefix(60))' is not supported (os-extend)")
        }
    }

    // MARK: types

    struct TypeView: Encodable, Sendable {
        struct ExtraSpecs: Encodable, Sendable {
            var diskTemplate: String
            enum CodingKeys: String, CodingKey { case diskTemplate = "SNF:disk_template" }
        }
        var id: String
        var name: String
        @Nullable var description: String? = nil
        var isPublic = true
        var deleted: Bool
        var extraSpecs: ExtraSpecs
        var diskTemplate: String

        enum CodingKeys: String, CodingKey {
            case id, name, description, isPublic = "is_public", deleted, extraSpecs = "extra_specs", diskTemplate = "SNF:disk_template"
        }

        init(_ t: VolumeType) {
            id = String(t.id!)
            name = t.name
            deleted = t.deleted
            extraSpecs = ExtraSpecs(diskTemplate: t.diskTemplate)
            diskTemplate = t.diskTemplate
        }
    }

    func listTypes(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        return try .encoded(200, Keyed("volume_types", try registry.volumeTypes().map(TypeView.init)))
    }

    func showType(_ call: Call) throws -> Reply {
        _ = try call.requireUser
        let ref = call.param("type_id")
        guard let t = try registry.volumeType(ref) else { throw CycladesError(.itemNotFound, "volume type \(ref) does not exist") }
        return try .encoded(200, Keyed("volume_type", TypeView(t)))
    }

    // MARK: snapshots

    struct SnapshotSummary: Encodable, Sendable {
        var id: String
        var name: String
        var displayName: String
        var links: [Link]
        enum CodingKeys: String, CodingKey { case id, name, displayName = "display_name", links }

        init(_ s: Snapshot, _ call: Call) {
            id = s.id
            name = s.name
            displayName = s.name
            links = [Link(rel: "self", href: "\(call.base)\(call.prefix)/snapshots/\(s.id)")]
        }
    }

    struct SnapshotDetail: Encodable, Sendable {
        var id: String
        var name: String
        var displayName: String
        var links: [Link]
        @Nullable var description: String? = nil
        @Nullable var displayDescription: String? = nil
        @Nullable var volumeID: String?
        var size: Int
        var status: String
        var progress: String
        var createdAt: String
        var updatedAt: String
        var metadata: [String: String] = [:]
        var userID: String
        var projectID: String

        enum CodingKeys: String, CodingKey {
            case id, name, displayName = "display_name", links, description, displayDescription = "display_description"
            case volumeID = "volume_id", size, status, progress, createdAt = "created_at", updatedAt = "updated_at", metadata
            case userID = "user_id", projectID = "os-extended-snapshot-attributes:project_id"
        }

        init(_ s: Snapshot, _ call: Call) {
            let summary = SnapshotSummary(s, call)
            id = s.id
            name = s.name
            displayName = s.name
            links = summary.links
            volumeID = s.volumeID.map { String($0) }
            size = s.size
            status = s.status.lowercased()
            progress = s.status == "AVAILABLE" ? "100%" : "0%"
            createdAt = s.created.openstack
            updatedAt = createdAt
            userID = s.userid
            projectID = s.userid
        }
    }

    func listSnapshots(_ call: Call, detail: Bool) throws -> Reply {
        let user = try call.requireUser
        let limit = try call.query["limit"].map { s -> Int in
            guard let n = Int(s), n >= 0 else { throw CycladesError(.badRequest, "limit must be a whole number >= 0") }
            return n
        }
        var list = try registry.snapshots(owner: user.id)
        if let marker = call.query["marker"] {
            guard let i = list.firstIndex(where: { $0.id == marker }) else { throw CycladesError(.badRequest, "marker \(marker) is not a snapshot") }
            list = Array(list[(i + 1)...])
        }
        if let name = call.query["name"] { list = list.filter { $0.name == name } }
        if let status = call.query["status"]?.lowercased() { list = list.filter { $0.status.lowercased() == status } }
        if let limit { list = Array(list.prefix(limit)) }
        if detail { return try .encoded(200, Keyed("snapshots", list.map { SnapshotDetail($0, call) })) }
        return try .encoded(200, Keyed("snapshots", list.map { SnapshotSummary($0, call) }))
    }

    func showSnapshot(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.snapshot(call.param("snapshot_id"), owner: user.id)
        return try .encoded(200, Keyed("snapshot", SnapshotDetail(s, call)))
    }

    struct CreateSnapshotRequest: Decodable {
        var volume: String
        var name: String?

        init(from decoder: any Decoder) throws {
            let o = try Fields(decoder).object("snapshot")
            guard let volume = try o.id("volume_id") else { throw Fields.bad("Malformed request. Missing attribute 'volume_id'.") }
            self.volume = volume
            name = try o.string("name") ?? o.string("display_name")
            _ = try o.bool("force")
            _ = try o.metadata()
        }
    }

    /// An O(1) snapshot in the store: directly, or through this node's
    /// archip serve when the volume is attached here (so it holds every
    /// acknowledged write). The API server must run where the store is mounted.
    func createSnapshot(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let req = try call.decode(CreateSnapshotRequest.self)
        let v = try registry.volume(req.volume, owner: user.id)
        let runtimeDir = self.runtimeDir
        let snap = try registry.createSnapshot(of: v, owner: user.id, name: req.name, store: try store()) { source, target in
            try NodeSnapshot.take(source, as: target, runtimeDir: runtimeDir)
        }
        return try .encoded(202, Keyed("snapshot", SnapshotDetail(snap, call)))
    }

    func deleteSnapshot(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.snapshot(call.param("snapshot_id"), owner: user.id)
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
