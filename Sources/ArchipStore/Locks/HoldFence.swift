import Foundation

/// Whether an exclusive holder may still write: until a monotonic deadline
/// (the start of its last good lease renewal + lease - guard), and never
/// again once a renewal found the hold gone (broken, taken over).
///
/// `check` is what every object write of the volume pays: one clock read
/// (CLOCK_BOOTTIME, a vDSO call) and one uncontended mutex.
public final class HoldFence: @unchecked Sendable {
    public let volume: String
    public let node: String
    private struct State {
        var deadline: Int64
        var epoch: UInt64
        var lost: String?
        var reported = false
    }
    private let state: Locked<State>
    /// Told once, the first time a write is refused.
    private let report: ((String) -> Void)?

    init(volume: String, node: String, epoch: UInt64, deadline: Int64, report: ((String) -> Void)?) {
        self.volume = volume
        self.node = node
        self.state = Locked(State(deadline: deadline, epoch: epoch))
        self.report = report
    }

    public var epoch: UInt64 { state.withLock { $0.epoch } }
    public var isLost: Bool { state.withLock { $0.lost != nil } }

    /// Throws `.fenced` if this holder may not write now.
    @inline(__always)
    public func check() throws {
        let now = MonotonicClock.now()
        let refusal: String? = state.withLock { s in
            if s.lost == nil && now < s.deadline { return nil }
            let why = s.lost ?? String(format: "its lease was not renewed in time (%.1f s past the deadline)",
                                       Double(now - s.deadline) / 1e9)
            let text = "\(volume): node \(node) (epoch \(s.epoch)) is fenced: \(why); its writes are refused"
            if s.reported { return text }
            s.reported = true
            return "!" + text
        }
        guard let refusal else { return }
        if refusal.hasPrefix("!") {
            let text = String(refusal.dropFirst())
            report?(text)
            throw StoreError(.fenced, text)
        }
        throw StoreError(.fenced, refusal)
    }

    /// A renewal that started at `started` (monotonic ns) succeeded.
    func renewed(startedAt started: Int64, settings: LeaseSettings) {
        let d = started + Int64((settings.lease - settings.guardTime) * 1e9)
        state.withLock { s in
            guard s.lost == nil else { return }
            if d > s.deadline { s.deadline = d }
            s.reported = false
        }
    }

    /// The hold is gone for good: every later write is refused.
    func lose(_ why: String) {
        state.withLock { s in if s.lost == nil { s.lost = why } }
    }

    /// Ends writing now (the volume is closing).
    func expireNow() {
        state.withLock { s in s.deadline = min(s.deadline, MonotonicClock.now()) }
    }
}
