@testable import CycladesAPI
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Requests whose framing is wrong reach the HTTP parser, not the router:
/// they are sent over a raw socket to the live server, and must be answered
/// 400 in the OpenStack fault shape, never 500.
@Suite(.serialized) struct HTTPFraming {
    /// `exchangeBlocking` on a thread of its own: a blocking read on one of the
    /// few threads of Swift's cooperative pool could starve the server under test.
    static func exchange(port: Int, _ head: String, body: String = "") async throws -> (status: Int, body: String) {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async { c.resume(with: Result { try exchangeBlocking(port: port, head, body: body) }) }
        }
    }

    /// Sends `head` + `body`, half-closes, and reads the whole answer.
    static func exchangeBlocking(port: Int, _ head: String, body: String = "") throws -> (status: Int, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        // Generous: the whole suite runs in parallel on two cores, and a 10 s
        // bound once expired there before the server's answer (status 0).
        var tv = timeval(tv_sec: 90, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        let out = Array((head + body).utf8)
        var sent = 0
        while sent < out.count {
            let n = out[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
            sent += n
        }
        // The client has nothing more to send: the body ends here, short of its Content-Length.
        shutdown(fd, Int32(SHUT_WR))
        var answer = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            answer += buf[0..<n]
        }
        let text = String(decoding: answer, as: UTF8.self)
        // "HTTP/1.1 400 Bad Request\r\n...\r\n\r\nbody"
        let status = text.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return (status, body)
    }

    static func post(_ token: String, contentLength: String) -> String {
        "POST /volume/v3/volumes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: \(token)\r\n"
            + "Content-Type: application/json\r\nContent-Length: \(contentLength)\r\n\r\n"
    }

    /// `{"badRequest": {"code": 400, "message": ..., ...}}`
    static func expectBadRequest(_ r: (status: Int, body: String), _ what: String) {
        #expect(r.status == 400, "\(what): \(r.status) \(r.body)")
        let json = (try? JSONSerialization.jsonObject(with: Data(r.body.utf8))) as? [String: Any]
        let fault = json?["badRequest"] as? [String: Any]
        #expect(fault?["code"] as? Int == 400, "\(what): not an OpenStack badRequest fault: \(r.body)")
        #expect((fault?["message"] as? String)?.isEmpty == false, "\(what): \(r.body)")
    }

    @Test func aBodyShorterThanItsContentLengthIsABadRequest() async throws {
        let f = try APIFixture()
        let before = try f.dump()
        let afterServer = try await f.app().test(.live) { c -> String in
            let port = try #require(c.port)
            let server = try await bootServer(f, c, extra: 0)
            let afterServer = try f.dump()
            let body = #"{"volume":{"size":1,"server_id":"\#(server)"}}"#
            let r = try await Self.exchange(port: port, Self.post(f.alice, contentLength: "\(body.utf8.count + 10)"), body: body)
            Self.expectBadRequest(r, "a body 10 bytes short")
            #expect(r.body.contains("ended before its Content-Length"), "\(r.body)")
            #expect(try f.dump() == afterServer, "the short request changed nothing")
            // The same request, whole, is served.
            let ok = try await Self.exchange(port: port, Self.post(f.alice, contentLength: "\(body.utf8.count)"), body: body)
            #expect(ok.status == 202, "\(ok.status) \(ok.body)")
            return afterServer
        }
        #expect(afterServer != before)
        #expect(try f.dump() != afterServer, "the whole request created a volume")
    }

    @Test func anImpossibleContentLengthIsABadRequest() async throws {
        let f = try APIFixture()
        let before = try f.dump()
        try await f.app().test(.live) { c in
            let port = try #require(c.port)
            for length in ["18446744073709551615", "18446744073709551616", "99999999999999999999999"] {
                let r = try await Self.exchange(port: port, Self.post(f.alice, contentLength: length), body: #"{"volume":{"size":1}}"#)
                Self.expectBadRequest(r, "Content-Length: \(length)")
            }
        }
        #expect(try f.dump() == before, "a refused request changed nothing")
    }
}
