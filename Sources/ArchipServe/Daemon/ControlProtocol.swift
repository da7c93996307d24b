import Foundation

/// The node daemon's control protocol: one JSON object per line on a unix
/// socket (mode 0600, root only), one reply line per request.
public struct ControlRequest: Codable, Sendable {
    public enum Op: String, Codable, Sendable {
        case ping, attach, detach, open, close, list, snapshot, grow, shutdown
    }
    public var op: Op
    public var name: String?
    /// attach/open: "exclusive" (default), "shared" (live migration) or "none"
    /// (the device only, no hold: Ganeti's attach; `open` takes the hold).
    public var mode: String?
    /// snapshot: the snapshot's name.
    public var snapshot: String?
    /// grow: the new size in bytes.
    public var size: UInt64?
    /// attach: the kernel block device, "loop" (default: FUSE file + loop
    /// device) or "nbd" (nbd-client on the volume's NBD socket).
    public var device: String?

    public init(op: Op, name: String? = nil, mode: String? = nil, snapshot: String? = nil, size: UInt64? = nil,
                device: String? = nil) {
        self.op = op
        self.name = name
        self.mode = mode
        self.snapshot = snapshot
        self.size = size
        self.device = device
    }
}

/// One attached volume, as `archip attach` prints it and `list` reports it.
public struct AttachmentInfo: Codable, Sendable, Equatable {
    public var name: String
    /// The kernel block device (`/dev/loopN`).
    public var device: String
    /// What QEMU opens (`nbd:unix:<socket>:exportname=<name>`).
    public var uri: String
    public var mode: String
    public var readOnly: Bool
    public var size: UInt64
    /// "loop" or "nbd": what `device` is (absent from daemons before --device=nbd: loop).
    public var deviceKind: String?
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

    public static func success(_ a: AttachmentInfo? = nil) -> ControlReply {
        ControlReply(ok: true, error: nil, code: nil, attachment: a, attachments: nil, node: nil, pid: nil)
    }
    public static func failure(_ message: String, code: String?) -> ControlReply {
        ControlReply(ok: false, error: message, code: code, attachment: nil, attachments: nil, node: nil, pid: nil)
    }
}
