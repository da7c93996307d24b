import ArchipTestSupport
import Foundation
import Testing
@testable import ArchipFill

@Suite struct HTTPParsingTests {
    @Test func contentRangeParsing() {
        #expect(ContentRange(header: "bytes 0-1023/4096") == ContentRange(first: 0, last: 1023, total: 4096))
        #expect(ContentRange(header: " bytes 5-5/*") == ContentRange(first: 5, last: 5, total: nil))
        #expect(ContentRange(header: "bytes */0") == ContentRange(first: nil, last: nil, total: 0))
        #expect(ContentRange(header: "BYTES 1-2/3") == ContentRange(first: 1, last: 2, total: 3))
        for bad in ["bytes 10-5/100", "bytes 0-100/100", "bytes */*", "items 0-1/2", "bytes 0-/10",
                    "bytes -1-5/10", "bytes 0-1", "bytes +1-2/3", ""] {
            #expect(ContentRange(header: Substring(bad)) == nil, "\(bad)")
        }
        let cr = ContentRange(first: 1024, last: 2047, total: nil)
        #expect(cr.matches(1024..<2048))
        #expect(!cr.matches(1024..<2047))
        #expect(!cr.matches(0..<2048))
    }

    @Test func urlsAreRedacted() {
        #expect(redactURL("https://user:pw@host:8443/a/b?x=1") == "https://user:***@host:8443/a/b?x=1")
        #expect(redactURL("https://user@host/a") == "https://user@host/a")
        #expect(redactURL("http://host/a?X-Amz-Signature=abc&Expires=5&token=t#f") == "http://host/a?X-Amz-Signature=***&Expires=5&token=***#f")
        #expect(redactURL("http://host/p@x:y") == "http://host/p@x:y", "an @ in the path is not userinfo")
        #expect(redactURL("not a url") == "not a url")
    }

    @Test func backoffGrowsIsJitteredAndCapped() {
        let o = HTTPOptions(retryBaseDelay: .milliseconds(200), retryMaxDelay: .seconds(5))
        func d(_ n: Int, _ j: Double, _ ra: Duration? = nil) -> Duration { HTTPClient.retryDelay(after: n, options: o, retryAfter: ra, jitter: j) }
        #expect(d(1, 1) == .milliseconds(200))
        #expect(d(1, 0) == .milliseconds(100))
        #expect(d(3, 1) == .milliseconds(800))
        #expect(d(20, 1) == .seconds(5))
        #expect(d(20, 0) == .milliseconds(2500))
        #expect(d(1000, 0.5) == .milliseconds(3750), "no overflow on absurd attempt numbers")
        #expect(d(1, 0, .seconds(2)) == .seconds(2), "Retry-After is honoured")
        #expect(d(1, 0, .seconds(600)) == .seconds(5), "but capped")
    }

    @Test func errorsAreOneLineWithContextAndRemedy() {
        let e = HTTPError(.httpStatus, operation: "get bytes=0-1023", url: "https://u:p@h/x.raw",
                          message: "HTTP 503 Service Unavailable", status: 503, attempts: 7,
                          remedy: "try again later", isTransient: true)
        #expect(e.description == "get bytes=0-1023 https://u:***@h/x.raw: HTTP 503 Service Unavailable (7 attempts); try again later")
        #expect(!e.description.contains("\n"))
    }

    @Test func badArgumentsAreRefusedBeforeAnyRequest() throws {
        let client = try HTTPClient()
        var buffer = [UInt8](repeating: 0, count: 10)
        buffer.withUnsafeMutableBytes { b in
            #expect(throws: HTTPError.self) { try client.get("ftp://127.0.0.1/x", range: 0..<10, into: b) }
            #expect(throws: HTTPError.self) { try client.get("http://127.0.0.1/x", range: 0..<11, into: b) }
            #expect(throws: HTTPError.self) { try client.get("http://127.0.0.1/x", range: 5..<5, into: b) }
        }
        #expect(client.statistics.requests == 0)
        #expect(throws: HTTPError.self) { try HTTPClient(options: HTTPOptions(caCertificatePath: "/nonexistent/ca.pem")) }
    }

    @Test func refusedConnectionsAreRetried() throws {
        // A loopback port nothing listens on.
        let port = try HTTPFixture.freeLoopbackPort()
        var o = HTTPOptions(retryBaseDelay: .milliseconds(5), retryMaxDelay: .milliseconds(20))
        o.maxRetries = 2
        let client = try HTTPClient(options: o)
        do {
            _ = try client.size(of: "http://127.0.0.1:\(port)/x")
            Issue.record("connected to a port nothing listens on")
        } catch {
            #expect(error.code == .transport)
            #expect(error.attempts == 3)
            #expect(error.description.contains("cannot connect"))
        }
        #expect(client.statistics.requests == 3)
    }
}
