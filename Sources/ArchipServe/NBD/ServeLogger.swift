import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small logger for the data path, passed in by whoever runs the server
/// (the `archip serve` daemon, a test).
///
/// The package has no logging dependency; this keeps the shape of one
/// (a label, a level, key-value metadata) so that swapping in swift-log later
/// is mechanical. Per-request events are logged at `.debug` only, so the data
/// path costs nothing unless an operator asks for it.
public struct ServeLogger: Sendable {
    public enum Level: Int, Sendable, Comparable, CustomStringConvertible {
        case debug, info, warning, error
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        public var description: String {
            switch self {
            case .debug: return "debug"
            case .info: return "info"
            case .warning: return "warning"
            case .error: return "error"
            }
        }
    }

    public typealias Sink = @Sendable (_ label: String, _ level: Level, _ message: String, _ metadata: [(String, String)]) -> Void

    public var label: String
    public var level: Level
    private let sink: Sink?

    public init(label: String, level: Level, sink: @escaping Sink) {
        self.label = label
        self.level = level
        self.sink = sink
    }

    private init(label: String) {
        self.label = label
        self.level = .error
        self.sink = nil
    }

    /// One line per event on standard error: `archip.nbd warning: message key=value ...`
    /// (journald adds the time stamp; stdout stays for results).
    public static func standardError(label: String = "archip.nbd", level: Level = .info) -> ServeLogger {
        ServeLogger(label: label, level: level) { label, level, message, metadata in
            var line = "\(label) \(level): \(message)"
            for (k, v) in metadata { line += " \(k)=\(v)" }
            line += "\n"
            // One write(2) per line, so lines from several threads do not interleave.
            var bytes = Array(line.utf8)
            _ = bytes.withUnsafeMutableBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
        }
    }

    /// Drops everything.
    public static let discard = ServeLogger(label: "archip.nbd")

    public func isEnabled(_ l: Level) -> Bool { sink != nil && l >= level }

    public func log(_ l: Level, _ message: @autoclosure () -> String, _ metadata: [(String, String)] = []) {
        guard let sink, l >= level else { return }
        sink(label, l, message(), metadata)
    }

    public func debug(_ m: @autoclosure () -> String, _ md: [(String, String)] = []) { log(.debug, m(), md) }
    public func info(_ m: @autoclosure () -> String, _ md: [(String, String)] = []) { log(.info, m(), md) }
    public func warning(_ m: @autoclosure () -> String, _ md: [(String, String)] = []) { log(.warning, m(), md) }
    public func error(_ m: @autoclosure () -> String, _ md: [(String, String)] = []) { log(.error, m(), md) }
}
