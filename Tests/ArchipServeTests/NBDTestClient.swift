import ArchipServe
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct TestClientError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A deliberately small NBD client, written from the protocol text and not
/// sharing code with the server, so the two check each other. Every read has
/// a deadline: a test fails instead of hanging when the server misbehaves.
final class NBDTestClient {
    let fd: Int32
    var timeout: Double = 10

    init(path: String) throws {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw TestClientError("path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            dst.copyBytes(from: bytes)
            dst[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestClientError("socket: \(String(cString: strerror(errno)))") }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard r == 0 else {
            let e = errno
            Glibc.close(fd)
            throw TestClientError("connect \(path): \(String(cString: strerror(e)))")
        }
        self.fd = fd
    }

    deinit { Glibc.close(fd) }

    // MARK: raw bytes

    func send(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw TestClientError("send: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    /// Sends, ignoring a peer that already closed (fuzzing does not care).
    func sendIgnoringErrors(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, bytes.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
    }

    private func waitReadable(_ seconds: Double) throws -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let r = poll(&p, 1, Int32(seconds * 1000))
        if r < 0 { throw TestClientError("poll: \(String(cString: strerror(errno)))") }
        return r > 0
    }

    func receive(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        let deadline = Date(timeIntervalSinceNow: timeout)
        while done < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0, try waitReadable(left) else {
                throw TestClientError("timed out after \(timeout) s waiting for \(count - done) of \(count) bytes")
            }
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw TestClientError("recv: \(String(cString: strerror(errno)))")
            }
            if n == 0 { throw TestClientError("server closed the connection after \(done) of \(count) bytes") }
            done += n
        }
        return out
    }

    /// True if the server closes the connection within `seconds` (any bytes
    /// it sends first are read and dropped).
    func serverCloses(within seconds: Double = 5) throws -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        var scratch = [UInt8](repeating: 0, count: 65536)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0, try waitReadable(left) else { return false }
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 || (n < 0 && errno == ECONNRESET) { return true }
            if n < 0 && errno != EINTR { throw TestClientError("recv: \(String(cString: strerror(errno)))") }
        }
    }

    // MARK: handshake

    /// Reads NBDMAGIC, IHAVEOPT and the handshake flags.
    func readGreeting() throws -> UInt16 {
        let g = try receive(18)
        guard BigEndian.u64(g, 0) == 0x4E42_444D_4147_4943 else { throw TestClientError("no NBDMAGIC") }
        guard BigEndian.u64(g, 8) == 0x4948_4156_454F_5054 else { throw TestClientError("no IHAVEOPT") }
        return BigEndian.u16(g, 16)
    }

    func sendClientFlags(_ flags: UInt32) throws {
        var b: [UInt8] = []
        BigEndian.append(&b, flags)
        try send(b)
    }

    func sendOption(_ code: UInt32, _ data: [UInt8] = []) throws {
        var b: [UInt8] = []
        BigEndian.append(&b, UInt64(0x4948_4156_454F_5054))
        BigEndian.append(&b, code)
        BigEndian.append(&b, UInt32(data.count))
        try send(b + data)
    }

    struct OptionReply {
        var option: UInt32
        var type: UInt32
        var data: [UInt8]
        var isError: Bool { type & 0x8000_0000 != 0 }
        var message: String { String(decoding: data, as: UTF8.self) }
    }

    func readOptionReply() throws -> OptionReply {
        let h = try receive(20)
        guard BigEndian.u64(h, 0) == 0x0003_E889_0455_65A9 else {
            throw TestClientError("bad option reply magic \(String(BigEndian.u64(h, 0), radix: 16))")
        }
        let length = Int(BigEndian.u32(h, 16))
        return OptionReply(option: BigEndian.u32(h, 8), type: BigEndian.u32(h, 12),
                           data: length > 0 ? try receive(length) : [])
    }

    static func infoData(name: String, requests: [UInt16]) -> [UInt8] {
        var d: [UInt8] = []
        BigEndian.append(&d, UInt32(name.utf8.count))
        d += Array(name.utf8)
        BigEndian.append(&d, UInt16(requests.count))
        for r in requests { BigEndian.append(&d, r) }
        return d
    }

    struct ExportInfo {
        var size: UInt64
        var flags: UInt16
        var blockSizes: (UInt32, UInt32, UInt32)?
        var name: String?
        var description: String?
    }

    /// NBD_OPT_INFO (go: false) or NBD_OPT_GO: the INFO replies up to ACK,
    /// or the error reply that ended the list.
    func infoOrGo(_ name: String, requests: [UInt16] = [3], go: Bool) throws -> Result<ExportInfo, TestClientError> {
        try sendOption(go ? 7 : 6, NBDTestClient.infoData(name: name, requests: requests))
        var info = ExportInfo(size: 0, flags: 0)
        var sawExport = false
        while true {
            let r = try readOptionReply()
            guard r.option == (go ? 7 : 6) else { throw TestClientError("reply to option \(r.option)") }
            if r.isError { return .failure(TestClientError("option error 0x\(String(r.type, radix: 16)): \(r.message)")) }
            if r.type == 1 {
                guard sawExport else { throw TestClientError("ACK without NBD_INFO_EXPORT") }
                return .success(info)
            }
            guard r.type == 3, r.data.count >= 2 else { throw TestClientError("unexpected reply type \(r.type)") }
            switch BigEndian.u16(r.data, 0) {
            case 0:
                guard r.data.count == 12 else { throw TestClientError("NBD_INFO_EXPORT of \(r.data.count) bytes") }
                info.size = BigEndian.u64(r.data, 2)
                info.flags = BigEndian.u16(r.data, 10)
                sawExport = true
            case 1: info.name = String(decoding: r.data[2...], as: UTF8.self)
            case 2: info.description = String(decoding: r.data[2...], as: UTF8.self)
            case 3:
                guard r.data.count == 14 else { throw TestClientError("NBD_INFO_BLOCK_SIZE of \(r.data.count) bytes") }
                info.blockSizes = (BigEndian.u32(r.data, 2), BigEndian.u32(r.data, 6), BigEndian.u32(r.data, 10))
            default: break
            }
        }
    }

    /// Greeting, fixed newstyle + no zeroes, NBD_OPT_GO: ready for requests.
    static func connect(path: String, export: String) throws -> (NBDTestClient, ExportInfo) {
        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        let info = try c.infoOrGo(export, go: true).get()
        return (c, info)
    }

    // MARK: transmission

    func sendRequest(type: UInt16, flags: UInt16 = 0, handle: UInt64, offset: UInt64, length: UInt32,
                     payload: [UInt8] = []) throws {
        let h = NBDRequestHeader(flags: flags, type: type, handle: handle, offset: offset, length: length)
        try send(h.encoded() + payload)
    }

    struct Reply {
        var handle: UInt64
        var error: UInt32
        var data: [UInt8]
    }

    /// Reads one simple reply; `readLengths` says how much data follows a
    /// successful reply to each outstanding read (simple replies do not say).
    func readReply(readLengths: [UInt64: Int] = [:]) throws -> Reply {
        let h = try receive(16)
        guard BigEndian.u32(h, 0) == 0x6744_6698 else {
            throw TestClientError("bad reply magic 0x\(String(BigEndian.u32(h, 0), radix: 16))")
        }
        let error = BigEndian.u32(h, 4)
        let handle = BigEndian.u64(h, 8)
        var data: [UInt8] = []
        if error == 0, let n = readLengths[handle], n > 0 { data = try receive(n) }
        return Reply(handle: handle, error: error, data: data)
    }

    private var nextHandle: UInt64 = 1
    private func handle() -> UInt64 { defer { nextHandle += 1 }; return nextHandle }

    func read(_ offset: UInt64, _ length: UInt32) throws -> (UInt32, [UInt8]) {
        let h = handle()
        try sendRequest(type: 0, handle: h, offset: offset, length: length)
        let r = try readReply(readLengths: [h: Int(length)])
        guard r.handle == h else { throw TestClientError("reply for handle \(r.handle), expected \(h)") }
        return (r.error, r.data)
    }

    func simple(type: UInt16, flags: UInt16 = 0, offset: UInt64 = 0, length: UInt32 = 0, payload: [UInt8] = []) throws -> UInt32 {
        let h = handle()
        try sendRequest(type: type, flags: flags, handle: h, offset: offset, length: length, payload: payload)
        let r = try readReply()
        guard r.handle == h else { throw TestClientError("reply for handle \(r.handle), expected \(h)") }
        return r.error
    }

    func write(_ offset: UInt64, _ data: [UInt8], fua: Bool = false) throws -> UInt32 {
        try simple(type: 1, flags: fua ? 1 : 0, offset: offset, length: UInt32(data.count), payload: data)
    }

    func flush() throws -> UInt32 { try simple(type: 3) }
    func trim(_ offset: UInt64, _ length: UInt32) throws -> UInt32 { try simple(type: 4, offset: offset, length: length) }
    func writeZeroes(_ offset: UInt64, _ length: UInt32) throws -> UInt32 { try simple(type: 6, offset: offset, length: length) }

    func disconnect() throws {
        try sendRequest(type: 2, handle: handle(), offset: 0, length: 0)
    }
}
