import Foundation

/// One client connection: the handshake (option haggling) on the
/// connection's own thread, then the transmission phase
/// (`NBDConnection+Transmission.swift`).
///
///     accepted ──handshake──▶ option loop ──EXPORT_NAME / GO──▶ transmission ──EOF / DISC──▶ drain ──▶ closed
///                                  │                                   │
///                                  └── ABORT, EOF, violation, timeout ─┴──────────────────────────▶ closed
final class NBDConnection: @unchecked Sendable {
    let id: Int
    let socket: ConnectionSocket
    let reader: SocketReader
    let server: NBDServer
    var logger: ServeLogger { server.logger }
    var configuration: NBDServer.Configuration { server.configuration }

    private let stateLock = NSLock()
    private var stopRequested = false
    private var pipeline: RequestPipeline?

    init(id: Int, socket: ConnectionSocket, server: NBDServer) {
        self.id = id
        self.socket = socket
        self.reader = SocketReader(socket: socket)
        self.server = server
    }

    /// What the handshake settled on.
    struct Session {
        let export: NBDExport
        let flags: NBDProtocol.TransmissionFlags
        let size: UInt64
    }

    var isStopRequested: Bool { stateLock.withLock { stopRequested } }

    /// The server is stopping: read nothing new (the reader sees the end of
    /// the stream once what the kernel holds is consumed), finish the rest.
    func requestStop() {
        stateLock.withLock { stopRequested = true }
        socket.shutdown(.receive)
    }

    /// Grace period over: blocked sends fail, the reader ends.
    func forceClose() {
        socket.shutdown(.both)
    }

    var liveStatistics: (peakInFlight: Int, completed: Int) {
        stateLock.withLock { pipeline }?.statistics ?? (0, 0)
    }

    func attach(_ p: RequestPipeline) { stateLock.withLock { pipeline = p } }

    // MARK: life cycle

    func run() {
        var protocolError = false
        defer {
            socket.close()
            let stats = liveStatistics
            server.connectionEnded(self, completed: stats.completed, peakInFlight: stats.peakInFlight,
                                   protocolError: protocolError)
        }
        do {
            reader.deadline = ContinuousClock.now + configuration.handshakeTimeout
            guard let session = try handshake() else { return }
            reader.deadline = nil
            server.noteInUse(session.export.device)
            logger.debug("\(socket.name): transmission", [("export", session.export.name), ("size", "\(session.size)")])
            try transmission(session)
        } catch let e as ServeError {
            switch e.code {
            case .peerClosed:
                // Clients may simply go away (qemu-img after `info` closes without DISC sometimes).
                logger.debug("\(e)")
            case .protocolViolation, .timedOut:
                protocolError = true
                logger.warning("\(e)")
            default:
                logger.error("\(e)")
            }
        } catch {
            logger.error("\(socket.name): \(error)")
        }
    }

    // MARK: handshake

    private func violation(_ what: String) -> ServeError {
        ServeError(.protocolViolation, "\(socket.name): \(what)", cause: "closing the connection")
    }

    /// Runs option haggling. Returns the session to serve, or nil if the
    /// client aborted or left (or asked for an export that does not exist
    /// with NBD_OPT_EXPORT_NAME, which cannot be answered with an error).
    func handshake() throws -> Session? {
        var greeting: [UInt8] = []
        BigEndian.append(&greeting, NBDProtocol.initPassword)
        BigEndian.append(&greeting, NBDProtocol.optionMagic)
        let offered: NBDProtocol.HandshakeFlags = [.fixedNewstyle, .noZeroes]
        BigEndian.append(&greeting, offered.rawValue)
        try socket.sendAll(greeting)

        var clientFlagBytes = [UInt8](repeating: 0, count: 4)
        guard try clientFlagBytes.withUnsafeMutableBytes({ try reader.readExactly($0, what: "client flags") }) else {
            return nil
        }
        let clientFlags = NBDProtocol.ClientFlags(rawValue: BigEndian.u32(clientFlagBytes, 0))
        let known: NBDProtocol.ClientFlags = [.fixedNewstyle, .noZeroes]
        guard clientFlags.isSubset(of: known) else {
            // The spec: the server MUST drop the connection on unknown client flags.
            throw violation("unknown client flags 0x\(String(clientFlags.rawValue, radix: 16))")
        }
        let noZeroes = clientFlags.contains(.noZeroes)

        var options = 0
        var header = [UInt8](repeating: 0, count: NBDProtocol.optionHeaderBytes)
        while true {
            guard try header.withUnsafeMutableBytes({ try reader.readExactly($0, what: "an option header") }) else {
                return nil
            }
            options += 1
            let magic = BigEndian.u64(header, 0)
            let code = BigEndian.u32(header, 8)
            let length = BigEndian.u32(header, 12)
            guard magic == NBDProtocol.optionMagic else {
                throw violation("bad option magic 0x\(String(magic, radix: 16))")
            }
            guard length <= UInt32(configuration.maxOptionBytes) else {
                throw violation("option \(code) carries \(length) bytes, more than the \(configuration.maxOptionBytes) accepted")
            }
            guard options <= configuration.maxOptions else {
                throw violation("more than \(configuration.maxOptions) options without choosing an export")
            }
            let data = try reader.require(Int(length), what: "option \(code)'s data")
            let option = NBDProtocol.Option(rawValue: code)

            if server.isStopping && option != .abort {
                if option == .exportName { return nil }  // cannot be refused with an error
                try reply(code, .errShutdown, message: "the server is shutting down")
                continue
            }

            switch option {
            case .exportName?:
                let name = String(decoding: data, as: UTF8.self)
                guard let export = server.export(named: name) else {
                    // NBD_OPT_EXPORT_NAME has no error reply: the spec says close.
                    logger.info("\(socket.name): client asked for unknown export '\(name)' (NBD_OPT_EXPORT_NAME); closing")
                    return nil
                }
                let session = Session(export: export, flags: export.transmissionFlags, size: export.device.size)
                var out: [UInt8] = []
                BigEndian.append(&out, session.size)
                BigEndian.append(&out, session.flags.rawValue)
                if !noZeroes { out += [UInt8](repeating: 0, count: NBDProtocol.exportNamePaddingBytes) }
                try socket.sendAll(out)
                return session

            case .abort?:
                // The spec lets the client close without waiting for this
                // ACK, so failing to send it is normal, not an error.
                do {
                    try reply(code, .ack)
                } catch {
                    logger.debug("\(socket.name): NBD_OPT_ABORT acknowledgement not delivered: \(error)")
                }
                return nil

            case .list?:
                guard data.isEmpty else {
                    try reply(code, .errInvalid, message: "NBD_OPT_LIST takes no data")
                    continue
                }
                for e in server.exports {
                    var body: [UInt8] = []
                    BigEndian.append(&body, UInt32(e.name.utf8.count))
                    body += Array(e.name.utf8)
                    try reply(code, .server, body)
                }
                try reply(code, .ack)

            case .info?, .go?:
                if let session = try infoOrGo(code, data, go: option == .go) { return session }

            default:
                // STRUCTURED_REPLY, STARTTLS, meta contexts, extended headers, unknown:
                // simple replies are all this server speaks.
                try reply(code, .errUnsupported, message: "option \(code) is not supported by this server")
            }
        }
    }

    /// NBD_OPT_INFO / NBD_OPT_GO: name, then the list of information requests.
    private func infoOrGo(_ code: UInt32, _ data: [UInt8], go: Bool) throws -> Session? {
        guard data.count >= 6 else {
            try reply(code, .errInvalid, message: "option data is \(data.count) bytes, at least 6 expected")
            return nil
        }
        let nameLength = Int(BigEndian.u32(data, 0))
        guard nameLength <= data.count - 6 else {
            try reply(code, .errInvalid, message: "export name length \(nameLength) does not fit in \(data.count) bytes")
            return nil
        }
        let count = Int(BigEndian.u16(data, 4 + nameLength))
        guard 6 + nameLength + 2 * count == data.count else {
            try reply(code, .errInvalid, message: "\(count) information requests do not match the option length \(data.count)")
            return nil
        }
        let name = String(decoding: data[4..<(4 + nameLength)], as: UTF8.self)
        var requested = Set<UInt16>()
        for i in 0..<count { requested.insert(BigEndian.u16(data, 6 + nameLength + 2 * i)) }

        guard let export = server.export(named: name) else {
            let shown = name.isEmpty ? "the default export (empty name)" : "export '\(name)'"
            try reply(code, .errUnknown, message: "\(shown) is not served on this socket")
            return nil
        }
        let session = Session(export: export, flags: export.transmissionFlags, size: export.device.size)

        var info: [UInt8] = []
        BigEndian.append(&info, NBDProtocol.Info.export.rawValue)
        BigEndian.append(&info, session.size)
        BigEndian.append(&info, session.flags.rawValue)
        try reply(code, .info, info)

        // Sent whether asked or not (the spec allows it): the payload cap is
        // enforced, and clients that did not ask should still learn it.
        let sizes = export.blockSizes
        var bs: [UInt8] = []
        BigEndian.append(&bs, NBDProtocol.Info.blockSize.rawValue)
        BigEndian.append(&bs, sizes.minimum)
        BigEndian.append(&bs, sizes.preferred)
        BigEndian.append(&bs, sizes.maximum)
        try reply(code, .info, bs)

        if requested.contains(NBDProtocol.Info.name.rawValue) {
            var n: [UInt8] = []
            BigEndian.append(&n, NBDProtocol.Info.name.rawValue)
            n += Array(export.name.utf8)
            try reply(code, .info, n)
        }
        if requested.contains(NBDProtocol.Info.description.rawValue), let d = export.description {
            var n: [UInt8] = []
            BigEndian.append(&n, NBDProtocol.Info.description.rawValue)
            n += Array(d.utf8)
            try reply(code, .info, n)
        }
        try reply(code, .ack)
        return go ? session : nil
    }

    private func reply(_ option: UInt32, _ type: NBDProtocol.OptionReply, _ body: [UInt8] = []) throws {
        var out: [UInt8] = []
        out.reserveCapacity(20 + body.count)
        BigEndian.append(&out, NBDProtocol.optionReplyMagic)
        BigEndian.append(&out, option)
        BigEndian.append(&out, type.rawValue)
        BigEndian.append(&out, UInt32(body.count))
        out += body
        try socket.sendAll(out)
    }

    /// Error replies carry a message QEMU shows to its user.
    private func reply(_ option: UInt32, _ type: NBDProtocol.OptionReply, message: String) throws {
        try reply(option, type, Array(message.utf8.prefix(NBDProtocol.maximumStringBytes)))
    }
}
