import ArchipStore
import CArchipFuse
import Foundation

/// `archip serve`: holds the volumes attached on this node. For each it
/// offers a kernel block device (FUSE file + loop device) and an NBD export
/// on a unix socket for QEMU, with the volume's lock held (exclusive, or
/// shared during live migration).
///
/// Runtime folder layout:
///
///     control.sock        the control socket (0600)
///     serve.pid           this daemon's pid
///     holds.json          locks this daemon took (node + token), so a restart
///                         after a crash can release its own holds
///     mnt/<name>/<name>   the FUSE file of an attached volume
///     nbd/<name>.sock     its NBD socket
public final class NodeDaemon: @unchecked Sendable {
    public let store: VolumeStore
    public let runtimeDir: String
    public let owner: LockOwner
    private let log: (String) -> Void

    final class Attachment {
        let device: VolumeDevice
        /// The kernel device: FUSE file + loop device, or (--device=nbd) nbd-client's /dev/nbdN.
        let fuse: FUSEExport?
        let loop: LoopDevice?
        let kernelNBD: KernelNBDDevice?
        let nbd: NBDServer
        var info: AttachmentInfo
        var volume: Volume { device.volume }
        init(device: VolumeDevice, fuse: FUSEExport?, loop: LoopDevice?, kernelNBD: KernelNBDDevice? = nil,
             nbd: NBDServer, info: AttachmentInfo) {
            self.device = device; self.fuse = fuse; self.loop = loop; self.kernelNBD = kernelNBD; self.nbd = nbd
            self.info = info
        }
    }

    private var attached: [String: Attachment] = [:]
    private let lock = NSLock()
    private var listener: UnixListener?
    private var stopping = false
    private let stopped = DispatchSemaphore(value: 0)

    public var controlSocket: String { runtimeDir + "/control.sock" }

    public init(store: VolumeStore, runtimeDir: String, log: @escaping (String) -> Void) {
        self.store = store
        self.runtimeDir = runtimeDir
        self.owner = LockOwner(node: store.node, token: "serve-" + LockOwner.randomToken(), pid: getpid(), since: Date())
        self.log = log
    }

    // MARK: life cycle

    /// Cleans up after a previous daemon that died, then serves the control
    /// socket until `shutdown`.
    public func run() throws {
        try FileManager.default.createDirectory(atPath: runtimeDir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try recoverFromPreviousRun()
        try "\(getpid())\n".write(toFile: runtimeDir + "/serve.pid", atomically: true, encoding: .utf8)
        let l = try UnixListener(path: controlSocket)
        listener = l
        log("serving node \(store.node) on \(controlSocket) (store \(store.objects.location))")
        // The listener is non-blocking: wait for a client (or, every second, for a stop).
        while !lock.withLock({ stopping }) {
            guard try Sys.waitReadable(l.fd, timeoutMilliseconds: 1000, what: controlSocket) else { continue }
            if lock.withLock({ stopping }) { break }
            guard let fd = try l.accept() else { continue }
            let conn = ConnectionSocket(fd: fd, name: "control")
            Thread.detachNewThread { [self] in self.serve(conn) }
        }
        stopped.wait()
        log("stopped")
    }

    private func serve(_ conn: ConnectionSocket) {
        defer { conn.close() }
        var reader = LineReader(socket: conn)
        while let line = try? reader.next(limit: 1 << 20) {
            let reply: ControlReply
            var shutdownAfter = false
            do {
                let req = try JSONDecoder().decode(ControlRequest.self, from: Data(line.utf8))
                shutdownAfter = req.op == .shutdown
                reply = try handle(req)
            } catch let e as StoreError {
                reply = .failure(e.description, code: e.code.rawValue)
            } catch {
                reply = .failure("\(error)", code: nil)
            }
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            guard let data = try? e.encode(reply), (try? conn.sendAll([UInt8](data) + [0x0A])) != nil else { return }
            if shutdownAfter { shutdown(); return }
        }
    }

    func handle(_ r: ControlRequest) throws -> ControlReply {
        func name() throws -> VolumeName {
            guard let n = r.name else { throw StoreError(.invalidArgument, "\(r.op.rawValue) needs a name") }
            return try VolumeName(n)
        }
        switch r.op {
        case .ping:
            var reply = ControlReply.success()
            reply.node = store.node
            reply.pid = getpid()
            return reply
        case .attach:
            return .success(try attach(try name(), hold: try Hold(r.mode), device: try KernelDeviceKind(r.device)))
        case .open:
            return .success(try open(try name(), hold: try Hold(r.mode)))
        case .close:
            try close(try name())
            return .success()
        case .detach:
            try detach(try name())
            return .success()
        case .list:
            var reply = ControlReply.success()
            reply.attachments = lock.withLock { attached.values.map(\.info).sorted { $0.name < $1.name } }
            return reply
        case .snapshot:
            guard let s = r.snapshot else { throw StoreError(.invalidArgument, "snapshot needs a snapshot name") }
            try snapshot(try name(), as: try VolumeName(s))
            return .success()
        case .grow:
            guard let size = r.size else { throw StoreError(.invalidArgument, "grow needs a size") }
            return .success(try grow(try name(), to: ByteCount(size)))
        case .shutdown:
            return .success()
        }
    }

    // MARK: operations

    /// What this node holds on an attached volume. Ganeti separates the two:
    /// `attach` only makes the device appear (it is called on a migration's
    /// target while the source still writes), `open` takes the hold that
    /// allows writes, exclusive or shared during live migration.
    public enum Hold: String, Sendable {
        case none, shared, exclusive

        /// The protocol's `mode`: absent means exclusive (what `archip attach` wants).
        public init(_ mode: String?) throws {
            guard let h = Hold(rawValue: mode ?? "exclusive") else {
                throw StoreError(.invalidArgument, "unknown mode '\(mode ?? "")': use exclusive, shared or none")
            }
            self = h
        }

        var openMode: OpenMode {
            switch self {
            case .none: return .readOnly
            case .shared: return .shared
            case .exclusive: return .exclusive
            }
        }
    }

    /// Attaches (idempotent: an attached volume's device is returned again,
    /// whatever its hold; `open` changes the hold).
    public func attach(_ name: VolumeName, mode: OpenMode) throws -> AttachmentInfo {
        try attach(name, hold: mode == .shared ? .shared : mode == .readOnly ? .none : .exclusive)
    }

    public func attach(_ name: VolumeName, hold: Hold, device kind: KernelDeviceKind = .loop) throws -> AttachmentInfo {
        lock.lock()
        defer { lock.unlock() }
        if let a = attached[name.value] {
            guard (a.info.deviceKind ?? "loop") == kind.rawValue else {
                throw StoreError(.alreadyExists, "\(name) is attached on this node with its \(a.info.deviceKind ?? "loop") device \(a.info.device); detach it first")
            }
            return a.info
        }
        // Before anything is opened: a missing nbd module is a one-line refusal.
        if kind == .nbd, let why = KernelNBDDevice.unavailableReason() { throw StoreError(.unsupported, why) }
        let started = Date()
        let volume = try store.open(name, mode: hold.openMode, owner: owner)
        // A volume stays a writable device whatever its hold: the loop device
        // cannot change from read-only to read-write later.
        let isSnapshot = (try? store.info(name).kind) == "snapshot"
        do {
            try recordHolds(adding: name.value)
            let device = VolumeDevice(volume, readOnly: isSnapshot)
            var fuse: FUSEExport?
            var loop: LoopDevice?
            if kind == .loop {
                let mnt = runtimeDir + "/mnt/" + name.value
                let f = try FUSEExport(device: device, mountpoint: mnt, fileName: name.value, fsName: "archip:" + name.value)
                do {
                    loop = try LoopDevice.attach(file: f.path, readOnly: isSnapshot)
                } catch {
                    f.stop()
                    throw error
                }
                fuse = f
            }
            let socket = nbdSocketPath(name)
            try FileManager.default.createDirectory(atPath: runtimeDir + "/nbd", withIntermediateDirectories: true)
            let nbd: NBDServer
            do {
                nbd = try NBDServer(socketPath: socket, exports: [try NBDExport(name: name.value, device: device)],
                                    defaultExport: name.value)
                try nbd.start()
            } catch {
                try? loop?.detach()
                fuse?.stop()
                throw error
            }
            var kernelNBD: KernelNBDDevice?
            if kind == .nbd {
                do {
                    kernelNBD = try KernelNBDDevice.connect(socket: socket, export: name.value, size: volume.size,
                                                            readOnly: isSnapshot, logFile: runtimeDir + "/nbd-client.log")
                } catch {
                    try? nbd.stop(gracePeriod: .seconds(1))
                    throw error
                }
            }
            var info = AttachmentInfo(name: name.value, device: kernelNBD?.path ?? loop?.path ?? "",
                                      uri: "nbd:unix:\(socket):exportname=\(name.value)",
                                      mode: isSnapshot ? "read-only" : hold.rawValue, readOnly: isSnapshot, size: volume.size)
            info.deviceKind = kind.rawValue
            attached[name.value] = Attachment(device: device, fuse: fuse, loop: loop, kernelNBD: kernelNBD, nbd: nbd, info: info)
            log(String(format: "attach %@: %@ %@ (%@) in %.0f ms", name.value, info.device, info.uri, info.mode,
                       Date().timeIntervalSince(started) * 1000))
            return info
        } catch {
            try? volume.close()
            try? recordHolds(removing: name.value)
            throw error
        }
    }

    /// `nbd/<name>.sock`, or, when that would not fit in a unix socket
    /// address (108 bytes; Ganeti's names are 46+ characters and runtime
    /// folders can be deep), `nbd/h-<hash of name>.sock`.
    func nbdSocketPath(_ name: VolumeName) -> String {
        let plain = runtimeDir + "/nbd/" + name.value + ".sock"
        if plain.utf8.count <= 107 { return plain }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a: stable across runs, unlike Hasher
        for b in name.value.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return runtimeDir + "/nbd/h-" + String(h, radix: 16) + ".sock"
    }

    /// Ganeti's open: attaches if needed, then takes `hold` (exclusive, or
    /// shared while a live migration runs on two nodes). Changing the hold of
    /// a held volume converts its lock in one step, so no other node can take
    /// the volume in between; a conversion another holder prevents fails and
    /// changes nothing.
    public func open(_ name: VolumeName, hold: Hold) throws -> AttachmentInfo {
        _ = try attach(name, hold: hold)
        lock.lock()
        defer { lock.unlock() }
        guard let a = attached[name.value] else { throw StoreError(.closed, "\(name) was detached while being opened") }
        try changeHold(a, name, to: hold)
        return a.info
    }

    /// Ganeti's close: releases the hold (flushing first); the devices stay
    /// until detach. Idempotent.
    public func close(_ name: VolumeName) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let a = attached[name.value] else { return }
        try changeHold(a, name, to: .none)
    }

    /// Caller holds `lock`.
    private func changeHold(_ a: Attachment, _ name: VolumeName, to hold: Hold) throws {
        guard !a.info.readOnly, a.info.mode != hold.rawValue else { return }
        let from = a.info.mode
        switch hold {
        case .none:
            try a.device.replaceVolume { old in
                try old.close()   // flush, then release the lock
                return try store.open(name, mode: .readOnly)
            }
        case .shared, .exclusive:
            if from == Hold.none.rawValue {
                let fresh = try store.open(name, mode: hold.openMode, owner: owner)
                a.device.replaceVolume { old in
                    try? old.close()   // a read-only view: nothing to flush, no lock
                    return fresh
                }
            } else {
                try store.lock(name, owner: owner, mode: hold == .shared ? .shared : .exclusive)
                try a.device.replaceVolume { old in
                    try old.close(keepingLock: true)
                    return try store.open(name, mode: hold.openMode, owner: owner)
                }
            }
        }
        a.info.mode = hold.rawValue
        if hold != .none {
            // What the kernel cached of the device (udev's probe at attach, a
            // buffered reader) may predate the other node's last writes.
            dropKernelCache(a)
        }
        log("\(name.value): hold \(from) -> \(hold.rawValue)")
    }

    /// Drops the page cache of the attachment's kernel block device (BLKFLSBUF:
    /// dirty pages are written first). Taking a hold after another node wrote
    /// must not leave older bytes there for buffered readers.
    private func dropKernelCache(_ a: Attachment) {
        guard let path = a.loop?.path ?? a.kernelNBD?.path else { return }
        let r = archip_blk_flush_buffers(path)
        if r != 0 { log("\(a.info.name): cannot drop the page cache of \(path): \(String(cString: strerror(-r)))") }
    }

    /// Detaches (idempotent): flushes everything and releases the lock.
    public func detach(_ name: VolumeName) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let a = attached[name.value] else { return }
        // The kernel's NBD client first: it is a client of the server stopped next.
        try a.kernelNBD?.disconnect(logFile: runtimeDir + "/nbd-client.log")
        try a.nbd.stop(gracePeriod: .seconds(10))
        try a.loop?.detach()
        a.fuse?.stop()
        try a.volume.close()
        attached[name.value] = nil
        try recordHolds(removing: name.value)
        log("detach \(name.value)")
    }

    /// A snapshot consistent with every write acknowledged so far.
    public func snapshot(_ name: VolumeName, as snap: VolumeName) throws {
        let a = lock.withLock { attached[name.value] }
        guard let a, a.info.mode != Hold.none.rawValue else {
            // Not held here: the store takes the volume's lock for the snapshot
            // (an unheld attachment's read-only view still reads the same data).
            try store.snapshot(name, as: snap, owner: nil)
            return
        }
        try a.volume.snapshot(snap)
        log("snapshot \(name.value) as \(snap.value)")
    }

    public func grow(_ name: VolumeName, to size: ByteCount) throws -> AttachmentInfo? {
        lock.lock()
        defer { lock.unlock() }
        guard let a = attached[name.value] else {
            try store.withVolume(name) { try $0.resize(to: size, allowShrink: false) }
            return nil
        }
        if a.info.mode == Hold.none.rawValue {
            try store.withVolume(name) { try $0.resize(to: size, allowShrink: false) }
            try a.device.replaceVolume { old in
                try old.close()
                return try store.open(name, mode: .readOnly)
            }
        } else {
            try a.volume.resize(to: size, allowShrink: false)
        }
        try a.loop?.refreshCapacity()
        try a.kernelNBD?.refreshCapacity(size: a.volume.size)
        a.info.size = a.volume.size
        log("grow \(name.value) to \(size.bytes) bytes")
        return a.info
    }

    /// Detaches everything and stops serving.
    public func shutdown() {
        let names = lock.withLock { () -> [String] in
            if stopping { return [] }
            stopping = true
            return Array(attached.keys)
        }
        for n in names {
            do { try detach(try VolumeName(n)) } catch { log("shutdown: detach \(n): \(error)") }
        }
        listener?.close()
        stopped.signal()
    }

    // MARK: crash recovery

    private var holdsFile: String { runtimeDir + "/holds.json" }

    struct Holds: Codable { var node: String; var token: String; var names: [String] }

    private func recordHolds(adding: String? = nil, removing: String? = nil) throws {
        var h = (try? JSONDecoder().decode(Holds.self, from: Data(contentsOf: URL(fileURLWithPath: holdsFile))))
            ?? Holds(node: owner.node, token: owner.token, names: [])
        if h.token != owner.token { h = Holds(node: owner.node, token: owner.token, names: []) }
        if let adding, !h.names.contains(adding) { h.names.append(adding) }
        if let removing { h.names.removeAll { $0 == removing } }
        try JSONEncoder().encode(h).write(to: URL(fileURLWithPath: holdsFile), options: .atomic)
    }

    /// A daemon killed with -9 leaves dead FUSE mounts, loop devices over them,
    /// and its locks. Its own holds (recorded in holds.json with its token) are
    /// released; no other holder's lock is touched.
    private func recoverFromPreviousRun() throws {
        let mntRoot = runtimeDir + "/mnt"
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 2 else { continue }
            let point = String(fields[1]).replacingOccurrences(of: "\\040", with: " ")
            guard point.hasPrefix(mntRoot + "/") else { continue }
            for minor in LoopDevice.attachedMinors() {
                let l = LoopDevice(minor: minor)
                if let f = try? l.backingFile(), f.hasPrefix(point + "/") {
                    try? l.detach()
                    log("recovery: detached \(l.path) (was over \(f))")
                }
            }
            if umount2(point, Int32(MNT_DETACH)) == 0 { log("recovery: unmounted stale \(point)") }
        }
        if let data = try? Data(contentsOf: URL(fileURLWithPath: holdsFile)),
           let h = try? JSONDecoder().decode(Holds.self, from: data), h.node == owner.node {
            for n in h.names {
                guard let name = try? VolumeName(n) else { continue }
                do {
                    if try store.unlock(name, owner: LockOwner(node: h.node, token: h.token), force: false) {
                        log("recovery: released this node's stale hold on \(n) (token \(h.token))")
                    }
                } catch {
                    log("recovery: \(n): \(error)")
                }
            }
            try? FileManager.default.removeItem(atPath: holdsFile)
        }
    }
}

/// Reads newline-terminated lines from a socket.
struct LineReader {
    let socket: ConnectionSocket
    var buffer: [UInt8] = []

    mutating func next(limit: Int) throws -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line
            }
            guard buffer.count < limit else { throw StoreError(.invalidArgument, "control request longer than \(limit) bytes") }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = try chunk.withUnsafeMutableBytes { try socket.receive(into: $0) }
            if n == 0 { return nil }
            buffer += chunk[0..<n]
        }
    }
}
