import ArchipServe
import ArchipStore
@testable import ExtStorage
import Foundation
import Testing

/// The node daemon as the provider sees it, in memory: records every call and
/// serves what the test says is attached.
final class FakeNode: NodeAttachments, @unchecked Sendable {
    var attached: [String: AttachmentInfo] = [:]
    var calls: [String] = []

    static func info(_ name: String, mode: String = "none") throws -> AttachmentInfo {
        let json = #"{"name":"\#(name)","device":"/dev/loop7","uri":"nbd:unix:/run/archip/nbd/\#(name).sock:exportname=\#(name)","mode":"\#(mode)","readOnly":false,"size":8388608}"#
        return try JSONDecoder().decode(AttachmentInfo.self, from: Data(json.utf8))
    }

    func attach(_ name: VolumeName) throws -> AttachmentInfo {
        calls.append("attach \(name)")
        let a = try attached[name.value] ?? Self.info(name.value)
        attached[name.value] = a
        return a
    }
    func open(_ name: VolumeName, exclusive: Bool) throws { calls.append("open \(name) \(exclusive ? "exclusive" : "shared")") }
    func close(_ name: VolumeName) throws { calls.append("close \(name)") }
    func detach(_ name: VolumeName) throws { calls.append("detach \(name)"); attached[name.value] = nil }
    func attachment(_ name: VolumeName) throws -> AttachmentInfo? { attached[name.value] }
    func snapshot(_ name: VolumeName, as snapshot: VolumeName) throws -> Bool {
        guard attached[name.value] != nil else { return false }
        calls.append("snapshot \(name) \(snapshot)")
        return true
    }
    func grow(_ name: VolumeName, to size: ByteCount) throws -> Bool {
        guard attached[name.value] != nil else { return false }
        calls.append("grow \(name) \(size.bytes)")
        return true
    }
}

/// The provider's rules over a store in memory and a fake node: what goes
/// through the node daemon, what goes to the store, what is refused.
@Suite struct ProviderRules {
    let store: VolumeStore
    let node = FakeNode()
    let vol = "0b1c2d3e-1111-2222-3333-444455556666.ext.disk0"

    init() throws {
        store = try VolumeStore(objects: MemoryObjectStore(), node: "node-a")
    }

    func run(_ action: Action, _ vars: [String: String] = [:]) throws -> [String] {
        var env = ["VOL_NAME": vol, "EXTP_PROVIDER": "archipelago", "EXTP_ACCESS": "kernelspace"]
        for (k, v) in vars { env[k] = v }
        let config = try ProviderConfig(["store.path": "/memory", "node.name": "node-a"], path: "test.conf")
        let store = self.store
        return try Provider(env: GanetiEnvironment(env), config: config, node: node, openStore: { store }, note: { _ in }).run(action)
    }

    func name(_ s: String) throws -> VolumeName { try VolumeName(s) }

    @Test func attachPrintsTheDeviceAndTheURIAndTakesNoHold() throws {
        // A missing volume fails without asking the node for anything.
        #expect(throws: ExtStorageError.self) { try run(.attach) }
        #expect(node.calls.isEmpty)
        try store.create(try name(vol), size: .mebibytes(8))
        let lines = try run(.attach)
        #expect(lines == ["/dev/loop7", "kvm:nbd:unix:/run/archip/nbd/\(vol).sock:exportname=\(vol)"])
        #expect(node.calls == ["attach \(vol)"], "attach only: no open")
        #expect(try store.summary(try name(vol))?.lock == nil, "no hold taken in the store")
    }

    @Test func openAndCloseTakeAndReleaseTheHold() throws {
        try store.create(try name(vol), size: .mebibytes(8))
        _ = try run(.open)
        _ = try run(.open, ["VOL_OPEN_EXCLUSIVE": "False"])
        _ = try run(.close)
        #expect(node.calls == ["open \(vol) exclusive", "open \(vol) shared", "close \(vol)"])
        #expect(throws: ExtStorageError.self) { try run(.open, ["VOL_OPEN_EXCLUSIVE": "maybe"]) }
    }

    @Test func removeIsRefusedWhileAttachedAndAMissingVolumeIsSuccess() throws {
        try store.create(try name(vol), size: .mebibytes(8))
        _ = try run(.attach)
        let e = #expect(throws: ExtStorageError.self) { try run(.remove) }
        #expect(e?.exitStatus == 1 && e?.description.contains("attached on this node") == true, "\(e.map { "\($0)" } ?? "")")
        #expect(try store.summary(try name(vol)) != nil)
        _ = try run(.detach)
        _ = try run(.remove)
        #expect(try store.summary(try name(vol)) == nil)
        _ = try run(.remove)   // Ganeti retries removes
    }

    @Test func growAndSnapshotGoThroughTheNodeWhenAttachedHere() throws {
        try store.create(try name(vol), size: .mebibytes(8))
        // Not attached: the store itself.
        _ = try run(.grow, ["VOL_SIZE": "8", "VOL_NEW_SIZE": "16"])
        #expect(try store.summary(try name(vol))?.size == 16 << 20)
        _ = try run(.snapshot, ["VOL_SNAPSHOT_NAME": "\(vol).snap"])
        #expect(try store.summary(try name("\(vol).snap"))?.kind == "snapshot")
        #expect(node.calls.isEmpty)
        // Attached here: through the daemon, which holds every acknowledged write.
        _ = try run(.attach)
        _ = try run(.grow, ["VOL_SIZE": "16", "VOL_NEW_SIZE": "32"])
        _ = try run(.snapshot, ["VOL_SNAPSHOT_NAME": "\(vol).snap2"])
        #expect(node.calls == ["attach \(vol)", "grow \(vol) \(32 << 20)", "snapshot \(vol) \(vol).snap2"])
        // A grow Ganeti retries after it happened is done.
        _ = try run(.grow, ["VOL_SIZE": "8", "VOL_NEW_SIZE": "16"])
        #expect(node.calls.count == 3)
    }

    @Test func aCloneOfAVolumeAttachedHereIsFrozenThroughTheNode() throws {
        let source = "11111111-2222-3333-4444-555555555555.ext.disk0"
        try store.create(try name(source), size: .mebibytes(8), metadata: [Provider.Key.cname: "snf-vol-9"])
        node.attached[source] = try FakeNode.info(source, mode: "exclusive")
        // The fake does not make the snapshot: the store must not be used instead
        // (it would miss writes the daemon acknowledged), so the create fails
        // finding no snapshot, after asking the node.
        #expect(throws: (any Error).self) { try run(.create, ["VOL_SIZE": "8", "EXTP_ORIGIN": "disk:snf-vol-9"]) }
        #expect(node.calls == ["snapshot \(source) \(source).origin-of-\(vol)"])
        #expect(try store.summary(try name(vol)) == nil)
        // Detached: the store snapshots it, and the clone is O(1) from it.
        node.attached = [:]
        node.calls = []
        _ = try run(.create, ["VOL_SIZE": "8", "EXTP_ORIGIN": "disk:snf-vol-9"])
        #expect(try store.info(try name(vol)).parent == "\(source).origin-of-\(vol)")
        #expect(node.calls.isEmpty)
    }

    @Test func createRecordsTheDiskAndMeetsItsOwnVolumeAgain() throws {
        _ = try run(.create, ["VOL_SIZE": "8", "VOL_UUID": "u-1", "VOL_CNAME": "snf-vol-1"])
        let s = try #require(try store.summary(try name(vol)))
        #expect(s.metadata[Provider.Key.uuid] == "u-1" && s.metadata[Provider.Key.cname] == "snf-vol-1")
        _ = try run(.create, ["VOL_SIZE": "8", "VOL_UUID": "u-1"])   // recreate-disks: same disk
        #expect(throws: ExtStorageError.self) { try run(.create, ["VOL_SIZE": "8", "VOL_UUID": "u-2"]) }
    }
}
