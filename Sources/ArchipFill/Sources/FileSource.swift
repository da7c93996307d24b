import ArchipStore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A raw image in a local file (or on a mounted file system).
public final class FileSource: BlockSource, @unchecked Sendable {
    public let path: String
    public let size: UInt64
    public let blockSize: Int
    private let fd: Int32
    private let hashes: [ContentHash]?
    /// A regular file is mapped: blocks are hashed and written straight from
    /// the page cache, without copying them into a buffer first (perf: that
    /// copy was a quarter of a local fill's CPU time).
    private let mapped: UnsafeRawPointer?

    public init(path: String, blockSize: Int, expectedHashes: [ContentHash]? = nil) throws {
        self.path = path
        self.blockSize = blockSize
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw StoreError(.notFound, "source file \(path): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StoreError(.io, "source file \(path): cannot stat") }
        guard (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFBLK else {
            close(fd)
            throw StoreError(.invalidArgument, "source \(path) is not a regular file or block device")
        }
        if (st.st_mode & S_IFMT) == S_IFBLK {
            size = UInt64(lseek(fd, 0, SEEK_END))
        } else {
            size = UInt64(st.st_size)
        }
        hashes = expectedHashes
        // Sequential readahead helps; the copier reads mostly in order.
        _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        if (st.st_mode & S_IFMT) == S_IFREG && size > 0,
           let p = mmap(nil, Int(size), PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED {
            _ = madvise(p, Int(size), MADV_SEQUENTIAL)
            mapped = UnsafeRawPointer(p)
        } else {
            mapped = nil
        }
    }

    deinit {
        if let mapped { munmap(UnsafeMutableRawPointer(mutating: mapped), Int(size)) }
        close(fd)
    }

    /// MADV_POPULATE_READ (Linux 5.14): maps a block's pages in one call, and
    /// fails (instead of a SIGBUS later) where the file no longer has them.
    private static let populateRead: Int32 = 22

    public func withBlock(_ index: Int, buffer: UnsafeMutableRawBufferPointer,
                          _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let mapped else {
            let n = try read(index, into: buffer)
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            return
        }
        let offset = UInt64(index) * UInt64(blockSize)
        let want = Int(min(UInt64(blockSize), size - offset))
        // A file cut shorter since the fill began: an error, not a SIGBUS.
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StoreError(.io, "source file \(path): cannot stat") }
        guard UInt64(st.st_size) >= offset + UInt64(want) else {
            throw StoreError(.io, "source file \(path) ended at \(st.st_size) bytes; it was \(size) when the fill began")
        }
        let p = UnsafeMutableRawPointer(mutating: mapped + Int(offset))
        if madvise(p, want, FileSource.populateRead) != 0 && errno != EINVAL {
            if errno == EFAULT {
                throw StoreError(.io, "source file \(path) ended before byte \(offset + UInt64(want)); it was \(size) when the fill began")
            }
            // Memory pressure or an I/O error: read the block instead.
            let n = try read(index, into: buffer)
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            return
        }
        // Unmapped again after use (the page cache keeps the pages): mapped
        // pages count in the process's RSS, which must stay bounded by the
        // blocks in flight.
        defer { _ = madvise(p, want, MADV_DONTNEED) }
        try body(UnsafeRawBufferPointer(start: p, count: want))
    }

    public var description: String { "file:\(path)" }

    public func expectedHash(_ index: Int) -> ContentHash? { hashes?[index] }

    public func read(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let offset = UInt64(index) * UInt64(blockSize)
        let want = Int(min(UInt64(blockSize), size - offset))
        var got = 0
        while got < want {
            let n = pread(fd, buffer.baseAddress! + got, want - got, off_t(offset) + off_t(got))
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw StoreError(.io, "source file \(path): read at \(offset + UInt64(got))", cause: String(cString: strerror(errno))) }
            if n == 0 { throw StoreError(.io, "source file \(path) ended at \(offset + UInt64(got)) bytes; it was \(size) when the fill began") }
            got += n
        }
        return want
    }
}
