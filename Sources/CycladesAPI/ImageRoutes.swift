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

    static func imageVersions(_ call: Call) throws -> Reply {
        try .json(200, ["versions": [["id": "v2.6", "status": "CURRENT",
                                      "links": [["rel": "self", "href": "\(call.base)/image/v2/"]]]]])
    }

    /// Glance v2's flat image (keys as in docs/openapi.json's GlanceImage).
    func glanceView(_ i: Image) -> [String: Any] {
        ["id": i.id, "name": i.name, "status": "active", "visibility": i.isPublic ? "public" : "private",
         "owner": i.owner, "size": i.size, "min_disk": Int((i.size + (1 << 30) - 1) >> 30), "min_ram": 0,
         "disk_format": "raw", "container_format": "bare", "checksum": i.checksum as Any? ?? NSNull(),
         "protected": false, "tags": [String](), "created_at": "1970-01-01T00:00:00Z", "updated_at": "1970-01-01T00:00:00Z",
         "self": "/v2/images/\(i.id)", "file": "/v2/images/\(i.id)/file", "schema": "/v2/schemas/image",
         "SNF:location": i.location]
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
        return try .json(200, ["images": list.map(glanceView), "first": "/v2/images", "schema": "/v2/schemas/images"])
    }

    func showGlanceImage(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let ref = call.param("image_id")
        guard let i = try registry.image(ref, visibleTo: user.id) else { throw CycladesError(.itemNotFound, "image \(ref) does not exist") }
        return try .json(200, glanceView(i))
    }
}
