@testable import Cyclades
@testable import CycladesAPI
import Foundation
import GRDB
import Hummingbird
import HummingbirdTesting
import Testing

/// A registry with a backend, a type, a flavor, an image and two users, behind
/// the API, with a Ganeti that ends jobs at once (settled by `settle()`).
final class APIFixture: @unchecked Sendable {
    let registry: Registry
    let api: CycladesAPI
    let ganeti = InstantGaneti()
    let image: Cyclades.Image
    let alice: String, bob: String
    var logLines: [String] = []

    init(quota: Int64 = 20 << 30) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cyclades-api-\(UUID().uuidString).db").path
        let g = ganeti
        registry = Registry(db: try CycladesDatabase(path: path), backendClient: { _ in g })
        _ = try registry.addBackend(Backend(id: nil, name: "b1", rapiURL: "https://127.0.0.1:5080", username: "u", password: "p", caFile: nil,
                                            insecure: true, node: "node1", os: "noop", hypervisor: "fake", drained: false))
        _ = try registry.createVolumeType(name: "archipelago", diskTemplate: "ext_archipelago")
        _ = try registry.createFlavor(name: "small", cpu: 1, ram: 512, disk: 1, volumeType: "archipelago")
        image = try registry.registerImage(name: "debian", location: "snapshot:debian-v1", size: 1 << 30, owner: "system", isPublic: true, checksum: nil)
        alice = try registry.createUser(name: "alice", diskLimit: quota).1
        bob = try registry.createUser(name: "bob", diskLimit: quota).1
        api = CycladesAPI(registry: registry)
        api.log = { [weak self] in self?.logLines.append($0) }
    }

    func settle() throws { try registry.processJobs() }

    func app() -> some ApplicationProtocol { Application(router: api.router(), server: api.httpServer) }

    /// Everything the database holds, to prove a refused request changed nothing.
    func dump() throws -> String {
        try registry.db.read { db in
            var out = ""
            for t in ["servers", "volumes", "volume_metadata", "commissions", "projects", "snapshots"] {
                out += t + ": " + (try Row.fetchAll(db, sql: "SELECT * FROM \(t) ORDER BY rowid").map { $0.description }.joined(separator: "; ")) + "\n"
            }
            return out
        }
    }
}

struct Reply {
    var status: Int
    var json: [String: Any]
    var raw: String
    var contentType: String?
}

extension TestClientProtocol {
    func call(_ method: HTTPRequest.Method, _ uri: String, token: String? = nil, json: String? = nil,
              contentType: String = "application/json") async throws -> Reply {
        var headers = HTTPFields()
        if let token { headers[.init("X-Auth-Token")!] = token }
        if json != nil { headers[.contentType] = contentType }
        return try await execute(uri: uri, method: method, headers: headers, body: json.map { ByteBuffer(string: $0) }) { r in
            let raw = String(buffer: r.body)
            let obj = (try? JSONSerialization.jsonObject(with: Data(raw.utf8))) as? [String: Any] ?? [:]
            return Reply(status: Int(r.status.code), json: obj, raw: raw, contentType: r.headers[.contentType])
        }
    }
}

/// A server for alice with a root volume from the image and a blank one, settled.
func bootServer(_ f: APIFixture, _ c: some TestClientProtocol, extra: Int = 1) async throws -> String {
    var bdm = [#"{"source_type":"image","uuid":"\#(f.image.id)","destination_type":"volume","volume_size":"1","boot_index":"0","delete_on_termination":true}"#]
    for _ in 0..<extra { bdm.append(#"{"source_type":"blank","destination_type":"volume","volume_size":"1"}"#) }
    let r = try await c.call(.post, "/compute/v2.1/servers", token: f.alice,
                             json: #"{"server":{"name":"vm1","imageRef":"","flavorRef":"1","block_device_mapping_v2":[\#(bdm.joined(separator: ","))]}}"#)
    #expect(r.status == 202, "\(r.raw)")
    try f.settle()
    return (r.json["server"] as? [String: Any])?["id"] as? String ?? "?"
}

func fault(_ r: Reply) -> (String, Int, String)? {
    guard r.json.count == 1, let (k, v) = r.json.first, let d = v as? [String: Any], let code = d["code"] as? Int, let m = d["message"] as? String else { return nil }
    return (k, code, m)
}

@Suite struct VolumeAPI {
    @Test func versionsNeedNoToken() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            for path in ["/volume", "/volume/", "/volume/v3", "/volume/v3/", "/volume/v2.0"] {
                let r = try await c.call(.get, path)
                #expect(r.status == 200, "\(path)")
                let v = (r.json["versions"] as? [[String: Any]])?.first
                #expect(v?["id"] as? String == "v3.0" && v?["status"] as? String == "CURRENT" && v?["min_version"] as? String == "3.0", "\(path): \(r.raw)")
                #expect((v?["links"] as? [[String: Any]])?.first?["rel"] as? String == "self")
            }
            for path in ["/compute/v2.1", "/compute/v2.1/"] {
                let r = try await c.call(.get, path)
                let v = r.json["version"] as? [String: Any]
                #expect(r.status == 200 && v?["version"] as? String == "2.1" && v?["min_version"] as? String == "2.1" && v?["links"] != nil, "\(r.raw)")
            }
        }
    }

    @Test func tokens() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            for token in [nil, "", "not-a-token"] {
                for path in ["/volume/v3/volumes", "/volume/v3/volumes/detail", "/volume/v3/types", "/compute/v2.1/servers", "/compute/v2.1/flavors/detail"] {
                    let r = try await c.call(.get, path, token: token)
                    #expect(r.status == 401 && fault(r)?.0 == "unauthorized" && fault(r)?.1 == 401, "\(path) \(token ?? "nil"): \(r.raw)")
                }
            }
            let r = try await c.call(.post, "/volume/v3/volumes", token: "bad", json: #"{"volume":{"size":1}}"#)
            #expect(r.status == 401)
        }
    }

    @Test func lifecycleAndShapes() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            let sid = try await bootServer(f, c)
            var r = try await c.call(.get, "/volume/v3/volumes/detail", token: f.alice)
            let vols = r.json["volumes"] as? [[String: Any]] ?? []
            #expect(vols.count == 2 && r.contentType == "application/json")
            for key in ["id", "name", "display_name", "description", "display_description", "size", "status", "volume_type", "attachments",
                        "metadata", "bootable", "source_volid", "snapshot_id", "image_id", "created_at", "user_id", "tenant_id", "links",
                        "delete_on_termination"] {
                #expect(vols.allSatisfy { $0.keys.contains(key) }, "missing \(key)")
            }
            #expect(vols.map { $0["status"] as? String } == ["in-use", "in-use"])
            #expect(vols[0]["id"] as? String == "1" && vols[0]["image_id"] as? String == f.image.id && vols[0]["bootable"] as? String == "true")
            let att = (vols[1]["attachments"] as? [[String: Any]])?.first
            #expect(att?["attachment_id"] as? String == "2" && att?["server_id"] as? String == sid && att?["volume_id"] as? String == "2"
                    && att?["device"] as? String == "/dev/vdb" && att?["device_index"] as? Int == 1 && att?["id"] != nil)

            // create through the scheduler hint (what cinderclient sends), with Synnefo's keys
            r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: #"""
                {"volume":{"size":1,"display_name":"data","display_description":"d","metadata":{"k":"v"},"volume_type":null,"imageRef":null},
                 "OS-SCH-HNT:scheduler_hints":{"server_id":"\#(sid)"}}
                """#)
            #expect(r.status == 202, "\(r.raw)")
            let nv = r.json["volume"] as? [String: Any]
            #expect(nv?["id"] as? String == "3" && nv?["name"] as? String == "data" && nv?["description"] as? String == "d" && nv?["status"] as? String == "creating")
            try f.settle()
            r = try await c.call(.get, "/volume/v3/volumes/3", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "in-use")
            #expect(((r.json["volume"] as? [String: Any])?["metadata"] as? [String: String]) == ["k": "v"])

            // server_id in the body, the same handlers under /volume/v2.0
            r = try await c.call(.post, "/volume/v2.0/volumes", token: f.alice, json: #"{"volume":{"size":"1","name":"n4","server_id":\#(sid)}}"#)
            #expect(r.status == 202, "\(r.raw)")
            try f.settle()

            // list filters
            r = try await c.call(.get, "/volume/v3/volumes?limit=2", token: f.alice)
            #expect((r.json["volumes"] as? [[String: Any]])?.map { $0["id"] as? String } == ["1", "2"])
            r = try await c.call(.get, "/volume/v3/volumes?marker=2&limit=1", token: f.alice)
            #expect((r.json["volumes"] as? [[String: Any]])?.map { $0["id"] as? String } == ["3"])
            r = try await c.call(.get, "/volume/v3/volumes/detail?name=data", token: f.alice)
            #expect((r.json["volumes"] as? [[String: Any]])?.map { $0["id"] as? String } == ["3"])
            r = try await c.call(.get, "/volume/v3/volumes/detail?status=in-use", token: f.alice)
            #expect((r.json["volumes"] as? [[String: Any]])?.count == 4)

            // update (both key sets), metadata, extend
            r = try await c.call(.put, "/volume/v3/volumes/3", token: f.alice, json: #"{"volume":{"name":"renamed","display_description":"dd"}}"#)
            #expect(r.status == 200 && (r.json["volume"] as? [String: Any])?["display_name"] as? String == "renamed")
            r = try await c.call(.post, "/volume/v3/volumes/3/metadata", token: f.alice, json: #"{"metadata":{"a":"1"}}"#)
            #expect((r.json["metadata"] as? [String: String]) == ["k": "v", "a": "1"])
            r = try await c.call(.put, "/volume/v3/volumes/3/metadata", token: f.alice, json: #"{"metadata":{"b":"2"}}"#)
            #expect((r.json["metadata"] as? [String: String]) == ["b": "2"])
            r = try await c.call(.delete, "/volume/v3/volumes/3/metadata/b", token: f.alice)
            #expect(r.status == 200)
            r = try await c.call(.delete, "/volume/v3/volumes/3/metadata/b", token: f.alice)
            #expect(r.status == 404 && fault(r)?.0 == "itemNotFound")
            r = try await c.call(.post, "/volume/v3/volumes/3/action", token: f.alice, json: #"{"os-extend":{"new_size":3}}"#)
            #expect(r.status == 202, "\(r.raw)")
            r = try await c.call(.get, "/volume/v3/volumes/3", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "extending")
            try f.settle()
            r = try await c.call(.get, "/volume/v3/volumes/3", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["size"] as? Int == 3 && (r.json["volume"] as? [String: Any])?["status"] as? String == "in-use")
            #expect(try f.ganeti.instanceDisks("snf-1")?.disks.first { $0.name == "snf-vol-3" }?.sizeMiB == 3072)
            let q = try f.registry.quotas().first { $0.limit == 20 << 30 && $0.usage > 0 }
            #expect(q?.usage == 6 << 30 && q?.pending == 0, "\(String(describing: q))")

            // delete: 202, no body; then deleted but still visible by id; hidden from lists
            r = try await c.call(.delete, "/volume/v3/volumes/3", token: f.alice)
            #expect(r.status == 202 && r.raw.isEmpty)
            try f.settle()
            r = try await c.call(.get, "/volume/v3/volumes/3", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "deleted")
            r = try await c.call(.get, "/volume/v3/volumes", token: f.alice)
            #expect((r.json["volumes"] as? [[String: Any]])?.map { $0["id"] as? String } == ["1", "2", "4"])
            r = try await c.call(.get, "/volume/v3/volumes?changes-since=2000-01-01T00:00:00", token: f.alice)
            #expect((r.json["volumes"] as? [[String: Any]])?.count == 4)
            #expect(try f.registry.quotas().first { $0.usage > 0 }?.usage == 3 << 30)

            // types
            r = try await c.call(.get, "/volume/v3/types", token: f.alice)
            let t = (r.json["volume_types"] as? [[String: Any]])?.first
            #expect(t?["name"] as? String == "archipelago" && t?["id"] as? String == "1" && t?["SNF:disk_template"] as? String == "ext_archipelago")
            r = try await c.call(.get, "/volume/v3/types/1", token: f.alice)
            #expect(r.status == 200)
            r = try await c.call(.get, "/volume/v3/types/9", token: f.alice)
            #expect(r.status == 404)

            // snapshots without a store: 501, nothing recorded
            r = try await c.call(.post, "/volume/v3/snapshots", token: f.alice, json: #"{"snapshot":{"volume_id":"2","name":"s"}}"#)
            #expect(r.status == 501 && fault(r)?.0 == "notImplemented")
            r = try await c.call(.get, "/volume/v3/snapshots/detail", token: f.alice)
            #expect((r.json["snapshots"] as? [[String: Any]])?.isEmpty == true)
        }
        #expect(f.logLines.contains { $0.hasPrefix("GET /volume/v3/volumes/3 200 ") })
    }

    @Test func isolation() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            let sid = try await bootServer(f, c)
            let before = try f.dump()
            for (m, path, body) in [(HTTPRequest.Method.get, "/volume/v3/volumes/2", nil as String?), (.put, "/volume/v3/volumes/2", #"{"volume":{"name":"x"}}"#),
                                    (.delete, "/volume/v3/volumes/2", nil), (.get, "/volume/v3/volumes/2/metadata", nil),
                                    (.post, "/volume/v3/volumes/2/metadata", #"{"metadata":{"a":"b"}}"#),
                                    (.delete, "/volume/v3/volumes/2/metadata/a", nil),
                                    (.post, "/volume/v3/volumes/2/action", #"{"os-extend":{"new_size":2}}"#),
                                    (.post, "/volume/v3/snapshots", #"{"snapshot":{"volume_id":"2"}}"#),
                                    (.get, "/compute/v2.1/servers/\(sid)", nil), (.delete, "/compute/v2.1/servers/\(sid)", nil),
                                    (.get, "/compute/v2.1/servers/\(sid)/os-volume_attachments", nil),
                                    (.get, "/compute/v2.1/servers/\(sid)/os-volume_attachments/2", nil)] {
                let r = try await c.call(m, path, token: f.bob, json: body)
                #expect(r.status == 404 && fault(r)?.0 == "itemNotFound", "\(m) \(path): \(r.raw)")
                // the same answer as for something that does not exist
                if path.hasSuffix("/snapshots") { continue }
                let missing = try await c.call(m, path.replacingOccurrences(of: "/2", with: "/99").replacingOccurrences(of: "servers/\(sid)", with: "servers/99"), token: f.alice, json: body)
                #expect(missing.status == 404, "\(m) \(path) (missing): \(missing.raw)")
            }
            // bob's server_id pointing at alice's server: unknown server (400, as Cyclades)
            let r = try await c.call(.post, "/volume/v3/volumes", token: f.bob, json: #"{"volume":{"size":1,"server_id":"\#(sid)"}}"#)
            #expect(r.status == 400 && fault(r)?.2.contains("does not exist") == true, "\(r.raw)")
            for path in ["/volume/v3/volumes/detail", "/compute/v2.1/servers/detail"] {
                let l = try await c.call(.get, path, token: f.bob)
                #expect(l.raw == #"{"volumes":[]}"# || l.raw == #"{"servers":[]}"#, "\(l.raw)")
            }
            #expect(try f.dump() == before)
        }
    }

    @Test func badInputChangesNothing() async throws {
        let f = try APIFixture(quota: 8 << 30)
        try await f.app().test(.router) { c in
            let sid = try await bootServer(f, c, extra: 6)   // 7 volumes of 1 GB
            let before = try f.dump()
            let disks = try f.ganeti.instanceDisks("snf-\(sid)")
            func vol(_ inner: String) -> String { #"{"volume":{\#(inner)}}"# }
            let cases: [(String, String, String, Int, String)] = [
                ("size abc", "/volume/v3/volumes", vol(#""size":"abc","server_id":"\#(sid)""#), 400, "badRequest"),
                ("size -1", "/volume/v3/volumes", vol(#""size":-1,"server_id":"\#(sid)""#), 400, "badRequest"),
                ("size 0", "/volume/v3/volumes", vol(#""size":0,"server_id":"\#(sid)""#), 400, "badRequest"),
                ("huge size", "/volume/v3/volumes", vol(#""size":100000000,"server_id":"\#(sid)""#), 400, "badRequest"),
                ("size beyond Int", "/volume/v3/volumes", vol(#""size":99999999999999999999999,"server_id":"\#(sid)""#), 400, "badRequest"),
                ("size true", "/volume/v3/volumes", vol(#""size":true,"server_id":"\#(sid)""#), 400, "badRequest"),
                ("size 1.5", "/volume/v3/volumes", vol(#""size":1.5,"server_id":"\#(sid)""#), 400, "badRequest"),
                ("no server_id and an unknown type", "/volume/v3/volumes", vol(#""size":1,"volume_type":"gold""#), 400, "badRequest"),
                ("unknown server", "/volume/v3/volumes", vol(#""size":1,"server_id":"999""#), 400, "badRequest"),
                ("server_id not a number", "/volume/v3/volumes", vol(#""size":1,"server_id":"abc""#), 400, "badRequest"),
                ("two sources", "/volume/v3/volumes", vol(#""size":1,"server_id":"\#(sid)","imageRef":"\#(f.image.id)","snapshot_id":"x""#), 400, "badRequest"),
                ("source_volid of a missing volume", "/volume/v3/volumes", vol(#""size":1,"server_id":"\#(sid)","source_volid":"99""#), 404, "itemNotFound"),
                ("source_volid and snapshot_id", "/volume/v3/volumes", vol(#""size":1,"server_id":"\#(sid)","source_volid":"1","snapshot_id":"x""#), 400, "badRequest"),
                ("unknown image", "/volume/v3/volumes", vol(#""size":1,"server_id":"\#(sid)","imageRef":"nope""#), 400, "badRequest"),
                ("unknown type", "/volume/v3/volumes", vol(#""size":1,"server_id":"\#(sid)","volume_type":"gold""#), 400, "badRequest"),
                ("metadata not strings", "/volume/v3/volumes", vol(#""size":1,"server_id":"\#(sid)","metadata":{"a":1}"#), 400, "badRequest"),
                ("eleven metadata keys", "/volume/v3/volumes/2/metadata", #"{"metadata":{\#((0..<11).map { "\"k\($0)\":\"v\"" }.joined(separator: ","))}}"#, 400, "badRequest"),
                ("no volume key", "/volume/v3/volumes", #"{"size":1}"#, 400, "badRequest"),
                ("a JSON array", "/volume/v3/volumes", "[1,2]", 400, "badRequest"),
                ("malformed JSON", "/volume/v3/volumes", #"{"volume": {"size": 1,"#, 400, "badRequest"),
                ("unknown action", "/volume/v3/volumes/2/action", #"{"os-detach":{}}"#, 400, "badRequest"),
                ("extend to a smaller size", "/volume/v3/volumes/2/action", #"{"os-extend":{"new_size":1}}"#, 400, "badRequest"),
                ("extend over quota", "/volume/v3/volumes/2/action", #"{"os-extend":{"new_size":200}}"#, 413, "overLimit"),
                ("blank root", "/compute/v2.1/servers", #"{"server":{"name":"x","imageRef":"","flavorRef":"1","block_device_mapping_v2":[{"source_type":"blank","volume_size":1}]}}"#, 400, "badRequest"),
                ("bdm not a list", "/compute/v2.1/servers", #"{"server":{"name":"x","imageRef":"","flavorRef":"1","block_device_mapping_v2":{"a":1}}}"#, 400, "badRequest"),
                ("bdm volume in use", "/compute/v2.1/servers", #"{"server":{"name":"x","imageRef":"","flavorRef":"1","block_device_mapping_v2":[{"source_type":"image","uuid":"\#(f.image.id)","volume_size":"1"},{"source_type":"volume","uuid":"2"}]}}"#, 400, "badRequest"),
                ("bdm existing volume", "/compute/v2.1/servers", #"{"server":{"name":"x","imageRef":"","flavorRef":"1","block_device_mapping_v2":[{"source_type":"volume","uuid":"2"}]}}"#, 501, "notImplemented"),
                ("unknown flavor", "/compute/v2.1/servers", #"{"server":{"name":"x","imageRef":"\#(f.image.id)","flavorRef":"77"}}"#, 400, "badRequest"),
                ("server over quota", "/compute/v2.1/servers", #"{"server":{"name":"x","imageRef":"","flavorRef":"1","block_device_mapping_v2":[{"source_type":"image","uuid":"\#(f.image.id)","volume_size":"5"}]}}"#, 413, "overLimit"),
                ("attach of a volume in use", "/compute/v2.1/servers/\(sid)/os-volume_attachments", #"{"volumeAttachment":{"volumeId":"2"}}"#, 400, "badRequest"),
                ("attach without volumeId", "/compute/v2.1/servers/\(sid)/os-volume_attachments", #"{"volumeAttachment":{}}"#, 400, "badRequest"),
                ("attach of a missing volume", "/compute/v2.1/servers/\(sid)/os-volume_attachments", #"{"volumeAttachment":{"volumeId":"999"}}"#, 404, "itemNotFound"),
            ]
            for (name, path, body, status, key) in cases {
                let r = try await c.call(.post, path, token: f.alice, json: body)
                #expect(r.status == status && fault(r)?.0 == key && fault(r)?.1 == status, "\(name): \(r.status) \(r.raw)")
                #expect(try f.dump() == before, "\(name) changed the database")
            }
            // over quota: 8 GB limit, 7 in use
            var r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: vol(#""size":2,"server_id":"\#(sid)""#))
            #expect(r.status == 413 && fault(r)?.0 == "overLimit", "\(r.raw)")
            #expect(try f.dump() == before)
            // a ninth disk: the eighth is accepted, the ninth refused
            try f.registry.setQuota(project: try f.registry.findUser("alice").defaultProject, diskLimit: 100 << 30)
            r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: vol(#""size":1,"server_id":"\#(sid)""#))
            #expect(r.status == 202, "\(r.raw)")
            try f.settle()
            let eight = try f.dump()
            r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: vol(#""size":1,"server_id":"\#(sid)""#))
            #expect(r.status == 400 && fault(r)?.2.contains("8") == true, "\(r.raw)")
            #expect(try f.dump() == eight)
            // wrong content type, PUT and DELETE errors
            r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: vol(#""size":1,"server_id":"\#(sid)""#), contentType: "text/plain")
            #expect(r.status == 400 && fault(r)?.0 == "badRequest")
            r = try await c.call(.delete, "/volume/v3/volumes/1", token: f.alice)
            #expect(r.status == 400 && fault(r)?.2.contains("root") == true, "\(r.raw)")
            r = try await c.call(.put, "/volume/v3/volumes/2", token: f.alice, json: #"{"volume":{"delete_on_termination":"maybe"}}"#)
            #expect(r.status == 400)
            r = try await c.call(.delete, "/compute/v2.1/servers/\(sid)/os-volume_attachments/1", token: f.alice)
            #expect(r.status == 400 && fault(r)?.2.contains("root") == true, "\(r.raw)")
            f.ganeti.setRunning("snf-\(sid)", true)
            r = try await c.call(.delete, "/compute/v2.1/servers/\(sid)/os-volume_attachments/2", token: f.alice)
            #expect(r.status == 409 && fault(r)?.2.contains("hotplug") == true, "\(r.raw)")
            r = try await c.call(.delete, "/volume/v3/volumes/2", token: f.alice)
            #expect(r.status == 409 && fault(r)?.2.contains("stop the server") == true, "\(r.raw)")
            #expect(try f.dump() == eight)
            #expect(try f.ganeti.instanceDisks("snf-\(sid)")?.disks.count == (disks?.disks.count ?? 0) + 1)
        }
    }

    /// source_volid: a clone of the user's volume (the provider gets the
    /// source's Ganeti disk as origin), sized like the source when no size is
    /// given; another user's source is 404, a source in error 400.
    @Test func cloneFromSourceVolid() async throws {
        let f = try APIFixture(quota: 6 << 30)
        try await f.app().test(.router) { c in
            let sid = try await bootServer(f, c)
            var r = try await c.call(.post, "/volume/v3/volumes", token: f.alice,
                                     json: #"{"volume":{"source_volid":"2","name":"copy","OS-SCH-HNT:scheduler_hints":{"server_id":"\#(sid)"}}}"#)
            #expect(r.status == 202, "\(r.raw)")
            let v = r.json["volume"] as? [String: Any]
            #expect(v?["source_volid"] as? String == "2" && v?["size"] as? Int == 1 && v?["status"] as? String == "creating", "\(r.raw)")
            #expect(v?["snapshot_id"] is NSNull && v?["image_id"] is NSNull)
            let id = try #require(v?["id"] as? String)
            try f.settle()
            r = try await c.call(.get, "/volume/v3/volumes/\(id)", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "in-use", "\(r.raw)")
            let origin = try f.registry.db.read { try Cyclades.Volume.fetchOne($0, key: Int64(id)!)?.origin }
            #expect(origin == "disk:snf-vol-2")
            #expect(try f.ganeti.instanceDisks("snf-\(sid)")?.disks.count == 3)
            // bob: alice's volume as a source is as missing as any other (404), nothing changes.
            r = try await c.call(.post, "/compute/v2.1/servers", token: f.bob, json: #"{"server":{"name":"b","imageRef":"\#(f.image.id)","flavorRef":"small"}}"#)
            try f.settle()
            let bsid = (r.json["server"] as? [String: Any])?["id"] as? String ?? "?"
            let before = try f.dump()
            for body in [#"{"volume":{"source_volid":"2","server_id":"\#(bsid)"}}"#, #"{"volume":{"size":1,"source_volid":"2","server_id":"\#(bsid)"}}"#] {
                r = try await c.call(.post, "/volume/v3/volumes", token: f.bob, json: body)
                #expect(r.status == 404 && fault(r)?.0 == "itemNotFound", "\(r.raw)")
            }
            #expect(try f.dump() == before)
            // A volume in error (its create never reached Ganeti) is no source.
            f.ganeti.refuse = "RAPI down"
            r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: #"{"volume":{"size":1,"server_id":"\#(sid)"}}"#)
            #expect(r.status >= 500, "\(r.raw)")
            f.ganeti.refuse = nil
            let broken = try f.registry.db.read { try Cyclades.Volume.filter(Column("status") == "ERROR").fetchOne($0)?.id }
            let errorState = try f.dump()
            r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: #"{"volume":{"source_volid":"\#(broken ?? 0)","server_id":"\#(sid)"}}"#)
            #expect(r.status == 400 && fault(r)?.2.contains("ERROR") == true, "\(r.raw)")
            #expect(try f.dump() == errorState)
        }
    }

    @Test func bodyLimitsAndUnknownRoutes() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            let big = #"{"volume":{"size":1,"name":""# + String(repeating: "x", count: (1 << 20) + 10) + #""}}"#
            var r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: big)
            #expect(r.status == 413 && fault(r)?.1 == 413, "\(r.status) \(r.raw.prefix(200))")
            r = try await c.call(.get, "/volume/v3/nothing", token: f.alice)
            #expect(r.status == 404 && fault(r)?.0 == "itemNotFound")
            r = try await c.call(.get, "/volume/v3/volumes/abc", token: f.alice)
            #expect(r.status == 404 && fault(r)?.0 == "itemNotFound")
            r = try await c.call(.patch, "/volume/v3/volumes", token: f.alice)
            #expect((400..<500).contains(r.status) && fault(r) != nil, "\(r.status) \(r.raw)")
        }
    }
}

@Suite struct ComputeAPI {
    @Test func serversFlavorsImagesAttachments() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            let sid = try await bootServer(f, c)
            var r = try await c.call(.get, "/compute/v2.1/servers/\(sid)", token: f.alice)
            let s = r.json["server"] as? [String: Any]
            #expect(s?["status"] as? String == "ACTIVE" && (s?["volumes"] as? [Int]) == [1, 2])
            #expect((s?["os-extended-volumes:volumes_attached"] as? [[String: Any]])?.map { $0["id"] as? String } == ["1", "2"])
            for key in ["id", "name", "status", "metadata", "image", "flavor", "tenant_id", "user_id", "created", "updated", "links"] {
                #expect(s?.keys.contains(key) == true, "missing \(key)")
            }
            r = try await c.call(.get, "/compute/v2.1/servers?name=vm1", token: f.alice)
            #expect((r.json["servers"] as? [[String: Any]])?.count == 1)
            r = try await c.call(.get, "/compute/v2.0/servers/detail", token: f.alice)
            #expect((r.json["servers"] as? [[String: Any]])?.first?["status"] as? String == "ACTIVE")
            r = try await c.call(.get, "/compute/v2.1/servers/\(sid)/os-volume_attachments", token: f.alice)
            let a = r.json["volumeAttachments"] as? [[String: Any]]
            #expect(a?.count == 2 && a?[1]["volumeId"] as? String == "2" && a?[1]["serverId"] as? String == sid && a?[1]["device"] as? String == "/dev/vdb")
            r = try await c.call(.get, "/compute/v2.1/servers/\(sid)/os-volume_attachments/2", token: f.alice)
            #expect((r.json["volumeAttachment"] as? [String: Any])?["id"] as? String == "2")
            r = try await c.call(.get, "/compute/v2.1/flavors/detail", token: f.alice)
            let fl = (r.json["flavors"] as? [[String: Any]])?.first
            #expect(fl?["id"] as? String == "1" && fl?["ram"] as? Int == 512 && fl?["disk"] as? Int == 1 && fl?["vcpus"] as? Int == 1)
            r = try await c.call(.get, "/compute/v2.1/flavors/1/os-extra_specs", token: f.alice)
            #expect((r.json["extra_specs"] as? [String: Any])?["SNF:disk_template"] as? String == "ext_archipelago")
            r = try await c.call(.get, "/compute/v2.1/images/\(f.image.id)", token: f.alice)
            #expect((r.json["image"] as? [String: Any])?["name"] as? String == "debian")
            // imageRef alone: one root volume of the flavor's disk
            r = try await c.call(.post, "/compute/v2.1/servers", token: f.alice, json: #"{"server":{"name":"vm2","imageRef":"\#(f.image.id)","flavorRef":"small"}}"#)
            #expect(r.status == 202, "\(r.raw)")
            try f.settle()
            let sid2 = (r.json["server"] as? [String: Any])?["id"] as? String ?? "?"
            // delete: 204, volumes deleted with it, quota given back
            r = try await c.call(.delete, "/compute/v2.1/servers/\(sid)", token: f.alice)
            #expect(r.status == 204)
            try f.settle()
            r = try await c.call(.get, "/compute/v2.1/servers/\(sid)", token: f.alice)
            #expect(r.status == 404)
            r = try await c.call(.get, "/volume/v3/volumes/detail", token: f.alice)
            #expect((r.json["volumes"] as? [[String: Any]])?.compactMap { $0["server_id"] as? String } == [sid2])
            #expect(try f.registry.quotas().first { $0.usage > 0 }?.usage == 1 << 30)
        }
    }
}

/// The Glance v2-shaped image lookups the clients make: /image (openstack),
/// <compute>/v2/images?name= (nova boot --image NAME).
@Suite struct ImageAPI {
    @Test func glanceShapedLookups() async throws {
        let f = try APIFixture()
        let bobUser = try f.registry.findUser("bob")
        let mine = try f.registry.registerImage(name: "bobs", location: "file:/srv/b.raw", size: 3 << 30, owner: bobUser.id, isPublic: false, checksum: "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d")
        try await f.app().test(.router) { c in
            for path in ["/image", "/image/", "/image/v2"] {
                let r = try await c.call(.get, path)
                let v = (r.json["versions"] as? [[String: Any]])?.first
                #expect(r.status == 200 && v?["id"] as? String == "v2.6" && v?["status"] as? String == "CURRENT", "\(path): \(r.raw)")
                #expect(((v?["links"] as? [[String: Any]])?.first?["href"] as? String)?.hasSuffix("/image/v2/") == true, "\(r.raw)")
            }
            for p in ["/image/v2", "/compute/v2.1/v2", "/compute/v2.0/v2"] {
                var r = try await c.call(.get, "\(p)/images", token: f.alice)
                var list = r.json["images"] as? [[String: Any]] ?? []
                #expect(r.status == 200 && list.map { $0["name"] as? String } == ["debian"], "alice sees the public image only: \(r.raw)")
                #expect(list.first?["id"] as? String == f.image.id && list.first?["status"] as? String == "active"
                        && list.first?["visibility"] as? String == "public" && list.first?["size"] as? Int == 1 << 30 && list.first?["min_disk"] as? Int == 1)
                r = try await c.call(.get, "\(p)/images?name=debian", token: f.alice)
                #expect((r.json["images"] as? [[String: Any]])?.count == 1)
                r = try await c.call(.get, "\(p)/images?name=bobs", token: f.alice)
                #expect((r.json["images"] as? [[String: Any]])?.isEmpty == true, "\(r.raw)")
                r = try await c.call(.get, "\(p)/images", token: f.bob)
                list = r.json["images"] as? [[String: Any]] ?? []
                #expect(Set(list.compactMap { $0["name"] as? String }) == ["debian", "bobs"])
                #expect(list.first { $0["name"] as? String == "bobs" }?["visibility"] as? String == "private")
                r = try await c.call(.get, "\(p)/images?limit=1", token: f.bob)
                #expect((r.json["images"] as? [[String: Any]])?.map { $0["name"] as? String } == ["bobs"], "sorted by name: \(r.raw)")
                r = try await c.call(.get, "\(p)/images/\(f.image.id)", token: f.alice)
                #expect(r.status == 200 && r.json["name"] as? String == "debian" && r.json["disk_format"] as? String == "raw", "flat: \(r.raw)")
                r = try await c.call(.get, "\(p)/images/\(mine.id)", token: f.alice)
                #expect(r.status == 404 && fault(r)?.0 == "itemNotFound", "bob's private image: \(r.raw)")
                r = try await c.call(.get, "\(p)/images/\(mine.id)", token: f.bob)
                #expect(r.status == 200 && r.json["checksum"] as? String == "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d")
                r = try await c.call(.get, "\(p)/images")
                #expect(r.status == 401)
                r = try await c.call(.get, "\(p)/images?marker=nope", token: f.alice)
                #expect(r.status == 400 && fault(r)?.0 == "badRequest")
            }
        }
    }
}

/// docs/openapi.json describes exactly the routes the router serves.
@Suite struct OpenAPIDocument {
    static var docURL: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/openapi.json")
    }

    @Test func everyRouteIsDocumentedAndEveryDocumentedPathAnswers() async throws {
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.docURL)) as? [String: Any]
        #expect((doc?["openapi"] as? String)?.hasPrefix("3.") == true)
        let paths = doc?["paths"] as? [String: [String: Any]] ?? [:]
        let f = try APIFixture()
        var documented = Set<String>()
        var statuses: [String: Set<String>] = [:]
        for (p, ops) in paths {
            for (m, o) in ops where ["get", "post", "put", "delete"].contains(m) {
                documented.insert("\(m.uppercased()) \(p)")
                statuses["\(m.uppercased()) \(p)"] = Set(((o as? [String: Any])?["responses"] as? [String: Any] ?? [:]).keys)
            }
        }
        let ops = documented.sorted(), known = statuses
        // The router's own table: the route groups as Hummingbird holds them.
        let served = Set(f.api.router().routes.map { "\($0.method.rawValue) \($0.path.description)" })
        #expect(served.subtracting(documented).sorted() == [], "served but not documented")
        #expect(documented.subtracting(served).sorted() == [], "documented but not served")
        // every documented operation answers with a documented status and never 5xx
        try await f.app().test(.router) { c in
            let sid = try await bootServer(f, c)
            for op in ops {
                let parts = op.split(separator: " ", maxSplits: 1).map(String.init)
                let path = parts[1].replacingOccurrences(of: "{server_id}", with: sid).replacingOccurrences(of: "{volume_id}", with: "2")
                    .replacingOccurrences(of: "{type_id}", with: "1").replacingOccurrences(of: "{flavor_id}", with: "1")
                    .replacingOccurrences(of: "{image_id}", with: f.image.id).replacingOccurrences(of: "{snapshot_id}", with: "none")
                    .replacingOccurrences(of: "{key}", with: "k")
                let body = parts[0] == "POST" || parts[0] == "PUT" ? "{}" : nil
                let r = try await c.call(HTTPRequest.Method(parts[0])!, path, token: f.alice, json: body)
                #expect(r.status < 500 || r.status == 501, "\(op): \(r.status) \(r.raw)")
                #expect(known[op]?.contains(String(r.status)) == true, "\(op): \(r.status) is not documented")
                if r.status >= 400 { #expect(fault(r) != nil, "\(op): not a fault: \(r.raw)") }
            }
        }
    }
}
