import ArchipStore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An error value in an NBD reply. The protocol fixes these numbers (they are
/// Linux's errno values, but the spec pins them so other systems agree).
public struct NBDErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let success = NBDErrno(rawValue: 0)
    public static let notPermitted = NBDErrno(rawValue: 1)      // EPERM
    public static let io = NBDErrno(rawValue: 5)                // EIO
    public static let noMemory = NBDErrno(rawValue: 12)         // ENOMEM
    public static let invalid = NBDErrno(rawValue: 22)          // EINVAL
    public static let noSpace = NBDErrno(rawValue: 28)          // ENOSPC
    public static let overflow = NBDErrno(rawValue: 75)         // EOVERFLOW
    public static let notSupported = NBDErrno(rawValue: 95)     // ENOTSUP
    public static let shutdown = NBDErrno(rawValue: 108)        // ESHUTDOWN

    public var description: String {
        switch rawValue {
        case 0: return "success"
        case 1: return "EPERM"
        case 5: return "EIO"
        case 12: return "ENOMEM"
        case 22: return "EINVAL"
        case 28: return "ENOSPC"
        case 75: return "EOVERFLOW"
        case 95: return "ENOTSUP"
        case 108: return "ESHUTDOWN"
        default: return "error \(rawValue)"
        }
    }

    /// The one place a device error becomes an NBD reply error.
    ///
    /// Devices throw `StoreError` (volumes), `ServeError` or `POSIXError`
    /// (other devices); each is mapped by its code, never by its message.
    /// Anything unknown is EIO: the client then fails the guest's I/O, which
    /// is the safe reading of "we do not know what happened".
    public init(mapping error: Error) {
        switch error {
        case let e as StoreError:
            switch e.code {
            case .readOnly: self = .notPermitted
            case .outOfRange, .invalidArgument: self = .invalid
            case .unsupported: self = .notSupported
            case .noSpace: self = .noSpace
            case .closed: self = .shutdown
            case .invalidName, .invalidSize, .wrongKind, .notFound, .alreadyExists, .locked, .notLocked,
                 .hasChildren, .corrupt, .io, .fenced:
                self = .io
            }
        case let e as ServeError:
            if let err = e.errno {
                self = NBDErrno(posix: err)
            } else if e.code == .shuttingDown {
                self = .shutdown
            } else {
                self = .io
            }
        case let e as POSIXError:
            self = NBDErrno(posix: e.code.rawValue)
        default:
            self = .io
        }
    }

    /// errno of the host -> the protocol's smaller set. EDQUOT and EFBIG are
    /// ENOSPC as the spec asks; EROFS/EACCES are EPERM (the export cannot be written).
    public init(posix err: Int32) {
        switch err {
        case EPERM, EROFS, EACCES: self = .notPermitted
        case ENOSPC, EDQUOT, EFBIG: self = .noSpace
        case EINVAL: self = .invalid
        case ENOMEM: self = .noMemory
        case EOVERFLOW: self = .overflow
        case ENOTSUP: self = .notSupported
        case ESHUTDOWN: self = .shutdown
        default: self = .io
        }
    }
}

/// What the server core decides about a request before any device sees it.
public enum NBDVerdict: Equatable, Sendable {
    /// In range, allowed, well-formed: hand it to a worker.
    case accept
    /// Answer with this error (a write's payload is still read and dropped).
    case reject(NBDErrno)
    /// The request cannot be answered safely (length beyond the cap, so the
    /// payload cannot be skipped either): close the connection.
    case disconnect(String)
}

/// Checks every request of one connection: the single place where ranges,
/// flags, permissions and sizes are enforced, so devices only do I/O
/// (the `BlockDevice` contract: ranges arrive checked and non-empty).
public struct NBDRequestCheck: Sendable {
    /// Largest READ or WRITE payload accepted, and the maximum block size advertised.
    public static let maximumPayloadBytes: UInt32 = 32 << 20

    /// What this connection negotiated.
    public let transmissionFlags: NBDProtocol.TransmissionFlags
    /// The size the client was told at the handshake.
    public let negotiatedSize: UInt64

    public init(transmissionFlags: NBDProtocol.TransmissionFlags, negotiatedSize: UInt64) {
        self.transmissionFlags = transmissionFlags
        self.negotiatedSize = negotiatedSize
    }

    /// - Parameter currentSize: the device's size now; a volume shrunk while
    ///   a client is connected must not be read past its new end.
    public func check(_ r: NBDRequestHeader, currentSize: UInt64) -> NBDVerdict {
        guard let command = r.command else { return .reject(.invalid) }
        let flags = r.commandFlags

        // Payload-carrying commands beyond the cap: a WRITE's payload cannot
        // be skipped without reading it, and a READ that large is a denial of
        // service attempt; the spec allows a hard disconnect for both.
        if (command == .read || command == .write) && r.length > NBDRequestCheck.maximumPayloadBytes {
            return .disconnect("\(command) of \(r.length) bytes exceeds the \(NBDRequestCheck.maximumPayloadBytes)-byte limit")
        }

        // FUA is valid on every command once SEND_FUA is negotiated (the spec
        // says so; QEMU sets it on flushes too). NO_HOLE only on WRITE_ZEROES.
        var allowed: NBDProtocol.CommandFlags = [.fua]
        if command == .writeZeroes { allowed.insert(.noHole) }
        guard flags.isSubset(of: allowed) else { return .reject(.invalid) }

        switch command {
        case .disconnect:
            return .accept
        case .flush:
            // Offset and length are reserved and must be zero.
            return r.offset == 0 && r.length == 0 ? .accept : .reject(.invalid)
        case .read, .write, .trim, .writeZeroes:
            break
        case .cache, .blockStatus, .resize:
            return .reject(.invalid)  // not advertised
        }

        if command.modifiesData && transmissionFlags.contains(.readOnly) { return .reject(.notPermitted) }
        if command == .trim && !transmissionFlags.contains(.sendTrim) { return .reject(.invalid) }
        if command == .writeZeroes && !transmissionFlags.contains(.sendWriteZeroes) { return .reject(.invalid) }
        if r.length == 0 { return .reject(.invalid) }

        let limit = min(negotiatedSize, currentSize)
        let (end, overflow) = r.offset.addingReportingOverflow(UInt64(r.length))
        if overflow || end > limit {
            // The spec: ENOSPC for a write past the end (what qemu-nbd and
            // nbdkit answer); EINVAL for reads and trims past the end.
            return .reject(command == .write || command == .writeZeroes ? .noSpace : .invalid)
        }
        return .accept
    }
}
