import ArchipStore
import Foundation

/// `holds.json` in the runtime folder: the locks this daemon took (node and
/// token) and the kernel devices it made for each volume, so that the next
/// daemon, after a crash, releases exactly its own holds and removes exactly
/// its own loop devices. Its FUSE mounts lived in the dead daemon's private
/// mount namespace, gone with it: what is left is a loop device over a file
/// of a dead FUSE connection, recognised by the connection's device number.
struct HoldsRecord: Codable, Equatable {
    struct Devices: Codable, Equatable {
        /// /dev/loopN's N.
        var loop: Int32?
        /// The FUSE mount's device number (its fusectl connection id).
        var fuse: UInt64?
    }
    var node: String
    var token: String
    var names: [String]
    /// Absent in records of daemons that predate it.
    var devices: [String: Devices]?
}

/// Reads and rewrites `holds.json` (atomically), one change at a time.
final class HoldsFile: @unchecked Sendable {
    let path: String
    let owner: LockOwner
    private let lock = NSLock()

    init(path: String, owner: LockOwner) {
        self.path = path
        self.owner = owner
    }

    /// The record a previous daemon left, if any.
    func previous() -> HoldsRecord? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path)) else { return nil }
        return try? JSONDecoder().decode(HoldsRecord.self, from: data)
    }

    func add(_ name: String) throws { try change { if !$0.names.contains(name) { $0.names.append(name) } } }

    func record(_ name: String, devices: HoldsRecord.Devices) throws {
        try change { $0.devices = ($0.devices ?? [:]).merging([name: devices]) { $1 } }
    }

    func remove(_ name: String) throws {
        try change {
            $0.names.removeAll { $0 == name }
            $0.devices?[name] = nil
        }
    }

    func discard() { try? FileManager.default.removeItem(atPath: path) }

    private func change(_ body: (inout HoldsRecord) -> Void) throws {
        try lock.withLock {
            var h = previous() ?? HoldsRecord(node: owner.node, token: owner.token, names: [])
            if h.token != owner.token { h = HoldsRecord(node: owner.node, token: owner.token, names: []) }
            body(&h)
            try JSONEncoder().encode(h).write(to: URL(fileURLWithPath: path), options: .atomic)
        }
    }
}
