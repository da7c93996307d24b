import ArchipServe
import ArchipStore
import Testing
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fresh folder under /tmp with a short path (unix socket paths are limited
/// to 107 bytes), removed when the value goes away.
final class TempDir {
    let path: String

    init(_ prefix: String = "nbd") throws {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TestClientError("mkdtemp: \(String(cString: strerror(errno)))")
        }
        path = String(cString: p)
    }

    deinit {
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            print("note: could not remove test folder \(path): \(error)")
        }
    }

    func file(_ name: String) -> String { path + "/" + name }
}

/// Bytes that differ per position and per seed, so misplaced data shows.
func pattern(_ seed: UInt8, _ count: Int, offset: Int = 0) -> [UInt8] {
    (0..<count).map { i in UInt8(truncatingIfNeeded: (offset + i) &* 31 &+ Int(seed) &* 7 &+ (offset + i) >> 9) }
}

/// A server on a fresh socket with the given exports, stopped by the caller.
func startServer(_ exports: [NBDExport], defaultExport: String? = nil,
                 configure: (inout NBDServer.Configuration) -> Void = { _ in }) throws -> (NBDServer, String, TempDir) {
    let dir = try TempDir()
    let path = dir.file("nbd.sock")
    var config = NBDServer.Configuration()
    configure(&config)
    let server = try NBDServer(socketPath: path, exports: exports, defaultExport: defaultExport, configuration: config)
    try server.start()
    return (server, path, dir)
}

/// Wraps a device: optional delay per write, a log of calls in order, and the
/// number of calls running at once (to see requests served in parallel).
final class RecordingDevice: BlockDevice, @unchecked Sendable {
    let inner: MemoryBlockDevice
    let writeDelay: Double
    let readDelay: Double
    private let lock = NSLock()
    private var running = 0
    private var peak = 0
    private var log: [String] = []

    init(_ inner: MemoryBlockDevice, writeDelay: Double = 0, readDelay: Double = 0) {
        self.inner = inner
        self.writeDelay = writeDelay
        self.readDelay = readDelay
    }

    var size: UInt64 { inner.size }
    var isReadOnly: Bool { inner.isReadOnly }
    var capabilities: BlockDeviceCapabilities { inner.capabilities }
    var peakConcurrency: Int { lock.withLock { peak } }
    var events: [String] { lock.withLock { log } }

    private func around<R>(_ what: String, delay: Double, _ body: () throws -> R) rethrows -> R {
        lock.withLock {
            running += 1
            peak = max(peak, running)
        }
        defer { lock.withLock { running -= 1 } }
        if delay > 0 { usleep(UInt32(delay * 1_000_000)) }
        let r = try body()
        lock.withLock { log.append(what) }
        return r
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try around("read \(offset)", delay: readDelay) { try inner.read(at: offset, into: buffer) }
    }
    func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try around("write \(offset)", delay: writeDelay) { try inner.write(at: offset, data) }
    }
    func flush() throws {
        // Recorded on entry: what matters is which writes finished before the flush began.
        lock.withLock { log.append("flush") }
        try inner.flush()
    }
    func trim(at offset: UInt64, length: UInt64) throws {
        try around("trim \(offset)", delay: writeDelay) { try inner.trim(at: offset, length: length) }
    }
    func writeZeroes(at offset: UInt64, length: UInt64) throws {
        try around("zero \(offset)", delay: writeDelay) { try inner.writeZeroes(at: offset, length: length) }
    }
}

/// A device whose every call fails with the given error.
final class FailingDevice: BlockDevice, @unchecked Sendable {
    let size: UInt64
    let error: any Error & Sendable
    init(size: UInt64, error: any Error & Sendable) {
        self.size = size
        self.error = error
    }
    var isReadOnly: Bool { false }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws { throw error }
    func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws { throw error }
    func flush() throws { throw error }
    func trim(at offset: UInt64, length: UInt64) throws { throw error }
    func writeZeroes(at offset: UInt64, length: UInt64) throws { throw error }
}

/// Deterministic random numbers: a failing fuzz run can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Waits (polling) until `condition` holds or `seconds` pass.
func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date(timeIntervalSinceNow: seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Stops a test's server at the end of the test (keeping its folder alive
/// until then); a failing stop is a test failure, not something to ignore.
func stopChecked(_ server: NBDServer, _ dir: TempDir, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try server.stop(gracePeriod: .seconds(5))
    } catch {
        Issue.record("stopping the server failed: \(error)", sourceLocation: sourceLocation)
    }
    withExtendedLifetime(dir) {}
}
