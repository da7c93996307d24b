import ArchipStore
import CArchipFuse
import Foundation

/// A block device as one file in a FUSE file system: the kernel's way in
/// (a loop device goes on top). Requests are served on several threads; the
/// file is opened with direct I/O so blocks are not cached twice.
public final class FUSEExport: @unchecked Sendable {
    public let device: any BlockDevice
    public let mountpoint: String
    public let fileName: String
    let fsName: String
    static let log = ServeLogger.standardError(label: "archip.fuse")
    private var handle: OpaquePointer?
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    private var context: Unmanaged<FUSEExport>?
    /// The mount's device number: its FUSE connection's id in fusectl
    /// (`/sys/fs/fuse/connections/<id>`), for an abort when unmounting is not enough.
    public private(set) var connection: UInt64 = 0

    /// The path of the volume's file.
    public var path: String { mountpoint + "/" + fileName }

    public init(device: any BlockDevice, mountpoint: String, fileName: String = "volume", fsName: String = "archip",
                threads: Int = 8) throws {
        self.device = device
        self.mountpoint = mountpoint
        self.fileName = fileName
        self.fsName = fsName
        try FUSEExport.makeDirectory(mountpoint, what: "FUSE mount point")
        let ctx = Unmanaged.passRetained(self)
        context = ctx
        var cb = archip_fuse_callbacks()
        cb.ctx = ctx.toOpaque()
        cb.readonly = device.isReadOnly ? 1 : 0
        cb.size = { ctx in FUSEExport.from(ctx).device.size }
        cb.read = { ctx, buf, len, off in
            FUSEExport.errno {
                let export = FUSEExport.from(ctx)
                do {
                    try export.device.read(at: off, into: UnsafeMutableRawBufferPointer(start: buf, count: len))
                } catch {
                    // The kernel passes on only EIO; the cause (a failed check names volume, block and object) is for the operator.
                    FUSEExport.log.error("read of \(export.fsName) at \(off)+\(len) failed: \(error)")
                    throw error
                }
            }
        }
        cb.write = { ctx, buf, len, off in
            FUSEExport.errno {
                try FUSEExport.from(ctx).device.write(at: off, UnsafeRawBufferPointer(start: buf, count: len))
            }
        }
        cb.read_pieces = { ctx, len, off, out, max, keep in
            do {
                guard let pieces = try FUSEExport.from(ctx).device.readPieces(at: off, length: len),
                      !pieces.isEmpty, pieces.count <= Int(max), let out, let keep else { return 0 }
                for (i, p) in pieces.enumerated() { out[i] = p.cPiece }
                keep.pointee = Unmanaged.passRetained(ReadPieces(pieces)).toOpaque()
                return Int32(pieces.count)
            } catch {
                FUSEExport.log.error("read of \(FUSEExport.from(ctx).fsName) at \(off)+\(len) failed: \(error)")
                return FUSEExport.errno { throw error }
            }
        }
        cb.release = { _, keep in
            if let keep { Unmanaged<ReadPieces>.fromOpaque(keep).release() }
        }
        cb.flush = { ctx in
            FUSEExport.errno {
                let export = FUSEExport.from(ctx)
                do { try export.device.flush() } catch {
                    // The kernel passes on only EIO; the cause is for the operator.
                    FUSEExport.log.error("fsync of \(export.fsName) failed: \(error)")
                    throw error
                }
            }
        }
        cb.trim = { ctx, off, len in FUSEExport.errno { try FUSEExport.from(ctx).device.trim(at: off, length: len) } }
        var err = [CChar](repeating: 0, count: 256)
        guard let h = archip_fuse_mount(mountpoint, fileName, fsName, cb, &err, err.count) else {
            ctx.release()
            context = nil
            throw StoreError(.io, "FUSE mount at \(mountpoint): \(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
        }
        handle = h
        let running = UncheckedPointer(h)
        let t = Thread { [finished] in
            _ = archip_fuse_run(running.pointer, Int32(threads))
            finished.signal()
        }
        t.name = "archip-fuse"
        t.start()
        thread = t
        // A stat of the mount point is a FUSE request: only once the session serves.
        var dev: UInt64 = 0
        if archip_fuse_device(mountpoint, &dev) == 0 { connection = dev }
    }

    /// Makes `path` and its missing parents (0755), or finds it a folder
    /// already. Every failure is one line naming `what`, the path that
    /// could not be made and the errno text (a read-only or full runtime
    /// folder, a file in the way), not Foundation's NSCocoaErrorDomain text.
    static func makeDirectory(_ path: String, what: String) throws {
        func fail(_ at: String, _ err: Int32, _ call: String = "cannot create") -> StoreError {
            let code: StoreError.Code = switch err {
            case ENOSPC, EDQUOT: .noSpace
            case EROFS, EACCES, EPERM: .readOnly
            default: .io
            }
            return StoreError(code, "\(what) \(path): \(call) \(at)", cause: String(cString: strerror(err)))
        }
        func make(_ dir: String) throws {
            if mkdir(dir, 0o755) == 0 { return }
            var err = Glibc.errno
            if err == ENOENT {
                let parent = (dir as NSString).deletingLastPathComponent
                guard !parent.isEmpty, parent != dir else { throw fail(dir, ENOENT) }
                try make(parent)
                if mkdir(dir, 0o755) == 0 { return }
                err = Glibc.errno
            }
            if err == ENOTDIR {
                // A parent is a file: name it.
                var up = (dir as NSString).deletingLastPathComponent
                var st = stat()
                while !up.isEmpty, up != "/" {
                    if stat(up, &st) == 0, st.st_mode & S_IFMT != S_IFDIR { throw fail(up, ENOTDIR, "a file is in the way at") }
                    up = (up as NSString).deletingLastPathComponent
                }
            }
            guard err == EEXIST else { throw fail(dir, err) }
            // Something is there: it must be a folder (a file in the way is ENOTDIR).
            var st = stat()
            guard stat(dir, &st) == 0 else { throw fail(dir, Glibc.errno, "cannot stat") }
            guard st.st_mode & S_IFMT == S_IFDIR else { throw fail(dir, ENOTDIR, "a file is in the way at") }
        }
        try make(path)
    }

    private static func from(_ ctx: UnsafeMutableRawPointer?) -> FUSEExport {
        Unmanaged<FUSEExport>.fromOpaque(ctx!).takeUnretainedValue()
    }

    /// Maps store errors to the errno the kernel passes on to the reader or writer.
    static func errno(_ body: () throws -> Void) -> Int32 {
        do {
            try body()
            return 0
        } catch let e as StoreError {
            switch e.code {
            case .readOnly: return -EROFS
            case .outOfRange, .noSpace: return -ENOSPC
            case .closed: return -ESHUTDOWN
            case .invalidArgument, .invalidSize: return -EINVAL
            default: return -EIO
            }
        } catch {
            return -EIO
        }
    }

    /// How a stop ended.
    public enum StopOutcome: Equatable, Sendable {
        /// The session ended when the mount went away.
        case unmounted
        /// The session outlived its mount (a copy of it in another mount
        /// namespace, or a file open inside it kept the connection alive) and
        /// was aborted through fusectl.
        case aborted
        /// Even the abort did not end it within the bound: its thread and
        /// handle are left behind (never freed under a running loop).
        case abandoned
    }

    /// Unmounts and waits, at most `timeout` seconds, for the serving threads
    /// to finish; then aborts the connection (fusectl) and waits `timeout`
    /// more. Never waits without a bound: a copy of the mount in a namespace
    /// created while it existed (`ip netns exec`, `unshare -m`, a service with
    /// PrivateTmp) keeps the connection alive after the daemon's own unmount,
    /// and an unbounded wait there once held Ganeti's jobs for ten minutes.
    @discardableResult
    public func stop(timeout: Double = 3) -> StopOutcome {
        guard let h = handle else { return .unmounted }
        handle = nil
        archip_fuse_unmount(h)
        // Removing the mount point detaches the copies other mount namespaces
        // hold of it (Linux >= 3.18), so the connection can end without an abort.
        _ = rmdir(mountpoint)
        var outcome = StopOutcome.unmounted
        if finished.wait(timeout: .now() + timeout) == .timedOut {
            let r = connection == 0 ? -ENOENT : archip_fuse_abort(connection)
            FUSEExport.log.error("FUSE session of \(fsName) still running \(timeout) s after its unmount (the mount is held elsewhere): aborting connection \(connection)\(r == 0 ? "" : " failed: " + String(cString: strerror(-r)))")
            outcome = .aborted
            if finished.wait(timeout: .now() + timeout) == .timedOut {
                FUSEExport.log.error("FUSE session of \(fsName) did not end after the abort either: leaving its thread")
                return .abandoned
            }
        }
        archip_fuse_destroy(h)
        context?.release()
        context = nil
        return outcome
    }
}

/// A read reply's pieces, held (their descriptors open) until the reply is out.
final class ReadPieces {
    let pieces: [VolumeReadPiece]
    init(_ pieces: [VolumeReadPiece]) { self.pieces = pieces }
}

extension VolumeReadPiece {
    var cPiece: archip_piece {
        switch self {
        case .zeros(let n): return archip_piece(fd: -1, off: 0, len: n)
        case .file(let d, let offset, let count): return archip_piece(fd: d.fd, off: offset, len: count)
        }
    }
}

/// libfuse's handle crosses to the serving thread once; libfuse itself is thread-safe.
struct UncheckedPointer: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ p: OpaquePointer) { pointer = p }
}

/// A kernel loop device over a file (here: a FUSE export's file).
public struct LoopDevice: Sendable, CustomStringConvertible {
    public let minor: Int32
    public var path: String { "/dev/loop\(minor)" }
    public var description: String { path }

    /// Attaches `file`; direct I/O keeps the page cache out of the way.
    public static func attach(file: String, readOnly: Bool, directIO: Bool = true) throws -> LoopDevice {
        var minor: Int32 = -1
        let r = archip_loop_attach(file, readOnly ? 1 : 0, directIO ? 1 : 0, &minor)
        guard r == 0 else {
            throw StoreError(.io, "loop device for \(file)", cause: String(cString: strerror(-r)))
        }
        return LoopDevice(minor: minor)
    }

    public init(minor: Int32) { self.minor = minor }

    /// Loop devices that have a backing file now.
    public static func attachedMinors() -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.compactMap { n -> Int32? in
            guard n.hasPrefix("loop"), let m = Int32(n.dropFirst(4)),
                  FileManager.default.fileExists(atPath: "/sys/block/\(n)/loop/backing_file") else { return nil }
            return m
        }
    }

    /// Detaches and waits until the kernel has really let go of the file.
    ///
    /// While anyone else has the device open (udev's blkid after the attach
    /// event, a monitoring tool), LOOP_CLR_FD only marks it auto-clear and
    /// returns 0; the file stays in use until that opener closes. The FUSE
    /// export under it must stay up until then, so callers that unmount next
    /// need the wait (CI caught the daemon exiting with the device still bound).
    public func detach(waitingUpTo timeout: Double = 10) throws {
        let r = archip_loop_detach(minor)
        guard r == 0 || r == -ENXIO else { throw StoreError(.io, "detach \(path)", cause: String(cString: strerror(-r))) }
        let deadline = Date().addingTimeInterval(timeout)
        let sys = "/sys/block/loop\(minor)/loop/backing_file"
        while FileManager.default.fileExists(atPath: sys) {
            guard Date() < deadline else {
                throw StoreError(.io, "detach \(path)", cause: "still open by another process after \(Int(timeout)) s; it detaches when that process closes it")
            }
            usleep(20_000)
        }
    }

    /// Makes the device see its file's new size (after a grow).
    public func refreshCapacity() throws {
        let r = archip_loop_set_capacity(minor)
        guard r == 0 else { throw StoreError(.io, "resize \(path)", cause: String(cString: strerror(-r))) }
    }

    /// The backing file's full path. The kernel's status ioctl keeps only the
    /// first 63 bytes of the name (LO_NAME_SIZE), which cut runtime folders
    /// short and made crash recovery miss the dead daemon's devices; sysfs has
    /// the whole path.
    public func backingFile() throws -> String {
        if let s = try? String(contentsOfFile: "/sys/block/loop\(minor)/loop/backing_file", encoding: .utf8) {
            return s.hasSuffix("\n") ? String(s.dropLast()) : s
        }
        var buf = [CChar](repeating: 0, count: 128)
        let r = archip_loop_backing_file(minor, &buf, buf.count)
        guard r == 0 else { throw StoreError(.io, "status of \(path)", cause: String(cString: strerror(-r))) }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
