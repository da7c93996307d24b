import Foundation

/// Renews one exclusive hold's lease every `lease / 3` on a thread of its
/// own, for as long as the volume is open: the node daemon's holds and the
/// CLI's alike.
///
///     every lease/3 ──▶ t0 = monotonic now ──▶ renew (store, under the lease guard)
///                            │ ok: fence deadline = t0 + lease - guard
///                            │ hold gone (lock lost, epoch moved): fence lost, stop
///                            └ I/O error: log, retry next round (writes stop at the deadline)
///
/// Bounds: the only wait is the sleep between rounds (a condition with a
/// deadline, cut short by `stop`); a renewal stuck in the store blocks only
/// this thread, and the fence's deadline runs out meanwhile. `stop` waits
/// for the thread at most `lease` seconds.
final class LeaseKeeper: @unchecked Sendable {
    let fence: HoldFence
    private let store: VolumeStore
    private let hold: LeasedLock
    private let owner: LockOwner
    private let settings: LeaseSettings
    private let condition = NSCondition()
    private var stopping = false
    private var running = false

    init(store: VolumeStore, hold: LeasedLock, owner: LockOwner, epoch: UInt64, settings: LeaseSettings, startedAt: Int64) {
        self.store = store
        self.hold = hold
        self.owner = owner
        self.settings = settings
        let log = store.leaseLog
        self.fence = HoldFence(volume: hold.label, node: owner.node, epoch: epoch,
                               deadline: startedAt + Int64((settings.lease - settings.guardTime) * 1e9),
                               report: log)
    }

    func start() {
        condition.lock()
        running = true
        condition.unlock()
        Thread.detachNewThread { [self] in loop() }
    }

    /// Stops renewing without waiting for the thread (a volume dropped
    /// without `close`: its hold then runs out like a dead process's).
    func signalStop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    /// Stops renewing; returns once the thread is done (bounded, see above).
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        let limit = Date().addingTimeInterval(max(settings.lease, 1))
        while running && condition.wait(until: limit) {}
        condition.unlock()
    }

    private func loop() {
        var failing = false
        while true {
            condition.lock()
            let next = Date().addingTimeInterval(settings.renewEvery)
            while !stopping && condition.wait(until: next) {}
            if stopping {
                running = false
                condition.broadcast()
                condition.unlock()
                return
            }
            condition.unlock()
            let started = MonotonicClock.now()
            do {
                try store.renewLease(hold, owner: owner, epoch: fence.epoch)
                fence.renewed(startedAt: started, settings: settings)
                if failing { store.leaseLog?("\(hold.label): lease renewed again (epoch \(fence.epoch))") }
                failing = false
            } catch let e as StoreError where e.code == .fenced {
                fence.lose(e.message)
                store.leaseLog?("\(hold.label): node \(owner.node) (epoch \(fence.epoch)) is fenced: \(e.message)")
                condition.lock()
                running = false
                condition.broadcast()
                condition.unlock()
                return
            } catch {
                if !failing { store.leaseLog?("\(hold.label): lease renewal failed: \(error); writes stop when the lease runs out") }
                failing = true
            }
        }
    }
}
