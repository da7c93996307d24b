@testable import Cyclades
@testable import CycladesAPI
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

/// Detachable volumes through the API, on the in-memory Ganeti.
@Suite struct AttachAPI {
    /// POST /volumes without a server: available, no attachments; attach
    /// (202 + volumeAttachment, as kamaki expects), detach (202), delete; the
    /// quota holds the volume from its creation to its deletion only.
    @Test func availableAttachDetachDelete() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            let sid = try await bootServer(f, c)
            var r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: #"{"volume":{"size":2,"name":"loose"}}"#)
            #expect(r.status == 202, "\(r.raw)")
            let vid = (r.json["volume"] as? [String: Any])?["id"] as? String ?? "?"
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "creating")
            try f.settle()   // the add to the helper; sends the detach
            try f.settle()   // the detach
            r = try await c.call(.get, "/volume/v3/volumes/\(vid)", token: f.alice)
            var v = r.json["volume"] as? [String: Any]
            #expect(v?["status"] as? String == "available" && (v?["attachments"] as? [Any])?.isEmpty == true && v?["server_id"] is NSNull, "\(r.raw)")
            let usage = { try f.registry.quotas().first { $0.limit == 20 << 30 && $0.usage > 0 }?.usage }
            #expect(try usage() == 4 << 30)

            r = try await c.call(.post, "/compute/v2.1/servers/\(sid)/os-volume_attachments", token: f.alice, json: #"{"volumeAttachment":{"volumeId":"\#(vid)"}}"#)
            #expect(r.status == 202, "\(r.raw)")
            let att = r.json["volumeAttachment"] as? [String: Any]
            #expect(att?["volumeId"] as? String == vid && att?["serverId"] as? String == sid && att?["id"] as? String == vid, "\(r.raw)")
            r = try await c.call(.get, "/volume/v3/volumes/\(vid)", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "attaching")
            try f.settle()
            r = try await c.call(.get, "/compute/v2.1/servers/\(sid)/os-volume_attachments/\(vid)", token: f.alice)
            #expect(r.status == 200 && (r.json["volumeAttachment"] as? [String: Any])?["device"] as? String == "/dev/vdc", "\(r.raw)")
            #expect(try f.ganeti.instanceDisks("snf-\(sid)")?.disks.last?.name == "snf-vol-\(vid)")
            #expect(try usage() == 4 << 30, "attach keeps the charge")

            // bob sees neither the volume nor alice's server
            r = try await c.call(.post, "/compute/v2.1/servers/\(sid)/os-volume_attachments", token: f.bob, json: #"{"volumeAttachment":{"volumeId":"\#(vid)"}}"#)
            #expect(r.status == 404 && fault(r)?.0 == "itemNotFound")

            r = try await c.call(.delete, "/compute/v2.1/servers/\(sid)/os-volume_attachments/\(vid)", token: f.alice)
            #expect(r.status == 202 && r.raw.isEmpty, "\(r.raw)")
            try f.settle()
            r = try await c.call(.get, "/volume/v3/volumes/\(vid)", token: f.alice)
            v = r.json["volume"] as? [String: Any]
            #expect(v?["status"] as? String == "available" && (v?["attachments"] as? [Any])?.isEmpty == true)
            #expect(try f.ganeti.instanceDisks("snf-\(sid)")?.disks.count == 2)
            #expect(try usage() == 4 << 30, "detach keeps the charge")

            r = try await c.call(.delete, "/volume/v3/volumes/\(vid)", token: f.alice)
            #expect(r.status == 202, "\(r.raw)")
            try f.settle()   // attached to the helper; sends the remove
            try f.settle()   // removed
            r = try await c.call(.get, "/volume/v3/volumes/\(vid)", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "deleted", "\(r.raw)")
            #expect(try usage() == 2 << 30, "delete gives the size back")
            #expect(try f.ganeti.instanceDisks(Registry.helperInstance)?.disks.map(\.name) == ["\(Registry.helperInstance)-root"], "only the helper's own disk is left")
        }
    }

    /// With Ganeti 3.0 the API answers attach with a one-line 501 naming the version it needs.
    @Test func ganeti30() async throws {
        let f = try APIFixture()
        f.ganeti.version = "3.0.2"
        try await f.app().test(.router) { c in
            _ = try await bootServer(f, c)
            let before = try f.dump()
            let r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: #"{"volume":{"size":1}}"#)
            #expect(r.status == 501 && fault(r)?.2.contains("Ganeti 3.0.2") == true && fault(r)?.2.contains("3.1") == true, "\(r.raw)")
            #expect(try f.dump() == before)
        }
    }
}

extension AttachAPI {
    /// delete_on_termination false (set at boot in block_device_mapping_v2, or
    /// by PUT): the server's deletion detaches the volume first; it stays
    /// available with its charge, the others are deleted.
    @Test func keptVolumesOutliveTheirServer() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            let bdm = [#"{"source_type":"image","uuid":"\#(f.image.id)","destination_type":"volume","volume_size":"1","boot_index":"0"}"#,
                       #"{"source_type":"blank","destination_type":"volume","volume_size":"2","delete_on_termination":false}"#,
                       #"{"source_type":"blank","destination_type":"volume","volume_size":"1"}"#]
            var r = try await c.call(.post, "/compute/v2.1/servers", token: f.alice,
                                     json: #"{"server":{"name":"vm","imageRef":"","flavorRef":"1","block_device_mapping_v2":[\#(bdm.joined(separator: ","))]}}"#)
            #expect(r.status == 202, "\(r.raw)")
            let sid = (r.json["server"] as? [String: Any])?["id"] as? String ?? "?"
            try f.settle()
            r = try await c.call(.put, "/volume/v3/volumes/3", token: f.alice, json: #"{"volume":{"delete_on_termination":false}}"#)
            #expect(r.status == 200 && (r.json["volume"] as? [String: Any])?["delete_on_termination"] as? Bool == false, "\(r.raw)")
            r = try await c.call(.get, "/volume/v3/volumes/2", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["delete_on_termination"] as? Bool == false, "\(r.raw)")
            r = try await c.call(.delete, "/compute/v2.1/servers/\(sid)", token: f.alice)
            #expect(r.status == 204, "\(r.raw)")
            try f.settle()   // the detaches; sends the remove
            try f.settle()   // the remove
            for (id, status) in [("1", "deleted"), ("2", "available"), ("3", "available")] {
                r = try await c.call(.get, "/volume/v3/volumes/\(id)", token: f.alice)
                #expect((r.json["volume"] as? [String: Any])?["status"] as? String == status, "volume \(id): \(r.raw)")
            }
            #expect(try f.ganeti.instanceDisks("snf-\(sid)") == nil)
            #expect(try f.registry.quotas().first { $0.limit == 20 << 30 && $0.usage > 0 }?.usage == 3 << 30, "the kept volumes stay charged")
        }
    }
}

extension AttachAPI {
    /// block_device_mapping_v2 source_type volume (not the root): the
    /// AVAILABLE volume is attached once Ganeti has built the server.
    @Test func bootWithAnAvailableVolume() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            var r = try await c.call(.post, "/volume/v3/volumes", token: f.alice, json: #"{"volume":{"size":1,"name":"data"}}"#)
            let vid = (r.json["volume"] as? [String: Any])?["id"] as? String ?? "?"
            try f.settle(); try f.settle()
            // bob cannot boot with alice's volume
            let before = try f.dump()
            let bdm = #"[{"source_type":"image","uuid":"\#(f.image.id)","volume_size":"1","boot_index":"0"},{"source_type":"volume","uuid":"\#(vid)","destination_type":"volume"}]"#
            r = try await c.call(.post, "/compute/v2.1/servers", token: f.bob, json: #"{"server":{"name":"b","imageRef":"","flavorRef":"1","block_device_mapping_v2":\#(bdm)}}"#)
            #expect(r.status == 404 && fault(r)?.0 == "itemNotFound", "\(r.raw)")
            #expect(try f.dump() == before)
            r = try await c.call(.post, "/compute/v2.1/servers", token: f.alice, json: #"{"server":{"name":"vm","imageRef":"","flavorRef":"1","block_device_mapping_v2":\#(bdm)}}"#)
            #expect(r.status == 202, "\(r.raw)")
            let sid = (r.json["server"] as? [String: Any])?["id"] as? String ?? "?"
            r = try await c.call(.get, "/volume/v3/volumes/\(vid)", token: f.alice)
            #expect((r.json["volume"] as? [String: Any])?["status"] as? String == "attaching")
            try f.settle()   // the server is built; the attach is sent
            try f.settle()   // the attach
            r = try await c.call(.get, "/volume/v3/volumes/\(vid)", token: f.alice)
            let v = r.json["volume"] as? [String: Any]
            #expect(v?["status"] as? String == "in-use" && v?["server_id"] as? String == sid, "\(r.raw)")
            #expect(try f.ganeti.instanceDisks("snf-\(sid)")?.disks.map(\.name) == ["snf-vol-2", "snf-vol-\(vid)"])
        }
    }
}
