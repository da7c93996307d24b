import ArchipStore
import Dispatch
import ArchipTestSupport
import Foundation
import Testing
@testable import ArchipFill

/// Options for tests: short backoff so retry tests take milliseconds.
private func fastOptions(_ tweak: (inout HTTPOptions) -> Void = { _ in }) -> HTTPOptions {
    var o = HTTPOptions(connectTimeout: .seconds(5), retryBaseDelay: .milliseconds(10), retryMaxDelay: .milliseconds(100))
    tweak(&o)
    return o
}

/// Thrown by `body`, as an HTTPError (fails the test if it did not throw one).
private func httpError<T>(_ body: () throws -> T, sourceLocation: SourceLocation = #_sourceLocation) -> HTTPError? {
    do {
        let value = try body()
        Issue.record("expected an HTTPError, got \(value)", sourceLocation: sourceLocation)
        return nil
    } catch let e as HTTPError {
        return e
    } catch {
        Issue.record("expected an HTTPError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// Work shared by the reader threads of `readAll`: the next block, the first error.
private final class ReadQueue: @unchecked Sendable {
    private let lock = NSLock()
    private var next = 0
    private(set) var firstError: (any Error)?

    func take() -> Int {
        lock.lock()
        defer { lock.unlock() }
        next += 1
        return next - 1
    }

    func fail(_ error: any Error) {
        lock.lock()
        defer { lock.unlock() }
        if firstError == nil { firstError = error }
    }
}

private struct UncheckedBuffer: @unchecked Sendable {
    let pointer: UnsafeMutableRawBufferPointer
    init(_ p: UnsafeMutableRawBufferPointer) { pointer = p }
}

/// Reads every block of `source`, `jobs` at a time (like the filler), into one image.
private func readAll(_ source: any BlockSource, jobs: Int = 1) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Int(source.size))
    let queue = ReadQueue()
    out.withUnsafeMutableBytes { image in
        let image = UncheckedBuffer(image)
        DispatchQueue.concurrentPerform(iterations: jobs) { _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: source.blockSize, alignment: 64)
            defer { buffer.deallocate() }
            while true {
                let i = queue.take()
                guard i < source.blockCount else { return }
                do {
                    let n = try source.read(i, into: buffer)
                    let expected = min(source.blockSize, Int(source.size) - i * source.blockSize)
                    guard n == expected else { throw FixtureError("block \(i): \(n) bytes, expected \(expected)") }
                    (image.pointer.baseAddress! + i * source.blockSize).copyMemory(from: buffer.baseAddress!, byteCount: n)
                } catch {
                    queue.fail(error)
                    return
                }
            }
        }
    }
    if let e = queue.firstError { throw e }
    return out
}

private func get(_ client: HTTPClient, _ url: String, _ range: Range<UInt64>,
                 validating resource: HTTPResource? = nil) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Int(range.count))
    let n = try out.withUnsafeMutableBytes { try client.get(url, range: range, into: $0, validating: resource) }
    #expect(n == range.count)
    return out
}

@Suite(.needsNginx, .nginx)
struct HTTPLiveTests {
    var fx: HTTPFixture {
        get throws { try #require(HTTPFixture.current, "the .nginx trait did not provide a fixture") }
    }

    @Test func sizeAndRangesAcrossBlockBoundaries() throws {
        let fx = try fx
        let client = try HTTPClient(options: fastOptions())
        let size = UInt64(HTTPFixture.imageSize)
        #expect(try client.size(of: fx.imageURL) == size)
        let mib: UInt64 = 1 << 20
        let ranges: [Range<UInt64>] = [0..<1, 0..<4096, mib - 100..<mib + 100, 3 * mib - 1..<3 * mib + 1,
                                       5 * mib + 7..<9 * mib + 3, size - 1..<size, 0..<size]
        for r in ranges {
            let got = try get(client, fx.imageURL, r)
            #expect(got == Array(fx.image[Int(r.lowerBound)..<Int(r.upperBound)]), "bytes \(r)")
        }
        #expect(client.statistics.retries == 0)
        // Past the end: nginx sends the part that exists (206) or 416; both are
        // refused, and with a probed resource nothing is asked at all.
        let straddling = httpError { try get(client, fx.imageURL, size - 10..<size + 10) }
        #expect(straddling?.code == .outOfRange)
        #expect(straddling?.status == 206)
        #expect(straddling?.description.contains("(\(size) bytes)") == true)
        let past = httpError { try get(client, fx.imageURL, size..<size + 10) }
        #expect(past?.code == .outOfRange)
        #expect(past?.status == 416)
        #expect(past?.attempts == 1)
        let resource = try client.probe(fx.imageURL)
        #expect(httpError { try get(client, fx.imageURL, size..<size + 1, validating: resource) }?.code == .invalidArgument)
    }

    @Test func emptyFileHasSizeZero() throws {
        let fx = try fx
        let url = try fx.publish("empty.raw", bytes: [])
        #expect(try HTTPClient(options: fastOptions()).size(of: url) == 0)
    }

    @Test(arguments: [1 << 20, 3 << 20, 4 << 20])
    func sourceReadsTheWholeImage(blockSize: Int) throws {
        let fx = try fx
        let source = try HTTPSource(url: fx.imageURL, blockSize: blockSize, client: HTTPClient(options: fastOptions()))
        #expect(source.size == UInt64(HTTPFixture.imageSize))
        #expect(source.blockCount == (HTTPFixture.imageSize + blockSize - 1) / blockSize)
        #expect(try readAll(source, jobs: 3) == fx.image)
        #expect(httpError { try source.read(source.blockCount, into: UnsafeMutableRawBufferPointer(start: nil, count: 0)) }?.code == .invalidArgument)
    }

    @Test func accessLogShowsOneRequestPerBlockOnKeptAliveConnections() throws {
        let fx = try fx
        let url = try fx.publish("counted.raw")
        let blockSize = 1 << 20
        let client = try HTTPClient(options: fastOptions())
        let source = try HTTPSource(url: url, blockSize: blockSize, client: client)
        #expect(try readAll(source, jobs: 4) == fx.image)

        let blocks = HTTPFixture.imageSize / blockSize
        // Waits for the expected count, then a little more: a surplus request must show.
        _ = try fx.accessLines(for: "/counted.raw", awaiting: blocks + 1)
        Thread.sleep(forTimeInterval: 0.2)
        let lines = try fx.accessLines(for: "/counted.raw")
        // One probe (bytes=0-0) plus exactly one GET per block, each a 206 for its own range.
        #expect(lines.count == blocks + 1)
        #expect(lines.allSatisfy { $0.status == 206 })
        var expected = ["bytes=0-0"]
        for i in 0..<blocks { expected.append("bytes=\(i * blockSize)-\((i + 1) * blockSize - 1)") }
        #expect(lines.map(\.range).sorted() == expected.sorted())
        // Four jobs, four pooled handles: connections are reused, not one per block.
        #expect(Set(lines.map(\.connection)).count <= 4)
        #expect(client.statistics.requests == blocks + 1)
        #expect(client.statistics.retries == 0)
        #expect(client.statistics.bytesReceived == UInt64(HTTPFixture.imageSize) + 1)
    }

    @Test(arguments: ["127.0.0.1", "localhost"])
    func httpsWithTheFixtureCA(host: String) throws {
        let fx = try fx
        let client = try HTTPClient(options: fastOptions { $0.caCertificatePath = fx.caPath })
        let url = "https://\(host):\(fx.httpsPort)/image.raw"
        let source = try HTTPSource(url: url, blockSize: 4 << 20, client: client)
        #expect(source.size == UInt64(HTTPFixture.imageSize))
        #expect(try readAll(source, jobs: 2) == fx.image)
    }

    @Test func httpsWithoutTheCAFailsNamingTheCertificate() throws {
        let fx = try fx
        let client = try HTTPClient(options: fastOptions())
        let e = try #require(httpError { try client.size(of: "\(fx.httpsURL)/image.raw") })
        #expect(e.code == .tls)
        #expect(e.attempts == 1, "a certificate that does not verify will not verify on retry")
        #expect(e.description.contains("certificate"))
        #expect(e.description.contains("--cacert"))
        #expect(client.statistics.requests == 1)
    }

    @Test func redirectsAreFollowed() throws {
        let fx = try fx
        let client = try HTTPClient(options: fastOptions())
        let url = "\(fx.httpURL)/redirect/image.raw"
        let source = try HTTPSource(url: url, blockSize: 8 << 20, client: client)
        #expect(source.size == UInt64(HTTPFixture.imageSize))
        #expect(try readAll(source) == fx.image)
        #expect(try fx.accessLines(for: "/redirect/image.raw", awaiting: 4).allSatisfy { $0.status == 302 })
        let none = try HTTPClient(options: fastOptions { $0.maxRedirects = 0 })
        #expect(httpError { try none.size(of: url) }?.status == 302)
    }

    @Test func httpsInsecureSkipsVerification() throws {
        let fx = try fx
        let client = try HTTPClient(options: fastOptions { $0.insecure = true })
        #expect(try get(client, "\(fx.httpsURL)/image.raw", 1000..<5000) == Array(fx.image[1000..<5000]))
    }

    @Test func notFoundFailsFastWithoutRetries() throws {
        let fx = try fx
        // A long backoff: any retry would show in the elapsed time.
        let client = try HTTPClient(options: fastOptions { $0.retryBaseDelay = .seconds(2); $0.retryMaxDelay = .seconds(2) })
        let start = ContinuousClock.now
        let e = try #require(httpError { try client.size(of: "\(fx.httpURL)/no-such-image.raw") })
        #expect(ContinuousClock.now - start < .seconds(1))
        #expect(e.code == .httpStatus)
        #expect(e.status == 404)
        #expect(e.attempts == 1)
        #expect(!e.isTransient)
        #expect(e.description.contains("HTTP 404 Not Found"))
        #expect(client.statistics.requests == 1)
        let forbidden = try #require(httpError { try get(client, "\(fx.httpURL)/status/403", 0..<10) })
        #expect(forbidden.status == 403)
        #expect(forbidden.attempts == 1)
    }

    @Test(arguments: [503, 500, 429])
    func transientStatusesAreRetriedThenReported(status: Int) throws {
        let fx = try fx
        let client = try HTTPClient(options: fastOptions { $0.maxRetries = 3 })
        let e = try #require(httpError { try get(client, "\(fx.httpURL)/status/\(status)", 0..<100) })
        #expect(e.status == status)
        #expect(e.isTransient)
        #expect(e.attempts == 4)
        #expect(e.description.contains("(4 attempts)"))
        #expect(client.statistics.requests == 4)
        #expect(client.statistics.retries == 3)
        #expect(try fx.accessLines(for: "/status/\(status)", awaiting: 4).count == 4)
    }

    @Test(arguments: ["reset", "close"])
    func cutConnectionsAreRetriedAndTheResultIsIdentical(mode: String) throws {
        let fx = try fx
        // Every connection dies 2.5 blocks in: each carries two blocks, the
        // third is cut mid-body and must be fetched again on a new connection.
        let proxy = try fx.startCuttingProxy(cutEvery: 1, cutAfter: (5 << 20) / 2, mode: mode)
        defer { proxy.stop() }
        let client = try HTTPClient(options: fastOptions())
        let source = try HTTPSource(url: "http://127.0.0.1:\(proxy.port)/image.raw", blockSize: 1 << 20, client: client)
        #expect(try readAll(source, jobs: 1) == fx.image)
        let cuts = proxy.logText.components(separatedBy: "\n").filter { $0.contains(": cut after") }.count
        #expect(cuts >= 5, "the proxy cut \(cuts) connections")
        #expect(client.statistics.retries >= cuts - 1)
    }

    @Test func aCutBlockResumesWhereItStopped() throws {
        let fx = try fx
        // 300 KiB per connection: a 4 MiB block can only arrive in pieces.
        let proxy = try fx.startCuttingProxy(cutEvery: 1, cutAfter: 300 << 10)
        defer { proxy.stop() }
        let client = try HTTPClient(options: fastOptions { $0.maxRetries = 30 })
        let url = "http://127.0.0.1:\(proxy.port)/image.raw"
        let resource = try client.probe(url)
        let range: Range<UInt64> = 1 << 20..<5 << 20
        #expect(try get(client, url, range, validating: resource) == Array(fx.image[1 << 20..<5 << 20]))
        #expect(client.statistics.requests >= 14)
        // Resumed, not restarted: no more body bytes than the range (plus the probe byte).
        #expect(client.statistics.bytesReceived == range.count + 1)
    }

    @Test func aConnectionCutEveryTimeGivesUpAfterTheRetries() throws {
        let fx = try fx
        // 64 bytes: not even the status line gets through.
        let proxy = try fx.startCuttingProxy(cutEvery: 1, cutAfter: 64)
        defer { proxy.stop() }
        let client = try HTTPClient(options: fastOptions { $0.maxRetries = 2 })
        let e = try #require(httpError { try client.size(of: "http://127.0.0.1:\(proxy.port)/image.raw") })
        #expect(e.code == .transport)
        #expect(e.isTransient)
        #expect(e.attempts == 3)
        #expect(client.statistics.failures == 1)
    }

    @Test func aServerIgnoringRangeIsRefused() throws {
        let fx = try fx
        let plain = try fx.startPlainServer()
        defer { plain.stop() }
        let url = "http://127.0.0.1:\(plain.port)/image.raw"
        let client = try HTTPClient(options: fastOptions())
        let e = try #require(httpError { try client.size(of: url) })
        #expect(e.code == .rangeNotSupported)
        #expect(e.attempts == 1)
        #expect(e.description.contains("range"))
        let g = try #require(httpError { try get(client, url, 1 << 20..<2 << 20) })
        #expect(g.code == .rangeNotSupported)
        #expect(httpError { try HTTPSource(url: url, blockSize: 1 << 20, client: client) }?.code == .rangeNotSupported)
        // The 200's body was refused at its first byte, not downloaded.
        #expect(client.statistics.bytesReceived == 0)
    }

    @Test func aFileReplacedWhileReadingIsDetected() throws {
        let fx = try fx
        let url = try fx.publish("changing.raw")
        let client = try HTTPClient(options: fastOptions())
        let source = try HTTPSource(url: url, blockSize: 1 << 20, client: client)
        #expect(source.resource.entityTag != nil)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        #expect(try source.read(0, into: buffer) == 1 << 20)
        // Same size, new mtime: nginx's ETag changes, If-Match fails.
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: 3600)],
                                              ofItemAtPath: "\(fx.www)/changing.raw")
        let e = try #require(httpError { try source.read(1, into: buffer) })
        #expect(e.code == .changed)
        #expect(e.status == 412)
        #expect(e.attempts == 1)
    }

    @Test func aStalledTransferTimesOutAndIsRetried() throws {
        let fx = try fx
        // /slow/ sends 1 MB/s; demand 8 MiB/s for 1 s.
        let client = try HTTPClient(options: fastOptions { $0.lowSpeedLimit = 8 << 20; $0.lowSpeedTime = .seconds(1); $0.maxRetries = 1 })
        let e = try #require(httpError { try get(client, "\(fx.httpURL)/slow/image.raw", 0..<(16 << 20)) })
        #expect(e.code == .timeout)
        #expect(e.attempts == 2)
        // Slow is not stalled: the default limit (1 KiB/s) lets it finish.
        let patient = try HTTPClient(options: fastOptions())
        #expect(try get(patient, "\(fx.httpURL)/slow/image.raw", 0..<(256 << 10)) == Array(fx.image[0..<(256 << 10)]))
    }

    @Test func getAllDownloadsSmallFilesWithinTheLimit() throws {
        let fx = try fx
        let json = Array(#"{"block_size": 4194304, "block_hash": "sha256", "hashes": [], "bytes": 0}"#.utf8)
        let url = try fx.publish("map.json", bytes: json)
        let client = try HTTPClient(options: fastOptions())
        #expect(try client.getAll(url, limit: 1 << 20) == json)
        #expect(try client.getAll(url, limit: json.count) == json)
        let big = try #require(httpError { try client.getAll(fx.imageURL, limit: 1 << 20) })
        #expect(big.code == .tooLarge)
        #expect(big.attempts == 1)
        #expect(httpError { try client.getAll("\(fx.httpURL)/no-such.json", limit: 100) }?.status == 404)
        // Into a caller's buffer (Pithos blocks fetched by name).
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
        defer { buffer.deallocate() }
        let n = try client.getAll(url, into: buffer)
        #expect(Array(buffer[0..<n]) == json)
        #expect(httpError { try client.getAll(fx.imageURL, into: buffer) }?.code == .tooLarge)
    }

    @Test func theRemoteOpenerServesImagesHashmapsAndPithosBlocks() throws {
        let fx = try fx
        let opener = try HTTPRemoteOpener(options: fastOptions())
        let image = try opener.openImage(url: fx.imageURL, blockSize: 4 << 20, expectedHashes: nil)
        #expect(try readAll(image, jobs: 2) == fx.image)
        let json = Array("{}".utf8)
        #expect(try opener.fetchText(url: fx.publish("opener.json", bytes: json), limit: 100) == json)

        // A Pithos block store: one file per block, named by its hash.
        try FileManager.default.createDirectory(atPath: "\(fx.www)/blocks", withIntermediateDirectories: true)
        let block = Array(fx.image[0..<(1 << 20)])
        let hash = SHA256.digest(block)
        _ = try fx.publish("blocks/\(hash.hex)", bytes: block)
        let fetcher = try opener.pithosFetcher(template: "\(fx.httpURL)/blocks/{hash}")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
        defer { buffer.deallocate() }
        let n = try fetcher.fetch(hash, into: buffer)
        #expect(Array(buffer[0..<n]) == block)
        let missing = try #require(httpError { try fetcher.fetch(SHA256.digest([1, 2, 3]), into: buffer) })
        #expect(missing.status == 404)
        #expect(httpError { try opener.pithosFetcher(template: "\(fx.httpURL)/blocks/") }?.code == .invalidArgument)
    }

    @Test func passwordsNeverAppearInErrors() throws {
        let fx = try fx
        let client = try HTTPClient(options: fastOptions())
        let e = try #require(httpError { try client.size(of: "http://archip:s3cret@127.0.0.1:\(fx.httpPort)/missing?token=t0ken&x=1") })
        #expect(e.status == 404)
        #expect(!e.description.contains("s3cret"))
        #expect(!e.description.contains("t0ken"))
        #expect(e.description.contains("archip:***@127.0.0.1"))
    }
}
