import ArchipStore
import Foundation

/// The node daemon's control protocol: one JSON object per line on a unix
/// socket (mode 0600, root only), one reply line per request.
public struct ControlRequest: Codable, Sendable {
    public enum Op: String, Codable, Sendable {
        case ping, attach, detach, open, close, list, snapshot, grow, shutdown
    }
    public var op: Op
    public var name: String?
    /// attach/open: the hold to take (absent: exclusive).
    public var mode: Hold?
    /// snapshot: the snapshot's name.
    public var snapshot: String?
    /// grow: the new size in bytes.
    public var size: UInt64?
    /// attach: the kernel block device (absent: loop).
    public var device: KernelDeviceKind?
    /// The store the caller means (its location as configured): a daemon
    /// serving another store refuses the call instead of answering for its own.
    public var store: String?

    public init(op: Op, name: String? = nil, mode: Hold? = nil, snapshot: String? = nil, size: UInt64? = nil,
                device: KernelDeviceKind? = nil, store: String? = nil) {
        self.op = op
        self.name = name
        self.mode = mode
        self.snapshot = snapshot
        self.size = size
        self.device = device
        self.store = store
    }

    /// A decoding failure in one line: which field, and what it takes.
    static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let c) where !c.codingPath.isEmpty:
            let field = c.codingPath.map(\.stringValue).joined(separator: ".")
            switch field {
            case "mode": return "unknown mode: use \(Hold.allCases.map(\.rawValue).joined(separator: ", "))"
            case "device": return "unknown device: use \(KernelDeviceKind.allCases.map(\.rawValue).joined(separator: " or "))"
            case "op": return "unknown op: use \(["ping", "attach", "detach", "open", "close", "list", "snapshot", "grow", "shutdown"].joined(separator: ", "))"
            default: return "bad value for \(field)"
            }
        case .dataCorrupted: return "not a JSON object"
        case .keyNotFound(let k, _): return "missing \(k.stringValue)"
        case .typeMismatch(_, let c), .valueNotFound(_, let c):
            return "wrong type for \(c.codingPath.map(\.stringValue).joined(separator: "."))"
        @unknown default: return "undecodable"
        }
    }
}

/// What a node holds on an attached volume. Ganeti separates the two:
/// `attach` only makes the device appear (it is called on a migration's
/// target while the source still writes), `open` takes the hold that allows
/// writes, exclusive or shared during live migration.
public enum Hold: String, Codable, Sendable, CaseIterable {
    case none, shared, exclusive

    var openMode: OpenMode {
        switch self {
        case .none: return .readOnly
        case .shared: return .shared
        case .exclusive: return .exclusive
        }
    }
}

/// One attached volume, as `archip attach` prints it and `list` reports it.
public struct AttachmentInfo: Codable, Sendable, Equatable {
    public var name: String
    /// The kernel block device (`/dev/loopN`).
    public var device: String
    /// What QEMU opens (`nbd:unix:<socket>:exportname=<name>`).
    public var uri: String
    /// The hold ("exclusive", "shared", "none"), or "read-only" for a snapshot.
    public var mode: String
    public var readOnly: Bool
    public var size: UInt64
    /// What `device` is (absent from daemons before --device=nbd: loop).
    public var deviceKind: KernelDeviceKind?
}

public struct ControlReply: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    /// The StoreError code of a failure, so the client can choose its exit status.
    public var code: String?
    public var attachment: AttachmentInfo?
    public var attachments: [AttachmentInfo]?
    public var node: String?
    public var pid: Int32?
    /// ping: the store the daemon serves, and what it is doing.
    public var store: String?
    public var busy: [OperationInProgress]?

    public static func success(_ a: AttachmentInfo? = nil) -> ControlReply {
        ControlReply(ok: true, attachment: a)
    }
    public static func failure(_ message: String, code: String?) -> ControlReply {
        ControlReply(ok: false, error: message, code: code)
    }
}
