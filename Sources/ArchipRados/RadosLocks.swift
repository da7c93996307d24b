import ArchipStore
import CRados
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Locks are RADOS advisory locks (`cls_lock`) on `locks/<name>`, lock name
/// `archip`; the cookie is the JSON of the holder (node, token, pid, since), so
/// `lockState` can name it. `--force` breaks them and fences the holders
/// (blocklists their client addresses), so a paused holder that wakes up can
/// write nothing.
extension RadosObjectStore {
    static let lockName = "archip"

    struct Locker {
        var client: String
        var cookie: String
        var address: String
        var owner: LockOwner?
    }

    private static let cookieEncoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .secondsSince1970
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    static func cookie(_ owner: LockOwner) -> String {
        var o = owner
        if let s = o.since { o.since = Date(timeIntervalSince1970: s.timeIntervalSince1970.rounded(.down)) }
        return String(decoding: (try? cookieEncoder.encode(o)) ?? Data(), as: UTF8.self)
    }

    static func owner(ofCookie c: String) -> LockOwner? {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .secondsSince1970
        return try? d.decode(LockOwner.self, from: Data(c.utf8))
    }

    private func lockers(_ oid: String) throws -> (LockMode, [Locker]) {
        var sizes = (tag: 256, clients: 4096, cookies: 4096, addrs: 4096)
        while true {
            var exclusive: Int32 = 0
            var tag = [CChar](repeating: 0, count: sizes.tag)
            var clients = [CChar](repeating: 0, count: sizes.clients)
            var cookies = [CChar](repeating: 0, count: sizes.cookies)
            var addrs = [CChar](repeating: 0, count: sizes.addrs)
            var tl = tag.count, cl = clients.count, kl = cookies.count, al = addrs.count
            let n = rados_list_lockers(connection.io, oid, Self.lockName, &exclusive, &tag, &tl, &clients, &cl,
                                       &cookies, &kl, &addrs, &al)
            if n == -ERANGE {
                sizes = (max(sizes.tag * 2, tl), max(sizes.clients * 2, cl), max(sizes.cookies * 2, kl), max(sizes.addrs * 2, al))
                continue
            }
            if n == -ENOENT { return (.exclusive, []) }
            guard n >= 0 else { throw connection.error(Int32(n), "list lockers of", describe(oid)) }
            func split(_ b: [CChar], _ len: Int) -> [String] {
                b.prefix(len).split(separator: 0, omittingEmptySubsequences: false).prefix(Int(n))
                    .map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            }
            let cs = split(clients, cl), ks = split(cookies, kl), ads = split(addrs, al)
            var out: [Locker] = []
            for i in 0..<Int(n) where i < cs.count && i < ks.count {
                out.append(Locker(client: cs[i], cookie: ks[i], address: i < ads.count ? ads[i] : "",
                                  owner: Self.owner(ofCookie: ks[i])))
            }
            return (exclusive != 0 ? .exclusive : .shared, out)
        }
    }

    private func state(of lockers: (LockMode, [Locker])) -> LockState? {
        guard !lockers.1.isEmpty else { return nil }
        return LockState(mode: lockers.0, holders: lockers.1.map {
            $0.owner ?? LockOwner(node: "unknown (\($0.client) at \($0.address))", token: $0.cookie)
        })
    }

    public func acquireLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws {
        let oid = name.path
        let current = try lockers(oid)
        if let mine = current.1.first(where: { $0.owner == owner }) {
            if current.0 == mode { return }
            // Conversion (exclusive <-> shared) by the only holder: drop and retake.
            // Another process of the same owner holds it under its own client, so it
            // cannot be converted in place.
            _ = try Self.decideLock(state(of: current), owner: owner, mode: mode, name: name)
            let r = rados_break_lock(connection.io, oid, Self.lockName, mine.client, mine.cookie)
            guard r == 0 || r == -ENOENT else { throw connection.error(r, "release lock on", describe(oid)) }
        } else {
            // The cluster decides; this only words the refusal like every backend does.
            _ = try Self.decideLock(state(of: current), owner: owner, mode: mode, name: name)
        }
        let cookie = Self.cookie(owner)
        let desc = "archip \(mode.rawValue) hold"
        let r = mode == .exclusive
            ? rados_lock_exclusive(connection.io, oid, Self.lockName, cookie, desc, nil, 0)
            : rados_lock_shared(connection.io, oid, Self.lockName, cookie, "", desc, nil, 0)
        if r == 0 && mode == .exclusive { try markNewHolder(name, cookie) }
        if r == 0 || r == -EEXIST { return }
        if r == -EBUSY {
            let now = try lockers(oid)
            _ = try Self.decideLock(state(of: now), owner: owner, mode: mode, name: name)
            throw StoreError(.locked, "\(name.lastComponent) is locked; the cluster refused the \(mode.rawValue) lock (try again)")
        }
        throw connection.error(r, "lock", describe(oid))
    }

    /// A new exclusive holder of `locks/NAME` changes the version of the
    /// volume's record `names/NAME` (an xattr naming it, nothing else), so a
    /// paused former holder whose next metadata write is the record (a
    /// snapshot) fails its compare-and-swap even when the new holder changed
    /// nothing else it would touch.
    private func markNewHolder(_ lock: ObjectName, _ cookie: String) throws {
        guard lock.kind == .lock else { return }
        let record = ObjectName("names", lock.lastComponent)
        try versions.guarded(record) {
            let (r, _) = connection.operate(record.path) { op in
                rados_write_op_assert_exists(op)
                rados_write_op_setxattr(op, "archip.holder", cookie, cookie.utf8.count)
            }
            guard r >= 0 || r == -ENOENT else { throw connection.error(r, "mark the new holder on", describe(record.path)) }
            // This process's next read of the record takes the new version.
            versions.forget(record)
        }
    }

    public func releaseLock(_ name: ObjectName, owner: LockOwner, force: Bool) throws -> Bool {
        let oid = name.path
        let current = try lockers(oid)
        let (_, released) = try Self.releasing(state(of: current), owner: owner, force: force, name: name)
        guard released else { return false }
        let victims = current.1.filter { l in
            if force { return true }
            guard let o = l.owner else { return false }
            return owner.token.isEmpty ? o.node == owner.node : o == owner
        }
        for l in victims {
            let r = rados_break_lock(connection.io, oid, Self.lockName, l.client, l.cookie)
            guard r == 0 || r == -ENOENT else { throw connection.error(r, "release lock on", describe(oid)) }
            if force && fenceOnForce { fence(l) }
        }
        return true
    }

    /// A lock broken by force may belong to a holder that is paused, not dead
    /// (SIGSTOP, a hung node): blocklist its client so it writes nothing more.
    private func fence(_ l: Locker) {
        guard !l.address.isEmpty, l.client != connection.clientName else { return }
        connection.blocklist(address: l.address)
    }

    public func lockState(_ name: ObjectName) throws -> LockState? {
        state(of: try lockers(name.path))
    }
}
