import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The socket system calls the NBD server makes, in one place: each retries
/// EINTR and throws a `ServeError` naming the call, the socket and errno.
enum Sys {
    @inline(__always) static func retry<T: FixedWidthInteger>(_ body: () -> T) -> T {
        while true {
            let r = body()
            if r == -1 && errno == EINTR { continue }
            return r
        }
    }

    static func address(path: String) throws -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else {
            throw ServeError(.invalidArgument, "socket path '\(path)' is \(bytes.count) bytes",
                             cause: "a unix socket path must be 1 to \(capacity - 1) bytes without NUL; choose a shorter path")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            dst.copyBytes(from: bytes)
            dst[bytes.count] = 0
        }
        return addr
    }

    static func withSockaddr<R>(_ addr: inout sockaddr_un, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    static func streamSocket(_ what: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServeError.system("socket", what, errno: errno) }
        return fd
    }

    /// Connects to a unix socket (used to tell a live server from a stale socket file, and by tests).
    /// With `timeout`, a connect to a listener whose backlog is full gives up
    /// after it (EAGAIN) instead of waiting for the server to accept.
    static func connect(path: String, timeout: TimeInterval? = nil) throws -> Int32 {
        var addr = try address(path: path)
        let fd = try streamSocket(path)
        if let timeout {
            var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        let r = withSockaddr(&addr) { p, len in retry { Glibc.connect(fd, p, len) } }
        guard r == 0 else {
            let e = errno
            Glibc.close(fd)
            throw ServeError.system("connect", path, errno: e)
        }
        return fd
    }

    /// Waits until `fd` is readable (or hung up) for at most `timeout`;
    /// false on timeout. A negative timeout waits forever.
    static func waitReadable(_ fd: Int32, timeoutMilliseconds: Int32, what: String) throws -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let r = retry { poll(&p, 1, timeoutMilliseconds) }
        if r < 0 { throw ServeError.system("poll", what, errno: errno) }
        return r > 0
    }
}

/// The listening socket: created 0600, replaces a stale socket file, and on
/// close removes the file only if it is still the one it bound.
final class UnixListener: @unchecked Sendable {
    let path: String
    let fd: Int32
    private let device: UInt64
    private let inode: UInt64

    init(path: String, backlog: Int32 = 128) throws {
        self.path = path
        var addr = try Sys.address(path: path)
        try UnixListener.removeStaleSocket(path)
        let fd = try Sys.streamSocket(path)
        var ok = false
        defer { if !ok { Glibc.close(fd) } }
        let r = Sys.withSockaddr(&addr) { p, len in Glibc.bind(fd, p, len) }
        guard r == 0 else {
            let e = errno
            if e == EADDRINUSE {
                throw ServeError(.addressInUse, "bind: \(path)", cause: "another server created it meanwhile", errno: e)
            }
            throw ServeError.system("bind", path, errno: e)
        }
        // Nobody can connect before listen(), so tightening the mode between
        // bind and listen leaves no window where the umask's mode applies.
        guard chmod(path, 0o600) == 0 else {
            let e = errno
            unlink(path)
            throw ServeError.system("chmod", path, errno: e)
        }
        var st = stat()
        guard lstat(path, &st) == 0 else {
            let e = errno
            unlink(path)
            throw ServeError.system("stat", path, errno: e)
        }
        // Non-blocking: accept() runs after poll() says a client is waiting,
        // and must not hang if that client has already gone.
        let fl = fcntl(fd, F_GETFL)
        guard fl >= 0, fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 else {
            let e = errno
            unlink(path)
            throw ServeError.system("fcntl O_NONBLOCK", path, errno: e)
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let e = errno
            unlink(path)
            throw ServeError.system("listen", path, errno: e)
        }
        self.fd = fd
        self.device = UInt64(st.st_dev)
        self.inode = UInt64(st.st_ino)
        ok = true
    }

    /// A socket file nobody listens on is left behind by a server that died;
    /// it is replaced. A live server, or a file that is not a socket, is not touched.
    private static func removeStaleSocket(_ path: String) throws {
        var st = stat()
        if lstat(path, &st) != 0 {
            if errno == ENOENT { return }
            throw ServeError.system("stat", path, errno: errno)
        }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw ServeError(.addressInUse, "\(path) exists and is not a socket",
                             cause: "remove it or choose another socket path")
        }
        do {
            let probe = try Sys.connect(path: path)
            Glibc.close(probe)
            throw ServeError(.addressInUse, "\(path) is served by another running server",
                             cause: "stop that server first or choose another socket path")
        } catch let e as ServeError where e.errno == ECONNREFUSED || e.errno == ENOENT {
            // ECONNREFUSED: no one listens, the file is stale. ENOENT: it went away meanwhile.
            if unlink(path) != 0 && errno != ENOENT {
                throw ServeError.system("unlink stale socket", path, errno: errno)
            }
        }
    }

    /// Room for several 1 MiB read replies in the socket. A unix socket
    /// charges what is queued to the sender: with the default 208 KiB, a
    /// 1 MiB reply goes out in five rounds of "client reads, server wakes".
    /// SO_SNDBUFFORCE (root) passes net.core.wmem_max; else the capped SO_SNDBUF.
    static let sendBufferBytes: Int32 = 4 << 20

    static func enlargeSendBuffer(_ fd: Int32) {
        var size = sendBufferBytes
        let len = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, len) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, len)
        }
    }

    /// The next waiting client, or nil if none is waiting (or it left again).
    func accept() throws -> Int32? {
        let fd = Sys.retry { Glibc.accept(self.fd, nil, nil) }
        if fd >= 0 {
            // accept4(SOCK_CLOEXEC) is hidden by Glibc's module map; the short
            // window before FD_CLOEXEC only matters if another thread forks.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            UnixListener.enlargeSendBuffer(fd)
            return fd
        }
        switch errno {
        case EAGAIN, EWOULDBLOCK, ECONNABORTED, EPROTO:
            return nil
        default:
            throw ServeError.system("accept", path, errno: errno)
        }
    }

    /// Closes the socket and removes its file if the file is still ours (a
    /// newer server may have replaced it after we were declared stale).
    func close() {
        Glibc.close(fd)
        var st = stat()
        if lstat(path, &st) == 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode {
            unlink(path)
        }
    }
}

/// One client connection's socket. Reads and writes use the descriptor
/// without a lock (the connection owns it, one reader, writes serialized by
/// the reply writer); only `shutdown` may come from another thread (the
/// server stopping), and it and `close` share a lock so that a descriptor
/// number reused after close is never shut down by mistake.
final class ConnectionSocket: @unchecked Sendable {
    let fd: Int32
    let name: String
    private let lock = NSLock()
    private var closed = false

    init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
    }

    enum Direction { case receive, both }

    /// Ends the given direction: a blocked recv() returns 0, a blocked send() fails.
    func shutdown(_ d: Direction) {
        lock.lock()
        defer { lock.unlock() }
        if closed { return }
        _ = Glibc.shutdown(fd, d == .receive ? Int32(SHUT_RD) : Int32(SHUT_RDWR))
    }

    func close() {
        lock.lock()
        defer { lock.unlock() }
        if closed { return }
        closed = true
        Glibc.close(fd)
    }

    /// Up to `buffer.count` bytes; 0 means the peer closed.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = Sys.retry { recv(fd, buffer.baseAddress, buffer.count, 0) }
        if n >= 0 { return n }
        if errno == ECONNRESET { return 0 }
        throw ServeError.system("recv", name, errno: errno)
    }

    /// Sends all of `parts` (one sendmsg for the usual header + payload).
    /// MSG_NOSIGNAL: a client that went away is an error here, not SIGPIPE
    /// for the whole daemon.
    func sendAll(_ parts: [UnsafeRawBufferPointer]) throws {
        var iov = parts.filter { $0.count > 0 }.map {
            iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count)
        }
        var first = 0
        while first < iov.count {
            let sent: Int = iov.withUnsafeMutableBufferPointer { vecs in
                var msg = msghdr()
                msg.msg_iov = vecs.baseAddress! + first
                msg.msg_iovlen = vecs.count - first
                return Sys.retry { sendmsg(fd, &msg, Int32(MSG_NOSIGNAL)) }
            }
            if sent < 0 {
                if errno == EPIPE || errno == ECONNRESET {
                    throw ServeError(.peerClosed, "send: \(name)", cause: "the client closed the connection", errno: errno)
                }
                throw ServeError.system("send", name, errno: errno)
            }
            var left = sent
            while first < iov.count && left >= iov[first].iov_len {
                left -= iov[first].iov_len
                first += 1
            }
            if left > 0 {
                iov[first].iov_base = iov[first].iov_base! + left
                iov[first].iov_len -= left
            }
        }
    }

    func sendAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try sendAll([$0]) }
    }
}

/// Buffered reads from a connection: small request headers come from one
/// recv() of up to 64 KiB, large payloads go straight into their buffer.
/// During the handshake a deadline bounds how long a silent client may hold
/// the connection.
final class SocketReader: @unchecked Sendable {
    let socket: ConnectionSocket
    private let storage: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    /// While set, every wait for data ends at this instant with `.timedOut`.
    var deadline: ContinuousClock.Instant?

    init(socket: ConnectionSocket, bufferBytes: Int = 64 << 10) {
        self.socket = socket
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferBytes, alignment: 16)
    }

    deinit { storage.deallocate() }

    var buffered: Int { end - start }

    private func waitForData() throws {
        guard let deadline else { return }
        let left = deadline - ContinuousClock.now
        let ms = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
        guard ms > 0, try Sys.waitReadable(socket.fd, timeoutMilliseconds: Int32(clamping: ms), what: socket.name) else {
            throw ServeError(.timedOut, "\(socket.name): handshake not finished in time", cause: "closing the connection")
        }
    }

    /// Refills the buffer; false on end of stream.
    private func fill() throws -> Bool {
        if start == end { start = 0; end = 0 }
        if end == storage.count {
            // Compact: move the unread tail to the front.
            let n = end - start
            storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: n)
            start = 0
            end = n
        }
        try waitForData()
        let n = try socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]))
        if n == 0 { return false }
        end += n
        return true
    }

    /// Fills `dest` completely. Returns false if the stream ended before the
    /// first byte (a clean end between messages); throws `.peerClosed` if it
    /// ended in the middle.
    func readExactly(_ dest: UnsafeMutableRawBufferPointer, what: @autoclosure () -> String) throws -> Bool {
        var done = 0
        while done < dest.count {
            if start < end {
                let n = min(end - start, dest.count - done)
                (dest.baseAddress! + done).copyMemory(from: storage.baseAddress! + start, byteCount: n)
                start += n
                done += n
                continue
            }
            // Large remainder: read it straight into the destination.
            if dest.count - done >= storage.count / 2 {
                try waitForData()
                let n = try socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: dest[done...]))
                if n == 0 { return try ended(done, dest.count, what()) }
                done += n
                continue
            }
            if try !fill() { return try ended(done, dest.count, what()) }
        }
        return true
    }

    private func ended(_ done: Int, _ want: Int, _ what: String) throws -> Bool {
        if done == 0 { return false }
        throw ServeError(.peerClosed, "\(socket.name): connection closed in the middle of \(what)",
                         cause: "got \(done) of \(want) bytes")
    }

    /// Like `readExactly`, but the end of the stream is always an error.
    func require(_ dest: UnsafeMutableRawBufferPointer, what: @autoclosure () -> String) throws {
        let w = what()
        if try !readExactly(dest, what: w) {
            throw ServeError(.peerClosed, "\(socket.name): connection closed before \(w)")
        }
    }

    func require(_ count: Int, what: @autoclosure () -> String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let w = what()
        try out.withUnsafeMutableBytes { try require($0, what: w) }
        return out
    }

    /// Reads and drops `count` bytes (the payload of a refused write, an unknown option's data).
    func skip(_ count: Int, what: @autoclosure () -> String) throws {
        var left = count
        let w = what()
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: min(max(count, 1), 64 << 10), alignment: 1)
        defer { scratch.deallocate() }
        while left > 0 {
            let n = min(left, scratch.count)
            try require(UnsafeMutableRawBufferPointer(rebasing: scratch[0..<n]), what: w)
            left -= n
        }
    }
}
