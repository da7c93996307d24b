import ArchipServe
import ArchipStore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The socket file, exports at run time, limits, and a clean stop.
@Suite struct NBDServerLifecycleTests {
    @Test func socketIsCreatedOwnerOnly() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))])
        var st = stat()
        #expect(lstat(path, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o600)
        try server.stop()
        #expect(access(path, F_OK) != 0, "stop removes the socket file")
        #expect(throws: TestClientError.self) { try NBDTestClient(path: path) }
        withExtendedLifetime(dir) {}
    }

    @Test func staleSocketIsReplacedButOtherFilesAreNot() throws {
        let dir = try TempDir()
        let path = dir.file("s.sock")
        // A socket file nobody listens on, as a killed server leaves it.
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        close(fd)

        let server = try NBDServer(socketPath: path, exports: [try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))])
        try server.start()
        #expect(try NBDTestClient.connect(path: path, export: "v").1.size == 4096)

        // A second server on a live socket is refused, and the first keeps working.
        let second = try NBDServer(socketPath: path)
        do {
            try second.start()
            Issue.record("a second server took over a live socket")
        } catch let e as ServeError {
            #expect(e.code == .addressInUse)
            #expect(e.description.contains(path))
        }
        #expect(try NBDTestClient.connect(path: path, export: "v").1.size == 4096)
        try server.stop()

        // A regular file is never removed.
        let file = dir.file("not-a-socket")
        #expect(FileManager.default.createFile(atPath: file, contents: Data([1, 2, 3])))
        do {
            try NBDServer(socketPath: file).start()
            Issue.record("the server replaced a regular file")
        } catch let e as ServeError {
            #expect(e.code == .addressInUse)
            #expect(e.description.contains("not a socket"))
        }
        #expect(FileManager.default.contents(atPath: file) == Data([1, 2, 3]))
    }

    @Test func socketPathTooLong() throws {
        let path = "/tmp/" + String(repeating: "x", count: 120) + ".sock"
        do {
            try NBDServer(socketPath: path).start()
            Issue.record("a 130-byte socket path was accepted")
        } catch let e as ServeError {
            #expect(e.code == .invalidArgument)
        }
    }

    @Test func exportsChangeWhileRunning() throws {
        let (server, path, dir) = try startServer([])
        defer { stopChecked(server, dir) }
        try server.add(try NBDExport(name: "late", device: MemoryBlockDevice(size: 8192)))
        #expect(throws: ServeError.self) { try server.add(try NBDExport(name: "late", device: MemoryBlockDevice(size: 1))) }
        #expect(throws: ServeError.self) { try server.setDefaultExport("missing") }
        #expect(try NBDTestClient.connect(path: path, export: "late").1.size == 8192)
        #expect(server.remove(exportNamed: "late") != nil)
        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        guard case .failure = try c.infoOrGo("late", go: true) else {
            Issue.record("a removed export is still offered")
            return
        }
        #expect(throws: ServeError.self) { try NBDExport(name: String(repeating: "n", count: 5000), device: MemoryBlockDevice(size: 1)) }
    }

    @Test func connectionsBeyondTheLimitAreClosed() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))]) {
            $0.maxConnections = 2
        }
        defer { stopChecked(server, dir) }
        let a = try NBDTestClient.connect(path: path, export: "v")
        let b = try NBDTestClient.connect(path: path, export: "v")
        let c = try NBDTestClient(path: path)
        #expect(try c.serverCloses())
        #expect(server.statistics.connectionsRefused == 1)
        #expect(try a.0.read(0, 512).0 == 0 && b.0.read(0, 512).0 == 0)
    }

    @Test func stopFinishesInFlightRequestsAndFlushes() throws {
        let device = RecordingDevice(MemoryBlockDevice(size: 1 << 20), writeDelay: 0.2)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")
        let idle = try NBDTestClient(path: path)   // still in the handshake
        _ = try idle.readGreeting()

        var burst: [UInt8] = []
        for i in 0..<4 {
            burst += NBDRequestHeader(flags: 0, type: 1, handle: UInt64(i), offset: UInt64(i * 4096), length: 4096).encoded()
            burst += pattern(UInt8(i), 4096)
        }
        try c.send(burst)
        #expect(eventually(5) { device.peakConcurrency > 0 })

        let stopped = DispatchSemaphore(value: 0)
        let failure = LockedBox<Error?>(nil)
        Thread {
            do { try server.stop() } catch { failure.set(error) }
            stopped.signal()
        }.start()

        for _ in 0..<4 {
            let r = try c.readReply()
            #expect(r.error == 0, "in-flight write \(r.handle) must complete, not fail")
        }
        #expect(try c.serverCloses())
        #expect(try idle.serverCloses())
        #expect(stopped.wait(timeout: .now() + 10) == .success)
        #expect(failure.get() == nil)
        #expect(device.inner.flushCount >= 1)
        #expect(device.inner.unflushedWrites == 0)
        #expect(device.events.filter { $0.hasPrefix("write") }.count == 4)
        #expect(access(path, F_OK) != 0)
        withExtendedLifetime(dir) {}
    }

    @Test func stopReportsAFailedFlush() throws {
        let bad = FailingDevice(size: 4096, error: StoreError(.io, "sync: /store/layers/x/b00000001", cause: "Input/output error"))
        let (server, _, dir) = try startServer([try NBDExport(name: "bad", device: bad),
                                              try NBDExport(name: "good", device: MemoryBlockDevice(size: 4096))])
        do {
            try server.stop()
            Issue.record("stop did not report the failed flush")
        } catch let e as ServeError {
            #expect(e.code == .flushFailed)
            #expect(e.description.contains("bad"))
            #expect(e.description.contains("Input/output error"))
        }
        withExtendedLifetime(dir) {}
    }
}

/// A value shared with another thread in a test.
final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func get() -> T { lock.withLock { value } }
    func set(_ v: T) { lock.withLock { value = v } }
    func mutate(_ body: (inout T) -> Void) { lock.withLock { body(&value) } }
}
