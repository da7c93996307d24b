import ArchipStore
import CRados
import Foundation

// MARK: ops that wait

extension RadosConnection {
    /// Runs a write op and waits; returns its result and the object's version after it.
    func operate(_ name: String, _ build: (rados_write_op_t) -> Void) -> (Int32, UInt64) {
        let op = rados_create_write_op()!
        defer { rados_release_write_op(op) }
        build(op)
        var c: rados_completion_t?
        rados_aio_create_completion2(nil, nil, &c)
        let r = rados_aio_write_op_operate(op, io, c, name, nil, 0)
        if r < 0 { rados_aio_release(c); return (r, 0) }
        return wait(c!)
    }

    /// Runs a read op, ordered after earlier writes to the same object, and waits.
    func operateRead(_ name: String, _ build: (rados_read_op_t) -> Void) -> (Int32, UInt64) {
        let op = rados_create_read_op()!
        defer { rados_release_read_op(op) }
        build(op)
        var c: rados_completion_t?
        rados_aio_create_completion2(nil, nil, &c)
        let r = rados_aio_read_op_operate(op, io, c, name, Int32(LIBRADOS_OPERATION_ORDER_READS_WRITES))
        if r < 0 { rados_aio_release(c); return (r, 0) }
        return wait(c!)
    }

    private func wait(_ c: rados_completion_t) -> (Int32, UInt64) {
        rados_aio_wait_for_complete(c)
        let r = note(rados_aio_get_return_value(c))
        let v = rados_aio_get_version(c)
        rados_aio_release(c)
        return (r, v)
    }
}

// MARK: ops that do not wait

/// Write ops submitted without waiting (`durable: false` puts and in-place
/// writes of blocks, removals of many objects), at most `maxInFlight` at once.
/// `settle(name)` waits for those on one object and reports the first failure
/// among them; finished ops are freed oldest first as new ones are submitted.
final class RadosAsyncWrites: @unchecked Sendable {
    /// One submitted op. Its completion callback frees a slot.
    final class Op: @unchecked Sendable {
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

    private let connection: RadosConnection
    private let slots: DispatchSemaphore
    private let maxInFlight: Int
    /// How an object is named in errors (`<name> in <store>`).
    private let describe: @Sendable (String) -> String
    private let state = NSLock()
    private var pending: [String: [Op]] = [:]
    private var failed: [String: StoreError] = [:]
    private var queue: [Op] = []

    init(_ connection: RadosConnection, maxInFlight: Int, describe: @escaping @Sendable (String) -> String) {
        self.connection = connection
        self.slots = DispatchSemaphore(value: maxInFlight)
        self.maxInFlight = maxInFlight
        self.describe = describe
    }

    private static let onComplete: rados_callback_t = { _, arg in
        let op = Unmanaged<Op>.fromOpaque(arg!).takeUnretainedValue()
        op.slots.signal()
        op.done.leave()
    }

    /// Submits a write op and returns at once (waits only for a free slot).
    /// The wait for a slot is bounded by `[rados] op_timeout` (when set): a
    /// cluster that completes none of the ops in flight for that long makes
    /// the write fail in one line instead of blocking its caller for ever.
    func submit(_ name: String, what: String, _ build: (rados_write_op_t) -> Void) throws {
        let bound = connection.settings.opTimeout
        if bound > 0 {
            guard slots.wait(timeout: .now() + bound) == .success else {
                throw StoreError(.io, String(format: "%@ %@: timed out after %g s waiting for one of %d writes in flight to complete: the cluster did not answer (ceph -s; [rados] op_timeout)",
                                             what, describe(name), bound, maxInFlight))
            }
        } else {
            slots.wait()
        }
        let a = Op(name: name, what: what, slots: slots)
        let op = rados_create_write_op()!
        build(op)
        a.op = op
        var c: rados_completion_t?
        rados_aio_create_completion2(Unmanaged.passUnretained(a).toOpaque(), Self.onComplete, &c)
        a.completion = c
        state.withLock {
            pending[name, default: []].append(a)
            queue.append(a)
        }
        let r = rados_aio_write_op_operate(op, connection.io, c, name, nil, 0)
        if r < 0 {
            // Never submitted: no callback will come.
            slots.signal()
            a.done.leave()
            finish(a, submitError: r)
            throw connection.error(r, what, describe(name))
        }
        reap()
    }

    /// Records a finished op's result and frees it (once).
    private func finish(_ a: Op, submitError: Int32? = nil) {
        state.withLock {
            guard !a.finished else { return }
            a.finished = true
            let r = submitError ?? rados_aio_get_return_value(a.completion)
            rados_aio_release(a.completion)
            rados_release_write_op(a.op)
            if r < 0, submitError == nil {
                failed[a.name] = connection.error(r, a.what, describe(a.name))
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
            let head: Op? = state.withLock {
                while let f = queue.first, f.finished { queue.removeFirst() }
                guard let f = queue.first, f.done.wait(timeout: .now()) == .success else { return nil }
                queue.removeFirst()
                return f
            }
            guard let head else { return }
            finish(head)
        }
    }

    /// Waits for every op on `name` and throws the first failure among them.
    func settle(_ name: String) throws {
        let ops = state.withLock { pending[name] ?? [] }
        for a in ops {
            a.done.wait()
            finish(a)
        }
        if let e = state.withLock({ failed.removeValue(forKey: name) }) { throw e }
    }

    /// Waits for every op still out and frees it (the store is going away).
    func drain() {
        let all = state.withLock { queue }
        for op in all { op.done.wait(); finish(op) }
    }
}
