import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Counters of one server, for operators and tests.
public struct NBDStatistics: Sendable, Equatable {
    public var connectionsAccepted = 0
    /// Connections closed at once because `maxConnections` were open.
    public var connectionsRefused = 0
    public var activeConnections = 0
    /// Requests answered (successfully or with an error).
    public var requestsCompleted = 0
    /// Connections closed because the client broke the protocol (bad magic,
    /// oversize request, malformed option, message cut short).
    public var protocolErrors = 0
    /// The most requests a single connection had in flight at once.
    public var peakRequestsInFlight = 0
}

/// An NBD server on a unix socket: fixed newstyle handshake, simple replies,
/// named exports, many connections, several requests in flight per connection.
///
/// Threads: one accept loop; per connection one thread that does the
/// handshake and then reads requests, and `workersPerConnection` workers that
/// do the device I/O and send the replies (serialised per connection). See
/// docs/NBD.md.
///
/// Life cycle: `init` (exports), `start()` (bind, listen, accept), `add`/
/// `remove` exports while running, `stop()` (stop accepting, finish what is
/// in flight, flush every device).
public final class NBDServer: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Threads doing device I/O for one connection (QEMU keeps up to 16 requests in flight).
        public var workersPerConnection = 4
        /// Requests one connection may have in flight before the server stops reading from it.
        public var maxRequestsInFlight = 64
        /// Buffer bytes (write payloads, read replies) one connection may hold in flight.
        public var maxBytesInFlight = 128 << 20
        /// Connections beyond this are closed as soon as they are accepted.
        public var maxConnections = 256
        /// A client must finish option haggling within this time.
        public var handshakeTimeout: Duration = .seconds(30)
        /// Most options one client may send before it must pick an export.
        public var maxOptions = 64
        /// Largest option payload accepted (names are at most 4 KiB).
        public var maxOptionBytes = 64 << 10
        public var logger: ServeLogger = .discard
        /// Data-path debug: one `.debug` line per request (command, range,
        /// result). Off by default and separate from the logger's level, which
        /// governs control-path events (connections, handshakes, errors), so
        /// an operator can debug a handshake without a line per 4 KiB read.
        public var traceRequests = false
        /// Reads of at least this many bytes are sent from the block objects'
        /// files with sendfile when the device offers pieces
        /// (`BlockDevice.readPieces`); smaller ones are copied through a buffer.
        public var zeroCopyReadBytes: UInt32 = 32 << 10
        /// Reads up to this many bytes whose data is in the page cache are
        /// answered by the connection's reader thread itself (0: never).
        public var inlineReadBytes: UInt32 = 64 << 10

        public init() {}
    }

    private enum Phase { case idle, running, stopping, stopped }

    public let socketPath: String
    public let configuration: Configuration
    var logger: ServeLogger { configuration.logger }

    /// Guards everything below; signalled whenever a connection ends.
    private let cond = NSCondition()
    private var exportsByName: [String: NBDExport] = [:]
    private var exportOrder: [String] = []
    private var defaultName: String?
    private var connections: [Int: NBDConnection] = [:]
    private var devicesInUse: [ObjectIdentifier: any BlockDevice] = [:]
    private var nextConnectionID = 1
    private var phase = Phase.idle
    private var listener: UnixListener?
    private var wakeRead: Int32 = -1
    private var wakeWrite: Int32 = -1
    private let acceptLoopDone = DispatchSemaphore(value: 0)
    private var ended = NBDStatistics()

    /// - Parameters:
    ///   - defaultExport: the export a client gets when it asks for the empty
    ///     name (`nbd:unix:/path` and `nbd+unix:///?socket=` ask for ""); nil
    ///     refuses the empty name.
    public init(socketPath: String, exports: [NBDExport] = [], defaultExport: String? = nil,
                configuration: Configuration = Configuration()) throws {
        self.socketPath = socketPath
        self.configuration = configuration
        for e in exports { try add(e) }
        try setDefaultExport(defaultExport)
    }

    // MARK: exports

    /// Adds an export; new connections can use it at once.
    public func add(_ export: NBDExport) throws {
        try cond.withLock {
            guard exportsByName[export.name] == nil else {
                throw ServeError(.alreadyExists, "export '\(export.name)' is already served on \(socketPath)")
            }
            exportsByName[export.name] = export
            exportOrder.append(export.name)
        }
    }

    /// Removes an export from the list new connections can choose from.
    /// Connections already using it keep their device until they close.
    @discardableResult
    public func remove(exportNamed name: String) -> NBDExport? {
        cond.withLock {
            guard let e = exportsByName.removeValue(forKey: name) else { return nil }
            exportOrder.removeAll { $0 == name }
            if defaultName == name { defaultName = nil }
            return e
        }
    }

    public func setDefaultExport(_ name: String?) throws {
        try cond.withLock {
            if let name, exportsByName[name] == nil {
                throw ServeError(.notFound, "default export '\(name)' is not an export of \(socketPath)",
                                 cause: "add the export first")
            }
            defaultName = name
        }
    }

    public var exports: [NBDExport] { cond.withLock { exportOrder.compactMap { exportsByName[$0] } } }

    /// The export for a name a client sent ("" is the default export, if any).
    func export(named name: String) -> NBDExport? {
        cond.withLock {
            if name.isEmpty, let d = defaultName { return exportsByName[d] }
            return exportsByName[name]
        }
    }

    var isStopping: Bool { cond.withLock { phase != .running } }

    // MARK: start

    /// Binds the socket (0600, replacing a stale socket file) and starts accepting.
    public func start() throws {
        try cond.withLock {
            guard phase == .idle else {
                throw ServeError(.invalidArgument, "NBD server on \(socketPath) was already started")
            }
            let l = try UnixListener(path: socketPath)
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else {
                let e = errno
                l.close()
                throw ServeError.system("pipe", "wake-up pipe of \(socketPath)", errno: e)
            }
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            listener = l
            wakeRead = fds[0]
            wakeWrite = fds[1]
            phase = .running
        }
        let t = Thread { [self] in acceptLoop() }
        t.name = "nbd-accept"
        t.start()
        logger.info("serving NBD on \(socketPath)", [("exports", exports.map(\.name).joined(separator: ","))])
    }

    private func acceptLoop() {
        defer { acceptLoopDone.signal() }
        guard let listener = cond.withLock({ self.listener }) else { return }
        while true {
            var fds = [pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let r = Sys.retry { poll(&fds, 2, -1) }
            if r < 0 {
                logger.error("\(ServeError.system("poll", socketPath, errno: errno)); no longer accepting connections")
                return
            }
            if fds[1].revents != 0 { return }
            do {
                while let fd = try listener.accept() { admit(fd) }
            } catch {
                // EMFILE and friends: the client stays queued; back off instead of spinning.
                logger.error("\(error); retrying in 100 ms")
                usleep(100_000)
            }
        }
    }

    private func admit(_ fd: Int32) {
        let connection: NBDConnection? = cond.withLock {
            if phase != .running || connections.count >= configuration.maxConnections {
                ended.connectionsRefused += 1
                return nil
            }
            let id = nextConnectionID
            nextConnectionID += 1
            ended.connectionsAccepted += 1
            let c = NBDConnection(id: id, socket: ConnectionSocket(fd: fd, name: "\(socketPath) connection \(id)"), server: self)
            connections[id] = c
            return c
        }
        guard let connection else {
            logger.warning("refusing a connection on \(socketPath): \(configuration.maxConnections) connections are open")
            Glibc.close(fd)
            return
        }
        let t = Thread { connection.run() }
        t.name = "nbd-conn-\(connection.id)"
        t.start()
    }

    // MARK: bookkeeping from connections

    func noteInUse(_ device: any BlockDevice) {
        cond.withLock { devicesInUse[ObjectIdentifier(device)] = device }
    }

    func connectionEnded(_ c: NBDConnection, completed: Int, peakInFlight: Int, protocolError: Bool) {
        cond.withLock {
            connections.removeValue(forKey: c.id)
            ended.requestsCompleted += completed
            ended.peakRequestsInFlight = max(ended.peakRequestsInFlight, peakInFlight)
            if protocolError { ended.protocolErrors += 1 }
            cond.broadcast()
        }
    }

    public var statistics: NBDStatistics {
        cond.withLock {
            var s = ended
            s.activeConnections = connections.count
            for c in connections.values {
                let live = c.liveStatistics
                s.requestsCompleted += live.completed
                s.peakRequestsInFlight = max(s.peakRequestsInFlight, live.peakInFlight)
            }
            return s
        }
    }

    // MARK: stop

    /// Stops the server: closes the listener (and removes the socket file),
    /// lets every connection finish the requests it has received (new ones get
    /// ESHUTDOWN), closes the connections, and flushes every device that was
    /// served. Connections still busy after `gracePeriod` are cut off (their
    /// device calls still run to the end before `stop` returns).
    ///
    /// Throws `.flushFailed` if a device could not be flushed: writes
    /// acknowledged to clients may then not be durable, which the caller
    /// (the daemon's detach) must report rather than release the volume.
    public func stop(gracePeriod: Duration = .seconds(30)) throws {
        let wasRunning: Bool = cond.withLock {
            switch phase {
            case .running:
                phase = .stopping
                return true
            case .idle:
                phase = .stopped
                return false
            case .stopping, .stopped:
                return false
            }
        }
        guard wasRunning else { return }

        var byte: UInt8 = 1
        _ = Sys.retry { Glibc.write(wakeWrite, &byte, 1) }
        acceptLoopDone.wait()
        cond.withLock {
            listener?.close()
            listener = nil
            Glibc.close(wakeRead)
            Glibc.close(wakeWrite)
        }

        let open = cond.withLock { Array(connections.values) }
        for c in open { c.requestStop() }
        let deadline = Date(timeIntervalSinceNow: Double(gracePeriod.components.seconds)
                            + Double(gracePeriod.components.attoseconds) / 1e18)
        let stragglers: [NBDConnection] = cond.withLock {
            while !connections.isEmpty {
                if !cond.wait(until: deadline) { break }
            }
            return Array(connections.values)
        }
        if !stragglers.isEmpty {
            logger.warning("\(stragglers.count) connection(s) on \(socketPath) still busy after \(gracePeriod); closing them")
            for c in stragglers { c.forceClose() }
            cond.withLock {
                while !connections.isEmpty { cond.wait() }
            }
        }

        var devices = cond.withLock { devicesInUse }
        for e in exports { devices[ObjectIdentifier(e.device)] = e.device }
        var failures: [String] = []
        for d in devices.values {
            do {
                try d.flush()
            } catch {
                let names = exports.filter { $0.device === d }.map(\.name)
                failures.append("\(names.isEmpty ? "a removed export" : names.joined(separator: ",")): \(error)")
            }
        }
        cond.withLock { phase = .stopped }
        if !failures.isEmpty {
            let e = ServeError(.flushFailed, "stop: flushing \(failures.count) device(s) of \(socketPath) failed",
                               cause: failures.joined(separator: "; "))
            logger.error("\(e)")
            throw e
        }
        logger.info("stopped serving NBD on \(socketPath)")
    }
}
