import ArchipStore
import Foundation

/// Talks to a node's `archip serve` over its control socket.
///
/// Every round trip has a bound: a daemon that does not answer in time gives
/// a one-line error naming its pid and what it is doing (asked on a second
/// connection), never a hang. A script that hangs holds Ganeti's job and its
/// locks for ever; one that fails tells the operator where to look.
public final class ControlClient {
    public let runtimeDir: String
    /// The store the caller means: sent with each request, so a daemon of
    /// another store refuses instead of answering for its own.
    public var store: String?
    private let socket: ConnectionSocket
    private var buffer: [UInt8] = []
    /// The second connection a timeout asks on: its own timeout only reports.
    private var isProbe = false

    /// How long a request may take, in seconds: `ARCHIP_CONTROL_TIMEOUT`, or
    /// per operation. The daemon's own waits are bounded below these (see
    /// NodeDaemon), so only a daemon stuck where it should not be reaches them.
    public static func timeout(for op: ControlRequest.Op) -> TimeInterval {
        if let s = ProcessInfo.processInfo.environment["ARCHIP_CONTROL_TIMEOUT"], let t = TimeInterval(s), t > 0 { return t }
        switch op {
        case .ping, .list: return 15
        case .attach, .open, .close, .detach, .snapshot, .grow, .shutdown: return 120
        }
    }

    /// Connects; nil if no daemon listens there.
    public static func connect(runtimeDir: String, store: String? = nil) -> ControlClient? {
        guard let fd = try? Sys.connect(path: runtimeDir + "/control.sock", timeout: 5) else { return nil }
        return ControlClient(fd: fd, runtimeDir: runtimeDir, store: store)
    }

    private init(fd: Int32, runtimeDir: String, store: String?) {
        socket = ConnectionSocket(fd: fd, name: "control")
        self.runtimeDir = runtimeDir
        self.store = store
    }

    deinit { socket.close() }

    /// Sends one request; a failure reply becomes a StoreError with its code.
    public func call(_ request: ControlRequest, timeout: TimeInterval? = nil) throws -> ControlReply {
        var request = request
        if request.store == nil { request.store = store }
        let limit = timeout ?? ControlClient.timeout(for: request.op)
        let deadline = Date().addingTimeInterval(limit)
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        try socket.sendAll([UInt8](try e.encode(request)) + [0x0A])
        guard let line = try readLine(until: deadline) else {
            throw StoreError(.io, "archip serve (\(daemonDescription())) closed the control connection during \(what(request))")
        }
        let reply: ControlReply
        do {
            reply = try JSONDecoder().decode(ControlReply.self, from: Data(line.utf8))
        } catch {
            throw StoreError(.io, "archip serve (\(daemonDescription())) sent an unreadable reply to \(what(request))")
        }
        if !reply.ok {
            let code = reply.code.flatMap(StoreError.Code.init(rawValue:)) ?? .io
            throw StoreError(code, reply.error ?? "archip serve failed")
        }
        return reply
    }

    private func what(_ r: ControlRequest) -> String { r.op.rawValue + (r.name.map { " " + $0 } ?? "") }

    /// One reply line, or nil at end of stream; throws when `deadline` passes first.
    private func readLine(until deadline: Date) throws -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line
            }
            guard buffer.count < 16 << 20 else { throw StoreError(.io, "archip serve sent a reply longer than 16 MiB") }
            let left = deadline.timeIntervalSinceNow
            guard left > 0, try Sys.waitReadable(socket.fd, timeoutMilliseconds: Int32(min(left, 3600) * 1000) + 1,
                                                 what: "control socket") else {
                throw timedOut()
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = try chunk.withUnsafeMutableBytes { try socket.receive(into: $0) }
            if n == 0 { return nil }
            buffer += chunk[0..<n]
        }
    }

    /// The timeout's one line: the daemon's pid and what it is doing, asked
    /// on a second connection with a short bound of its own.
    private func timedOut() -> StoreError {
        let who = daemonDescription()
        if isProbe { return StoreError(.io, "archip serve (\(who)) did not answer a ping") }
        if let probe = ControlClient.connect(runtimeDir: runtimeDir), probe.markProbe(),
           let reply = try? probe.call(ControlRequest(op: .ping), timeout: 2) {
            let busy = (reply.busy ?? []).map(\.description)
            return StoreError(.io, "archip serve (\(who)) did not answer in time; it is busy with: \(busy.isEmpty ? "nothing it reports" : busy.joined(separator: ", ")); see \(runtimeDir)/serve.log")
        }
        return StoreError(.io, "archip serve (\(who)) does not answer, not even a ping within 2 s; see \(runtimeDir)/serve.log, or restart it (systemctl restart archip-serve)")
    }

    private func markProbe() -> Bool {
        isProbe = true
        return true
    }

    /// "pid N, <runtime>/control.sock", from the daemon's pid file.
    private func daemonDescription() -> String {
        let pid = (try? String(contentsOfFile: runtimeDir + "/serve.pid", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return "pid \(pid ?? "unknown"), \(runtimeDir)/control.sock"
    }

    /// Connects, starting the daemon with `start` (and waiting for it) if none runs.
    public static func connectOrStart(runtimeDir: String, store: String? = nil, timeout: TimeInterval = 15,
                                      start: () throws -> Void) throws -> ControlClient {
        if let c = connect(runtimeDir: runtimeDir, store: store) { return c }
        try start()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let c = connect(runtimeDir: runtimeDir, store: store), (try? c.call(ControlRequest(op: .ping), timeout: 2)) != nil {
                return c
            }
            usleep(50_000)
        }
        throw StoreError(.io, "archip serve did not start within \(Int(timeout)) s; see \(runtimeDir)/serve.log")
    }
}
