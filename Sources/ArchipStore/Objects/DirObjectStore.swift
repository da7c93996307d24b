import CArchipSys
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An open file descriptor shared by concurrent users; closed when the last
/// user lets go, so a cache eviction never closes a descriptor in use.
final class SharedFD: @unchecked Sendable {
    let fd: Int32
    let writable: Bool
    init(fd: Int32, writable: Bool) { self.fd = fd; self.writable = writable }
    deinit { close(fd) }
}

/// The `dir` backend: one file per object under a root folder. In production
/// the folder is a shared file system mounted on every node.
///
/// Replacing writes go to a temporary name in the same folder, are fsynced
/// when durable, renamed into place, and the folder is fsynced.
public final class DirObjectStore: ObjectStore, @unchecked Sendable {
    public let root: String
    public var location: String { root }
    private let rootFD: Int32
    private let cache = StripedFDCache(capacity: 512)

    public init(root: String) throws {
        var r = root
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        guard !r.isEmpty else {
            throw StoreError(.invalidArgument, "the store folder is an empty path; give a folder (--store DIR or ARCHIP_STORE)")
        }
        self.root = r
        try DirObjectStore.makeDirectories(r)
        rootFD = open(r, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw StoreError.posix("open", r, errno: errno) }
    }

    deinit { close(rootFD) }

    private func path(_ name: ObjectName) -> String { root + "/" + name.path }

    // MARK: descriptors

    private func descriptor(_ name: ObjectName, writable: Bool) throws -> SharedFD {
        if let fd = cache.get(name.path), fd.writable || !writable { return fd }
        let p = path(name)
        var fd = Syscall.retry { open(p, O_RDWR | O_CLOEXEC) }
        var isWritable = true
        if fd < 0 && (errno == EACCES || errno == EROFS) && !writable {
            fd = Syscall.retry { open(p, O_RDONLY | O_CLOEXEC) }
            isWritable = false
        }
        guard fd >= 0 else { throw StoreError.posix("open", p, errno: errno) }
        let shared = SharedFD(fd: fd, writable: isWritable)
        cache.set(name.path, shared)
        return shared
    }

    private func invalidate(_ name: ObjectName) {
        cache.remove(name.path)
    }

    /// Starts writeback of the object's dirty pages (`sync_file_range`), so
    /// the disk works while the writer goes on and the next sync waits less.
    public func startWriteback(_ name: ObjectName) {
        guard let fd = try? descriptor(name, writable: true) else { return }
        _ = archip_start_writeback(fd.fd)
    }

    /// A cached descriptor outlives a rename over its name by another node:
    /// it would read (and write) the replaced file.
    public func forgetCached(_ name: ObjectName) { invalidate(name) }

    /// The cached descriptor (kept open while the returned value lives) and
    /// the file's current length, for zero-copy reads.
    public func readDescriptor(_ name: ObjectName) throws -> ObjectReadDescriptor? {
        let fd = try descriptor(name, writable: false)
        var st = Glibc.stat()
        guard fstat(fd.fd, &st) == 0 else { throw StoreError.posix("stat", path(name), errno: errno) }
        let identity = FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: UInt64(st.st_size),
                                    modifiedNanoseconds: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
                                    changedNanoseconds: Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec))
        return ObjectReadDescriptor(fd: fd.fd, size: UInt64(st.st_size), identity: identity, keepingAlive: fd)
    }

    // MARK: ObjectStore

    public func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let fd = try descriptor(name, writable: false)
        var done = 0
        while done < buffer.count {
            let n = Syscall.retry {
                pread(fd.fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n < 0 { throw StoreError.posix("read", path(name), errno: errno) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func readAll(_ name: ObjectName) throws -> [UInt8] {
        let p = path(name)
        let fd = Syscall.retry { open(p, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw StoreError.posix("open", p, errno: errno) }
        defer { close(fd) }
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw StoreError.posix("stat", p, errno: errno) }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        try out.withUnsafeMutableBytes { buf in
            while done < buf.count {
                let n = Syscall.retry { pread(fd, buf.baseAddress! + done, buf.count - done, off_t(done)) }
                if n < 0 { throw StoreError.posix("read", p, errno: errno) }
                if n == 0 { break }
                done += n
            }
        }
        if done < out.count { out.removeLast(out.count - done) }
        return out
    }

    /// Writes `data` (zero-extended to `length`) to a fresh temporary file next
    /// to `name`; returns its path.
    /// Replaced objects may later take small in-place writes (a volume's own
    /// blocks). Written in one 4 MiB call, the kernel caches them in large
    /// folios, and each later 4 KiB write then costs several times more
    /// (measured: ext4, Linux 6.18, 134k vs 700k writes/s). Writing them in
    /// 16 KiB pieces keeps the cache in small folios.
    static let replaceChunk = 16 << 10
    /// The same for in-place writes (a guest's 1 MiB writes into a block):
    /// written in 1 MiB calls, the random 4 KiB writes that follow ran at
    /// 47k/38k IOPS through loop/NBD; in 64 KiB pieces at 73-86k/73-79k, while
    /// 1 MiB sequential writes stay within noise (1.2-1.6 GB/s either way;
    /// 16 KiB pieces cost them 20%).
    static let inPlaceChunk = 64 << 10

    private func writeTemporary(for name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool,
                                chunk: Int = Int.max) throws -> String {
        let final = path(name)
        let dir = (final as NSString).deletingLastPathComponent
        let tmp = dir + "/.tmp-" + LockOwner.randomToken()
        var fd = Syscall.retry { open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
        if fd < 0 && errno == ENOENT {
            try DirObjectStore.makeDirectories(dir)
            fd = Syscall.retry { open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
        }
        guard fd >= 0 else { throw StoreError.posix("create", tmp, errno: errno) }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(tmp) }
        }
        var done = 0
        while done < data.count {
            let n = Syscall.retry { Glibc.write(fd, data.baseAddress! + done, min(chunk, data.count - done)) }
            if n < 0 { throw StoreError.posix("write", tmp, errno: errno) }
            done += n
        }
        if length > UInt64(data.count) {
            guard ftruncate(fd, off_t(length)) == 0 else { throw StoreError.posix("truncate", tmp, errno: errno) }
        }
        if durable {
            guard Syscall.retry({ fdatasync(fd) }) == 0 else { throw StoreError.posix("fsync", tmp, errno: errno) }
        } else if data.count >= 1 << 20 {
            // Whole blocks: start writeback now, so the later sync finds
            // little left to do and copying overlaps with the disk.
            _ = archip_start_writeback(fd)
        }
        ok = true
        return tmp
    }

    public func put(_ name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool) throws {
        let tmp = try writeTemporary(for: name, data, length: length, durable: durable, chunk: DirObjectStore.replaceChunk)
        let final = path(name)
        guard Glibc.rename(tmp, final) == 0 else {
            let e = errno
            unlink(tmp)
            throw StoreError.posix("rename", final, errno: e)
        }
        invalidate(name)
        if durable { try syncDirectory(of: final) }
    }

    public func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool {
        let final = path(name)
        if access(final, F_OK) == 0 {
            utimensat(AT_FDCWD, final, nil, 0)
            return false
        }
        if let created = try createUnnamed(final, data, durable: durable) { return created }
        let tmp = try writeTemporary(for: name, data, length: 0, durable: durable)
        defer { unlink(tmp) }
        if link(tmp, final) != 0 {
            let e = errno
            if e == EEXIST {
                utimensat(AT_FDCWD, final, nil, 0)
                return false
            }
            throw StoreError.posix("link", final, errno: e)
        }
        if durable { try syncDirectory(of: final) }
        return true
    }

    /// What this file system turned out to support, learnt on first use.
    private let tmpfileSupport = Locked((unnamed: true, direct: true))

    /// `create` through an unnamed file (O_TMPFILE) that gets its name with
    /// `linkat` once it is whole: no temporary name to add and remove in the
    /// folder. Large page-aligned data (content blocks) is written with
    /// O_DIRECT, straight to the disk without a copy into the page cache, so
    /// the later `sync` has only metadata left to flush; an unaligned tail
    /// goes through the page cache. Returns nil where the file system has no
    /// O_TMPFILE (the caller falls back to a temporary name).
    private func createUnnamed(_ final: String, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool? {
        let support = tmpfileSupport.withLock { $0 }
        guard support.unnamed else { return nil }
        let dir = (final as NSString).deletingLastPathComponent
        let page = 4096
        var direct = support.direct && data.count >= 1 << 20 && Int(bitPattern: data.baseAddress) % page == 0
        func openUnnamed() -> Int32 { Syscall.retry { archip_open_tmpfile(dir, direct ? 1 : 0) } }
        var fd = openUnnamed()
        if fd < 0 && errno == ENOENT {
            try DirObjectStore.makeDirectories(dir)
            fd = openUnnamed()
        }
        if fd < 0 && direct && errno == EINVAL {
            tmpfileSupport.withLock { $0.direct = false }
            direct = false
            fd = openUnnamed()
        }
        if fd < 0 {
            if errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL {
                tmpfileSupport.withLock { $0.unnamed = false }
                return nil
            }
            throw StoreError.posix("create", dir, errno: errno)
        }
        defer { close(fd) }
        var done = 0
        func writeAll(upTo end: Int) throws {
            while done < end {
                let n = Syscall.retry { pwrite(fd, data.baseAddress! + done, end - done, off_t(done)) }
                if n < 0 && direct && errno == EINVAL {
                    // The device wants another alignment: go through the page cache.
                    tmpfileSupport.withLock { $0.direct = false }
                    direct = false
                    guard archip_clear_direct(fd) == 0 else { throw StoreError.posix("fcntl", final, errno: errno) }
                    continue
                }
                if n < 0 { throw StoreError.posix("write", final, errno: errno) }
                done += n
            }
        }
        if direct {
            try writeAll(upTo: data.count & ~(page - 1))
            if done < data.count {
                guard archip_clear_direct(fd) == 0 else { throw StoreError.posix("fcntl", final, errno: errno) }
                direct = false
            }
        }
        try writeAll(upTo: data.count)
        if durable {
            guard Syscall.retry({ fdatasync(fd) }) == 0 else { throw StoreError.posix("fsync", final, errno: errno) }
        } else if !direct && data.count >= 1 << 20 {
            _ = archip_start_writeback(fd)
        }
        var linked = archip_link_tmpfile(fd, final)
        if linked != 0 && errno == ENOENT {
            try DirObjectStore.makeDirectories(dir)
            linked = archip_link_tmpfile(fd, final)
        }
        if linked != 0 {
            if errno == EEXIST {
                utimensat(AT_FDCWD, final, nil, 0)
                return false
            }
            throw StoreError.posix("link", final, errno: errno)
        }
        if durable { try syncDirectory(of: final) }
        return true
    }

    public func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        let fd = try descriptor(name, writable: true)
        var done = 0
        while done < data.count {
            let n = Syscall.retry {
                pwrite(fd.fd, data.baseAddress! + done, min(DirObjectStore.inPlaceChunk, data.count - done),
                       off_t(offset) + off_t(done))
            }
            if n < 0 { throw StoreError.posix("write", path(name), errno: errno) }
            done += n
        }
    }

    public func sync(_ names: [ObjectName]) throws {
        if names.isEmpty { return }
        // Many objects: one syncfs is far cheaper than an fsync each, and it
        // also covers the folder entries of objects put without `durable`.
        if names.count > 16 {
            guard archip_syncfs(rootFD) == 0 else { throw StoreError.posix("syncfs", root, errno: errno) }
            return
        }
        var dirs = Set<String>()
        for name in names {
            let p = path(name)
            let fd = Syscall.retry { open(p, O_RDONLY | O_CLOEXEC) }
            if fd < 0 {
                if errno == ENOENT { continue }
                throw StoreError.posix("open", p, errno: errno)
            }
            let r = Syscall.retry { fdatasync(fd) }
            let e = errno
            close(fd)
            guard r == 0 else { throw StoreError.posix("fsync", p, errno: e) }
            dirs.insert((p as NSString).deletingLastPathComponent)
        }
        for d in dirs { try syncDirectoryPath(d) }
    }

    public func syncContents(_ name: ObjectName) throws {
        let fd = try descriptor(name, writable: false)
        guard Syscall.retry({ fdatasync(fd.fd) }) == 0 else { throw StoreError.posix("fsync", path(name), errno: errno) }
    }

    public func remove(_ name: ObjectName) throws -> Bool {
        invalidate(name)
        let p = path(name)
        if unlink(p) == 0 { return true }
        if errno == ENOENT { return false }
        throw StoreError.posix("remove", p, errno: errno)
    }

    public func removeAll(prefix: String) throws {
        let dir = root + "/" + prefix
        cache.removeAll(prefix: prefix)
        do {
            if FileManager.default.fileExists(atPath: dir) {
                try FileManager.default.removeItem(atPath: dir)
            }
        } catch {
            throw StoreError(.io, "remove \(dir)", cause: "\(error)")
        }
    }

    public func rename(_ from: ObjectName, to: ObjectName) throws {
        let a = path(from), b = path(to)
        if archip_rename_noreplace(a, b) != 0 {
            guard errno == EINVAL || errno == ENOSYS else {
                throw StoreError.posix("rename", "\(a) -> \(b)", errno: errno)
            }
            // No RENAME_NOREPLACE on this file system (e.g. NFS): link() never
            // replaces; a crash between link and unlink leaves both names.
            guard link(a, b) == 0 else { throw StoreError.posix("rename", "\(a) -> \(b)", errno: errno) }
            guard unlink(a) == 0 else { throw StoreError.posix("rename", a, errno: errno) }
        }
        invalidate(from)
        try syncDirectory(of: b)
    }

    public func stat(_ name: ObjectName) throws -> ObjectInfo? {
        var st = Glibc.stat()
        let p = path(name)
        if lstat(p, &st) != 0 {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw StoreError.posix("stat", p, errno: errno)
        }
        let t = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
        return ObjectInfo(size: UInt64(st.st_size), modified: Date(timeIntervalSince1970: t))
    }

    public func enumerate(prefix: String, _ body: (ObjectName) throws -> Bool) throws {
        var p = prefix
        if p.hasSuffix("/") { p.removeLast() }
        _ = try walk(relative: p, body)
    }

    private func walk(relative: String, _ body: (ObjectName) throws -> Bool) throws -> Bool {
        let full = relative.isEmpty ? root : root + "/" + relative
        guard let dir = opendir(full) else {
            if errno == ENOENT || errno == ENOTDIR { return true }
            throw StoreError.posix("opendir", full, errno: errno)
        }
        defer { closedir(dir) }
        while let ent = readdir(dir) {
            let entName = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if entName.hasPrefix(".") { continue }
            let rel = relative.isEmpty ? entName : relative + "/" + entName
            var isDir = ent.pointee.d_type == UInt8(DT_DIR)
            if ent.pointee.d_type == UInt8(DT_UNKNOWN) {
                var st = Glibc.stat()
                if lstat(root + "/" + rel, &st) == 0 { isDir = (st.st_mode & S_IFMT) == S_IFDIR }
            }
            if isDir {
                if try !walk(relative: rel, body) { return false }
            } else if let name = ObjectName(validating: rel) {
                if try !body(name) { return false }
            }
        }
        return true
    }

    // MARK: locks

    /// The lock's decision runs under flock() on a hidden guard file next to the
    /// lock object, so two nodes on a shared file system cannot both win.
    private func withGuard<R>(_ name: ObjectName, _ body: () throws -> R) throws -> R {
        let p = path(name)
        let dir = (p as NSString).deletingLastPathComponent
        try DirObjectStore.makeDirectories(dir)
        let guardPath = dir + "/." + name.lastComponent + ".guard"
        let fd = Syscall.retry { open(guardPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        guard fd >= 0 else { throw StoreError.posix("open", guardPath, errno: errno) }
        defer { close(fd) }
        guard Syscall.retry({ flock(fd, LOCK_EX) }) == 0 else { throw StoreError.posix("flock", guardPath, errno: errno) }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    private func readLockState(_ name: ObjectName) throws -> LockState? {
        guard try stat(name) != nil else { return nil }
        let bytes = try readAll(name)
        do {
            let d = JSONDecoder()
            d.dateDecodingStrategy = .iso8601
            return try d.decode(LockState.self, from: Data(bytes))
        } catch {
            throw StoreError(.corrupt, "lock \(path(name)) is damaged", cause: "\(error)")
        }
    }

    private func writeLockState(_ name: ObjectName, _ state: LockState?) throws {
        guard let state else {
            _ = try remove(name)
            try syncDirectory(of: path(name))
            return
        }
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys]
        try put(name, [UInt8](try e.encode(state)), durable: true)
    }

    public func acquireLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws {
        try withGuard(name) {
            let next = try Self.decideLock(try readLockState(name), owner: owner, mode: mode, name: name)
            try writeLockState(name, next)
        }
    }

    public func releaseLock(_ name: ObjectName, owner: LockOwner, force: Bool) throws -> Bool {
        try withGuard(name) {
            let (next, released) = try Self.releasing(try readLockState(name), owner: owner, force: force, name: name)
            if released { try writeLockState(name, next) }
            return released
        }
    }

    public func lockState(_ name: ObjectName) throws -> LockState? {
        try readLockState(name)
    }

    /// Under flock() on `.NAME.guard` next to `name`: every node that mounts
    /// the folder sees the same guard.
    public func exclusively<R>(_ name: ObjectName, _ body: () throws -> R) throws -> R {
        try withGuard(name, body)
    }

    public func removeStaleTemporaries(olderThan date: Date) throws -> Int {
        var count = 0
        func visit(_ dir: String) {
            guard let d = opendir(dir) else { return }
            defer { closedir(d) }
            while let ent = readdir(d) {
                let n = withUnsafeBytes(of: ent.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                if n == "." || n == ".." { continue }
                let p = dir + "/" + n
                var st = Glibc.stat()
                guard lstat(p, &st) == 0 else { continue }
                if (st.st_mode & S_IFMT) == S_IFDIR { visit(p); continue }
                if n.hasPrefix(".tmp-") && Double(st.st_mtim.tv_sec) < date.timeIntervalSince1970 {
                    if unlink(p) == 0 { count += 1 }
                }
            }
        }
        visit(root)
        return count
    }

    // MARK: helpers

    private func syncDirectory(of path: String) throws {
        try syncDirectoryPath((path as NSString).deletingLastPathComponent)
    }

    private func syncDirectoryPath(_ dir: String) throws {
        let fd = Syscall.retry { open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw StoreError.posix("open", dir, errno: errno) }
        defer { close(fd) }
        guard Syscall.retry({ fsync(fd) }) == 0 else { throw StoreError.posix("fsync", dir, errno: errno) }
    }

    static func makeDirectories(_ dir: String) throws {
        guard !dir.isEmpty else { throw StoreError(.invalidArgument, "mkdir: empty path") }
        if mkdir(dir, 0o755) == 0 || errno == EEXIST { return }
        if errno == ENOENT {
            // "" and "/" are their own parents ("a" has ""): stop there.
            let parent = (dir as NSString).deletingLastPathComponent
            guard !parent.isEmpty, parent != dir else { throw StoreError.posix("mkdir", dir, errno: ENOENT) }
            try makeDirectories(parent)
            if mkdir(dir, 0o755) == 0 || errno == EEXIST { return }
        }
        throw StoreError.posix("mkdir", dir, errno: errno)
    }
}

/// The descriptor cache in stripes, each behind its own mutex and picked by
/// the path's hash: every read looks a descriptor up, and with one mutex the
/// serving threads slept on it in turn (futex waits under 4 KiB random reads).
final class StripedFDCache: @unchecked Sendable {
    private let stripes: [Locked<FDCache>]

    init(capacity: Int, stripes count: Int = 16) {
        stripes = (0..<count).map { _ in Locked(FDCache(capacity: max(8, capacity / count))) }
    }

    private func stripe(_ key: String) -> Locked<FDCache> {
        var h = Hasher()
        h.combine(key)
        return stripes[Int(UInt(bitPattern: h.finalize()) % UInt(stripes.count))]
    }

    func get(_ key: String) -> SharedFD? { stripe(key).withLock { $0.get(key) } }
    func set(_ key: String, _ fd: SharedFD) { stripe(key).withLock { $0.set(key, fd) } }
    func remove(_ key: String) { stripe(key).withLock { $0.remove(key) } }
    func removeAll(prefix: String) {
        for s in stripes { s.withLock { $0.removeAll(prefix: prefix) } }
    }
}

/// Least-recently-used cache of open descriptors, keyed by object path.
struct FDCache {
    let capacity: Int
    private var entries: [String: (fd: SharedFD, tick: UInt64)] = [:]
    private var tick: UInt64 = 0

    init(capacity: Int) { self.capacity = capacity }

    mutating func get(_ key: String) -> SharedFD? {
        guard let e = entries[key] else { return nil }
        tick += 1
        entries[key] = (e.fd, tick)
        return e.fd
    }

    mutating func set(_ key: String, _ fd: SharedFD) {
        tick += 1
        entries[key] = (fd, tick)
        if entries.count > capacity {
            // Evict the oldest quarter at once so eviction stays rare.
            let old = entries.sorted { $0.value.tick < $1.value.tick }.prefix(capacity / 4)
            for (k, _) in old { entries.removeValue(forKey: k) }
        }
    }

    mutating func remove(_ key: String) { entries.removeValue(forKey: key) }

    mutating func removeAll(prefix: String) {
        for k in entries.keys where k.hasPrefix(prefix) { entries.removeValue(forKey: k) }
    }
}

enum Syscall {
    /// Retries a call interrupted by a signal.
    @inline(__always)
    static func retry<T: BinaryInteger>(_ body: () -> T) -> T {
        while true {
            let r = body()
            if r < 0 && errno == EINTR { continue }
            return r
        }
    }
}
