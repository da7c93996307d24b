import Foundation
import Glibc

/// One line per call: action, volume, result, duration. On stderr, which
/// Ganeti keeps in the call's log file (`/var/log/ganeti/extstorage/`) and
/// shows the end of on failure; optionally to syslog too (daemon facility).
public struct CallLog: Sendable {
    public let syslog: Bool
    let program = "archip-extstorage"

    public init(syslog: Bool) {
        self.syslog = syslog
        if syslog { openlog(program, LOG_PID, LOG_DAEMON) }
    }

    public func note(_ line: String) {
        write("\(program): \(line)", priority: LOG_INFO)
    }

    public func finished(_ action: String, volume: String?, started: Date, error: (any Error)?) {
        let ms = Date().timeIntervalSince(started) * 1000
        let what = volume.map { "\(action) \($0)" } ?? action
        if let error {
            write(String(format: "%@: %@: failed in %.0f ms: %@", program, what, ms, "\(error)"), priority: LOG_ERR)
        } else {
            write(String(format: "%@: %@: ok in %.0f ms", program, what, ms), priority: LOG_INFO)
        }
    }

    private func write(_ line: String, priority: Int32) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
        if syslog {
            withVaList([line]) { vsyslog(priority, "%s", $0) }
        }
    }
}
