import Cyclades
import Foundation
import GRDB

/// os-volume_attachments: attach (POST) and detach (DELETE) of existing
/// volumes, Ganeti 3.1 jobs through the Registry (ATTACHING / DETACHING).
/// Answers 202 with `volumeAttachment`, as kamaki expects (nova and
/// openstack take any 2xx).
extension CycladesAPI {
    /// POST body: `{"volumeAttachment": {"volumeId": "N", "device": ..., "delete_on_termination": ...}}`.
    struct AttachRequest: Decodable {
        struct Attachment: Decodable {
            var volumeId: FlexibleID
            var device: String?
            var delete_on_termination: Bool?
        }
        var volumeAttachment: Attachment
    }

    /// An id as nova sends it (a string) or as a number.
    struct FlexibleID: Decodable {
        var value: String
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { value = s } else { value = String(try c.decode(Int64.self)) }
        }
    }

    struct AttachmentView: Encodable {
        var id: String
        var volumeId: String
        var serverId: String
        var device: String
        var delete_on_termination: Bool

        init(_ v: Volume, server: Int64) {
            id = String(v.id!); volumeId = id; serverId = String(server)
            device = CycladesAPI.device(v.index); delete_on_termination = v.deleteOnTermination
        }
    }

    struct AttachmentReply: Encodable { var volumeAttachment: AttachmentView }

    static func decodeBody<T: Decodable>(_ type: T.Type, _ call: Call, what: String) throws -> T {
        guard let d = call.body, !d.isEmpty else { throw Input.bad("Malformed request: a JSON body is required.") }
        do {
            return try JSONDecoder().decode(T.self, from: d)
        } catch DecodingError.keyNotFound(let key, _) {
            throw Input.bad("Malformed request. Missing attribute '\(key.stringValue)' in \(what).")
        } catch DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx) {
            throw Input.bad("Malformed request: '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type in \(what).")
        } catch {
            throw Input.bad("Malformed request: the body is not a valid \(what).")
        }
    }

    static func attachReply(_ v: Volume, server: Int64) throws -> Reply {
        let data = try JSONEncoder().encode(AttachmentReply(volumeAttachment: AttachmentView(v, server: server)))
        return Reply(status: 202, body: data)
    }

    /// POST /servers/{id}/os-volume_attachments.
    func attachVolumeRoute(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.db.read { db in try ownedServer(db, call.param("server_id"), user) }
        let req = try Self.decodeBody(AttachRequest.self, call, what: "volumeAttachment")
        guard let vid = Int64(req.volumeAttachment.volumeId.value) else {
            throw CycladesError(.itemNotFound, "volume \(req.volumeAttachment.volumeId.value.prefix(40)) does not exist")
        }
        let v = try registry.attachVolume(vid, server: s.id!, user: user.id)
        return try Self.attachReply(v, server: s.id!)
    }

    /// DELETE /servers/{id}/os-volume_attachments/{volume_id}.
    func detachVolumeRoute(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.db.read { db in try ownedServer(db, call.param("server_id"), user) }
        guard let vid = Int64(call.param("volume_id")) else {
            throw CycladesError(.itemNotFound, "volume \(call.param("volume_id").prefix(40)) is not attached to server \(s.id!)")
        }
        _ = try registry.detachVolume(vid, server: s.id!, user: user.id)
        return .empty(202)
    }

    /// block_device_mapping_v2 items with delete_on_termination false: their
    /// volumes stay (AVAILABLE) when the server is deleted.
    func keepVolumes(of server: Server, indexes: [Int], user: User) throws {
        guard !indexes.isEmpty else { return }
        let vols = try registry.db.read { db in
            try Volume.filter(Column("machineID") == server.id! && indexes.contains(Column("index"))).fetchAll(db)
        }
        for v in vols { _ = try registry.setDeleteOnTermination(volume: v.id!, false, user: user.id) }
    }
}
