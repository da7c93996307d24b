/// The block hash of a block being written in pieces, worked out as the pieces
/// arrive, so that a flush need not read the block back to checksum it.
///
/// A guest's streaming writes reach a 4 MiB block as 128 KiB - 1 MiB pieces in
/// order; hashing each piece while it is in hand costs the same CPU as hashing
/// it at flush, but saves reading the block again and moves that CPU out of
/// the fsync the guest waits for. Pieces that arrive out of order are not lost:
/// the object holds them, and `finish` reads back only what was not fed.
///
/// What it knows: the SHA-256 state of bytes [0, `fed`) of the block, and that
/// every byte at or past `extent` is zero (a block copied from zeros has
/// `extent` 0 until written; one copied from a parent, `extent` = block size).
/// Trailing zeros do not count in a block hash (Pithos), so zeros are held back
/// until something non-zero follows them.
///
/// Not thread-safe, hence unchecked: the volume's per-block lock serialises one
/// block's writes, and a flush (which finishes it) runs with no write in flight.
final class PartialBlockHash: @unchecked Sendable {
    private var stream = SHA256Stream()
    private(set) var fed = 0
    private(set) var extent: Int
    /// Zero bytes at the end of what was fed, not yet given to the stream.
    private var heldZeros = 0
    /// The answer of `finish`, kept: a flush that fails after hashing runs
    /// again with the same blocks (a SHA-256 state cannot be finished twice).
    private var finished: ContentHash?

    init(knownZeroFrom extent: Int) {
        self.extent = extent
    }

    /// Records a write of `data` at `offset` within the block (after it was
    /// written to the block's object).
    func wrote(at offset: Int, _ data: UnsafeRawBufferPointer) {
        if offset < fed || finished != nil {
            // Rewrites bytes already hashed: start again from the object.
            stream = SHA256Stream()
            fed = 0
            heldZeros = 0
            finished = nil
        }
        if offset == fed { feed(data) }
        extent = max(extent, offset + data.count)
    }

    /// The block hash, once the bytes [fed, extent) are read back with `read`
    /// (offset within the block, buffer to fill; `buffer` is scratch space).
    func finish(buffer: UnsafeMutableRawBufferPointer,
                read: (Int, UnsafeMutableRawBufferPointer) throws -> Void) rethrows -> ContentHash {
        if let finished { return finished }
        while fed < extent {
            let n = min(buffer.count, extent - fed)
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
            try read(fed, chunk)
            feed(UnsafeRawBufferPointer(chunk))
        }
        let h = stream.finish()
        finished = h
        return h
    }

    private func feed(_ data: UnsafeRawBufferPointer) {
        fed += data.count
        let n = ZeroScan.lengthWithoutTrailingZeros(data)
        if n == 0 {
            heldZeros += data.count
            return
        }
        while heldZeros > 0 {
            let z = min(heldZeros, PartialBlockHash.zeros.count)
            PartialBlockHash.zeros.withUnsafeBytes { stream.update(UnsafeRawBufferPointer(rebasing: $0[0..<z])) }
            heldZeros -= z
        }
        stream.update(UnsafeRawBufferPointer(rebasing: data[0..<n]))
        heldZeros = data.count - n
    }

    private static let zeros = [UInt8](repeating: 0, count: 64 << 10)
}
