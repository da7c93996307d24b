import ArchipStore

/// Where a fill reads from: a sized sequence of blocks, each possibly with the
/// hash its source promises (a Pithos hashmap), read independently so that
/// several can be in flight.
public protocol BlockSource: Sendable {
    /// Human-readable origin, for messages ("https://host/img.raw", "file:/x").
    var description: String { get }
    /// Total bytes of the image.
    var size: UInt64 { get }
    /// Block size the source is cut into (the volume's must match for hashmaps).
    var blockSize: Int { get }
    /// The hash the source promises for block `index`, if any.
    func expectedHash(_ index: Int) -> ContentHash?
    /// Reads block `index` (the last may be short) into `buffer`; returns its length.
    func read(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Calls `body` with block `index`'s bytes. By default they are read into
    /// `buffer`; a source that can lend them without a copy (a mapped file)
    /// passes its own memory, valid only during the call.
    func withBlock(_ index: Int, buffer: UnsafeMutableRawBufferPointer,
                   _ body: (UnsafeRawBufferPointer) throws -> Void) throws
}

extension BlockSource {
    public func withBlock(_ index: Int, buffer: UnsafeMutableRawBufferPointer,
                          _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let n = try read(index, into: buffer)
        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    }
}

extension BlockSource {
    public var blockCount: Int { Int((size + UInt64(blockSize) - 1) / UInt64(blockSize)) }
}
