import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The one error type of ArchipServe: what failed, on which socket, export or
/// connection, and what to do about it.
///
/// `description` is one line for operators. The code lets the edge decide how
/// to react (a connection that broke the protocol is closed; a socket path
/// already served is reported to the operator) without parsing messages.
///
/// (It lives under NBD/ because the NBD server is the first part of the
/// module; it is meant for the whole module, FUSE included.)
public struct ServeError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// A system call failed; `cause` carries errno's text.
        case system
        /// The socket path is taken by a live server or by something that is not a socket.
        case addressInUse
        /// A path or parameter cannot be used (socket path too long, bad configuration).
        case invalidArgument
        /// An export with this name is already served.
        case alreadyExists
        case notFound
        /// The peer sent something the NBD protocol does not allow.
        case protocolViolation
        /// The peer closed the connection (at a message boundary or in the middle of one).
        case peerClosed
        /// The peer did not finish in time (handshake deadline).
        case timedOut
        /// The server is stopping and takes no new work.
        case shuttingDown
        /// Flushing a device at stop failed; acknowledged writes may not be durable.
        case flushFailed
    }

    public var code: Code
    public var message: String
    public var cause: String?
    /// errno of a failed system call, when there was one.
    public var errno: Int32?
    public var file: String
    public var line: Int

    public init(_ code: Code, _ message: String, cause: String? = nil, errno: Int32? = nil,
                file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.cause = cause
        self.errno = errno
        self.file = file
        self.line = line
    }

    public var description: String {
        if let cause { return "\(message): \(cause)" }
        return message
    }

    /// A failed system call: names the call, what it was applied to, and errno's text.
    static func system(_ call: String, _ object: String, errno err: Int32,
                       file: String = #fileID, line: Int = #line) -> ServeError {
        ServeError(.system, "\(call): \(object)", cause: String(cString: strerror(err)), errno: err,
                   file: file, line: line)
    }
}
