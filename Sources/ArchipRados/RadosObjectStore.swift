import ArchipStore
import CRados
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The `rados` backend: every object of the store is a RADOS object of one
/// pool (optionally in a namespace), named by its path (`layers/<id>/map`, ...).
///
/// - Replacing writes are one `write_full` op (atomic on the OSD); there are
///   no temporaries. Every acknowledged op is on all replicas (`durable` is free).
/// - Objects whose kind needs no compare-and-swap (blocks, anything but
///   records, maps and logs) written with `durable: false` and in-place
///   writes are submitted asynchronously, at most `maxInFlight` at once
///   (RadosCompletions.swift); `sync`/`syncContents` wait for them and
///   report their errors. Reads are ordered after earlier writes to the same
///   object (`ORDER_READS_WRITES`).
/// - Content blocks are made with an exclusive create (`create`).
/// - Records, maps and logs (`ObjectKind.needsCompareAndSwap`) are
///   compare-and-swapped (RadosCompareAndSwap.swift): a process whose view is
///   stale fails with `.locked` instead of overwriting.
/// - Locks are RADOS advisory locks naming their holder; `--force` breaks them
///   and fences the holders (RadosLocks.swift).
/// - The client and its configuration: RadosConnection.swift.
/// - Listing (`enumerate`) pages through the pool's object list with librados'
///   cursor: nothing is held in memory, but any listing is a pass over the
///   whole pool (RADOS has no prefix listing), so callers that need several
///   prefixes ask for them together (`enumerate(prefixes:)`: one pass).
public final class RadosObjectStore: ObjectStore, @unchecked Sendable {
    public let where_: RadosLocation
    public var location: String { where_.description }
    public let maxInFlight: Int

    let connection: RadosConnection
    let writes: RadosAsyncWrites
    let versions = RadosVersions()
    private let passCount = NSLock()
    private var passes = 0

    /// Whether `releaseLock(force: true)` blocklists the broken holders' clients
    /// (on by default; tests turn it off to show the compare-and-swap alone).
    public var fenceOnForce = ProcessInfo.processInfo.environment["ARCHIP_RADOS_NO_FENCE"] == nil

    public init(_ loc: RadosLocation, maxInFlight: Int = 32, settings: RadosSettings = RadosSettings()) throws {
        self.where_ = loc
        self.maxInFlight = maxInFlight
        connection = try RadosConnection(loc, maxInFlight: maxInFlight, settings: settings)
        let store = loc.description
        writes = RadosAsyncWrites(connection, maxInFlight: maxInFlight, describe: { "\($0) in \(store)" })
    }

    deinit {
        // Then the connection goes, with the last op that used it.
        writes.drain()
    }

    func describe(_ name: String) -> String { "\(name) in \(where_)" }

    // MARK: ObjectStore: reads

    public func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = name.path
        let bytes = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        let rval = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        defer { bytes.deallocate(); rval.deallocate() }
        bytes.pointee = 0
        rval.pointee = 0
        return try versions.guarded(name) {
            let (r, v) = connection.operateRead(n) { op in
                rados_read_op_read(op, offset, buffer.count, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), bytes, rval)
            }
            guard r >= 0 else {
                if r == -ENOENT { versions.note(name, version: 0, read: true) }
                throw connection.error(r, "read", describe(n))
            }
            versions.note(name, version: v, read: true)
            return bytes.pointee
        }
    }

    public func readAll(_ name: ObjectName) throws -> [UInt8] {
        try versions.guarded(name) { try readWhole(name).0 }
    }

    private func readWhole(_ name: ObjectName) throws -> ([UInt8], UInt64) {
        let n = name.path
        let size = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        let mtime = UnsafeMutablePointer<time_t>.allocate(capacity: 1)
        let bytes = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        let rvals = UnsafeMutablePointer<Int32>.allocate(capacity: 2)
        defer { size.deallocate(); mtime.deallocate(); bytes.deallocate(); rvals.deallocate() }
        var guess = 64 << 10
        while true {
            var out = [UInt8](repeating: 0, count: guess)
            size.pointee = 0
            bytes.pointee = 0
            let (r, v) = out.withUnsafeMutableBytes { buf in
                connection.operateRead(n) { op in
                    rados_read_op_stat(op, size, mtime, rvals)
                    rados_read_op_read(op, 0, buf.count, buf.baseAddress!.assumingMemoryBound(to: CChar.self), bytes, rvals + 1)
                }
            }
            guard r >= 0 else {
                if r == -ENOENT { versions.note(name, version: 0, read: true) }
                throw connection.error(r, "read", describe(n))
            }
            if size.pointee > UInt64(guess) {
                guess = Int(size.pointee)
                continue
            }
            out.removeLast(out.count - bytes.pointee)
            versions.note(name, version: v, read: true)
            return (out, v)
        }
    }

    public func stat(_ name: ObjectName) throws -> ObjectInfo? {
        let n = name.path
        let size = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        let mtime = UnsafeMutablePointer<time_t>.allocate(capacity: 1)
        let rval = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        defer { size.deallocate(); mtime.deallocate(); rval.deallocate() }
        return try versions.guarded(name) {
            let (r, v) = connection.operateRead(n) { op in rados_read_op_stat(op, size, mtime, rval) }
            if r == -ENOENT {
                versions.note(name, version: 0, read: true)
                return nil
            }
            guard r >= 0 else { throw connection.error(r, "stat", describe(n)) }
            versions.note(name, version: v, read: true)
            return ObjectInfo(size: size.pointee, modified: Date(timeIntervalSince1970: Double(mtime.pointee)))
        }
    }

    // MARK: ObjectStore: writes

    public func put(_ name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool) throws {
        let n = name.path
        let base = data.baseAddress?.assumingMemoryBound(to: CChar.self)
        let build: (rados_write_op_t) -> Void = { op in
            rados_write_op_write_full(op, base, data.count)
            if length > UInt64(data.count) { rados_write_op_truncate(op, length) }
        }
        if !name.kind.needsCompareAndSwap {
            if durable {
                let (r, _) = connection.operate(n, build)
                guard r >= 0 else { throw connection.error(r, "write", describe(n)) }
            } else {
                try writes.submit(n, what: "write", build)
            }
            return
        }
        try versions.guarded(name) {
            var expected: UInt64?
            let (r, v) = connection.operate(n) { op in
                expected = versions.addGuard(name, op)
                build(op)
            }
            if r < 0 {
                if let expected, let e = RadosVersions.conflict(name, r, expected: expected) { throw e }
                throw connection.error(r, "write", describe(n))
            }
            versions.note(name, version: v)
        }
    }

    public func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool {
        let n = name.path
        return try versions.guarded(name) {
            let (r, v) = connection.operate(n) { op in
                rados_write_op_create(op, Int32(LIBRADOS_CREATE_EXCLUSIVE), nil)
                rados_write_op_write_full(op, data.baseAddress?.assumingMemoryBound(to: CChar.self), data.count)
            }
            if r == -EEXIST {
                // Already there: refresh its modification time so a running gc spares it.
                let stamp = String(Int(Date().timeIntervalSince1970))
                _ = connection.operate(n) { op in
                    rados_write_op_assert_exists(op)
                    rados_write_op_setxattr(op, "archip.touched", stamp, stamp.utf8.count)
                }
                return false
            }
            guard r >= 0 else { throw connection.error(r, "create", describe(n)) }
            versions.note(name, version: v)
            return true
        }
    }

    public func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        let n = name.path
        let base = data.baseAddress?.assumingMemoryBound(to: CChar.self)
        if !name.kind.needsCompareAndSwap {
            try writes.submit(n, what: "write", { op in
                rados_write_op_assert_exists(op)
                rados_write_op_write(op, base, data.count, offset)
            })
            return
        }
        try versions.guarded(name) {
            var expected: UInt64?
            let (r, v) = connection.operate(n) { op in
                expected = versions.addGuard(name, op)
                if expected == nil { rados_write_op_assert_exists(op) }
                rados_write_op_write(op, base, data.count, offset)
            }
            if r < 0 {
                if let expected, let e = RadosVersions.conflict(name, r, expected: expected) { throw e }
                throw connection.error(r, "write", describe(n))
            }
            versions.note(name, version: v)
        }
    }

    public func sync(_ names: [ObjectName]) throws {
        var first: Error?
        for name in names {
            do { try writes.settle(name.path) } catch { if first == nil { first = error } }
        }
        if let first { throw first }
    }

    public func syncContents(_ name: ObjectName) throws {
        try writes.settle(name.path)
    }

    public func remove(_ name: ObjectName) throws -> Bool {
        let n = name.path
        try? writes.settle(n)   // a failed earlier write of an object being removed no longer matters
        return try versions.guarded(name) {
            let (r, _) = connection.operate(n) { op in rados_write_op_remove(op) }
            if r == -ENOENT { versions.note(name, version: 0); return false }
            guard r >= 0 else { throw connection.error(r, "remove", describe(n)) }
            versions.note(name, version: 0)
            return true
        }
    }

    public func removeAll(prefix: String) throws {
        try removeAll(prefixes: [prefix])
    }

    /// One pass of the pool for all prefixes, then the removals, many in flight.
    public func removeAll(prefixes: [String]) throws {
        var names: [ObjectName] = []
        try enumerate(prefixes: prefixes) { names.append($0); return true }
        for name in names {
            let n = name.path
            try? writes.settle(n)
            if name.kind.needsCompareAndSwap {
                _ = try remove(name)
            } else {
                try writes.submit(n, what: "remove") { op in rados_write_op_remove(op) }
            }
        }
        for name in names {
            // A concurrent remover got there first: fine.
            do { try writes.settle(name.path) } catch let e as StoreError where e.code == .notFound {}
        }
    }

    /// RADOS has no rename: copy to the new name with an exclusive create, then
    /// remove the old one. A crash between leaves both names (like `dir` on NFS).
    public func rename(_ from: ObjectName, to: ObjectName) throws {
        let bytes = try readAll(from)
        guard try bytes.withUnsafeBytes({ try create(to, $0, durable: true) }) else {
            throw StoreError(.alreadyExists, "\(to) exists in \(where_)")
        }
        _ = try remove(from)
    }

    public func enumerate(prefix: String, _ body: (ObjectName) throws -> Bool) throws {
        try enumerate(prefixes: [prefix], body)
    }

    /// Listing passes over the pool so far (each one reads every object name
    /// of the pool's namespace, whatever the prefixes): for tests and benches.
    public var listPasses: Int { passCount.withLock { passes } }

    /// RADOS lists a pool only whole (PG by PG, in hash order), so one pass
    /// serves every prefix.
    public func enumerate(prefixes: [String], _ body: (ObjectName) throws -> Bool) throws {
        guard !prefixes.isEmpty else { return }
        passCount.withLock { passes += 1 }
        let all = prefixes.contains("")
        var ctx: rados_list_ctx_t?
        let r = rados_nobjects_list_open(connection.io, &ctx)
        guard r == 0, let ctx else { throw connection.error(r, "list", "\(where_)") }
        defer { rados_nobjects_list_close(ctx) }
        while true {
            var entry: UnsafePointer<CChar>?
            let r = rados_nobjects_list_next(ctx, &entry, nil, nil)
            if r == -ENOENT { return }
            guard r == 0, let entry else { throw connection.error(r, "list", "\(where_)") }
            let path = String(cString: entry)
            guard all || prefixes.contains(where: { path.hasPrefix($0) }), let name = ObjectName(validating: path) else { continue }
            if try !body(name) { return }
        }
    }

    public func removeStaleTemporaries(olderThan date: Date) throws -> Int { 0 }

    public func forgetCached(_ name: ObjectName) {
        versions.forget(name)
    }

    /// False once the cluster blocklisted this store's client.
    public var clientIsUsable: Bool { !connection.isFenced }

    /// This store's client as lock listings and `ceph osd blocklist` name it.
    public var clientName: String { connection.clientName }

}
