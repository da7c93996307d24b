import ArchipStore
import CRados
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The compare-and-swap of the objects whose kind needs it (records, maps,
/// logs: `ObjectKind.needsCompareAndSwap`). The store remembers the version of
/// each such object it read or wrote; a later write asserts that version
/// (`assert_version`, or an exclusive create when it saw none), so a process
/// whose view is stale (another node took the volume over while it was
/// paused) fails with `.locked` instead of overwriting. Ops on one such
/// object are serialized within the process (striped locks), so the version
/// noted is the one the next op builds on.
final class RadosVersions: @unchecked Sendable {
    private let state = NSLock()
    /// Last version seen of each guarded object; 0: seen absent.
    private var seen: [String: UInt64] = [:]
    /// Guarded objects this process wrote: reads do not move their version.
    private var written = Set<String>()
    private let stripes = (0..<64).map { _ in NSLock() }

    /// ARCHIP_RADOS_TRACE=1: every guarded write and the version it expects, on stderr.
    static let trace = ProcessInfo.processInfo.environment["ARCHIP_RADOS_TRACE"] != nil

    private func stripe(_ path: String) -> NSLock {
        var h: UInt64 = 1469598103934665603
        for b in path.utf8 { h = (h ^ UInt64(b)) &* 1099511628211 }
        return stripes[Int(h % UInt64(stripes.count))]
    }

    /// Runs `body` alone among the ops on `name` if its kind is guarded (else just runs it).
    func guarded<R>(_ name: ObjectName, _ body: () throws -> R) rethrows -> R {
        guard name.kind.needsCompareAndSwap else { return try body() }
        let l = stripe(name.path)
        l.lock()
        defer { l.unlock() }
        return try body()
    }

    /// Records the version of a guarded object after an op on it. A read
    /// does not move the version of an object this process has written: its
    /// own next write must build on what it wrote, not on whatever another
    /// writer put there since (a gc or info in the same process reads maps
    /// and logs of volumes it holds; taking that version would let a stale
    /// writer through). `forget` (a fresh open) starts over.
    func note(_ name: ObjectName, version: UInt64?, read: Bool = false) {
        guard name.kind.needsCompareAndSwap else { return }
        state.withLock {
            if read {
                if written.contains(name.path) { return }
            } else {
                written.insert(name.path)
            }
            seen[name.path] = version
        }
    }

    /// Adds the compare part of a guarded write; returns the version it expects
    /// (0: absent), nil when it compares nothing (not guarded, or never seen).
    func addGuard(_ name: ObjectName, _ op: rados_write_op_t) -> UInt64? {
        guard name.kind.needsCompareAndSwap else { return nil }
        let v = state.withLock({ seen[name.path] })
        if Self.trace { FileHandle.standardError.write(Data("rados-trace: write \(name.path) expecting \(v.map(String.init) ?? "anything")\n".utf8)) }
        guard let v else { return nil }
        if v == 0 {
            rados_write_op_create(op, Int32(LIBRADOS_CREATE_EXCLUSIVE), nil)
        } else {
            rados_write_op_assert_version(op, v)
        }
        return v
    }

    /// Forgets what this process saw and wrote of `name`: its next read takes the version.
    func forget(_ name: ObjectName) {
        guard name.kind.needsCompareAndSwap else { return }
        state.withLock {
            seen.removeValue(forKey: name.path)
            written.remove(name.path)
        }
    }

    /// The refusal of a guarded write whose comparison failed; nil for other errors.
    static func conflict(_ name: ObjectName, _ r: Int32, expected: UInt64) -> StoreError? {
        guard [ERANGE, EOVERFLOW, EEXIST, ENOENT].contains(-r) else { return nil }
        let was = expected == 0 ? "absent" : "at version \(expected)"
        return StoreError(.locked, "\(name.path) was changed by another writer since this process read it (it was \(was)); not overwritten",
                          cause: "another node holds the volume now, or broke this node's lock; reopen the volume")
    }
}
