import ArchipStore

/// The seam of the node data path: what NBD and FUSE front ends serve.
/// Ranges are checked by the front end before they get here (in bounds,
/// non-empty); an implementation only does the I/O.
public protocol BlockDevice: AnyObject, Sendable {
    /// Current size in bytes (may grow while served).
    var size: UInt64 { get }
    var isReadOnly: Bool { get }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws
    /// Makes every acknowledged write durable.
    func flush() throws
    /// Discard: the range reads as zeros afterwards (whole blocks store nothing).
    func trim(at offset: UInt64, length: UInt64) throws
    func writeZeroes(at offset: UInt64, length: UInt64) throws
}

/// A store volume as a block device.
public final class VolumeDevice: BlockDevice, @unchecked Sendable {
    public let volume: Volume
    public init(_ volume: Volume) { self.volume = volume }

    public var size: UInt64 { volume.size }
    public var isReadOnly: Bool { !volume.isWritable }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try volume.read(at: offset, into: buffer)
    }
    public func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try volume.write(at: offset, data)
    }
    public func flush() throws { try volume.flush() }
    public func trim(at offset: UInt64, length: UInt64) throws { try volume.zero(at: offset, length: length) }
    public func writeZeroes(at offset: UInt64, length: UInt64) throws { try volume.zero(at: offset, length: length) }
}
