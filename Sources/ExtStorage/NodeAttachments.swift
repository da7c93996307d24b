import ArchipServe
import ArchipStore

/// This node's attached volumes: what the provider asks of the node daemon.
/// A protocol so the provider's rules can be tested without devices.
public protocol NodeAttachments {
    /// Attaches with no hold (Ganeti's attach); the daemon is started if needed.
    func attach(_ name: VolumeName) throws -> AttachmentInfo
    /// Takes the hold, exclusive or shared.
    func open(_ name: VolumeName, exclusive: Bool) throws
    func close(_ name: VolumeName) throws
    func detach(_ name: VolumeName) throws
    /// The attachment of `name` on this node, if any (never starts the daemon).
    func attachment(_ name: VolumeName) throws -> AttachmentInfo?
    /// Snapshot / grow through the daemon; false if not attached here.
    func snapshot(_ name: VolumeName, as snapshot: VolumeName) throws -> Bool
    func grow(_ name: VolumeName, to size: ByteCount) throws -> Bool
}

/// The node daemon (`archip serve`) over its control socket.
public final class DaemonAttachments: NodeAttachments {
    let config: ProviderConfig

    public init(config: ProviderConfig) { self.config = config }

    private var running: ControlClient? { ControlClient.connect(runtimeDir: config.runtimeDir, store: config.storePath) }

    private func startingIfNeeded() throws -> ControlClient {
        try DaemonLauncher.connectOrStart(executable: config.serveExecutable, runtimeDir: config.runtimeDir,
                                          store: config.storePath, node: config.node)
    }

    public func attach(_ name: VolumeName) throws -> AttachmentInfo {
        let reply = try startingIfNeeded().call(ControlRequest(op: .attach, name: name.value, mode: Hold.none))
        guard let a = reply.attachment else { throw ExtStorageError(.failed, "archip serve returned no device for \(name)") }
        return a
    }

    public func open(_ name: VolumeName, exclusive: Bool) throws {
        _ = try startingIfNeeded().call(ControlRequest(op: .open, name: name.value, mode: exclusive ? .exclusive : .shared))
    }

    public func close(_ name: VolumeName) throws {
        _ = try running?.call(ControlRequest(op: .close, name: name.value))
    }

    public func detach(_ name: VolumeName) throws {
        _ = try running?.call(ControlRequest(op: .detach, name: name.value))
    }

    public func attachment(_ name: VolumeName) throws -> AttachmentInfo? {
        try running?.call(ControlRequest(op: .list)).attachments?.first { $0.name == name.value }
    }

    public func snapshot(_ name: VolumeName, as snapshot: VolumeName) throws -> Bool {
        guard let c = running, try c.call(ControlRequest(op: .list)).attachments?.contains(where: { $0.name == name.value }) == true else {
            return false
        }
        _ = try c.call(ControlRequest(op: .snapshot, name: name.value, snapshot: snapshot.value))
        return true
    }

    public func grow(_ name: VolumeName, to size: ByteCount) throws -> Bool {
        guard let c = running, try c.call(ControlRequest(op: .list)).attachments?.contains(where: { $0.name == name.value }) == true else {
            return false
        }
        _ = try c.call(ControlRequest(op: .grow, name: name.value, size: size.bytes))
        return true
    }
}
