import ArchipStore
import Foundation

/// The kinds of object-store call a `FaultyObjectStore` counts and can fail,
/// like the calls of SQLite's test VFS.
public enum FaultCall: String, Sendable, CaseIterable, CustomStringConvertible {
    /// `read`, `readAll`.
    case read
    case stat
    /// Replacing writes (`put`: a temporary, then a rename over the name).
    case put
    /// Create-if-absent (`create`).
    case create
    /// In-place writes (`write`: pwrite into an owned block, a log append).
    case write
    /// `sync`, `syncContents` (fsync, fdatasync, syncfs).
    case sync
    /// `remove`, `removeAll`.
    case remove
    /// `rename` (no replace).
    case rename
    /// `enumerate`.
    case list
    /// `acquireLock` (a lock object's read, decision and put under its guard;
    /// a RADOS `lock_exclusive`/`lock_shared`).
    case lock
    /// `releaseLock`.
    case unlock
    /// `lockState`.
    case lockState

    public var description: String { rawValue }
}

/// What goes wrong in the failing call.
public enum Fault: String, Sendable, CaseIterable, CustomStringConvertible {
    /// EIO before anything happens.
    case eio
    /// ENOSPC before anything happens (a full file system or pool).
    case enospc
    /// In-place writes: the first half of the data (cut at a 4 KiB boundary)
    /// lands, then EIO (a short write; the caller cannot know how much landed).
    case shortWrite
    /// The call takes effect, then fails: a put renamed into place whose
    /// folder fsync failed, a removal or rename whose sync failed, a sync that
    /// reported EIO after writing. The caller sees an error for work done.
    case afterEffect

    public var description: String { rawValue }

    /// The faults that make sense for a kind of call.
    public static func applicable(to call: FaultCall) -> [Fault] {
        switch call {
        case .read, .stat, .list, .lockState: return [.eio]
        case .lock, .unlock: return [.eio, .afterEffect]
        case .put, .create: return [.eio, .enospc, .afterEffect]
        case .write: return [.eio, .enospc, .shortWrite, .afterEffect]
        case .sync: return [.eio, .afterEffect]
        case .remove, .rename: return [.eio, .afterEffect]
        }
    }
}

/// Which call fails, and how: the `n`th call of `call` (1-based, counted
/// from `arm`), once, or with `persistent` that one and every later one of
/// its kind (a disk that stays full).
public struct FaultPlan: Sendable, CustomStringConvertible {
    public var call: FaultCall
    public var n: Int
    public var fault: Fault
    public var persistent: Bool

    public init(_ call: FaultCall, _ n: Int, _ fault: Fault, persistent: Bool = false) {
        self.call = call
        self.n = n
        self.fault = fault
        self.persistent = persistent
    }

    public var description: String { "\(fault) on \(call) #\(n)\(persistent ? " and after" : "")" }
}

/// An `ObjectStore` over another one that counts its calls by kind and
/// fails the one a `FaultPlan` names: the seam the fault-injection suite
/// drives every store operation through. Lock calls are counted and fail
/// too: a take that fails after it took effect must be given back, a
/// release that fails once is tried again (no lock is left behind).
///
/// `readDescriptor` answers nil, so every read goes through `read` and is
/// counted (and can fail).
public final class FaultyObjectStore: ObjectStore, @unchecked Sendable {
    public let inner: any ObjectStore
    private let lock = NSLock()
    private var counts: [FaultCall: Int] = [:]
    private var plan: FaultPlan?
    private var armed = false
    private var fired = 0

    public init(_ inner: any ObjectStore) {
        self.inner = inner
    }

    public var location: String { inner.location }

    /// Starts counting from zero; with a plan, the planned call will fail.
    public func arm(_ plan: FaultPlan?) {
        lock.lock()
        defer { lock.unlock() }
        self.plan = plan
        counts = [:]
        armed = true
        fired = 0
    }

    /// Stops counting and failing.
    public func disarm() {
        lock.lock()
        defer { lock.unlock() }
        armed = false
        plan = nil
    }

    /// Calls of each kind since `arm`.
    public var callCounts: [FaultCall: Int] {
        lock.lock()
        defer { lock.unlock() }
        return counts
    }

    /// How many calls the plan failed.
    public var faultsFired: Int {
        lock.lock()
        defer { lock.unlock() }
        return fired
    }

    /// Counts one call; the fault to apply to it, if any.
    private func tick(_ call: FaultCall) -> Fault? {
        lock.lock()
        defer { lock.unlock() }
        guard armed else { return nil }
        let n = (counts[call] ?? 0) + 1
        counts[call] = n
        guard let plan, plan.call == call, n == plan.n || (plan.persistent && n > plan.n) else { return nil }
        fired += 1
        return plan.fault
    }

    private func error(_ fault: Fault, _ call: FaultCall, _ what: String) -> StoreError {
        switch fault {
        case .enospc:
            return StoreError(.noSpace, "\(call) \(inner.location)/\(what)", cause: "No space left on device (injected)")
        default:
            return StoreError(.io, "\(call) \(inner.location)/\(what)", cause: "Input/output error (injected \(fault))")
        }
    }

    /// Runs `body` under the fault for `call`: before (nothing happens) or after it.
    private func run<R>(_ call: FaultCall, _ what: @autoclosure () -> String, _ body: () throws -> R) throws -> R {
        guard let fault = tick(call) else { return try body() }
        switch fault {
        case .eio, .enospc, .shortWrite:
            throw error(fault, call, what())
        case .afterEffect:
            _ = try body()
            throw error(fault, call, what())
        }
    }

    // MARK: counted, failing calls

    public func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try run(.read, name.path) { try inner.read(name, at: offset, into: buffer) }
    }

    public func readAll(_ name: ObjectName) throws -> [UInt8] {
        try run(.read, name.path) { try inner.readAll(name) }
    }

    public func put(_ name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool) throws {
        try run(.put, name.path) { try inner.put(name, data, length: length, durable: durable) }
    }

    public func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool {
        try run(.create, name.path) { try inner.create(name, data, durable: durable) }
    }

    public func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        if let fault = tick(.write) {
            switch fault {
            case .shortWrite:
                // Cut at a 4 KiB boundary, as a page-cache write is cut (and
                // as a 4Kn disk never tears a sector).
                let half = (data.count / 2) & ~4095
                if half > 0 { try inner.write(name, at: offset, UnsafeRawBufferPointer(rebasing: data[0..<half])) }
            case .afterEffect:
                try inner.write(name, at: offset, data)
            case .eio, .enospc:
                break
            }
            throw error(fault, .write, name.path)
        }
        try inner.write(name, at: offset, data)
    }

    public func sync(_ names: [ObjectName]) throws {
        if names.isEmpty { return try inner.sync(names) }
        try run(.sync, names.first!.path) { try inner.sync(names) }
    }

    public func syncContents(_ name: ObjectName) throws {
        try run(.sync, name.path) { try inner.syncContents(name) }
    }

    public func remove(_ name: ObjectName) throws -> Bool {
        try run(.remove, name.path) { try inner.remove(name) }
    }

    public func removeAll(prefix: String) throws {
        try run(.remove, prefix) { try inner.removeAll(prefix: prefix) }
    }

    public func removeAll(prefixes: [String]) throws {
        if prefixes.isEmpty { return }
        try run(.remove, prefixes.joined(separator: ",")) { try inner.removeAll(prefixes: prefixes) }
    }

    public func rename(_ from: ObjectName, to: ObjectName) throws {
        try run(.rename, from.path) { try inner.rename(from, to: to) }
    }

    public func stat(_ name: ObjectName) throws -> ObjectInfo? {
        try run(.stat, name.path) { try inner.stat(name) }
    }

    public func enumerate(prefix: String, _ body: (ObjectName) throws -> Bool) throws {
        try run(.list, prefix) { try inner.enumerate(prefix: prefix, body) }
    }

    public func enumerate(prefixes: [String], _ body: (ObjectName) throws -> Bool) throws {
        try run(.list, prefixes.joined(separator: ",")) { try inner.enumerate(prefixes: prefixes, body) }
    }

    public func removeStaleTemporaries(olderThan date: Date) throws -> Int {
        try run(.remove, "temporaries") { try inner.removeStaleTemporaries(olderThan: date) }
    }

    public func acquireLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws {
        try run(.lock, name.path) { try inner.acquireLock(name, owner: owner, mode: mode) }
    }

    public func releaseLock(_ name: ObjectName, owner: LockOwner, force: Bool) throws -> Bool {
        try run(.unlock, name.path) { try inner.releaseLock(name, owner: owner, force: force) }
    }

    public func lockState(_ name: ObjectName) throws -> LockState? {
        try run(.lockState, name.path) { try inner.lockState(name) }
    }

    public func exclusively<R>(_ name: ObjectName, _ body: () throws -> R) throws -> R {
        try inner.exclusively(name, body)
    }

    // MARK: passed through

    public func forgetCached(_ name: ObjectName) { inner.forgetCached(name) }

    public func readDescriptor(_ name: ObjectName) throws -> ObjectReadDescriptor? { nil }

    public func startWriteback(_ name: ObjectName) { inner.startWriteback(name) }
}

extension TestStore {
    /// The same store through a `FaultyObjectStore` (disarmed: arm it where
    /// faults should start), as node `node` opens it: the factory every
    /// fault-injection case builds its store with.
    public func faulty(node: String = "n1") throws -> (VolumeStore, FaultyObjectStore) {
        let inner = try self.node(node).objects
        let faulty = FaultyObjectStore(inner)
        return (try VolumeStore(objects: faulty, node: node), faulty)
    }
}
