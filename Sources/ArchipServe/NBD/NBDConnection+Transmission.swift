import CArchipFuse
import Foundation

extension NBDConnection {
    /// The transmission phase: this thread reads and checks requests and
    /// queues them; workers run them and reply. Returns when the client
    /// disconnects (DISC or end of stream) after every request received has
    /// been answered; throws on a protocol violation (after the same drain).
    func transmission(_ session: NBDConnection.Session) throws {
        let device = session.export.device
        let check = NBDRequestCheck(transmissionFlags: session.flags, negotiatedSize: session.size)
        let pipeline = RequestPipeline(maxRequests: configuration.maxRequestsInFlight,
                                       maxBytes: configuration.maxBytesInFlight)
        attach(pipeline)
        let replies = ReplyWriter(socket: socket, logger: logger)
        let exportName = session.export.name

        for w in 0..<max(1, configuration.workersPerConnection) {
            pipeline.workerStarted()
            let t = Thread { [self] in
                defer { pipeline.workerExited() }
                while let job = pipeline.next() {
                    execute(job, device: device, pipeline: pipeline, replies: replies, export: exportName)
                    pipeline.complete(job)
                }
            }
            t.name = "nbd-conn-\(id)-w\(w)"
            t.start()
        }
        // Whatever ends the loop, every admitted request is answered (or its
        // reply dropped if the socket broke) before the connection closes.
        defer { pipeline.drainAndClose() }
        do {
            try readRequests(session, check: check, pipeline: pipeline, replies: replies)
        } catch {
            // A violation or a message cut short: the connection is over. Shut
            // it down first, so a worker blocked sending to a client that no
            // longer reads fails at once instead of holding up the drain.
            socket.shutdown(.both)
            throw error
        }
    }

    /// The reader: parses, checks and queues requests until DISC or end of stream.
    private func readRequests(_ session: NBDConnection.Session, check: NBDRequestCheck, pipeline: RequestPipeline,
                              replies: ReplyWriter) throws {
        let device = session.export.device
        let exportName = session.export.name
        var sequence: UInt64 = 0
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: NBDProtocol.requestHeaderBytes, alignment: 8)
        defer { header.deallocate() }

        // Batched replies go out before the reader can wait, and when it stops.
        defer { replies.flushBatch() }
        while true {
            if reader.buffered < NBDProtocol.requestHeaderBytes { replies.flushBatch() }
            guard try reader.readExactly(header, what: "a request header") else { return }
            let h = NBDRequestHeader(decoding: UnsafeRawBufferPointer(header))
            guard h.magic == NBDProtocol.requestMagic else {
                throw ServeError(.protocolViolation, "\(socket.name): bad request magic 0x\(String(h.magic, radix: 16))",
                                 cause: "closing the connection")
            }
            sequence += 1

            var verdict = check.check(h, currentSize: device.size)
            if verdict == .accept && isStopRequested && h.command != .disconnect {
                // The spec: requests received while shutting down get ESHUTDOWN.
                verdict = .reject(.shutdown)
            }
            // Only an inline read keeps the batch open; anything else may wait.
            let inline = verdict == .accept && h.command == .read && h.length <= configuration.inlineReadBytes
                && !configuration.traceRequests
            if !inline { replies.flushBatch() }
            switch verdict {
            case .disconnect(let why):
                throw ServeError(.protocolViolation, "\(socket.name): \(why)", cause: "closing the connection")
            case .reject(let err):
                if h.command == .write {
                    // Keep the stream in step: the refused write's data follows its header.
                    try reader.skip(Int(h.length), what: "the data of a refused write")
                }
                if configuration.traceRequests {
                    logger.debug("\(socket.name): refused \(h.command.map { "\($0)" } ?? "command \(h.type)") "
                                 + "offset \(h.offset) length \(h.length) flags 0x\(String(h.flags, radix: 16)): \(err)",
                                 [("export", exportName), ("handle", "\(h.handle)")])
                }
                replies.send(handle: h.handle, error: err)
                pipeline.countRefused()
            case .accept:
                // `check` accepts only known commands.
                guard let command = h.command else { continue }
                if command == .disconnect {
                    logger.debug("\(socket.name): client disconnected (NBD_CMD_DISC)", [("export", exportName)])
                    return
                }
                if inline {
                    if answerFromPageCache(h, device: device, replies: replies) {
                        pipeline.countRefused()
                        continue
                    }
                    // To a worker: it may wait for the disk.
                    replies.flushBatch()
                }
                let bytes = (command == .read || command == .write) ? Int(h.length) : 0
                pipeline.admit(bytes: bytes)
                var payload: UnsafeMutableRawBufferPointer?
                if command == .write {
                    let p = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
                    do {
                        try reader.require(p, what: "the data of a \(h.length)-byte write")
                    } catch {
                        p.deallocate()
                        pipeline.cancel(bytes: bytes)
                        throw error
                    }
                    payload = p
                }
                pipeline.enqueue(NBDJob(sequence: sequence, header: h, command: command, payload: payload, bytes: bytes))
            }
        }
    }

    /// A small read whose bytes are all in the page cache (or holes) is
    /// answered here on the reader's thread: handing it to a worker costs a
    /// thread wake-up and a context switch, several times the read itself.
    /// Anything that would wait for the disk, or any error, goes to a worker
    /// as usual (false), so the reader never blocks on the store.
    private func answerFromPageCache(_ h: NBDRequestHeader, device: any BlockDevice, replies: ReplyWriter) -> Bool {
        // Read into the reply and checked there (`readCached`): one read of
        // the bytes, and the bytes sent are the ones checked.
        replies.queueRead(handle: h.handle, length: Int(h.length)) { buffer in
            (try? device.readCached(at: h.offset, into: buffer)) ?? false
        }
    }

    /// Runs one request on the device and sends its reply.
    private func execute(_ job: NBDJob, device: any BlockDevice, pipeline: RequestPipeline,
                         replies: ReplyWriter, export: String) {
        let h = job.header
        let fua = h.commandFlags.contains(.fua)
        defer { job.payload?.deallocate() }
        if configuration.traceRequests {
            logger.debug("\(socket.name): \(job.command) offset \(h.offset) length \(h.length)\(fua ? " fua" : "")",
                         [("export", export), ("handle", "\(h.handle)")])
        }
        do {
            switch job.command {
            case .read:
                if h.length >= configuration.zeroCopyReadBytes,
                   let pieces = try device.readPieces(at: h.offset, length: Int(h.length)) {
                    replies.sendRead(handle: h.handle, pieces: pieces)
                    return
                }
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(h.length), alignment: 4096)
                defer { buffer.deallocate() }
                try device.read(at: h.offset, into: buffer)
                replies.send(handle: h.handle, error: .success, payload: UnsafeRawBufferPointer(buffer))
                return
            case .write:
                guard let payload = job.payload else { preconditionFailure("write job without payload") }
                try device.write(at: h.offset, UnsafeRawBufferPointer(payload))
                if fua { try device.flush() }
            case .trim:
                try device.trim(at: h.offset, length: UInt64(h.length))
                if fua { try device.flush() }
            case .writeZeroes:
                try device.writeZeroes(at: h.offset, length: UInt64(h.length))
                if fua { try device.flush() }
            case .flush:
                pipeline.waitForModifications(before: job.sequence)
                try device.flush()
            case .disconnect, .cache, .blockStatus, .resize:
                // The check never admits these.
                replies.send(handle: h.handle, error: .invalid)
                return
            }
            replies.send(handle: h.handle, error: .success)
        } catch {
            let err = NBDErrno(mapping: error)
            // Logged here, where it is handled; the client sees only the errno.
            logger.warning("\(socket.name): \(job.command) offset \(h.offset) length \(h.length) failed (\(err)): \(error)",
                           [("export", export)])
            replies.send(handle: h.handle, error: err)
        }
    }
}
