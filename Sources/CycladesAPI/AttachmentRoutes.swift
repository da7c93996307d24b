import Cyclades
import Foundation

/// os-volume_attachments: attach (POST) and detach (DELETE) of existing
/// volumes, Ganeti 3.1 jobs through the Registry (ATTACHING / DETACHING).
/// Answers 202 with `volumeAttachment`, as kamaki expects (nova and
/// openstack take any 2xx).
extension CycladesAPI {
    /// POST body: `{"volumeAttachment": {"volumeId": "N", "device": ..., "delete_on_termination": ...}}`
    /// (the id as nova sends it, a string, or a number).
    struct AttachRequest: Decodable {
        var volumeID: String

        init(from decoder: any Decoder) throws {
            let a = try Fields(decoder).object("volumeAttachment")
            guard let id = try a.id("volumeId") else { throw Fields.bad("Malformed request. Missing attribute 'volumeId' in volumeAttachment.") }
            volumeID = id
            _ = try a.string("device")
            _ = try a.bool("delete_on_termination")
        }
    }

    /// POST /servers/{id}/os-volume_attachments.
    func attachVolumeRoute(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
        let req = try call.decode(AttachRequest.self)
        guard let vid = Int64(req.volumeID) else {
            throw CycladesError(.itemNotFound, "volume \(req.volumeID.prefix(40)) does not exist")
        }
        let v = try registry.attachVolume(vid, server: s.id!, user: user.id)
        return try .encoded(202, Keyed("volumeAttachment", Attachment(v, server: s.id!)))
    }

    /// DELETE /servers/{id}/os-volume_attachments/{volume_id}.
    func detachVolumeRoute(_ call: Call) throws -> Reply {
        let user = try call.requireUser
        let s = try registry.server(call.param("server_id"), owner: user.id)
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
        for v in try registry.volumes(server: server.id!) where v.index.map(indexes.contains) == true {
            _ = try registry.setDeleteOnTermination(volume: v.id!, false, user: user.id)
        }
    }
}
