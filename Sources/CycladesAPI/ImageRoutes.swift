import Cyclades
import Foundation
import Hummingbird

/// A read-only, Glance v2-shaped image service: what the real clients look
/// images up in. `openstack` (openstacksdk) discovers `/image` (without a
/// token) and lists `/image/v2/images`; novaclient's `boot --image NAME`
/// asks `<compute endpoint>/v2/images?name=NAME` (it has no catalog under
/// admin_token). The images are the registry's (public or the user's).
extension CycladesAPI {
    func addImageRoutes(_ router: Router<BasicRequestContext>) {
        Endpoints(self, router, "/image").get(auth: false) { try Self.imageVersions($0) }
        Endpoints(self, router, "/image/v2").get(auth: false) { try Self.imageVersions($0) }
        for p in ["/image/v2"] + Self.computePrefixes.map({ "\($0)/v2" }) {
            let g = Endpoints(self, router, p)
            g.get("images") { try self.listGlanceImages($0) }
            g.get("images/{image_id}") { try self.showGlanceImage($0) }
        }
    }

    struct ImageVersions: Encodable, Sendable {
        struct Version: Encodable, Sendable {
            var id: String
            var status: String
            var links: [Link]
        }
        var versions: [Version]
    }

    static func imageVersions(_ call: Call) throws -> Reply {
        try .encoded(200, ImageVersions(versions: [.init(id: "v2.6", status: "CURRENT", links: [Link(rel: "self", href: "\(call.base)/image/v2/")])]))
    }

    /// Glance v2's flat image (docs/openapi.json's GlanceImage).
    struct GlanceImage: Encodable, Sendable {
        var id: String
        var name: String
        var status = "active"
        var visibility: String
        var owner: String
        var size: Int64
        var minDisk: Int
        var minRam = 0
        var diskFormat = "raw"
        var containerFormat = "bare"
        @Nullable var checksum: String?
        var protected = false
        var tags: [String] = []
        var createdAt = "1970-01-01T00:00:00Z"
        var updatedAt = "1970-01-01T00:00:00Z"
        var selfLink: String
        var file: String
        var schema = "/v2/schemas/image"
        var location: String

        enum CodingKeys: String, CodingKey {
            case id, name, status, visibility, owner, size, minDisk = "min_disk", minRam = "min_ram", diskFormat = "disk_format"
            case containerFormat = "container_format", checksum, protected, tags, createdAt = "created_at", updatedAt = "updated_at"
            case selfLink = "self", file, schema, location = "SNF:location"
        }

        init(_ i: Image) {
            id = i.id
            name = i.name
            visibility = i.isPublic ? "public" : "private"
            owner = i.owner
            size = i.size
            minDisk = Int((i.size + (1 << 30) - 1) >> 30)
            checksum = i.checksum
            selfLink = "/v2/images/\(i.id)"
            file = "/v2/images/\(i.id)/file"
            location = i.location
        }
    }

    struct GlanceImageList: Encodable, Sendable {
        var images: [GlanceImage]
        var first = "/v2/images"
        var schema = "/v2/schemas/images"
    }

    /// ?name (exact), ?limit, ?marker (an image id), ?status (active).
    func listGlanceImages(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        var list = try registry.images(visibleTo: user.id)
        if let n = call.query["name"] { list = list.filter { $0.name == n } }
        if let s = call.query["status"], s.lowercased() != "active" { list = [] }
        if let m = call.query["marker"] {
            guard let i = list.firstIndex(where: { $0.id == m }) else { throw CycladesError(.badRequest, "marker \(m.prefix(40)) is not an image") }
            list = Array(list[(i + 1)...])
        }
        if let l = call.query["limit"] {
            guard let n = Int(l), n >= 0 else { throw CycladesError(.badRequest, "limit must be a whole number >= 0") }
            list = Array(list.prefix(n))
        }
        return try .encoded(200, GlanceImageList(images: list.map(GlanceImage.init)))
    }

    func showGlanceImage(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let ref = call.param("image_id")
        guard let i = try registry.image(ref, visibleTo: user.id) else { throw CycladesError(.itemNotFound, "image \(ref) does not exist") }
        return try .encoded(200, GlanceImage(i))
    }
}
