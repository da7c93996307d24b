import ArchipStore
import Dispatch
import ArchipTestSupport
import Foundation
import Testing
@testable import ArchipFill

/// `ARCHIP_HTTP_BENCH=1 swift test --filter ArchipFillTests.HTTPBenchmark`:
/// reads a 1 GiB file from the fixture's nginx over loopback with HTTPSource
/// (4 MiB blocks, 4 concurrent reads) and with `curl -s -o /dev/null`, in
/// the same run, alternating, and prints MB/s (10^6 bytes/s) of each.
@Suite(.needsNginx, .enabled(if: ProcessInfo.processInfo.environment["ARCHIP_HTTP_BENCH"] != nil,
                             "set ARCHIP_HTTP_BENCH=1 to measure"), .nginx)
struct HTTPBenchmark {
    static let fileSize = 1 << 30
    static let blockSize = 4 << 20
    static let jobs = 4

    @Test func loopbackReadVersusCurl() throws {
        let fx = try #require(HTTPFixture.current)
        let path = "\(fx.www)/bench.raw"
        try writeBenchFile(path)
        let url = "\(fx.httpURL)/bench.raw"
        let curl = try #require(HTTPFixture.findTool("curl"), "curl is needed as the baseline")
        let rounds = Int(ProcessInfo.processInfo.environment["ARCHIP_HTTP_BENCH_ROUNDS"] ?? "") ?? 3

        var curlRates: [Double] = [], archipRates: [Double] = []
        for _ in 0..<rounds {
            let start = ContinuousClock.now
            let pid = try HTTPFixture.spawn(curl, ["-s", "-o", "/dev/null", url], output: "\(fx.dir)/bench-curl.out")
            #expect(HTTPFixture.reap(pid, block: true) == 0)
            curlRates.append(rate(Self.fileSize, ContinuousClock.now - start))

            var options = HTTPOptions()
            if let kib = ProcessInfo.processInfo.environment["ARCHIP_HTTP_BENCH_BUFFER_KIB"].flatMap(Int.init) {
                options.receiveBufferSize = kib << 10
            }
            let client = try HTTPClient(options: options)
            let t0 = ContinuousClock.now
            let source = try HTTPSource(url: url, blockSize: Self.blockSize, client: client)
            let bytes = try readDiscarding(source)
            archipRates.append(rate(bytes, ContinuousClock.now - t0))
            #expect(bytes == Self.fileSize)
            #expect(client.statistics.requests == source.blockCount + 1)
            #expect(client.statistics.retries == 0)
        }
        let line = "HTTP bench: 1 GiB over loopback from nginx; archip (4 MiB blocks, \(Self.jobs) jobs) MB/s: "
            + archipRates.map { String(format: "%.0f", $0) }.joined(separator: " ")
            + "; curl -o /dev/null MB/s: " + curlRates.map { String(format: "%.0f", $0) }.joined(separator: " ")
            + String(format: "; best ratio %.2fx", (archipRates.max() ?? 0) / (curlRates.max() ?? 1))
        print(line)
        try FileManager.default.removeItem(atPath: path)
    }

    private func rate(_ bytes: Int, _ d: Duration) -> Double { Double(bytes) / d.secondsDouble / 1e6 }

    /// 1 GiB of random-looking data (a random 4 MiB chunk, stamped per block),
    /// left in the page cache so both readers measure HTTP, not the disk.
    private func writeBenchFile(_ path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let h = FileHandle(forWritingAtPath: path) else { throw FixtureError("cannot create \(path)") }
        var chunk = [UInt8](repeating: 0, count: Self.blockSize)
        var rng = SystemRandomNumberGenerator()
        chunk.withUnsafeMutableBytes { p in
            for i in stride(from: 0, to: p.count, by: 8) { p.storeBytes(of: rng.next() as UInt64, toByteOffset: i, as: UInt64.self) }
        }
        for i in 0..<(Self.fileSize / Self.blockSize) {
            chunk.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(i), toByteOffset: 0, as: UInt64.self) }
            try h.write(contentsOf: chunk)
        }
        try h.close()
    }

    /// All blocks, `jobs` at a time, each into its job's buffer (what the filler does before hashing).
    private func readDiscarding(_ source: HTTPSource) throws -> Int {
        let state = BenchState()
        DispatchQueue.concurrentPerform(iterations: Self.jobs) { _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: source.blockSize, alignment: 4096)
            defer { buffer.deallocate() }
            while let i = state.next(below: source.blockCount) {
                do {
                    state.add(try source.read(i, into: buffer))
                } catch {
                    state.fail(error)
                    return
                }
            }
        }
        if let e = state.error { throw e }
        return state.bytes
    }
}

private final class BenchState: @unchecked Sendable {
    private let lock = NSLock()
    private var index = 0
    private(set) var bytes = 0
    private(set) var error: (any Error)?

    func next(below n: Int) -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard error == nil, index < n else { return nil }
        index += 1
        return index - 1
    }

    func add(_ n: Int) { lock.lock(); bytes += n; lock.unlock() }
    func fail(_ e: any Error) { lock.lock(); if error == nil { error = e }; lock.unlock() }
}
