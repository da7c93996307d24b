import ArchipStore
import Foundation

/// What the daemon is doing to one volume, as `ping` reports it.
public struct OperationInProgress: Codable, Sendable, Equatable {
    public var name: String
    public var op: String
    /// When it started (seconds since 1970), so a client can say for how long.
    public var since: Double

    public var seconds: Double { Date().timeIntervalSince1970 - since }
    public var description: String { "\(op) \(name) (running \(Int(seconds.rounded())) s)" }
}

/// Serializes the daemon's operations per volume, never per daemon: one
/// volume's attach, open, close, detach, snapshot and grow run one at a time,
/// while other volumes' operations, `list` and `ping` go on.
///
///     op on V ──▶ wait for V's slot (at most `waitLimit`) ──▶ run ──▶ free V's slot
///                      │ timed out
///                      └──▶ StoreError(.locked): "V is busy: detach V (running 12 s)"
///
/// Bounds: the only wait is for the slot, and it has a limit. The mutex is
/// held only to look at and change the table, never while an operation runs,
/// so a volume stuck on the kernel (a FUSE session, a loop device, a flush to
/// a dead peer) holds its own slot and nothing else. Nested use for the same
/// volume on one thread would wait for itself: operations do not call
/// `run` for the volume they hold.
final class VolumeOperations: @unchecked Sendable {
    private let condition = NSCondition()
    private var running: [String: OperationInProgress] = [:]
    let waitLimit: TimeInterval

    init(waitLimit: TimeInterval = 20) { self.waitLimit = waitLimit }

    func run<R>(_ name: String, _ op: String, _ body: () throws -> R) throws -> R {
        let deadline = Date().addingTimeInterval(waitLimit)
        condition.lock()
        while let busy = running[name] {
            guard condition.wait(until: deadline) || running[name] == nil else {
                condition.unlock()
                throw StoreError(.locked, "\(name) is busy on this node: \(busy.description); try again later")
            }
        }
        running[name] = OperationInProgress(name: name, op: op, since: Date().timeIntervalSince1970)
        condition.unlock()
        defer {
            condition.lock()
            running[name] = nil
            condition.broadcast()
            condition.unlock()
        }
        return try body()
    }

    /// The operations running now, oldest first.
    func inProgress() -> [OperationInProgress] {
        condition.lock()
        defer { condition.unlock() }
        return running.values.sorted { $0.since < $1.since }
    }
}
