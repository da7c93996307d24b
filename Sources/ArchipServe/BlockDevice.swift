import ArchipStore
import Foundation

/// What a device can do beyond read, write and flush. Front ends advertise
/// only these (NBD transmission flags, FUSE fallocate modes); fields are only
/// ever appended.
public struct BlockDeviceCapabilities: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `trim` discards (NBD_FLAG_SEND_TRIM).
    public static let trim = BlockDeviceCapabilities(rawValue: 1 << 0)
    /// `writeZeroes` is cheaper than writing zero bytes (NBD_FLAG_SEND_WRITE_ZEROES).
    public static let writeZeroes = BlockDeviceCapabilities(rawValue: 1 << 1)
    /// Every user of the device shares one cache: a flush through one NBD
    /// connection covers writes acknowledged on any other, and a read on one
    /// sees a write acknowledged on another (NBD_FLAG_CAN_MULTI_CONN).
    public static let sharedCache = BlockDeviceCapabilities(rawValue: 1 << 2)

    public static let all: BlockDeviceCapabilities = [.trim, .writeZeroes, .sharedCache]
}

/// The seam of the node data path: what NBD and FUSE front ends serve.
/// Ranges are checked by the front end before they get here (in bounds,
/// non-empty); an implementation only does the I/O.
///
/// Threading: every method may be called from several threads at once
/// (NBD serves requests of one connection in parallel, and several
/// connections at a time). `flush` may run concurrently with writes; it must
/// cover every write that returned before it was called.
///
/// Errors: throw `StoreError`, `ServeError` or `POSIXError`; the front end
/// maps the code once (`NBDErrno(mapping:)`), so use `.readOnly` /
/// `.outOfRange` / EPERM / ENOSPC where they apply rather than a generic error.
public protocol BlockDevice: AnyObject, Sendable {
    /// Current size in bytes (may grow while served).
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    /// What the front end may advertise. Defaults to `.all`.
    var capabilities: BlockDeviceCapabilities { get }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws
    /// Makes every acknowledged write durable.
    func flush() throws
    /// Discard: the range reads as zeros afterwards (whole blocks store nothing).
    func trim(at offset: UInt64, length: UInt64) throws
    func writeZeroes(at offset: UInt64, length: UInt64) throws
    /// Optional zero-copy reads: what `read` would copy, as zeros and ranges
    /// of open files (kept open while the pieces live), for front ends that
    /// splice or sendfile them; nil to use `read`.
    func readPieces(at offset: UInt64, length: Int) throws -> [VolumeReadPiece]?
    /// Optional: `read` from the page cache alone, for a small read answered
    /// without waiting (NBD inline reads): true when `buffer` was filled
    /// (checked, as `read` is), false when that needs the disk or anything
    /// else only `read` does (the buffer is then undefined).
    func readCached(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Bool
}

extension BlockDevice {
    public var capabilities: BlockDeviceCapabilities { .all }
    public func readPieces(at offset: UInt64, length: Int) throws -> [VolumeReadPiece]? { nil }
    public func readCached(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Bool { false }
}

/// A store volume as a block device.
///
/// The volume handle behind it can be replaced while it is served: the node
/// daemon reopens a volume when Ganeti changes its hold (none, shared for live
/// migration, exclusive) without tearing down the loop device and NBD socket
/// that the hypervisor already uses. I/O shares `swap`; a replacement waits
/// for the I/O in flight and runs alone.
public final class VolumeDevice: BlockDevice, @unchecked Sendable {
    private var current: Volume
    private let swap = ReadWriteLock()
    /// Whether the device is writable at all (a volume, not a snapshot): a
    /// volume attached without a hold is still exported writable, and its
    /// writes fail (read-only) until a hold is taken.
    public let isReadOnly: Bool

    public init(_ volume: Volume, readOnly: Bool? = nil) {
        current = volume
        isReadOnly = readOnly ?? !volume.isWritable
    }

    public var volume: Volume { swap.shared { current } }

    /// Runs `body` with no I/O in flight; the volume it returns serves from then on.
    public func replaceVolume(_ body: (Volume) throws -> Volume) rethrows {
        try swap.exclusive { current = try body(current) }
    }

    public var size: UInt64 { volume.size }
    /// A `Volume` is one object shared by all its users: its overlay of
    /// unflushed writes is the only cache, so many connections are safe.
    public var capabilities: BlockDeviceCapabilities { .all }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try swap.shared { try current.read(at: offset, into: buffer) }
    }
    public func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try swap.shared { try current.write(at: offset, data) }
    }
    public func readPieces(at offset: UInt64, length: Int) throws -> [VolumeReadPiece]? {
        guard VolumeDevice.zeroCopy else { return nil }
        return try swap.shared { try current.readPieces(at: offset, length: length) }
    }
    public func readCached(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        guard VolumeDevice.zeroCopy else { return false }
        return try swap.shared { try current.readCached(at: offset, into: buffer) }
    }

    /// `ARCHIP_SERVE_ZERO_COPY=0` in the daemon's environment turns zero-copy
    /// reads off (every read copied through a buffer), to compare the two.
    static let zeroCopy = ProcessInfo.processInfo.environment["ARCHIP_SERVE_ZERO_COPY"] != "0"
    public func flush() throws { try swap.shared { try current.flush() } }
    public func trim(at offset: UInt64, length: UInt64) throws {
        try swap.shared { try current.zero(at: offset, length: length) }
    }
    public func writeZeroes(at offset: UInt64, length: UInt64) throws {
        try swap.shared { try current.zero(at: offset, length: length) }
    }
}

/// A block device in memory: the seam's reference implementation, for tests
/// of front ends and for trying a client against the server without a store.
///
/// It keeps count of flushes and of writes not yet flushed, so a test can
/// tell whether a front end flushed when it had to (FUA, FLUSH).
public final class MemoryBlockDevice: BlockDevice, @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8]
    public let isReadOnly: Bool
    public let capabilities: BlockDeviceCapabilities
    private var flushes = 0
    private var unflushed = 0

    public init(size: Int, readOnly: Bool = false, capabilities: BlockDeviceCapabilities = .all) {
        bytes = [UInt8](repeating: 0, count: size)
        isReadOnly = readOnly
        self.capabilities = capabilities
    }

    public init(contents: [UInt8], readOnly: Bool = false, capabilities: BlockDeviceCapabilities = .all) {
        bytes = contents
        isReadOnly = readOnly
        self.capabilities = capabilities
    }

    public var size: UInt64 { lock.withLock { UInt64(bytes.count) } }
    /// How many times `flush` ran.
    public var flushCount: Int { lock.withLock { flushes } }
    /// Writes, trims and zeroings since the last flush.
    public var unflushedWrites: Int { lock.withLock { unflushed } }
    public var contents: [UInt8] { lock.withLock { bytes } }

    /// The front end promises checked ranges; this re-checks anyway, because
    /// here a wrong range would be memory corruption rather than an error.
    private func range(_ offset: UInt64, _ length: Int) throws -> Range<Int> {
        let (end, o) = offset.addingReportingOverflow(UInt64(length))
        guard !o, end <= UInt64(bytes.count) else {
            throw StoreError(.outOfRange, "memory device: range \(offset)+\(length) is beyond the end (size \(bytes.count) bytes)")
        }
        return Int(offset)..<Int(end)
    }

    private func checkWritable() throws {
        if isReadOnly { throw StoreError(.readOnly, "memory device is read-only") }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try lock.withLock {
            let r = try range(offset, buffer.count)
            bytes.withUnsafeBytes { src in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[r]))
            }
        }
    }

    public func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try checkWritable()
        try lock.withLock {
            let r = try range(offset, data.count)
            bytes.withUnsafeMutableBytes { dst in
                UnsafeMutableRawBufferPointer(rebasing: dst[r]).copyMemory(from: data)
            }
            unflushed += 1
        }
    }

    public func flush() throws {
        lock.withLock {
            flushes += 1
            unflushed = 0
        }
    }

    public func trim(at offset: UInt64, length: UInt64) throws {
        try writeZeroes(at: offset, length: length)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64) throws {
        try checkWritable()
        guard length <= UInt64(Int.max) else {
            throw StoreError(.outOfRange, "memory device: length \(length) is beyond the end")
        }
        try lock.withLock {
            let r = try range(offset, Int(length))
            bytes.withUnsafeMutableBytes { dst in
                _ = UnsafeMutableRawBufferPointer(rebasing: dst[r]).initializeMemory(as: UInt8.self, repeating: 0)
            }
            unflushed += 1
        }
    }
}
