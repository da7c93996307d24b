import Foundation

/// The one error type of ArchipStore: what failed, on which object, and what to do.
///
/// `description` is a single line meant for operators (`archip: <description>`);
/// the code lets callers at the edge (CLI exit status, NBD errno, ExtStorage exit
/// codes, HTTP status) map it once.
public struct StoreError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case invalidName
        case invalidSize
        case invalidArgument
        /// The operation does not apply to this kind of object (a volume where a snapshot is needed, ...).
        case wrongKind
        case notFound
        case alreadyExists
        case locked
        case notLocked
        case readOnly
        case hasChildren
        case corrupt
        case outOfRange
        case io
        /// The file system or pool is full (ENOSPC, EDQUOT, EFBIG): QEMU pauses
        /// a guest on this (werror=enospc) instead of failing its I/O.
        case noSpace
        /// The volume was closed (detached) while the request was on its way.
        case closed
        case unsupported
        /// This node's exclusive hold of a volume ended (its lease ran out,
        /// or another node broke it): its writes are refused.
        case fenced
    }

    public var code: Code
    public var message: String
    public var cause: String?
    public var file: String
    public var line: Int

    public init(_ code: Code, _ message: String, cause: String? = nil,
                file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.cause = cause
        self.file = file
        self.line = line
    }

    public var description: String {
        let text = cause.map { "\(message): \($0)" } ?? message
        return StoreError.bounded(text)
    }

    /// Longest description: a message may quote what it found in a damaged
    /// object (a marker, a record), and an error line stays an error line.
    public static let maximumDescription = 1024

    /// `text` cut to `maximumDescription` characters, saying how long it was.
    public static func bounded(_ text: String) -> String {
        guard text.utf8.count > maximumDescription else { return text }
        let cut = String(decoding: Array(text.utf8.prefix(maximumDescription)), as: UTF8.self)
        return cut + "... (\(text.utf8.count) bytes in all)"
    }

    /// errno-based failure of a system call on a path.
    static func posix(_ call: String, _ path: String, errno err: Int32,
                      file: String = #fileID, line: Int = #line) -> StoreError {
        let code: Code
        switch err {
        case ENOENT: code = .notFound
        case EEXIST: code = .alreadyExists
        case EROFS, EACCES, EPERM: code = .readOnly
        case ENOSPC, EDQUOT, EFBIG: code = .noSpace
        default: code = .io
        }
        return StoreError(code, "\(call): \(path)", cause: String(cString: strerror(err)),
                          file: file, line: line)
    }
}
