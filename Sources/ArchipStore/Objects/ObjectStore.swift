import Foundation

/// The name of one object in a store's flat namespace, e.g. `layers/<id>/map`.
/// Built only from checked components, so it can never escape the store root.
public struct ObjectName: Hashable, Sendable, CustomStringConvertible {
    public let path: String

    public init(_ components: String...) {
        self.init(components: components)
    }

    public init(components: [String]) {
        // Not `precondition`: release builds of this module drop those, and
        // this is the last guard between a name and a path outside the store.
        for c in components where !ObjectName.isSafeComponent(c) {
            fatalError("unsafe object name component '\(c)'")
        }
        path = components.joined(separator: "/")
    }

    /// Parses a path that came back from a listing.
    public init?(validating path: String) {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard !parts.isEmpty, parts.allSatisfy(ObjectName.isSafeComponent) else { return nil }
        self.path = path
    }

    static func isSafeComponent(_ c: String) -> Bool {
        guard !c.isEmpty, c != ".", c != "..", !c.hasPrefix(".") else { return false }
        return c.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) ||
                b == 0x2E || b == 0x5F || b == 0x2D
        }
    }

    public var description: String { path }
    public var lastComponent: String { String(path.split(separator: "/").last ?? "") }
}

public struct ObjectInfo: Sendable {
    public var size: UInt64
    public var modified: Date
    public init(size: UInt64, modified: Date) { self.size = size; self.modified = modified }
}

public enum LockMode: String, Codable, Sendable {
    case exclusive, shared
}

/// Who holds a volume: a node name and a token that tells that node's holders apart.
public struct LockOwner: Codable, Hashable, Sendable, CustomStringConvertible {
    public var node: String
    public var token: String
    public var pid: Int32?
    public var since: Date?

    public init(node: String, token: String, pid: Int32? = nil, since: Date? = nil) {
        self.node = node
        self.token = token
        self.pid = pid
        self.since = since
    }

    public static func == (a: LockOwner, b: LockOwner) -> Bool { a.node == b.node && a.token == b.token }
    public func hash(into h: inout Hasher) { h.combine(node); h.combine(token) }

    public var description: String {
        var s = "node \(node) (token \(token)"
        if let pid { s += ", pid \(pid)" }
        if let since { s += ", since \(ISO8601DateFormatter().string(from: since))" }
        return s + ")"
    }

    /// An owner for this process: the node name plus a fresh random token.
    public static func forThisProcess(node: String) -> LockOwner {
        LockOwner(node: node, token: randomToken(), pid: getpid(), since: Date())
    }

    public static func randomToken() -> String {
        var g = SystemRandomNumberGenerator()
        return Hex.encode((0..<8).map { _ in UInt8.random(in: 0...255, using: &g) })
    }
}

public struct LockState: Codable, Sendable {
    public var mode: LockMode
    public var holders: [LockOwner]
    public init(mode: LockMode, holders: [LockOwner]) { self.mode = mode; self.holders = holders }
}

/// The seam under the volume store: a flat namespace of named byte objects.
///
/// Backends: `DirObjectStore` (a folder, e.g. on a shared file system) and
/// `MemoryObjectStore` (tests). Every method is safe to call from many threads.
/// Objects written with `put`/`create` appear whole or not at all.
public protocol ObjectStore: AnyObject, Sendable {
    /// Where the store lives, for messages.
    var location: String { get }

    /// Reads up to `buffer.count` bytes at `offset`; returns how many were read
    /// (fewer at the end of the object). Throws `.notFound` for a missing object.
    func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int

    /// The whole object.
    func readAll(_ name: ObjectName) throws -> [UInt8]

    /// Atomically replaces (or creates) the object with `data`, extended with
    /// zeros to `length` when that is larger. `durable`: on stable storage on return.
    func put(_ name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool) throws

    /// Creates the object only if absent. Returns false (and refreshes its
    /// modification time, so a collector spares it) when it already exists.
    func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool

    /// Writes in place into an existing object (not durable until `sync`).
    func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws

    /// Makes earlier writes and puts of these objects durable (contents and names).
    func sync(_ names: [ObjectName]) throws

    /// Makes in-place writes to one object durable; its name already is
    /// (it was put or created durably). Cheaper than `sync`: no folder flush.
    func syncContents(_ name: ObjectName) throws

    /// Removes the object; false if it was not there.
    @discardableResult
    func remove(_ name: ObjectName) throws -> Bool

    /// Removes every object whose name starts with `prefix` (a folder, ending in `/`).
    func removeAll(prefix: String) throws

    /// Renames without replacing an existing target.
    func rename(_ from: ObjectName, to: ObjectName) throws

    func stat(_ name: ObjectName) throws -> ObjectInfo?

    /// Calls `body` for every object under `prefix` (a folder, ending in `/`),
    /// without building the whole list in memory. Return false to stop.
    func enumerate(prefix: String, _ body: (ObjectName) throws -> Bool) throws

    /// `enumerate` of several prefixes in as few passes as the backend can
    /// (default below: one per prefix; RADOS: one pass of the pool for all).
    func enumerate(prefixes: [String], _ body: (ObjectName) throws -> Bool) throws

    /// `removeAll` of several prefixes (default below: one per prefix).
    func removeAll(prefixes: [String]) throws

    /// Takes a lock named `name` for `owner`; throws `.locked` naming the holder.
    func acquireLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws

    /// Releases `owner`'s hold (all holders of `owner.node` when the token is
    /// empty); `force` breaks it whoever holds it. False if it was not held.
    @discardableResult
    func releaseLock(_ name: ObjectName, owner: LockOwner, force: Bool) throws -> Bool

    func lockState(_ name: ObjectName) throws -> LockState?

    /// Runs `body` while no other caller of `exclusively` on the same `name`
    /// runs it, in any process on any node that shares the store: the lease
    /// of a volume is renewed, taken and broken this way (VolumeStore+Leases).
    /// Folder: flock() on a guard file next to `name`; memory: a mutex.
    /// Default (RADOS): `body` alone; there a break blocklists the holder, so
    /// a renewal racing a break cannot write after it.
    func exclusively<R>(_ name: ObjectName, _ body: () throws -> R) throws -> R

    /// Removes leftovers of interrupted writes older than `date`.
    func removeStaleTemporaries(olderThan date: Date) throws -> Int

    /// Forgets anything kept open or cached for this object, so the next
    /// `read` or `write` sees what another process (another node) put there
    /// since. Volumes opened shared, for live migration, call it before each
    /// object access: the other holder may have replaced the object.
    func forgetCached(_ name: ObjectName)

    /// An open descriptor of a local file holding the object, for readers
    /// that move its bytes without copying them (splice, sendfile); nil where
    /// objects are not local files. Throws `.notFound` for a missing object.
    func readDescriptor(_ name: ObjectName) throws -> ObjectReadDescriptor?

    /// A hint that `name` was written to its end and will likely not change
    /// before the next sync: backends that buffer may start writing it out
    /// now. Never fails (a sync later reports errors).
    func startWriteback(_ name: ObjectName)

    /// False once this store's client can do nothing any more: a RADOS
    /// client the cluster blocklisted (another node broke a lock it held)
    /// fails every later call. A long-lived process (the node daemon) then
    /// opens a new store for new work; what is open on this one stays fenced.
    var clientIsUsable: Bool { get }
}

/// A read descriptor of one object's file, valid while this value lives
/// (a store's cache may drop its own reference meanwhile). `size` is the
/// file's length when it was handed out; bytes past it read as zeros.
public final class ObjectReadDescriptor: @unchecked Sendable {
    public let fd: Int32
    public let size: UInt64
    /// The file's identity when it was handed out (nil: not known): what a
    /// reader that remembers having checked its bytes compares before trusting that.
    public let identity: FileIdentity?
    private let owner: AnyObject

    public init(fd: Int32, size: UInt64, identity: FileIdentity? = nil, keepingAlive owner: AnyObject) {
        self.fd = fd
        self.size = size
        self.identity = identity
        self.owner = owner
    }
}

/// Which file, and which version of its bytes, by what `fstat` says: any
/// write through the file system (or a rename over it) changes one of these.
/// Linux stamps a change after a `stat` with a fine-grained time (multigrain
/// timestamps, ext4/xfs/btrfs/tmpfs since 6.13), so two versions one
/// `fstat` apart differ even within one clock tick.
public struct FileIdentity: Equatable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var size: UInt64
    public var modifiedNanoseconds: Int64
    public var changedNanoseconds: Int64

    public init(device: UInt64, inode: UInt64, size: UInt64, modifiedNanoseconds: Int64, changedNanoseconds: Int64) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modifiedNanoseconds = modifiedNanoseconds
        self.changedNanoseconds = changedNanoseconds
    }
}

extension ObjectStore {
    /// Backends that keep nothing between calls have nothing to forget.
    public func forgetCached(_ name: ObjectName) {}

    /// Objects that are not local files have no descriptor.
    public func readDescriptor(_ name: ObjectName) throws -> ObjectReadDescriptor? { nil }

    /// Backends whose writes are not buffered have nothing to start.
    public func startWriteback(_ name: ObjectName) {}

    /// Backends without a client of a cluster are never fenced off.
    public var clientIsUsable: Bool { true }

    /// Backends that fence a broken holder themselves need no mutual exclusion here.
    public func exclusively<R>(_ name: ObjectName, _ body: () throws -> R) throws -> R { try body() }

    /// Calls `body` for every object under any of `prefixes` (folders, each
    /// ending in `/`; none inside another), in no particular order across
    /// prefixes. For backends whose listing cannot start at a prefix (RADOS
    /// lists a whole pool), one pass serves them all; by default, one
    /// `enumerate(prefix:)` each. Return false to stop.
    public func enumerate(prefixes: [String], _ body: (ObjectName) throws -> Bool) throws {
        var going = true
        for p in prefixes where going {
            try enumerate(prefix: p) { name in
                going = try body(name)
                return going
            }
        }
    }

    /// Removes every object under any of `prefixes` (folders, each ending in
    /// `/`); by default one `removeAll(prefix:)` each, in one pass where the
    /// backend overrides it.
    public func removeAll(prefixes: [String]) throws {
        for p in prefixes { try removeAll(prefix: p) }
    }
}

extension ObjectStore {
    /// `acquireLock` for an owner made for this one hold (a fresh token, so it
    /// held nothing before). A failure other than "held by someone else" may
    /// come after the lock was written (a put whose folder fsync failed, a
    /// reply lost on the way back from a RADOS OSD): the hold is given back,
    /// so a failed take never leaves the name locked by a holder that thinks
    /// it has nothing. The take's error is the one reported.
    func takeFreshLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws {
        do {
            try acquireLock(name, owner: owner, mode: mode)
        } catch let e as StoreError where e.code == .locked {
            throw e
        } catch {
            _ = try? giveBackLock(name, owner: owner)
            throw error
        }
    }

    /// `releaseLock` (never forced), tried once more after an I/O error: the
    /// first may have failed before it took effect (the hold would stay,
    /// locking the name until 'unlock --force') or after (the second then
    /// finds nothing to release, which is no error).
    @discardableResult
    func giveBackLock(_ name: ObjectName, owner: LockOwner) throws -> Bool {
        do {
            return try releaseLock(name, owner: owner, force: false)
        } catch let e as StoreError where e.code == .locked {
            throw e
        } catch {
            let first = error
            do {
                _ = try releaseLock(name, owner: owner, force: false)
                return true
            } catch {
                throw first
            }
        }
    }
}

extension ObjectStore {
    public func put(_ name: ObjectName, _ bytes: [UInt8], durable: Bool) throws {
        try bytes.withUnsafeBytes { try put(name, $0, length: 0, durable: durable) }
    }

    public func create(_ name: ObjectName, _ bytes: [UInt8], durable: Bool) throws -> Bool {
        try bytes.withUnsafeBytes { try create(name, $0, durable: durable) }
    }

    public func exists(_ name: ObjectName) throws -> Bool { try stat(name) != nil }

    /// Lock decisions shared by every backend: who may join whom.
    public static func decideLock(_ state: LockState?, owner: LockOwner, mode: LockMode, name: ObjectName) throws -> LockState {
        guard var state else { return LockState(mode: mode, holders: [owner]) }
        if state.holders.isEmpty { return LockState(mode: mode, holders: [owner]) }
        if let i = state.holders.firstIndex(of: owner) {
            if state.mode == mode { return state }
            if state.holders.count == 1 {
                state.mode = mode
                state.holders[i] = owner
                return state
            }
        } else if mode == .shared && state.mode == .shared {
            state.holders.append(owner)
            return state
        }
        let holders = state.holders.filter { $0 != owner }.map(\.description).joined(separator: ", ")
        throw StoreError(.locked, "\(name.lastComponent) is locked (\(state.mode.rawValue)) by \(holders); if that holder is gone, break it with 'archip unlock --force \(name.lastComponent)'")
    }

    public static func releasing(_ state: LockState?, owner: LockOwner, force: Bool, name: ObjectName) throws -> (LockState?, Bool) {
        guard var state, !state.holders.isEmpty else { return (nil, false) }
        if force { return (nil, true) }
        let before = state.holders.count
        if owner.token.isEmpty {
            state.holders.removeAll { $0.node == owner.node }
        } else {
            state.holders.removeAll { $0 == owner }
        }
        if state.holders.count == before {
            let holders = state.holders.map(\.description).joined(separator: ", ")
            throw StoreError(.locked, "\(name.lastComponent) is locked by \(holders), not by node \(owner.node)\(owner.token.isEmpty ? "" : " token \(owner.token)"); use --force to break it")
        }
        return (state.holders.isEmpty ? nil : state, true)
    }
}
