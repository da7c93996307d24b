import Foundation

/// `[rados]` of archip.conf: how long a client of a Ceph store waits for the
/// cluster before an operation fails.
///
///     [rados]
///     op_timeout = 60s     # 0: wait for ever (librados' own default)
///
/// A command (the CLI, the Ganeti provider, snf-manage, the API) fails an
/// operation that the monitors or the OSDs do not answer within
/// `opTimeout`, in one line; a script that hangs hangs Ganeti. The node
/// daemon bounds its monitor operations and its wait for a free write slot
/// the same way, but not its object I/O (`boundsObjectOps` false): a guest's
/// I/O rides out an OSD restart, as it does with krbd and librbd.
public struct RadosSettings: Sendable, Equatable {
    public static let defaultOpTimeout: TimeInterval = 60

    /// Seconds; 0 is no bound.
    public var opTimeout: TimeInterval
    /// Whether `opTimeout` also bounds reads and writes of objects (OSD ops).
    public var boundsObjectOps: Bool

    public init(opTimeout: TimeInterval = RadosSettings.defaultOpTimeout, boundsObjectOps: Bool = true) {
        self.opTimeout = opTimeout
        self.boundsObjectOps = boundsObjectOps
    }

    /// The node daemon's: the same bound, not applied to object I/O.
    public var forDaemon: RadosSettings {
        var s = self
        s.boundsObjectOps = false
        return s
    }

    public static func fromConfig(_ conf: [String: String], file: String) throws -> RadosSettings {
        var s = RadosSettings()
        if let v = conf["rados.op_timeout"] { s.opTimeout = try LeaseSettings.seconds(v, key: "[rados] op_timeout", file: file) }
        return s
    }
}
