import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Plain raw copies between a volume and a file descriptor, block-parallel.
/// (The verified, resumable filler is ArchipFill; these are for operators and tests.)
public enum RawCopy {
    /// Copies `length` bytes of `fd` into `volume` from offset 0. All-zero
    /// blocks are stored as nothing. Flushes at the end.
    public static func importFile(fd: Int32, length: UInt64, into volume: Volume, jobs: Int = 0,
                                  progress: (@Sendable (UInt64) -> Void)? = nil) throws {
        guard length <= volume.size else {
            throw StoreError(.outOfRange, "input of \(length) bytes does not fit in '\(volume.name)' (\(ByteCount(volume.size)))")
        }
        let bs = volume.blockSize
        let blocks = Int((length + UInt64(bs) - 1) / UInt64(bs))
        let done = Locked<UInt64>(0)
        try BlockWorkers.run(blocks: blocks, workers: BlockWorkers.defaultWorkers(jobs), bufferSize: bs) { b, buf in
            let offset = UInt64(b) * UInt64(bs)
            let want = Int(min(UInt64(bs), length - offset))
            var got = 0
            while got < want {
                let n = pread(fd, buf.baseAddress! + got, want - got, off_t(offset) + off_t(got))
                if n < 0 && errno == EINTR { continue }
                if n < 0 { throw StoreError.posix("read", "input", errno: errno) }
                if n == 0 { throw StoreError(.io, "input ended early at byte \(offset + UInt64(got)) (expected \(length))") }
                got += n
            }
            if want == bs || UInt64(want) + offset == volume.size {
                try volume.write(at: offset, UnsafeRawBufferPointer(rebasing: buf[0..<want]))
            } else {
                // Short tail inside a longer volume: the rest of the block is zero.
                UnsafeMutableRawBufferPointer(rebasing: buf[want...]).initializeMemory(as: UInt8.self, repeating: 0)
                let end = min(UInt64(bs), volume.size - offset)
                try volume.write(at: offset, UnsafeRawBufferPointer(rebasing: buf[0..<Int(end)]))
            }
            progress?(done.withLock { d -> UInt64 in d += UInt64(want); return d })
        }
        try volume.flush()
    }

    /// Writes the whole volume to `fd`. A regular file (which should be empty)
    /// is sized first and zero blocks are skipped, leaving holes, as `cp
    /// --sparse` would; anything else (a block device, a pipe-less character
    /// device such as /dev/null) gets every block, zeros included.
    public static func exportVolume(_ volume: Volume, to fd: Int32, jobs: Int = 0,
                                    progress: (@Sendable (UInt64) -> Void)? = nil) throws {
        let size = volume.size
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StoreError.posix("stat", "output", errno: errno) }
        let regular = (st.st_mode & S_IFMT) == S_IFREG
        if regular {
            guard ftruncate(fd, off_t(size)) == 0 else { throw StoreError.posix("truncate", "output", errno: errno) }
        }
        let bs = volume.blockSize
        let blocks = Int((size + UInt64(bs) - 1) / UInt64(bs))
        let done = Locked<UInt64>(0)
        // Reads run in parallel; writes to the one output file take turns:
        // concurrent buffered writes to one inode only spin on its lock.
        let writer = NSLock()
        try BlockWorkers.run(blocks: blocks, workers: BlockWorkers.defaultWorkers(jobs), bufferSize: bs) { b, buf in
            let offset = UInt64(b) * UInt64(bs)
            let n = Int(min(UInt64(bs), size - offset))
            let seg = UnsafeMutableRawBufferPointer(rebasing: buf[0..<n])
            try volume.read(at: offset, into: seg)
            if !regular || !ZeroScan.isZero(UnsafeRawBufferPointer(seg)) {
                writer.lock()
                defer { writer.unlock() }
                var put = 0
                while put < n {
                    let w = pwrite(fd, seg.baseAddress! + put, n - put, off_t(offset) + off_t(put))
                    if w < 0 && errno == EINTR { continue }
                    if w < 0 { throw StoreError.posix("write", "output", errno: errno) }
                    put += w
                }
            }
            progress?(done.withLock { d -> UInt64 in d += UInt64(n); return d })
        }
    }
}
