@testable import Cyclades
@testable import CycladesAPI
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

/// The responses are Codable types, written by ResponseEncoder: the same JSON
/// as Foundation's encoder makes of them (keys in the type's order), and every
/// property docs/openapi.json documents for a schema is one the type writes.
@Suite struct ResponseTypes {
    static func sample() -> (CycladesAPI.Call, Cyclades.Volume, Server, Flavor, Cyclades.Image, Snapshot, VolumeType) {
        let call = CycladesAPI.Call(method: .GET, path: "/", params: [:], query: [:], body: nil, user: nil, base: "http://h:1", prefix: "/volume/v3")
        let now = Date(timeIntervalSince1970: 1_700_000_000.25)
        let v = Cyclades.Volume(id: 7, name: "data \"q\" / é", description: nil, userid: "u1", project: "p1", size: 3, volumeTypeID: 1, machineID: 2,
                                index: 1, source: "snapshot:abc", origin: "snapshot:x", status: .inUse, deleteOnTermination: true, deleted: false,
                                backendJobID: 9, created: now, updated: now)
        let s = Server(id: 2, name: "vm", userid: "u1", project: "p1", flavorID: 1, backendID: 1, imageID: nil, status: .error, backendJobID: nil,
                       pendingAction: "remove", deleted: false, created: now, updated: now)
        let f = Flavor(id: 1, name: "small", cpu: 1, ram: 512, disk: 1, volumeTypeID: 1)
        let i = Cyclades.Image(id: "img-1", name: "debian", owner: "system", isPublic: true, location: "snapshot:debian", size: (1 << 30) + 1, checksum: nil)
        let sn = Snapshot(id: "sn-1", volumeID: 7, userid: "u1", name: "s", size: 3, status: "AVAILABLE", storeName: "x", created: now)
        let t = VolumeType(id: 1, name: "archipelago", diskTemplate: "ext_archipelago", deleted: false)
        return (call, v, s, f, i, sn, t)
    }

    /// Every response type of the API, with a sample value, by the OpenAPI schema it answers with.
    static func values() -> [(schema: String?, value: any Encodable & Sendable)] {
        let (call, v, s, f, i, sn, t) = sample()
        let ctx = VolumeContext(types: [1: t], metadata: [7: ["b": "2", "a": "1"]])
        return [
            ("Volume", CycladesAPI.VolumeDetail(v, ctx, call)),
            ("VolumeSummary", CycladesAPI.VolumeSummary(v, call)),
            ("Attachment", CycladesAPI.VolumeDetail(v, ctx, call).attachments[0]),
            ("Snapshot", CycladesAPI.SnapshotDetail(sn, call)),
            ("Snapshot", CycladesAPI.SnapshotSummary(sn, call)),
            ("VolumeType", CycladesAPI.TypeView(t)),
            ("Version", CycladesAPI.VolumeVersion("v3.0", "CURRENT", "/volume/v3", base: call.base)),
            (nil, Keyed("volumes", [CycladesAPI.VolumeSummary(v, call), CycladesAPI.VolumeSummary(v, call)])),
            (nil, Keyed("metadata", CycladesAPI.Metadata(["z": "1", "a": "2"]))),
            (nil, Keyed("itemNotFound", CycladesAPI.Fault(code: 404, message: "volume 7 does not exist"))),
            ("Server", CycladesAPI.ServerDetail(s, [v], call)),
            ("Server", CycladesAPI.Summary(s, call)),
            ("Flavor", CycladesAPI.FlavorDetail(f, [1: t], call)),
            ("Flavor", CycladesAPI.Summary(f, call)),
            ("Image", CycladesAPI.ImageDetail(i, call)),
            ("Image", CycladesAPI.ImageSummary(i, call)),
            ("VolumeAttachment", CycladesAPI.Attachment(v)),
            ("Version", CycladesAPI.ComputeVersion("v2.1", base: call.base)),
            (nil, CycladesAPI.ServerCreated(id: "2", links: [Link(rel: "self", href: "http://h:1/compute/v2.1/servers/2")])),
            (nil, CycladesAPI.ExtraSpecs(diskTemplate: "ext_archipelago", volumeType: "1")),
            ("GlanceImage", CycladesAPI.GlanceImage(i)),
            (nil, CycladesAPI.GlanceImageList(images: [CycladesAPI.GlanceImage(i)])),
            (nil, CycladesAPI.ImageVersions(versions: [.init(id: "v2.6", status: "CURRENT", links: [Link(rel: "self", href: "http://h:1/image/v2/")])])),
        ]
    }

    static func sortedJSON(_ data: Data) throws -> String {
        let o = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        return String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
    }

    @Test func theEncoderWritesWhatFoundationWrites() throws {
        for (schema, value) in Self.values() {
            let mine = try ResponseEncoder.encode(value)
            let theirs = try JSONEncoder().encode(value)
            #expect(try Self.sortedJSON(mine) == Self.sortedJSON(theirs), "\(schema ?? "\(type(of: value))")")
        }
    }

    @Test func aGlanceImageIsWrittenInItsTypesOrder() throws {
        let (_, _, _, _, i, _, _) = Self.sample()
        let out = String(decoding: try ResponseEncoder.encode(CycladesAPI.GlanceImage(i)), as: UTF8.self)
        #expect(out.hasPrefix(#"{"id":"img-1","name":"debian","status":"active","visibility":"public","owner":"system","size":1073741825,"min_disk":2,"#), "\(out)")
        #expect(out.contains(#""checksum":null"#) && out.hasSuffix(#""self":"/v2/images/img-1","file":"/v2/images/img-1/file","schema":"/v2/schemas/image","SNF:location":"snapshot:debian"}"#), "\(out)")
    }

    @Test func aVolumeIsWrittenInItsTypesOrderWithNulls() throws {
        let (call, v, _, _, _, _, t) = Self.sample()
        let out = String(decoding: try ResponseEncoder.encode(CycladesAPI.VolumeDetail(v, VolumeContext(types: [1: t]), call)), as: UTF8.self)
        // Keys that appear once, at the top (server_id is in the attachment too).
        let keys = ["\"id\"", "\"name\"", "\"display_name\"", "\"links\"", "\"description\"", "\"size\"", "\"status\"", "\"volume_type\"",
                    "\"attachments\"", "\"metadata\"", "\"bootable\"", "\"created_at\"", "\"user_id\"", "\"multiattach\""]
        let positions = keys.map { k in out.range(of: k).map { out.distance(from: out.startIndex, to: $0.lowerBound) } ?? -1 }
        #expect(!positions.contains(-1) && positions == positions.sorted(), "\(out)")
        // nil is written as null, never left out
        #expect(out.contains("\"description\":null") && out.contains("\"image_id\":null"), "\(out)")
        #expect(out.contains("\"name\":\"data \\\"q\\\" / é\""), "\(out)")
        let meta = String(decoding: try ResponseEncoder.encode(CycladesAPI.Metadata(["z": "1", "a": "2", "m": "3"])), as: UTF8.self)
        #expect(meta == #"{"a":"2","m":"3","z":"1"}"#)
    }

    @Test func nestingClosesEveryContainer() throws {
        struct Inner: Encodable { var a: [[Int]] = [[1, 2], [], [3]]; var b: [String: [String]] = ["k": []]; var c: Inner2? = Inner2() }
        struct Inner2: Encodable { var x = [Inner3(), Inner3()]; var y: Int? = nil }
        struct Inner3: Encodable { var z = ""; var w = [Bool]() }
        let out = String(decoding: try ResponseEncoder.encode([Inner(), Inner()]), as: UTF8.self)
        let one = #"{"a":[[1,2],[],[3]],"b":{"k":[]},"c":{"x":[{"z":"","w":[]},{"z":"","w":[]}]}}"#
        #expect(out == "[\(one),\(one)]")
    }

    @Test func everyDocumentedPropertyIsWritten() throws {
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: OpenAPIDocument.docURL)) as? [String: Any]
        let schemas = (doc?["components"] as? [String: Any])?["schemas"] as? [String: [String: Any]] ?? [:]
        var checked = Set<String>()
        for (schema, value) in Self.values() {
            guard let schema else { continue }
            let props = Set((schemas[schema]?["properties"] as? [String: Any] ?? [:]).keys)
            let required = Set(schemas[schema]?["required"] as? [String] ?? [])
            #expect(!props.isEmpty, "docs/openapi.json has no schema \(schema)")
            let written = Set((try JSONSerialization.jsonObject(with: ResponseEncoder.encode(value)) as? [String: Any] ?? [:]).keys)
            // A summary writes the required keys; a full type every documented one.
            let full = !String(describing: type(of: value)).hasSuffix("Summary")
            let missing = (full ? props : required).subtracting(written)
            #expect(missing.isEmpty, "\(type(of: value)) does not write \(missing.sorted()) of \(schema)")
            checked.insert(schema)
        }
        #expect(checked.count >= 10)
    }
}

/// Request bodies are Decodable types: every wrong shape is a 400 whose
/// message names the attribute, as clients were told before.
@Suite struct RequestTypes {
    static func call(_ body: String?) -> CycladesAPI.Call {
        CycladesAPI.Call(method: .POST, path: "/", params: [:], query: [:], body: body.map { Data($0.utf8) }, user: nil, base: "http://h:1", prefix: "/compute/v2.1")
    }

    static func refusal<T: Decodable>(_ type: T.Type, _ body: String?) -> String? {
        do {
            _ = try call(body).decode(type)
            return nil
        } catch let e as CycladesError {
            return e.kind == .badRequest ? e.message : "\(e.kind): \(e.message)"
        } catch {
            return "not a CycladesError: \(error)"
        }
    }

    @Test func serverCreateRefusalsNameTheAttribute() {
        let bdm = { (item: String) in #"{"server":{"name":"x","flavorRef":"1","block_device_mapping_v2":[\#(item)]}}"# }
        let cases: [(String?, String)] = [
            (nil, "Malformed request: a JSON body is required."),
            ("[1,2]", "Malformed request: the body must be a JSON object."),
            ("7", "Malformed request: the body must be a JSON object."),
            (#"{"server": "#, "Malformed request: the body is not valid JSON."),
            (#"{"server": 1}"#, "Malformed request: 'server' must be an object."),
            (#"{"servers": {}}"#, "Malformed request. Missing attribute 'server'."),
            (#"{"server": {"name": 5}}"#, "'name' must be a string."),
            (#"{"server": {"name": "x"}}"#, "Malformed request. Missing attribute 'flavorRef'."),
            (#"{"server": {"name": "x", "flavorRef": true}}"#, "'flavorRef' must be a string or a whole number."),
            (#"{"server": {"name": "x", "flavorRef": 1}}"#, "give imageRef or a block_device_mapping_v2 whose first item has a source"),
            (#"{"server":{"name":"x","flavorRef":"1","block_device_mapping_v2":[1]}}"#, "Block Device Mapping is Invalid: a list of objects is expected."),
            (bdm(#"{"uuid":"i"}"#), "Block Device Mapping is Invalid: item 0 has no source_type."),
            (bdm(#"{"source_type":"image","uuid":"i","volume_size":"abc"}"#), "'volume_size' must be a whole number, not 'abc'."),
            (bdm(#"{"source_type":"image","uuid":"i","volume_size":true}"#), "'volume_size' must be a whole number."),
            (bdm(#"{"source_type":"image","uuid":"i","delete_on_termination":"maybe"}"#), "'delete_on_termination' must be true or false."),
            (bdm(#"{"source_type":"image"}"#), "Block Device Mapping is Invalid: item 0 (image) has no uuid."),
            (bdm(#"{"source_type":"image","uuid":"i","volume_size":0}"#), "Block Device Mapping is Invalid: volume_size 0 of item 0."),
            (bdm(#"{"source_type":"tape","uuid":"i"}"#), "Block Device Mapping is Invalid: source_type 'tape' (image, snapshot, blank, volume)."),
        ]
        for (body, message) in cases {
            #expect(Self.refusal(CycladesAPI.CreateServerRequest.self, body) == message, "\(body ?? "no body")")
        }
    }

    @Test func serverCreateReadsWhatClientsSend() throws {
        let r = try Self.call(#"{"server":{"name":"vm","imageRef":"","flavorRef":2,"block_device_mapping_v2":[{"source_type":"image","uuid":"img","volume_size":"3","delete_on_termination":"true"},{"source_type":"blank","volume_size":1}]}}"#)
            .decode(CycladesAPI.CreateServerRequest.self)
        #expect(r.name == "vm" && r.flavorRef == "2" && r.imageRef == nil)
        #expect(r.volumes.map(\.source) == ["image:img", nil] && r.volumes.map(\.sizeGB) == [3, 1])
    }

    @Test func volumeRequestRefusalsNameTheAttribute() {
        let vol = { (fields: String) in #"{"volume":{"size":1,"server_id":"1",\#(fields)}}"# }
        let cases: [(String, String)] = [
            (#"{"volume":{"size":1},"OS-SCH-HNT:scheduler_hints":[1]}"#, "'OS-SCH-HNT:scheduler_hints' must be an object."),
            (#"{"volume":{"size":1,"server_id":"vm"}}"#, "server_id 'vm' is not a server id."),
            (vol(#""imageRef":"a","snapshot_id":"b""#), "give one source at most (imageRef, snapshot_id or source_volid), not 2"),
            (vol(#""metadata":{"k":1}"#), "metadata value of 'k' must be a string."),
            (vol(#""metadata":[]"#), "'metadata' must be an object of strings."),
            (vol(#""name":"\#(String(repeating: "n", count: 256))""#), "'name' is longer than 255 characters."),
        ]
        for (body, message) in cases {
            #expect(Self.refusal(CycladesAPI.CreateVolumeRequest.self, body) == message, "\(body)")
        }
        let hinted = try? Self.call(#"{"volume":{"size":"2"},"OS-SCH-HNT:scheduler_hints":{"server_id":5}}"#).decode(CycladesAPI.CreateVolumeRequest.self)
        #expect(hinted?.serverID == 5 && hinted?.size == 2 && hinted?.source == nil)
        // Without a server: an AVAILABLE volume; delete_on_termination false keeps a volume past its server.
        let serverless = try? Self.call(#"{"volume":{"size":1}}"#).decode(CycladesAPI.CreateVolumeRequest.self)
        #expect(serverless != nil && serverless?.serverID == nil)
        let keep = try? Self.call(#"{"volume":{"delete_on_termination":false}}"#).decode(CycladesAPI.UpdateVolumeRequest.self)
        #expect(keep?.deleteOnTermination == false)
        #expect(Self.refusal(CycladesAPI.MetadataRequest.self, #"{"meta":{}}"#) == "Malformed request. Missing attribute 'metadata'.")
        #expect(Self.refusal(CycladesAPI.CreateSnapshotRequest.self, #"{"snapshot":{"name":"s"}}"#) == "Malformed request. Missing attribute 'volume_id'.")
        #expect(Self.refusal(CycladesAPI.VolumeActionRequest.self, #"{"os-extend":{"new_size":2},"os-x":{}}"#) == #"an action is one key, e.g. {"os-extend": {"new_size": 2}}"#)
        // What is wrong inside an action is told only once the volume is found (404 first).
        if case .extend(let size)? = try? Self.call(#"{"os-extend":{}}"#).decode(CycladesAPI.VolumeActionRequest.self) {
            #expect(throws: CycladesError.self) { try size.get() }
        } else {
            Issue.record("os-extend without new_size did not decode to .extend")
        }
    }
}
