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
/// - Block objects (`layers/*/b*`, `blocks/...`, anything not below) written
///   with `durable: false` and in-place writes are submitted asynchronously,
///   at most `maxInFlight` at once; `sync`/`syncContents` wait for them and
///   report their errors. Reads are ordered after earlier writes to the same
///   object (`ORDER_READS_WRITES`).
/// - Content blocks are made with an exclusive create (`create`).
/// - *Guarded* objects (maps, logs, records) are compare-and-swapped: the store
///   remembers the version of each one it read or wrote, and a later write or
///   append asserts that version (`assert_version`, or an exclusive create when
///   it saw none). A process whose view is stale (another node took the volume
///   over while it was paused) fails with `.locked` instead of overwriting.
/// - Locks are RADOS advisory locks (`cls_lock`) on `locks/<name>`, lock name
///   `archip`; the cookie is the JSON of the holder (node, token, pid, since), so
///   `lockState` can name it. `--force` breaks them and blocklists the holders'
///   client addresses, so a paused holder that wakes up can write nothing.
/// - Listing (`enumerate`) pages through the pool's object list with librados'
///   cursor: nothing is held in memory, but any listing is a pass over the
///   whole pool (RADOS has no prefix listing), so callers that need several
///   prefixes ask for them together (`enumerate(prefixes:)`: one pass).
public final class RadosObjectStore: ObjectStore, @unchecked Sendable {
    public let where_: RadosLocation
    public var location: String { where_.description }

    private let cluster: rados_t
    private let io: rados_ioctx_t
    private let inFlight: DispatchSemaphore
    public let maxInFlight: Int

    private let state = NSLock()
    private var pending: [String: [AsyncOp]] = [:]
    private var failed: [String: StoreError] = [:]
    private var queue: [AsyncOp] = []
    /// Last version seen of each guarded object; 0: seen absent.
    private var seen: [String: UInt64] = [:]
    /// Guarded objects this process wrote: reads do not move their version.
    private var written = Set<String>()
    private var passes = 0
    private let stripes = (0..<64).map { _ in NSLock() }

    static let lockName = "archip"
    /// ARCHIP_RADOS_TRACE=1: every guarded write and the version it expects, on stderr.
    static let trace = ProcessInfo.processInfo.environment["ARCHIP_RADOS_TRACE"] != nil

    /// Whether `releaseLock(force: true)` blocklists the broken holders' clients
    /// (on by default; tests turn it off to show the compare-and-swap alone).
    public var fenceOnForce = ProcessInfo.processInfo.environment["ARCHIP_RADOS_NO_FENCE"] == nil

    public init(_ loc: RadosLocation, maxInFlight: Int = 32) throws {
        self.where_ = loc
        self.maxInFlight = maxInFlight
        inFlight = DispatchSemaphore(value: maxInFlight)
        // librados is loaded here, on the first rados:// store, not at start.
        if let why = archip_rados_load() {
            throw StoreError(.io, "store \(loc): \(String(cString: why))")
        }
        var c: rados_t?
        var r = rados_create(&c, loc.id)
        guard r == 0, let c else { throw RadosObjectStore.error(r, "create a client for", "client.\(loc.id)") }
        guard access(loc.conf, R_OK) == 0 else {
            rados_shutdown(c)
            throw StoreError(.notFound, "store \(loc): cannot read Ceph configuration \(loc.conf)")
        }
        r = rados_conf_read_file(c, loc.conf)
        guard r == 0 else {
            rados_shutdown(c)
            throw RadosObjectStore.error(r, "read Ceph configuration", loc.conf)
        }
        // A dead cluster must not hang a command for the 300 s default.
        if RadosObjectStore.confGet(c, "client_mount_timeout").map({ Double($0) ?? 0 }) ?? 0 >= 300 {
            rados_conf_set(c, "client_mount_timeout", "30")
        }
        // Deep queues of 4 MiB blocks: the default stops at ~25 ops.
        if let b = RadosObjectStore.confGet(c, "objecter_inflight_op_bytes").flatMap({ UInt64($0) }),
           b < UInt64(maxInFlight + 8) << 22 {
            rados_conf_set(c, "objecter_inflight_op_bytes", String(UInt64(maxInFlight + 8) << 22))
        }
        r = rados_connect(c)
        guard r == 0 else {
            rados_shutdown(c)
            throw RadosObjectStore.error(r, "connect to the Ceph cluster of", "\(loc.conf) as client.\(loc.id)")
        }
        var ioctx: rados_ioctx_t?
        r = rados_ioctx_create(c, loc.pool, &ioctx)
        guard r == 0, let ioctx else {
            rados_shutdown(c)
            if r == -ENOENT { throw StoreError(.notFound, "store \(loc): pool '\(loc.pool)' does not exist (ceph osd pool create \(loc.pool))") }
            throw RadosObjectStore.error(r, "open pool", loc.pool)
        }
        if !loc.namespace.isEmpty { rados_ioctx_set_namespace(ioctx, loc.namespace) }
        cluster = c
        io = ioctx
    }

    deinit {
        let all = state.withLock { queue }
        for op in all { op.done.wait(); finish(op) }
        rados_ioctx_destroy(io)
        rados_shutdown(cluster)
    }

    static func confGet(_ c: rados_t, _ key: String) -> String? {
        var buf = [CChar](repeating: 0, count: 256)
        guard rados_conf_get(c, key, &buf, buf.count) == 0 else { return nil }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: errors

    static func error(_ r: Int32, _ op: String, _ what: String, file: String = #fileID, line: Int = #line) -> StoreError {
        let e = -r
        let text = String(cString: strerror(e))
        let code: StoreError.Code
        switch e {
        case ENOENT: code = .notFound
        case EEXIST: code = .alreadyExists
        case ENOSPC, EDQUOT, EFBIG: code = .noSpace
        case ESHUTDOWN:
            return StoreError(.locked, "\(op) \(what): this client was fenced off (blocklisted) by the cluster",
                              cause: "another node broke this node's lock with 'archip unlock --force'", file: file, line: line)
        default: code = .io
        }
        return StoreError(code, "\(op) \(what)", cause: "\(text) (rados error \(r))", file: file, line: line)
    }

    private func describe(_ name: String) -> String { "\(name) in \(where_)" }

    // MARK: completions

    /// An op submitted without waiting: a `durable: false` put or an in-place
    /// write of a block object. Its completion callback frees a slot.
    final class AsyncOp: @unchecked Sendable {
        let name: String
        let what: String
        var completion: rados_completion_t?
        var op: rados_write_op_t?
        let done = DispatchGroup()
        var finished = false
        let slots: DispatchSemaphore
        init(name: String, what: String, slots: DispatchSemaphore) {
            self.name = name
            self.what = what
            self.slots = slots
            done.enter()
        }
    }

    private static let onComplete: rados_callback_t = { _, arg in
        let op = Unmanaged<AsyncOp>.fromOpaque(arg!).takeUnretainedValue()
        op.slots.signal()
        op.done.leave()
    }

    /// Waits for a synchronous op; returns its result and the object's version after it.
    private func wait(_ c: rados_completion_t) -> (Int32, UInt64) {
        rados_aio_wait_for_complete(c)
        let r = rados_aio_get_return_value(c)
        let v = rados_aio_get_version(c)
        rados_aio_release(c)
        return (r, v)
    }

    private func operate(_ name: String, _ build: (rados_write_op_t) -> Void) -> (Int32, UInt64) {
        let op = rados_create_write_op()!
        defer { rados_release_write_op(op) }
        build(op)
        var c: rados_completion_t?
        rados_aio_create_completion2(nil, nil, &c)
        let r = rados_aio_write_op_operate(op, io, c, name, nil, 0)
        if r < 0 { rados_aio_release(c); return (r, 0) }
        return wait(c!)
    }

    private func operateRead(_ name: String, _ build: (rados_read_op_t) -> Void) -> (Int32, UInt64) {
        let op = rados_create_read_op()!
        defer { rados_release_read_op(op) }
        build(op)
        var c: rados_completion_t?
        rados_aio_create_completion2(nil, nil, &c)
        let r = rados_aio_read_op_operate(op, io, c, name, Int32(LIBRADOS_OPERATION_ORDER_READS_WRITES))
        if r < 0 { rados_aio_release(c); return (r, 0) }
        return wait(c!)
    }

    /// Submits a write op and returns at once (at most `maxInFlight` outstanding).
    private func submit(_ name: String, what: String, _ build: (rados_write_op_t) -> Void) throws {
        inFlight.wait()
        let a = AsyncOp(name: name, what: what, slots: inFlight)
        let op = rados_create_write_op()!
        build(op)
        a.op = op
        var c: rados_completion_t?
        rados_aio_create_completion2(Unmanaged.passUnretained(a).toOpaque(), RadosObjectStore.onComplete, &c)
        a.completion = c
        state.withLock {
            pending[name, default: []].append(a)
            queue.append(a)
        }
        let r = rados_aio_write_op_operate(op, io, c, name, nil, 0)
        if r < 0 {
            // Never submitted: no callback will come.
            inFlight.signal()
            a.done.leave()
            finish(a, submitError: r)
            throw RadosObjectStore.error(r, what, describe(name))
        }
        reap()
    }

    /// Records a finished async op's result and frees it (once).
    private func finish(_ a: AsyncOp, submitError: Int32? = nil) {
        state.withLock {
            guard !a.finished else { return }
            a.finished = true
            let r = submitError ?? rados_aio_get_return_value(a.completion)
            rados_aio_release(a.completion)
            rados_release_write_op(a.op)
            if r < 0, submitError == nil {
                failed[a.name] = RadosObjectStore.error(r, a.what, describe(a.name))
            }
            if var list = pending[a.name] {
                list.removeAll { $0 === a }
                pending[a.name] = list.isEmpty ? nil : list
            }
        }
    }

    /// Frees ops that completed, oldest first, so the queue stays short.
    private func reap() {
        while true {
            let head: AsyncOp? = state.withLock {
                while let f = queue.first, f.finished { queue.removeFirst() }
                guard let f = queue.first, f.done.wait(timeout: .now()) == .success else { return nil }
                queue.removeFirst()
                return f
            }
            guard let head else { return }
            finish(head)
        }
    }

    /// Waits for every async op on `name` and throws the first failure among them.
    private func settle(_ name: String) throws {
        let ops = state.withLock { pending[name] ?? [] }
        for a in ops {
            a.done.wait()
            finish(a)
        }
        if let e = state.withLock({ failed.removeValue(forKey: name) }) { throw e }
    }

    // MARK: guarded objects

    /// Maps, logs and records: every write of them compares the version this
    /// process last saw.
    static func isGuarded(_ path: String) -> Bool {
        path.hasPrefix("names/") || (path.hasPrefix("layers/") && (path.hasSuffix("/map") || path.hasSuffix("/log")))
    }

    private func stripe(_ name: String) -> NSLock {
        var h: UInt64 = 1469598103934665603
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 1099511628211 }
        return stripes[Int(h % UInt64(stripes.count))]
    }

    private func guarded<R>(_ name: String, _ body: () throws -> R) rethrows -> R {
        guard RadosObjectStore.isGuarded(name) else { return try body() }
        let l = stripe(name)
        l.lock()
        defer { l.unlock() }
        return try body()
    }

    /// Records the version of a guarded object after an op on it. A read
    /// does not move the version of an object this process has written: its
    /// own next write must build on what it wrote, not on whatever another
    /// writer put there since (a gc or info in the same process reads maps
    /// and logs of volumes it holds; taking that version would let a stale
    /// writer through). `forgetCached` (a fresh open) starts over.
    private func note(_ name: String, version: UInt64?, read: Bool = false) {
        guard RadosObjectStore.isGuarded(name) else { return }
        state.withLock {
            if read {
                if written.contains(name) { return }
            } else {
                written.insert(name)
            }
            seen[name] = version
        }
    }

    /// Adds the compare part of a guarded write.
    private func addGuard(_ name: String, _ op: rados_write_op_t) -> UInt64? {
        guard RadosObjectStore.isGuarded(name) else { return nil }
        let v = state.withLock({ seen[name] })
        if RadosObjectStore.trace { FileHandle.standardError.write(Data("rados-trace: write \(name) expecting \(v.map(String.init) ?? "anything")\n".utf8)) }
        guard let v else { return nil }
        if v == 0 {
            rados_write_op_create(op, Int32(LIBRADOS_CREATE_EXCLUSIVE), nil)
        } else {
            rados_write_op_assert_version(op, v)
        }
        return v
    }

    private func conflict(_ name: String, _ r: Int32, expected: UInt64) -> StoreError? {
        guard [ERANGE, EOVERFLOW, EEXIST, ENOENT].contains(-r) else { return nil }
        let was = expected == 0 ? "absent" : "at version \(expected)"
        return StoreError(.locked, "\(name) was changed by another writer since this process read it (it was \(was)); not overwritten",
                          cause: "another node holds the volume now, or broke this node's lock; reopen the volume")
    }

    // MARK: ObjectStore: reads

    public func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = name.path
        let bytes = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        let rval = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        defer { bytes.deallocate(); rval.deallocate() }
        bytes.pointee = 0
        rval.pointee = 0
        return try guarded(n) {
            let (r, v) = operateRead(n) { op in
                rados_read_op_read(op, offset, buffer.count, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), bytes, rval)
            }
            guard r >= 0 else {
                if r == -ENOENT { note(n, version: 0, read: true) }
                throw RadosObjectStore.error(r, "read", describe(n))
            }
            note(n, version: v, read: true)
            return bytes.pointee
        }
    }

    public func readAll(_ name: ObjectName) throws -> [UInt8] {
        let n = name.path
        return try guarded(n) { try readWhole(n).0 }
    }

    private func readWhole(_ n: String) throws -> ([UInt8], UInt64) {
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
                operateRead(n) { op in
                    rados_read_op_stat(op, size, mtime, rvals)
                    rados_read_op_read(op, 0, buf.count, buf.baseAddress!.assumingMemoryBound(to: CChar.self), bytes, rvals + 1)
                }
            }
            guard r >= 0 else {
                if r == -ENOENT { note(n, version: 0, read: true) }
                throw RadosObjectStore.error(r, "read", describe(n))
            }
            if size.pointee > UInt64(guess) {
                guess = Int(size.pointee)
                continue
            }
            out.removeLast(out.count - bytes.pointee)
            note(n, version: v, read: true)
            return (out, v)
        }
    }

    public func stat(_ name: ObjectName) throws -> ObjectInfo? {
        let n = name.path
        let size = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        let mtime = UnsafeMutablePointer<time_t>.allocate(capacity: 1)
        let rval = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        defer { size.deallocate(); mtime.deallocate(); rval.deallocate() }
        return try guarded(n) {
            let (r, v) = operateRead(n) { op in rados_read_op_stat(op, size, mtime, rval) }
            if r == -ENOENT {
                note(n, version: 0, read: true)
                return nil
            }
            guard r >= 0 else { throw RadosObjectStore.error(r, "stat", describe(n)) }
            note(n, version: v, read: true)
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
        if !RadosObjectStore.isGuarded(n) {
            if durable {
                let (r, _) = operate(n, build)
                guard r >= 0 else { throw RadosObjectStore.error(r, "write", describe(n)) }
            } else {
                try submit(n, what: "write", build)
            }
            return
        }
        try guarded(n) {
            var expected: UInt64?
            let (r, v) = operate(n) { op in
                expected = addGuard(n, op)
                build(op)
            }
            if r < 0 {
                if let expected, let e = conflict(n, r, expected: expected) { throw e }
                throw RadosObjectStore.error(r, "write", describe(n))
            }
            note(n, version: v)
        }
    }

    public func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool {
        let n = name.path
        return try guarded(n) {
            let (r, v) = operate(n) { op in
                rados_write_op_create(op, Int32(LIBRADOS_CREATE_EXCLUSIVE), nil)
                rados_write_op_write_full(op, data.baseAddress?.assumingMemoryBound(to: CChar.self), data.count)
            }
            if r == -EEXIST {
                // Already there: refresh its modification time so a running gc spares it.
                let stamp = String(Int(Date().timeIntervalSince1970))
                _ = operate(n) { op in
                    rados_write_op_assert_exists(op)
                    rados_write_op_setxattr(op, "archip.touched", stamp, stamp.utf8.count)
                }
                return false
            }
            guard r >= 0 else { throw RadosObjectStore.error(r, "create", describe(n)) }
            note(n, version: v)
            return true
        }
    }

    public func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        let n = name.path
        let base = data.baseAddress?.assumingMemoryBound(to: CChar.self)
        if !RadosObjectStore.isGuarded(n) {
            try submit(n, what: "write", { op in
                rados_write_op_assert_exists(op)
                rados_write_op_write(op, base, data.count, offset)
            })
            return
        }
        try guarded(n) {
            var expected: UInt64?
            let (r, v) = operate(n) { op in
                expected = addGuard(n, op)
                if expected == nil { rados_write_op_assert_exists(op) }
                rados_write_op_write(op, base, data.count, offset)
            }
            if r < 0 {
                if let expected, let e = conflict(n, r, expected: expected) { throw e }
                throw RadosObjectStore.error(r, "write", describe(n))
            }
            note(n, version: v)
        }
    }

    public func sync(_ names: [ObjectName]) throws {
        var first: Error?
        for name in names {
            do { try settle(name.path) } catch { if first == nil { first = error } }
        }
        if let first { throw first }
    }

    public func syncContents(_ name: ObjectName) throws {
        try settle(name.path)
    }

    public func remove(_ name: ObjectName) throws -> Bool {
        let n = name.path
        try? settle(n)   // a failed earlier write of an object being removed no longer matters
        return try guarded(n) {
            let (r, _) = operate(n) { op in rados_write_op_remove(op) }
            if r == -ENOENT { note(n, version: 0); return false }
            guard r >= 0 else { throw RadosObjectStore.error(r, "remove", describe(n)) }
            note(n, version: 0)
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
            try? settle(n)
            if RadosObjectStore.isGuarded(n) {
                _ = try remove(name)
            } else {
                try submit(n, what: "remove") { op in rados_write_op_remove(op) }
            }
        }
        for name in names {
            // A concurrent remover got there first: fine.
            do { try settle(name.path) } catch let e as StoreError where e.code == .notFound {}
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
    public var listPasses: Int { state.withLock { passes } }

    /// RADOS lists a pool only whole (PG by PG, in hash order), so one pass
    /// serves every prefix.
    public func enumerate(prefixes: [String], _ body: (ObjectName) throws -> Bool) throws {
        guard !prefixes.isEmpty else { return }
        state.withLock { passes += 1 }
        let all = prefixes.contains("")
        var ctx: rados_list_ctx_t?
        let r = rados_nobjects_list_open(io, &ctx)
        guard r == 0, let ctx else { throw RadosObjectStore.error(r, "list", "\(where_)") }
        defer { rados_nobjects_list_close(ctx) }
        while true {
            var entry: UnsafePointer<CChar>?
            let r = rados_nobjects_list_next(ctx, &entry, nil, nil)
            if r == -ENOENT { return }
            guard r == 0, let entry else { throw RadosObjectStore.error(r, "list", "\(where_)") }
            let path = String(cString: entry)
            guard all || prefixes.contains(where: { path.hasPrefix($0) }), let name = ObjectName(validating: path) else { continue }
            if try !body(name) { return }
        }
    }

    public func removeStaleTemporaries(olderThan date: Date) throws -> Int { 0 }

    public func forgetCached(_ name: ObjectName) {
        guard RadosObjectStore.isGuarded(name.path) else { return }
        state.withLock {
            seen.removeValue(forKey: name.path)
            written.remove(name.path)
        }
    }

    // MARK: locks

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
            let n = rados_list_lockers(io, oid, RadosObjectStore.lockName, &exclusive, &tag, &tl, &clients, &cl,
                                       &cookies, &kl, &addrs, &al)
            if n == -ERANGE {
                sizes = (max(sizes.tag * 2, tl), max(sizes.clients * 2, cl), max(sizes.cookies * 2, kl), max(sizes.addrs * 2, al))
                continue
            }
            if n == -ENOENT { return (.exclusive, []) }
            guard n >= 0 else { throw RadosObjectStore.error(Int32(n), "list lockers of", describe(oid)) }
            func split(_ b: [CChar], _ len: Int) -> [String] {
                b.prefix(len).split(separator: 0, omittingEmptySubsequences: false).prefix(Int(n))
                    .map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            }
            let cs = split(clients, cl), ks = split(cookies, kl), ads = split(addrs, al)
            var out: [Locker] = []
            for i in 0..<Int(n) where i < cs.count && i < ks.count {
                out.append(Locker(client: cs[i], cookie: ks[i], address: i < ads.count ? ads[i] : "",
                                  owner: RadosObjectStore.owner(ofCookie: ks[i])))
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
            let r = rados_break_lock(io, oid, RadosObjectStore.lockName, mine.client, mine.cookie)
            guard r == 0 || r == -ENOENT else { throw RadosObjectStore.error(r, "release lock on", describe(oid)) }
        } else {
            // The cluster decides; this only words the refusal like every backend does.
            _ = try Self.decideLock(state(of: current), owner: owner, mode: mode, name: name)
        }
        let cookie = RadosObjectStore.cookie(owner)
        let desc = "archip \(mode.rawValue) hold"
        let r = mode == .exclusive
            ? rados_lock_exclusive(io, oid, RadosObjectStore.lockName, cookie, desc, nil, 0)
            : rados_lock_shared(io, oid, RadosObjectStore.lockName, cookie, "", desc, nil, 0)
        if r == 0 && mode == .exclusive { try markNewHolder(oid, cookie) }
        if r == 0 || r == -EEXIST { return }
        if r == -EBUSY {
            let now = try lockers(oid)
            _ = try Self.decideLock(state(of: now), owner: owner, mode: mode, name: name)
            throw StoreError(.locked, "\(name.lastComponent) is locked; the cluster refused the \(mode.rawValue) lock (try again)")
        }
        throw RadosObjectStore.error(r, "lock", describe(oid))
    }

    /// A new exclusive holder of `locks/NAME` changes the version of the
    /// volume's record `names/NAME` (an xattr naming it, nothing else), so a
    /// paused former holder whose next metadata write is the record (a
    /// snapshot) fails its compare-and-swap even when the new holder changed
    /// nothing else it would touch.
    private func markNewHolder(_ lockOid: String, _ cookie: String) throws {
        guard lockOid.hasPrefix("locks/") else { return }
        let record = "names/" + lockOid.dropFirst("locks/".count)
        try guarded(record) {
            let (r, _) = operate(record) { op in
                rados_write_op_assert_exists(op)
                rados_write_op_setxattr(op, "archip.holder", cookie, cookie.utf8.count)
            }
            guard r >= 0 || r == -ENOENT else { throw RadosObjectStore.error(r, "mark the new holder on", describe(record)) }
            // This process's next read of the record takes the new version.
            state.withLock {
                seen.removeValue(forKey: record)
                written.remove(record)
            }
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
            let r = rados_break_lock(io, oid, RadosObjectStore.lockName, l.client, l.cookie)
            guard r == 0 || r == -ENOENT else { throw RadosObjectStore.error(r, "release lock on", describe(oid)) }
            if force && fenceOnForce { fence(l) }
        }
        return true
    }

    /// A lock broken by force may belong to a holder that is paused, not dead
    /// (SIGSTOP, a hung node): blocklist its client so it writes nothing more.
    private func fence(_ l: Locker) {
        guard !l.address.isEmpty, l.client != "client.\(rados_get_instance_id(cluster))" else { return }
        var addr = Array(l.address.utf8CString)
        _ = rados_blocklist_add(cluster, &addr, 3600)
    }

    public func lockState(_ name: ObjectName) throws -> LockState? {
        state(of: try lockers(name.path))
    }
}

extension NSLock {
    fileprivate func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}
