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
///     holds.json          locks this daemon took (node + token) and the devices
///                         it made, so a restart after a crash can undo its own
///     mnt/<name>/<name>   the FUSE file of an attached volume (mounted in the
///                         daemon's private mount namespace: PrivateMountNamespace)
///     nbd/<name>.sock     its NBD socket
///
/// Waits and their bounds (nothing here waits without one, and no lock is
/// held across a wait on the kernel, a device or a peer):
///
///     per volume   operations on one volume run one at a time (VolumeOperations);
///                  another waits for it at most `limits.busyWait`, then fails
///                  naming what runs. Other volumes, `list` and `ping` go on.
///     detach       NBD clients get `limits.nbdGrace` to leave; the loop device
///                  `limits.loopRelease` to let go of its file; the FUSE session
///                  `limits.fuseStop` to end after its unmount, then it is
///                  aborted (fusectl) and gets as long again.
///     the table    `attached` is behind a mutex held only to read or change it.
///     the cluster  on RADOS, monitor ops and the wait for a write slot are
///                  bounded by `[rados] op_timeout`; object I/O is not (a guest
///                  rides out an OSD restart). A control call stuck on the cluster
///                  holds only its volume's slot; its client (ControlClient) gives
///                  up after its own timeout, and the next call on that volume
///                  after `busyWait`.
///
/// A fenced client (RADOS: the cluster blocklisted it because another node
/// broke a lock it held) fails every op for good. The volumes open on it stay
/// fenced: their I/O fails (EIO) until they are detached, and nothing reopens
/// them behind the operator's back. The store is replaced with a new client
/// (`reopenStore`), logged in one line, as soon as the daemon notices: its
/// snapshot-request poll (every 0.25 s while a volume is held) or the next
/// attach or open, whichever comes first. An attach of a fenced volume after
/// its detach takes the lock again, and is refused while another node holds it.
public final class NodeDaemon: @unchecked Sendable {
    /// The store new work goes to (replaced once its client is fenced).
    public var store: VolumeStore { current.withLock { $0 } }
    private let current: Locked<VolumeStore>
    private let reopenStore: (() throws -> VolumeStore)?
    public let runtimeDir: String
    public let owner: LockOwner
    public let limits: Limits
    private let log: (String) -> Void

    /// The bounds of the daemon's waits, in seconds.
    public struct Limits: Sendable {
        public var busyWait: TimeInterval = 20
        public var nbdGrace: TimeInterval = 10
        public var loopRelease: TimeInterval = 10
        public var fuseStop: TimeInterval = 3
        public init() {}
    }

    final class Attachment {
        let device: VolumeDevice
        /// The store the volume was opened on (its client may have been fenced since).
        let store: VolumeStore
        /// The kernel device: FUSE file + loop device, or (--device=nbd) nbd-client's /dev/nbdN.
        let fuse: FUSEExport?
        let loop: LoopDevice?
        let kernelNBD: KernelNBDDevice?
        let nbd: NBDServer
        /// Changed only with the daemon's table lock held (`list` reads it there).
        var info: AttachmentInfo
        var volume: Volume { device.volume }
        init(device: VolumeDevice, store: VolumeStore, fuse: FUSEExport?, loop: LoopDevice?, kernelNBD: KernelNBDDevice? = nil,
             nbd: NBDServer, info: AttachmentInfo) {
            self.device = device; self.store = store; self.fuse = fuse; self.loop = loop; self.kernelNBD = kernelNBD; self.nbd = nbd
            self.info = info
        }
    }

    private let attached = Locked<[String: Attachment]>([:])
    private let operations: VolumeOperations
    private let holds: HoldsFile
    private let stopping = Locked(false)
    private var listener: UnixListener?
    private let stopped = DispatchSemaphore(value: 0)
    /// The store as a client names it (StoreLocation.canonical), to refuse calls for another.
    public let storeIdentity: String

    public var controlSocket: String { runtimeDir + "/control.sock" }

    /// `reopenStore`: opens the store again with a new client, for when this
    /// one was fenced (nil: never; a folder store has no client to fence).
    public init(store: VolumeStore, runtimeDir: String, limits: Limits = Limits(), log: @escaping (String) -> Void,
                reopenStore: (() throws -> VolumeStore)? = nil) {
        self.current = Locked(store)
        self.reopenStore = reopenStore
        self.runtimeDir = runtimeDir
        self.limits = limits
        self.owner = LockOwner(node: store.node, token: "serve-" + LockOwner.randomToken(), pid: getpid(), since: Date())
        self.log = log
        self.operations = VolumeOperations(waitLimit: limits.busyWait)
        self.holds = HoldsFile(path: runtimeDir + "/holds.json", owner: owner)
        self.storeIdentity = StoreLocation.canonical(store.objects.location)
        // Breaks this daemon makes, renewals that fail, writes refused once fenced.
        store.leaseLog = log
    }

    /// The store for a new attach or open: a new one when the cluster fenced
    /// the current one's client (what is open on the old one stays fenced).
    private func liveStore() throws -> VolumeStore {
        let old = store
        guard !old.objects.clientIsUsable, let reopenStore else { return old }
        let started = Date()
        let fresh = try reopenStore()
        fresh.leaseLog = log
        let swapped = current.withLock { s -> Bool in
            guard s === old else { return false }   // another call reconnected first
            s = fresh
            return true
        }
        if swapped {
            let fenced = attached.withLock { $0.values.filter { $0.store === old }.map(\.info.name).sorted() }
            log(String(format: "the cluster fenced this daemon's client (blocklisted); reconnected in %.0f ms%@", Date().timeIntervalSince(started) * 1000,
                       fenced.isEmpty ? "" : "; \(fenced.joined(separator: ", ")) stay fenced until detached"))
        }
        return store
    }

    // MARK: life cycle

    /// Cleans up after a previous daemon that died, then serves the control
    /// socket until `shutdown`.
    public func run() throws {
        try FileManager.default.createDirectory(atPath: runtimeDir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        CrashRecovery(runtimeDir: runtimeDir, store: store, node: owner.node, holds: holds, log: log).run()
        try "\(getpid())\n".write(toFile: runtimeDir + "/serve.pid", atomically: true, encoding: .utf8)
        let l = try UnixListener(path: controlSocket)
        listener = l
        log("serving node \(store.node) on \(controlSocket) (store \(store.objects.location), \(store.leaseSettings))")
        Thread.detachNewThread { [self] in self.serveSnapshotRequests() }
        // The listener is non-blocking: wait for a client (or, every second, for a stop).
        while !stopping.withLock({ $0 }) {
            guard try Sys.waitReadable(l.fd, timeoutMilliseconds: 1000, what: controlSocket) else { continue }
            if stopping.withLock({ $0 }) { break }
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
            } catch let e as DecodingError {
                reply = .failure("bad control request: \(ControlRequest.describe(e))", code: StoreError.Code.invalidArgument.rawValue)
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
        // ping answers whatever the store: it is how a client learns which one this is.
        if r.op != .ping, let theirs = r.store, StoreLocation.canonical(theirs) != storeIdentity {
            throw StoreError(.invalidArgument, "this node's archip serve (pid \(getpid()), \(controlSocket)) serves store \(store.objects.location), not \(theirs): one daemon serves one store per runtime folder; use the store it serves, or another --runtime-dir")
        }
        func name() throws -> VolumeName {
            guard let n = r.name else { throw StoreError(.invalidArgument, "\(r.op.rawValue) needs a name") }
            return try VolumeName(n)
        }
        switch r.op {
        case .ping:
            var reply = ControlReply.success()
            reply.node = store.node
            reply.pid = getpid()
            reply.store = store.objects.location
            reply.busy = operations.inProgress()
            return reply
        case .attach:
            return .success(try attach(try name(), hold: r.mode ?? .exclusive, device: r.device ?? .loop))
        case .open:
            return .success(try open(try name(), hold: r.mode ?? .exclusive))
        case .close:
            try close(try name())
            return .success()
        case .detach:
            try detach(try name())
            return .success()
        case .list:
            var reply = ControlReply.success()
            reply.attachments = attached.withLock { $0.values.map(\.info).sorted { $0.name < $1.name } }
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

    /// Attaches (idempotent: an attached volume's device is returned again,
    /// whatever its hold; `open` changes the hold).
    public func attach(_ name: VolumeName, mode: OpenMode) throws -> AttachmentInfo {
        try attach(name, hold: mode == .shared ? .shared : mode == .readOnly ? .none : .exclusive)
    }

    public func attach(_ name: VolumeName, hold: Hold, device kind: KernelDeviceKind = .loop) throws -> AttachmentInfo {
        try operations.run(name.value, "attach") { try attachHoldingSlot(name, hold: hold, device: kind) }
    }

    private func attachment(_ name: VolumeName) -> Attachment? { attached.withLock { $0[name.value] } }

    /// Caller holds `name`'s operation slot.
    private func attachHoldingSlot(_ name: VolumeName, hold: Hold, device kind: KernelDeviceKind) throws -> AttachmentInfo {
        if let a = attachment(name) {
            let info = attached.withLock { _ in a.info }
            guard (info.deviceKind ?? .loop) == kind else {
                throw StoreError(.alreadyExists, "\(name) is attached on this node with its \((info.deviceKind ?? .loop).rawValue) device \(info.device); detach it first")
            }
            return info
        }
        guard !stopping.withLock({ $0 }) else { throw StoreError(.closed, "archip serve is stopping; \(name) was not attached") }
        // Before anything is opened: a missing nbd module is a one-line refusal.
        if kind == .nbd, let why = KernelNBDDevice.unavailableReason() { throw StoreError(.unsupported, why) }
        let started = Date()
        var undo = UndoStack()
        let store = try liveStore()
        do {
            let volume = try store.open(name, mode: hold.openMode, owner: owner)
            undo.push { try? volume.close() }
            // A volume stays a writable device whatever its hold: the loop device
            // cannot change from read-only to read-write later.
            let isSnapshot = (try? store.info(name).kind) == "snapshot"
            try holds.add(name.value)
            undo.push { [holds] in try? holds.remove(name.value) }
            let device = VolumeDevice(volume, readOnly: isSnapshot)
            var fuse: FUSEExport?
            var loop: LoopDevice?
            if kind == .loop {
                let f = try FUSEExport(device: device, mountpoint: runtimeDir + "/mnt/" + name.value, fileName: name.value,
                                       fsName: "archip:" + name.value)
                undo.push { [limits] in f.stop(timeout: limits.fuseStop) }
                let l = try LoopDevice.attach(file: f.path, readOnly: isSnapshot)
                undo.push { [limits] in try? l.detach(waitingUpTo: limits.loopRelease) }
                try holds.record(name.value, devices: .init(loop: l.minor, fuse: f.connection))
                fuse = f
                loop = l
            }
            let socket = nbdSocketPath(name)
            try FUSEExport.makeDirectory(runtimeDir + "/nbd", what: "NBD socket folder")
            let nbd = try NBDServer(socketPath: socket, exports: [try NBDExport(name: name.value, device: device)],
                                    defaultExport: name.value)
            try nbd.start()
            undo.push { [limits] in try? nbd.stop(gracePeriod: .seconds(limits.nbdGrace)) }
            var kernelNBD: KernelNBDDevice?
            if kind == .nbd {
                kernelNBD = try KernelNBDDevice.connect(socket: socket, export: name.value, size: volume.size,
                                                        readOnly: isSnapshot, logFile: runtimeDir + "/nbd-client.log")
            }
            var info = AttachmentInfo(name: name.value, device: kernelNBD?.path ?? loop?.path ?? "",
                                      uri: "nbd:unix:\(socket):exportname=\(name.value)",
                                      mode: isSnapshot ? "read-only" : hold.rawValue, readOnly: isSnapshot, size: volume.size)
            info.deviceKind = kind
            let a = Attachment(device: device, store: store, fuse: fuse, loop: loop, kernelNBD: kernelNBD, nbd: nbd, info: info)
            attached.withLock { $0[name.value] = a }
            log(String(format: "attach %@: %@ %@ (%@) in %.0f ms", name.value, info.device, info.uri, info.mode,
                       Date().timeIntervalSince(started) * 1000))
            return info
        } catch {
            undo.run()
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
        try operations.run(name.value, "open") {
            _ = try liveStore()   // a hold taken on a fenced client would be refused by the cluster
            _ = try attachHoldingSlot(name, hold: hold, device: attachment(name)?.info.deviceKind ?? .loop)
            guard let a = attachment(name) else { throw StoreError(.closed, "\(name) was detached while being opened") }
            try changeHold(a, name, to: hold)
            return attached.withLock { _ in a.info }
        }
    }

    /// Ganeti's close: releases the hold (flushing first); the devices stay
    /// until detach. Idempotent.
    public func close(_ name: VolumeName) throws {
        try operations.run(name.value, "close") {
            guard let a = attachment(name) else { return }
            try changeHold(a, name, to: .none)
        }
    }

    /// Caller holds `name`'s operation slot.
    private func changeHold(_ a: Attachment, _ name: VolumeName, to hold: Hold) throws {
        let info = attached.withLock { _ in a.info }
        guard !info.readOnly, info.mode != hold.rawValue else { return }
        let from = info.mode
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
        attached.withLock { _ in a.info.mode = hold.rawValue }
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

    /// Detaches (idempotent): flushes everything and releases the lock. Every
    /// step has a bound (see the type's comment); a device something still
    /// holds (a mounted file system) is refused before anything is taken down.
    public func detach(_ name: VolumeName) throws {
        try operations.run(name.value, "detach") { try detachHoldingSlot(name) }
    }

    /// Caller holds `name`'s operation slot.
    private func detachHoldingSlot(_ name: VolumeName) throws {
        guard let a = attachment(name) else { return }
        let started = Date()
        if let dev = a.loop?.path ?? a.kernelNBD?.path, archip_blk_in_exclusive_use(dev) == 1 {
            throw StoreError(.locked, "cannot detach \(name): \(dev) is in use (a mounted file system or an exclusive opener); unmount or close it first")
        }
        // A volume whose client the cluster fenced can flush nothing: every
        // step still runs (each stops what it stops before its flush fails),
        // and the first flush failure is logged instead of keeping the volume
        // attached for ever. Otherwise the first failure stops the detach.
        var lost: Error?
        func step(_ body: () throws -> Void) throws {
            do { try body() } catch where !a.store.objects.clientIsUsable {
                if lost == nil { lost = error }
            }
        }
        // The kernel's NBD client first: it is a client of the server stopped next.
        try step { try a.kernelNBD?.disconnect(logFile: runtimeDir + "/nbd-client.log") }
        try step { try a.nbd.stop(gracePeriod: .seconds(limits.nbdGrace)) }
        try step { try a.loop?.detach(waitingUpTo: limits.loopRelease) }
        var fuseNote = ""
        if let f = a.fuse {
            switch f.stop(timeout: limits.fuseStop) {
            case .unmounted: break
            case .aborted: fuseNote = "; its FUSE session outlived the unmount (held by another mount namespace) and was aborted"
            case .abandoned: fuseNote = "; its FUSE session did not end even when aborted (its thread is left)"
            }
        }
        try step { try a.volume.close() }
        if let lost {
            // The breaker owns the lock now: nothing here can be released either.
            fuseNote += "; its client was fenced by the cluster, so writes it had not flushed are lost (\(lost))"
        }
        attached.withLock { $0[name.value] = nil }
        try holds.remove(name.value)
        log(String(format: "detach %@ in %.0f ms%@", name.value, Date().timeIntervalSince(started) * 1000, fuseNote))
    }

    /// A snapshot consistent with every write acknowledged so far.
    public func snapshot(_ name: VolumeName, as snap: VolumeName) throws {
        try operations.run(name.value, "snapshot") {
            guard let a = attachment(name), attached.withLock({ _ in a.info.mode }) != Hold.none.rawValue else {
                // Not held here: the store takes the volume's lock for the snapshot
                // (an unheld attachment's read-only view still reads the same data).
                try store.snapshot(name, as: snap, owner: nil)
                return
            }
            try a.volume.snapshot(snap)
            log("snapshot \(name.value) as \(snap.value)")
        }
    }

    /// Snapshots other nodes ask for (SnapshotRequests) of the volumes this
    /// daemon holds writable: only it has every write it acknowledged.
    /// Also notices a fenced client (this loop's own reads meet it first when
    /// no guest does I/O) and replaces it, so the log says so at once and
    /// other nodes' snapshot requests keep being answered.
    private func serveSnapshotRequests() {
        var reconnectFailure: String?
        while !stopping.withLock({ $0 }) {
            if !store.objects.clientIsUsable {
                do {
                    _ = try liveStore()
                    reconnectFailure = nil
                } catch {
                    let text = "\(error)"
                    if text != reconnectFailure { log("the cluster fenced this daemon's client (blocklisted); reconnecting failed (retried): \(text)") }
                    reconnectFailure = text
                }
            }
            let held = attached.withLock { table in
                table.compactMap { name, a in a.info.mode != Hold.none.rawValue ? name : nil }
            }
            for n in held {
                guard let name = try? VolumeName(n), let c = store.claimSnapshotRequest(name) else { continue }
                Thread.detachNewThread { [self] in
                    do {
                        try snapshot(name, as: c.snapshot)
                        store.answer(c, error: nil)
                        log("snapshot \(name.value) as \(c.snapshot.value) for \(c.from)")
                    } catch {
                        store.answer(c, error: "\(error)")
                        log("snapshot \(name.value) as \(c.snapshot.value) for \(c.from) failed: \(error)")
                    }
                }
            }
            Thread.sleep(forTimeInterval: SnapshotRequests.pollInterval)
        }
    }

    public func grow(_ name: VolumeName, to size: ByteCount) throws -> AttachmentInfo? {
        try operations.run(name.value, "grow") {
            guard let a = attachment(name) else {
                try store.withVolume(name) { try $0.resize(to: size, allowShrink: false) }
                return nil
            }
            if attached.withLock({ _ in a.info.mode }) == Hold.none.rawValue {
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
            let info = attached.withLock { _ in
                a.info.size = a.volume.size
                return a.info
            }
            log("grow \(name.value) to \(size.bytes) bytes")
            return info
        }
    }

    /// Detaches everything and stops serving. Each detach is bounded, so a
    /// stop is too (systemd's TimeoutStopSec is the backstop).
    public func shutdown() {
        let first = stopping.withLock { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        for n in attached.withLock({ Array($0.keys) }).sorted() {
            do { try detach(try VolumeName(n)) } catch { log("shutdown: detach \(n): \(error)") }
        }
        listener?.close()
        stopped.signal()
    }
}

/// Steps to take back, newest first, when a multi-step operation fails part
/// way (attach: the volume's lock, the FUSE mount, the loop device, the NBD
/// socket, each undone if a later step fails).
struct UndoStack {
    private var steps: [() -> Void] = []
    mutating func push(_ step: @escaping () -> Void) { steps.append(step) }
    func run() { for step in steps.reversed() { step() } }
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
