import Foundation

/// An in-memory `ObjectStore` for unit tests and benchmarks of the layers above.
/// Same contract as the real backends, nothing durable.
public final class MemoryObjectStore: ObjectStore, @unchecked Sendable {
    private struct Object { var bytes: [UInt8]; var modified: Date }
    private let state = Locked<(objects: [String: Object], locks: [String: LockState])>(([:], [:]))

    /// `exclusively`'s mutex (one for all names: tests only).
    private let guardLock = NSRecursiveLock()

    public init() {}
    public var location: String { "memory" }

    public func exclusively<R>(_ name: ObjectName, _ body: () throws -> R) throws -> R {
        guardLock.lock()
        defer { guardLock.unlock() }
        return try body()
    }

    private func missing(_ name: ObjectName) -> StoreError {
        StoreError(.notFound, "object \(name): not found in memory store")
    }

    public func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try state.withLock { s in
            guard let o = s.objects[name.path] else { throw missing(name) }
            guard offset < UInt64(o.bytes.count) else { return 0 }
            let n = min(buffer.count, o.bytes.count - Int(offset))
            o.bytes.withUnsafeBytes { src in
                buffer.baseAddress!.copyMemory(from: src.baseAddress! + Int(offset), byteCount: n)
            }
            return n
        }
    }

    public func readAll(_ name: ObjectName) throws -> [UInt8] {
        try state.withLock { s in
            guard let o = s.objects[name.path] else { throw missing(name) }
            return o.bytes
        }
    }

    public func put(_ name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool) throws {
        var bytes = [UInt8](data)
        if length > UInt64(bytes.count) { bytes.append(contentsOf: repeatElement(0, count: Int(length) - bytes.count)) }
        state.withLock { $0.objects[name.path] = Object(bytes: bytes, modified: Date()) }
    }

    public func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool {
        state.withLock { s in
            if s.objects[name.path] != nil {
                s.objects[name.path]!.modified = Date()
                return false
            }
            s.objects[name.path] = Object(bytes: [UInt8](data), modified: Date())
            return true
        }
    }

    public func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try state.withLock { s in
            guard var o = s.objects[name.path] else { throw missing(name) }
            s.objects[name.path] = nil   // keep the array uniquely referenced
            let end = Int(offset) + data.count
            if o.bytes.count < end { o.bytes.append(contentsOf: repeatElement(0, count: end - o.bytes.count)) }
            o.bytes.withUnsafeMutableBytes { dst in
                (dst.baseAddress! + Int(offset)).copyMemory(from: data.baseAddress!, byteCount: data.count)
            }
            o.modified = Date()
            s.objects[name.path] = o
        }
    }

    public func sync(_ names: [ObjectName]) throws {}
    public func syncContents(_ name: ObjectName) throws {}

    public func remove(_ name: ObjectName) throws -> Bool {
        state.withLock { $0.objects.removeValue(forKey: name.path) != nil }
    }

    public func removeAll(prefix: String) throws {
        state.withLock { s in
            for k in s.objects.keys where k.hasPrefix(prefix) { s.objects.removeValue(forKey: k) }
        }
    }

    public func rename(_ from: ObjectName, to: ObjectName) throws {
        try state.withLock { s in
            guard let o = s.objects[from.path] else { throw missing(from) }
            guard s.objects[to.path] == nil else { throw StoreError(.alreadyExists, "object \(to): exists") }
            s.objects[to.path] = o
            s.objects.removeValue(forKey: from.path)
        }
    }

    public func stat(_ name: ObjectName) throws -> ObjectInfo? {
        state.withLock { s in
            s.objects[name.path].map { ObjectInfo(size: UInt64($0.bytes.count), modified: $0.modified) }
        }
    }

    public func enumerate(prefix: String, _ body: (ObjectName) throws -> Bool) throws {
        let keys = state.withLock { s in s.objects.keys.filter { $0.hasPrefix(prefix) }.sorted() }
        for k in keys {
            guard let n = ObjectName(validating: k) else { continue }
            if try !body(n) { return }
        }
    }

    public func acquireLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws {
        try state.withLock { s in
            s.locks[name.path] = try Self.decideLock(s.locks[name.path], owner: owner, mode: mode, name: name)
        }
    }

    public func releaseLock(_ name: ObjectName, owner: LockOwner, force: Bool) throws -> Bool {
        try state.withLock { s in
            let (next, released) = try Self.releasing(s.locks[name.path], owner: owner, force: force, name: name)
            s.locks[name.path] = next
            return released
        }
    }

    public func lockState(_ name: ObjectName) throws -> LockState? {
        state.withLock { $0.locks[name.path] }
    }

    public func removeStaleTemporaries(olderThan date: Date) throws -> Int { 0 }
}
