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
    ///
    /// Only under a read lease: a file cut shorter under a mapping kills the
    /// reader with SIGBUS. With the lease, whoever opens the file to write or
    /// truncate it waits (up to /proc/sys/fs/lease-break-time, 45 s) until
    /// this source lets go; it does so once no block is being read from the
    /// mapping, and reads the rest with pread (a short file is then a clear
    /// error). Where no lease can be had (another writer has the file open,
    /// NFS, not the owner without CAP_LEASE), the file is read, not mapped.
    private let mapped: UnsafeRawPointer?
    private let lease = NSCondition()
    /// Guarded by `lease`: whether blocks may still come from the mapping,
    /// and how many are being read from it now.
    private var mappingUsable: Bool
    private var mappedInFlight = 0

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
        if (st.st_mode & S_IFMT) == S_IFREG && size > 0, FileSource.takeReadLease(fd),
           let p = mmap(nil, Int(size), PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED {
            _ = madvise(p, Int(size), MADV_SEQUENTIAL)
            mapped = UnsafeRawPointer(p)
            mappingUsable = true
        } else {
            mapped = nil
            mappingUsable = false
        }
    }

    deinit {
        if let mapped { munmap(UnsafeMutableRawPointer(mutating: mapped), Int(size)) }
        close(fd)   // also ends the lease
    }

    // fcntl commands and lease types (<fcntl.h> has them only with _GNU_SOURCE).
    private static let F_SETLEASE: Int32 = 1024
    private static let F_GETLEASE: Int32 = 1025
    private static let leaseRead: Int32 = 0      // F_RDLCK
    private static let leaseNone: Int32 = 2      // F_UNLCK

    /// Takes a read lease on `fd`. A lease break is announced with SIGIO,
    /// whose default action ends the process; it is ignored instead (the
    /// lease is polled around every mapped block, which is all that is needed:
    /// the breaker waits for the lease anyway).
    private static func takeReadLease(_ fd: Int32) -> Bool {
        ignoreSIGIO
        return fcntl(fd, F_SETLEASE, leaseRead) == 0
    }

    private static let ignoreSIGIO: Void = {
        var old = sigaction()
        if sigaction(SIGIO, nil, &old) == 0 && old.__sigaction_handler.sa_handler == nil {
            _ = signal(SIGIO, SIG_IGN)
        }
    }()

    /// Whether block reads may use the mapping now; if so, counts one in.
    private func enterMapping() -> Bool {
        lease.lock()
        defer { lease.unlock() }
        noteLeaseBreak()
        guard mappingUsable else { return false }
        mappedInFlight += 1
        return true
    }

    private func leaveMapping() {
        lease.lock()
        defer { lease.unlock() }
        mappedInFlight -= 1
        noteLeaseBreak()
    }

    /// Caller holds `lease`. A lease being broken reads back as no longer
    /// F_RDLCK: stop mapping, and once no block uses the mapping, give the
    /// lease up so the writer can go on.
    private func noteLeaseBreak() {
        if mappingUsable && fcntl(fd, FileSource.F_GETLEASE) != FileSource.leaseRead {
            mappingUsable = false
        }
        if !mappingUsable && mappedInFlight == 0 && mapped != nil {
            _ = fcntl(fd, FileSource.F_SETLEASE, FileSource.leaseNone)
        }
    }

    /// Whether blocks are read from the mapping (tests).
    var readsMapped: Bool { lease.lock(); defer { lease.unlock() }; return mappingUsable }

    /// MADV_POPULATE_READ (Linux 5.14): maps a block's pages in one call, and
    /// fails (instead of a SIGBUS later) where the file no longer has them.
    private static let populateRead: Int32 = 22

    public func withBlock(_ index: Int, buffer: UnsafeMutableRawBufferPointer,
                          _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let mapped, enterMapping() else {
            let n = try read(index, into: buffer)
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            return
        }
        defer { leaveMapping() }
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
            if n == 0 {
                var st = stat()
                let now = fstat(fd, &st) == 0 ? "is now \(st.st_size) bytes" : "ended at \(offset + UInt64(got)) bytes"
                throw StoreError(.io, "source file \(path) \(now); it was \(size) when the fill began (block \(index) is gone)")
            }
            got += n
        }
        return want
    }
}
