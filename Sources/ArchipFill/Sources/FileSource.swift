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
    }

    deinit { close(fd) }

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
