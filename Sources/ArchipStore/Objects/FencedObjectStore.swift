import Foundation

/// The object store as an exclusive holder of one volume writes to it: every
/// call that changes an object (put, create, write, sync, remove, rename)
/// first asks the hold's `HoldFence`, and is refused with `.fenced` once the
/// holder's lease ran out or its hold was broken. Reads, listings and lock
/// calls pass through. Cost: one monotonic clock read and one uncontended
/// mutex per changing call (see `HoldFence.check`).
public final class FencedObjectStore: ObjectStore, @unchecked Sendable {
    public let inner: any ObjectStore
    public let fence: HoldFence

    public init(_ inner: any ObjectStore, fence: HoldFence) {
        self.inner = inner
        self.fence = fence
    }

    public var location: String { inner.location }

    public func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try inner.read(name, at: offset, into: buffer)
    }

    public func readAll(_ name: ObjectName) throws -> [UInt8] { try inner.readAll(name) }

    public func put(_ name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool) throws {
        try fence.check()
        try inner.put(name, data, length: length, durable: durable)
    }

    public func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool {
        try fence.check()
        return try inner.create(name, data, durable: durable)
    }

    public func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try fence.check()
        try inner.write(name, at: offset, data)
    }

    public func sync(_ names: [ObjectName]) throws {
        try fence.check()
        try inner.sync(names)
    }

    public func syncContents(_ name: ObjectName) throws {
        try fence.check()
        try inner.syncContents(name)
    }

    @discardableResult
    public func remove(_ name: ObjectName) throws -> Bool {
        try fence.check()
        return try inner.remove(name)
    }

    public func removeAll(prefix: String) throws {
        try fence.check()
        try inner.removeAll(prefix: prefix)
    }

    public func removeAll(prefixes: [String]) throws {
        try fence.check()
        try inner.removeAll(prefixes: prefixes)
    }

    public func rename(_ from: ObjectName, to: ObjectName) throws {
        try fence.check()
        try inner.rename(from, to: to)
    }

    public func stat(_ name: ObjectName) throws -> ObjectInfo? { try inner.stat(name) }

    public func enumerate(prefix: String, _ body: (ObjectName) throws -> Bool) throws {
        try inner.enumerate(prefix: prefix, body)
    }

    public func enumerate(prefixes: [String], _ body: (ObjectName) throws -> Bool) throws {
        try inner.enumerate(prefixes: prefixes, body)
    }

    public func acquireLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws {
        try inner.acquireLock(name, owner: owner, mode: mode)
    }

    @discardableResult
    public func releaseLock(_ name: ObjectName, owner: LockOwner, force: Bool) throws -> Bool {
        try inner.releaseLock(name, owner: owner, force: force)
    }

    public func lockState(_ name: ObjectName) throws -> LockState? { try inner.lockState(name) }

    public func exclusively<R>(_ name: ObjectName, _ body: () throws -> R) throws -> R {
        try inner.exclusively(name, body)
    }

    public func removeStaleTemporaries(olderThan date: Date) throws -> Int {
        try inner.removeStaleTemporaries(olderThan: date)
    }

    public func forgetCached(_ name: ObjectName) { inner.forgetCached(name) }

    public func readDescriptor(_ name: ObjectName) throws -> ObjectReadDescriptor? { try inner.readDescriptor(name) }

    public func startWriteback(_ name: ObjectName) { inner.startWriteback(name) }
}
