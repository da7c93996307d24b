import Foundation

/// One admitted request on its way to a worker.
struct NBDJob: @unchecked Sendable {
    /// Order of arrival on the connection; flush barriers compare these.
    let sequence: UInt64
    let header: NBDRequestHeader
    let command: NBDProtocol.Command
    /// A write's data, owned by the job (freed by the worker).
    let payload: UnsafeMutableRawBufferPointer?
    /// Memory this request holds while in flight (payload or read buffer).
    let bytes: Int
}

/// The queue between a connection's reader and its workers, with the
/// bookkeeping that keeps a connection within bounds and flushes honest:
///
///     reader ── admit (waits for room) ── read payload ── enqueue ──▶ worker ── reply ── complete
///
/// - At most `maxRequests` requests and `maxBytes` of buffers are in flight;
///   the reader waits for room before reading more, so a client that floods
///   requests is slowed by TCP-style back-pressure, not by our memory.
/// - Data-modifying requests are tracked by arrival order. A FLUSH waits for
///   every one received before it to complete, then flushes: stronger than
///   the spec's "replied before the flush", and what a guest expects of a
///   flush it issued after writes it had not yet seen complete.
///
/// Deadlock-free with any number of workers: jobs leave the queue in arrival
/// order, so the writes a flush waits for were taken by other workers first,
/// and writes never wait.
final class RequestPipeline: @unchecked Sendable {
    private let cond = NSCondition()
    private var queue: [NBDJob] = []
    private var head = 0
    private var modifying = Set<UInt64>()
    private var inFlight = 0
    private var inFlightBytes = 0
    private var closing = false
    private var liveWorkers = 0
    /// Threads waiting for something other than work (the reader for room, a
    /// flush for its barrier, the drain): completions wake them, and only
    /// them, so idle workers are not woken for nothing on every reply.
    private var otherWaiters = 0

    private let maxRequests: Int
    private let maxBytes: Int

    private(set) var peakInFlight = 0
    private(set) var completed = 0

    init(maxRequests: Int, maxBytes: Int) {
        self.maxRequests = max(1, maxRequests)
        self.maxBytes = max(1, maxBytes)
    }

    /// Reserves room for one request holding `bytes`. A request larger than
    /// the whole budget still goes through once nothing else is in flight.
    func admit(bytes: Int) {
        cond.lock()
        defer { cond.unlock() }
        while inFlight > 0 && (inFlight >= maxRequests || inFlightBytes + bytes > maxBytes) {
            waitForCompletion()
        }
        inFlight += 1
        inFlightBytes += bytes
        peakInFlight = max(peakInFlight, inFlight)
    }

    /// Gives back an admission whose request never reached the queue (its payload could not be read).
    func cancel(bytes: Int) {
        cond.lock()
        inFlight -= 1
        inFlightBytes -= bytes
        cond.broadcast()
        cond.unlock()
    }

    func enqueue(_ job: NBDJob) {
        cond.lock()
        if job.command.modifiesData { modifying.insert(job.sequence) }
        queue.append(job)
        // One condition serves workers and other waiters; a signal could wake
        // a waiting flush instead of an idle worker, so broadcast then.
        if otherWaiters > 0 { cond.broadcast() } else { cond.signal() }
        cond.unlock()
    }

    /// The next job, or nil once the pipeline is closed and empty (the worker then exits).
    func next() -> NBDJob? {
        cond.lock()
        defer { cond.unlock() }
        while head == queue.count && !closing { cond.wait() }
        if head == queue.count { return nil }
        let job = queue[head]
        head += 1
        // Reclaim the consumed prefix now and then, not on every pop.
        if head > 64 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return job
    }

    /// Called after the job's reply was sent (or dropped).
    func complete(_ job: NBDJob) {
        cond.lock()
        inFlight -= 1
        inFlightBytes -= job.bytes
        completed += 1
        if job.command.modifiesData { modifying.remove(job.sequence) }
        if otherWaiters > 0 { cond.broadcast() }
        cond.unlock()
    }

    /// Waits for a completion (or a worker exit). Caller holds `cond`.
    private func waitForCompletion() {
        otherWaiters += 1
        cond.wait()
        otherWaiters -= 1
    }

    /// Counts a request the reader answered itself (refused before admission,
    /// or a read served from the page cache on the spot).
    func countRefused() {
        cond.lock()
        completed += 1
        cond.unlock()
    }

    /// Blocks until every data-modifying request that arrived before `sequence` has completed.
    func waitForModifications(before sequence: UInt64) {
        cond.lock()
        defer { cond.unlock() }
        while modifying.contains(where: { $0 < sequence }) { waitForCompletion() }
    }

    func workerStarted() {
        cond.lock()
        liveWorkers += 1
        cond.unlock()
    }

    func workerExited() {
        cond.lock()
        liveWorkers -= 1
        cond.broadcast()
        cond.unlock()
    }

    /// Called by the reader once it takes no more requests: waits for every
    /// admitted request to be answered, then lets the workers go and waits
    /// until they are gone.
    func drainAndClose() {
        cond.lock()
        defer { cond.unlock() }
        while inFlight > 0 { waitForCompletion() }
        closing = true
        cond.broadcast()
        while liveWorkers > 0 { waitForCompletion() }
    }

    var statistics: (peakInFlight: Int, completed: Int) {
        cond.lock()
        defer { cond.unlock() }
        return (peakInFlight, completed)
    }
}
