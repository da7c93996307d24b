import Foundation

/// Leases on exclusive holds (docs/FENCING.md, docs/FORMAT.md `leases/NAME`).
/// Every decision here runs under `objects.exclusively(leases/NAME)`, so a
/// renewal and a break (or a take-over) of the same volume never interleave.
/// A lock whose exclusive holder keeps a lease: a volume's (`locks/NAME`,
/// `leases/NAME`) or a running fill's (`fill-locks/NAME`, `fill-leases/NAME`).
/// One machinery for both: take (breaking an expired holder), renew
/// (`LeaseKeeper`), release.
struct LeasedLock: Sendable {
    let lock: ObjectName
    let lease: ObjectName
    /// For logs and fence messages: the volume's name, or "fill of NAME".
    let label: String

    static func volume(_ n: VolumeName) -> LeasedLock {
        LeasedLock(lock: StoreLayout.lock(n), lease: VolumeStore.leaseObject(n), label: n.value)
    }
}

extension VolumeStore {
    static func leaseObject(_ name: VolumeName) -> ObjectName { ObjectName("leases", name.value) }

    /// The lease record of `name`, if any was ever written.
    public func lease(_ name: VolumeName) throws -> Lease? { try lease(at: Self.leaseObject(name)) }

    /// The lease record in `obj`, if any was ever written.
    func lease(at obj: ObjectName) throws -> Lease? {
        let bytes: [UInt8]
        do { bytes = try objects.readAll(obj) } catch let e as StoreError where e.code == .notFound { return nil }
        return try Lease.decode(bytes, what: "lease \(obj)")
    }

    private func writeLease(_ obj: ObjectName, _ lease: Lease) throws {
        try objects.put(obj, try lease.encode(), durable: true)
    }

    /// The lease once its holder is gone: kept while it records a break (its
    /// epoch and who broke whom), removed otherwise, so a volume nobody holds
    /// and nobody ever broke has no lease object (the next holder starts at
    /// epoch 1).
    private func endLease(_ obj: ObjectName, _ lease: Lease) throws {
        var l = lease
        l.holder = nil
        l.until = nil
        if l.lastBreak == nil {
            _ = try objects.remove(obj)
        } else {
            try writeLease(obj, l)
        }
    }

    /// `unlock` without force: releases `owner`'s holds (all of `owner.node`
    /// with an empty token) and ends the lease if it was theirs.
    func releaseHolds(_ name: VolumeName, owner: LockOwner) throws -> Bool {
        try objects.exclusively(Self.leaseObject(name)) {
            let released = try objects.releaseLock(StoreLayout.lock(name), owner: owner, force: false)
            if released, let current = try lease(name), let h = current.holder,
               owner.token.isEmpty ? h.node == owner.node : h == owner {
                try endLease(Self.leaseObject(name), current)
            }
            return released
        }
    }

    /// Whether `holder` (an exclusive holder of `name`) still has a live
    /// lease: the record's, or, without one for it, a hold younger than a
    /// lease (its first lease may not be written yet). A holder without a
    /// lease and older than that counts as expired.
    func holderIsLive(_ holder: LockOwner, lease: Lease?, now: Date) -> (live: Bool, until: Date?) {
        if let lease, lease.holder == holder {
            return (lease.isLive(for: holder, now: now, settings: leaseSettings), lease.until)
        }
        guard let since = holder.since else { return (false, nil) }
        let until = since.addingTimeInterval(leaseSettings.lease)
        return (until.addingTimeInterval(leaseSettings.clockSkew) > now, until)
    }

    /// Takes `name`'s exclusive lock for `owner` and starts its lease (epoch
    /// + 1). A lock held exclusively by another holder whose lease expired
    /// (until + clock skew past) is broken first, logged and recorded; a live
    /// one is refused, naming when it ends.
    func takeExclusive(_ name: VolumeName, owner: LockOwner, fresh: Bool) throws -> (Lease, LeaseBreak?) {
        try takeExclusive(.volume(name), owner: owner, fresh: fresh, isLive: nil)
    }

    /// The same for any leased lock; `isLive` (default `holderIsLive`)
    /// decides whether another exclusive holder still holds it.
    func takeExclusive(_ hold: LeasedLock, owner: LockOwner, fresh: Bool,
                       isLive: ((LockOwner, Lease?, Date) -> (live: Bool, until: Date?))?) throws -> (Lease, LeaseBreak?) {
        let lockObj = hold.lock
        let leaseObj = hold.lease
        return try objects.exclusively(leaseObj) {
            let take = {
                if fresh { try self.objects.takeFreshLock(lockObj, owner: owner, mode: .exclusive) }
                else { try self.objects.acquireLock(lockObj, owner: owner, mode: .exclusive) }
            }
            var old = try lease(at: leaseObj)
            var broke: LeaseBreak?
            do {
                try take()
            } catch let refused as StoreError where refused.code == .locked {
                guard let state = try objects.lockState(lockObj), state.mode == .exclusive,
                      let holder = state.holders.first, holder != owner else { throw refused }
                let now = Date()
                let (live, until) = isLive?(holder, old, now) ?? holderIsLive(holder, lease: old, now: now)
                if live {
                    let ends = until.map { " (its lease ends at \(Lease.time($0)), + \(LeaseSettings.format(leaseSettings.clockSkew)) clock skew)" } ?? ""
                    throw StoreError(.locked, "\(refused.message)\(ends)")
                }
                try objects.releaseLock(lockObj, owner: holder, force: true)
                let epoch = old?.epoch ?? 0
                broke = LeaseBreak(broken: holder, by: owner, at: now, leaseEnded: until, reason: "expired",
                                   epochBefore: epoch, epochAfter: epoch + 1)
                // The break is on record before anything else can fail.
                old = Lease(holder: nil, until: nil, epoch: epoch + 1, renewed: nil, lastBreak: broke)
                try writeLease(leaseObj, old!)
                leaseLog?("\(hold.label): \(broke!.description)")
                try take()
            }
            let now = Date()
            let epoch = broke.map { $0.epochAfter } ?? ((old?.epoch ?? 0) + 1)
            let lease = Lease(holder: owner, until: now.addingTimeInterval(leaseSettings.lease), epoch: epoch,
                              renewed: now, lastBreak: old?.lastBreak)
            do {
                try writeLease(leaseObj, lease)
            } catch {
                _ = try? objects.giveBackLock(lockObj, owner: owner)
                throw error
            }
            return (lease, broke)
        }
    }

    /// One renewal by `owner`, holder of epoch `epoch`. Throws `.fenced` when
    /// the hold is gone (the lock is another's, or the epoch moved on).
    func renewLease(_ hold: LeasedLock, owner: LockOwner, epoch: UInt64) throws {
        try objects.exclusively(hold.lease) {
            let state = try objects.lockState(hold.lock)
            guard let state, state.mode == .exclusive, state.holders.contains(owner) else {
                let now = state.map { s in s.holders.map(\.node).joined(separator: ", ") } ?? ""
                throw StoreError(.fenced, now.isEmpty ? "its exclusive lock was broken" : "its exclusive lock was broken and is now held by \(now)")
            }
            let current = try lease(at: hold.lease)
            if let current, current.epoch != epoch {
                throw StoreError(.fenced, "the lease's epoch moved to \(current.epoch)\(current.lastBreak.map { " (\($0.by.node) broke it at \(Lease.time($0.at)))" } ?? "")")
            }
            let now = Date()
            try writeLease(hold.lease, Lease(holder: owner, until: now.addingTimeInterval(leaseSettings.lease), epoch: epoch,
                                             renewed: now, lastBreak: current?.lastBreak))
        }
    }

    /// Ends `owner`'s hold: the lease (kept with its epoch and last break,
    /// holder cleared) and the lock, together.
    ///
    /// The lock goes even when the lease record cannot be read or ended (an
    /// I/O error): a holder that is gone must not leave the volume locked
    /// until `unlock --force`. A lease naming a holder that no longer holds
    /// the lock decides nothing (only the lock's holders are checked for a
    /// live lease); the next holder writes its own. The lease's error is then
    /// the one reported.
    func releaseHold(_ name: VolumeName, owner: LockOwner) throws {
        try releaseHold(.volume(name), owner: owner)
    }

    func releaseHold(_ hold: LeasedLock, owner: LockOwner) throws {
        try objects.exclusively(hold.lease) {
            var leaseError: Error?
            do {
                if let current = try lease(at: hold.lease), current.holder == owner { try endLease(hold.lease, current) }
            } catch {
                leaseError = error
            }
            try objects.giveBackLock(hold.lock, owner: owner)
            if let leaseError { throw leaseError }
        }
    }

    /// `archip unlock --force`: breaks `name`'s lock whoever holds it and
    /// records the break (epoch + 1). An exclusive holder whose lease is
    /// still live is refused unless `ignoreLease` (on the folder backend that
    /// holder can then write until its lease ends; on RADOS the break
    /// blocklists it). Returns the break.
    public func breakLock(_ name: VolumeName, by: LockOwner, ignoreLease: Bool) throws -> LeaseBreak {
        let lockObj = StoreLayout.lock(name)
        return try objects.exclusively(Self.leaseObject(name)) {
            guard let state = try objects.lockState(lockObj), let holder = state.holders.first else {
                throw StoreError(.notLocked, "\(name) is not locked; nothing to break")
            }
            let old = try lease(name)
            let now = Date()
            var reason = "forced"
            // Only a lease can make a hold live for the operator: a holder with
            // none (an old entry, 'archip lock', a short hold) is breakable.
            var (live, until) = holderIsLive(holder, lease: old, now: now)
            if old?.holder != holder { live = false }
            if state.mode == .shared { live = false; until = nil }
            if live {
                guard ignoreLease else {
                    throw StoreError(.locked, "\(name): node \(holder.node) (token \(holder.token)) holds a live lease until \(until.map(Lease.time) ?? "?") (+ \(LeaseSettings.format(leaseSettings.clockSkew)) clock skew); not broken: wait for it to expire, or if that node is known dead add --ignore-lease")
                }
                reason = "ignored-lease"
            }
            try objects.releaseLock(lockObj, owner: holder, force: true)
            let epoch = old?.epoch ?? 0
            let brk = LeaseBreak(broken: holder, by: by, at: now, leaseEnded: until, reason: reason,
                                 epochBefore: epoch, epochAfter: epoch + 1)
            try writeLease(Self.leaseObject(name), Lease(holder: nil, until: nil, epoch: epoch + 1, renewed: nil, lastBreak: brk))
            leaseLog?("\(name.value): \(brk.description)")
            return brk
        }
    }
}
