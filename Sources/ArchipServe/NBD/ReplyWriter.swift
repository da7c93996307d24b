import ArchipStore
import CArchipFuse
import Foundation

/// Sends one connection's simple replies as requests complete, one at a time:
/// a reply (header and payload) is never interleaved with another.
///
/// Workers call `send` directly instead of handing replies to a writer thread:
/// the lock is the serialisation, and a 4 KiB read saves a thread hop.
/// If the client stops accepting data the writer marks the connection broken,
/// shuts the socket down (so the reader sees the end too) and drops the rest.
final class ReplyWriter: @unchecked Sendable {
    private let socket: ConnectionSocket
    private let logger: ServeLogger
    private let lock = NSLock()
    private var broken = false
    /// Replies the reader thread answered itself and has not sent yet (see
    /// `queueRead`). Only the reader touches it; the send takes the lock.
    private let batch: UnsafeMutableRawBufferPointer
    private var batched = 0

    init(socket: ConnectionSocket, logger: ServeLogger, batchBytes: Int = 256 << 10) {
        self.socket = socket
        self.logger = logger
        batch = UnsafeMutableRawBufferPointer.allocate(byteCount: batchBytes, alignment: 4096)
    }

    deinit { batch.deallocate() }

    /// Adds a successful read's reply to the reader's batch: `fill` writes the
    /// `length` payload bytes in place (false: it could not, nothing is
    /// added). A client with several requests in flight sends them together,
    /// and their replies then go out in one `sendmsg` instead of one each
    /// (a system call and a wake-up of the client saved per reply). The reader
    /// must call `flushBatch()` before anything that can wait: reading from
    /// the socket, admitting work, returning.
    func queueRead(handle: UInt64, length: Int, fill: (UnsafeMutableRawBufferPointer) -> Bool) -> Bool {
        let need = NBDProtocol.simpleReplyHeaderBytes + length
        guard need <= batch.count else { return false }
        if batched + need > batch.count { flushBatch() }
        let header = UnsafeMutableRawBufferPointer(rebasing: batch[batched..<(batched + NBDProtocol.simpleReplyHeaderBytes)])
        let payload = UnsafeMutableRawBufferPointer(rebasing: batch[(batched + header.count)..<(batched + need)])
        guard fill(payload) else { return false }
        BigEndian.store(NBDProtocol.simpleReplyMagic, into: header, at: 0)
        BigEndian.store(NBDErrno.success.rawValue, into: header, at: 4)
        BigEndian.store(handle, into: header, at: 8)
        batched += need
        return true
    }

    /// Sends the batched replies, if any.
    func flushBatch() {
        guard batched > 0 else { return }
        let bytes = UnsafeRawBufferPointer(rebasing: batch[0..<batched])
        batched = 0
        lock.lock()
        defer { lock.unlock() }
        if broken { return }
        do {
            try socket.sendAll([bytes])
        } catch {
            broken = true
            socket.shutdown(.both)
            logger.info("\(socket.name): cannot send replies any more, dropping the rest: \(error)")
        }
    }

    var isBroken: Bool { lock.withLock { broken } }

    func send(handle: UInt64, error: NBDErrno, payload: UnsafeRawBufferPointer? = nil) {
        withUnsafeTemporaryAllocation(byteCount: NBDProtocol.simpleReplyHeaderBytes, alignment: 8) { header in
            BigEndian.store(NBDProtocol.simpleReplyMagic, into: header, at: 0)
            BigEndian.store(error.rawValue, into: header, at: 4)
            BigEndian.store(handle, into: header, at: 8)
            lock.lock()
            defer { lock.unlock() }
            if broken { return }
            do {
                // A payload only with success: a failed read sends no data (simple replies).
                if let payload, error == .success {
                    try socket.sendAll([UnsafeRawBufferPointer(header), payload])
                } else {
                    try socket.sendAll([UnsafeRawBufferPointer(header)])
                }
            } catch {
                broken = true
                socket.shutdown(.both)
                logger.info("\(socket.name): cannot send replies any more, dropping the rest: \(error)")
            }
        }
    }

    /// A successful read's reply from pieces: file ranges go to the socket
    /// with sendfile (page references, no copy here), zeros from a zero buffer.
    func sendRead(handle: UInt64, pieces: [VolumeReadPiece]) {
        withUnsafeTemporaryAllocation(byteCount: NBDProtocol.simpleReplyHeaderBytes, alignment: 8) { header in
            BigEndian.store(NBDProtocol.simpleReplyMagic, into: header, at: 0)
            BigEndian.store(NBDErrno.success.rawValue, into: header, at: 4)
            BigEndian.store(handle, into: header, at: 8)
            let c = pieces.map(\.cPiece)
            lock.lock()
            defer { lock.unlock() }
            if broken { return }
            let r = withExtendedLifetime(pieces) {
                archip_send_pieces(socket.fd, header.baseAddress, header.count, c, Int32(c.count))
            }
            if r != 0 {
                // Part of a reply may be out: the stream cannot be resumed.
                broken = true
                socket.shutdown(.both)
                logger.info("\(socket.name): cannot send replies any more, dropping the rest: \(String(cString: strerror(-r)))")
            }
        }
    }
}
