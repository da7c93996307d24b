import ArchipStore
import Foundation

/// Talks to a node's `archip serve` over its control socket.
public final class ControlClient {
    private let socket: ConnectionSocket
    private var reader: LineReader

    /// Connects; nil if no daemon listens there.
    public static func connect(runtimeDir: String) -> ControlClient? {
        guard let fd = try? Sys.connect(path: runtimeDir + "/control.sock") else { return nil }
        return ControlClient(fd: fd)
    }

    private init(fd: Int32) {
        socket = ConnectionSocket(fd: fd, name: "control")
        reader = LineReader(socket: socket)
    }

    deinit { socket.close() }

    /// Sends one request; a failure reply becomes a StoreError with its code.
    public func call(_ request: ControlRequest) throws -> ControlReply {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        try socket.sendAll([UInt8](try e.encode(request)) + [0x0A])
        guard let line = try reader.next(limit: 16 << 20) else {
            throw StoreError(.io, "archip serve closed the control connection")
        }
        let reply = try JSONDecoder().decode(ControlReply.self, from: Data(line.utf8))
        if !reply.ok {
            let code = reply.code.flatMap(StoreError.Code.init(rawValue:)) ?? .io
            throw StoreError(code, reply.error ?? "archip serve failed")
        }
        return reply
    }

    /// Connects, starting the daemon with `start` (and waiting for it) if none runs.
    public static func connectOrStart(runtimeDir: String, timeout: TimeInterval = 15,
                                      start: () throws -> Void) throws -> ControlClient {
        if let c = connect(runtimeDir: runtimeDir) { return c }
        try start()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let c = connect(runtimeDir: runtimeDir), (try? c.call(ControlRequest(op: .ping))) != nil { return c }
            usleep(50_000)
        }
        throw StoreError(.io, "archip serve did not start within \(Int(timeout)) s; see \(runtimeDir)/serve.log")
    }
}
