import ArchipServe
import ArchipStore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The QEMU tools, if installed.
enum Qemu {
    static func find(_ tool: String) -> String? {
        let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/bin", "/usr/local/bin"]
        return dirs.map { $0 + "/" + tool }.first { access($0, X_OK) == 0 }
    }

    static let io = find("qemu-io")
    static let img = find("qemu-img")
    static let available = io != nil && img != nil
    static let skipReason: Comment = "qemu-io or qemu-img not installed (apt-get install -y qemu-utils); skipping the QEMU end-to-end tests"

    struct Result: CustomStringConvertible {
        var status: Int32
        var output: String
        var description: String { "exit \(status): \(output)" }
    }

    /// Runs a tool to completion; stdout and stderr together, so a failure shows QEMU's own words.
    static func run(_ tool: String?, _ args: [String], timeout: Double = 300) throws -> Result {
        guard let tool else { throw TestClientError("tool not installed") }
        let out = try TempDir("qemu-out")
        let log = out.file("log")
        guard FileManager.default.createFile(atPath: log, contents: nil),
              let handle = FileHandle(forWritingAtPath: log) else { throw TestClientError("cannot create \(log)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            p.waitUntilExit()
            done.signal()
        }
        if done.wait(timeout: .now() + timeout) == .timedOut {
            p.terminate()
            done.wait()
            throw TestClientError("\(tool) \(args) did not finish within \(timeout) s")
        }
        try handle.close()
        let text = String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self)
        return Result(status: p.terminationStatus, output: text)
    }

    static func uri(_ export: String, _ socket: String) -> String { "nbd+unix:///\(export)?socket=\(socket)" }
    static func legacyURI(_ export: String, _ socket: String) -> String { "nbd:unix:\(socket):exportname=\(export)" }

    /// "Run completed in 1.234 seconds." from qemu-img bench.
    static func benchSeconds(_ output: String) -> Double? {
        guard let r = output.range(of: "Run completed in ") else { return nil }
        return Double(output[r.upperBound...].prefix { $0.isNumber || $0 == "." })
    }
}

/// A volume in a fresh store, held open (exclusive) and served by a server.
final class ServedVolume {
    let dir: TempDir
    let store: VolumeStore
    let name: VolumeName
    let volume: Volume
    let server: NBDServer
    let socket: String

    init(_ name: String = "vol1", size: ByteCount = .mebibytes(64), defaultExport: Bool = false,
         workers: Int? = nil) throws {
        dir = try TempDir("nbdq")
        store = try VolumeStore.directory(dir.file("store"), node: "test-node")
        self.name = try VolumeName(name)
        try store.create(self.name, size: size)
        volume = try store.open(self.name)
        socket = dir.file("nbd.sock")
        var config = NBDServer.Configuration()
        config.logger = .standardError(level: .warning)
        if let workers { config.workersPerConnection = workers }
        server = try NBDServer(socketPath: socket, exports: [try NBDExport(name: name, device: VolumeDevice(volume))],
                               defaultExport: defaultExport ? name : nil, configuration: config)
        try server.start()
    }

    var uri: String { Qemu.uri(name.value, socket) }

    /// Stop serving, then close the volume (flush, fold the log, unlock).
    func finish() throws {
        try server.stop(gracePeriod: .seconds(10))
        try volume.close()
    }
}

@Suite(.serialized, .enabled(if: Qemu.available, Qemu.skipReason))
struct NBDQemuTests {
    @Test func qemuIoWritesAndReadsThroughBothURIForms() throws {
        let v = try ServedVolume()
        let r = try Qemu.run(Qemu.io, ["-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", "-c", "flush", v.uri])
        #expect(r.status == 0, "\(r)")
        #expect(r.output.contains("wrote 1048576/1048576 bytes at offset 0"), "\(r)")
        #expect(r.output.contains("read 1048576/1048576 bytes at offset 0"), "\(r)")
        #expect(!r.output.contains("Pattern verification failed"), "\(r)")
        // The data is in the volume, not just in some cache of the server.
        #expect(try v.volume.read(at: 0, length: 1 << 20) == [UInt8](repeating: 0xAB, count: 1 << 20))
        #expect(try v.volume.read(at: 1 << 20, length: 4096) == [UInt8](repeating: 0, count: 4096))

        // The older nbd:unix:...:exportname= form, read-only, with a pattern that
        // holds and one that does not (the check can fail).
        let legacy = Qemu.legacyURI("vol1", v.socket)
        let good = try Qemu.run(Qemu.io, ["-r", "-f", "raw", "-c", "read -P 0xab 512k 512k", legacy])
        #expect(good.status == 0 && !good.output.contains("Pattern verification failed"), "\(good)")
        let bad = try Qemu.run(Qemu.io, ["-r", "-f", "raw", "-c", "read -P 0xcd 0 4k", legacy])
        #expect(bad.output.contains("Pattern verification failed"), "\(bad)")
        try v.finish()
    }

    @Test func qemuImgInfoAcceptsTheseURIForms() throws {
        let v = try ServedVolume(defaultExport: true)
        let s = v.socket
        let forms: [[String]] = [
            [Qemu.uri("vol1", s)],
            [Qemu.legacyURI("vol1", s)],
            ["nbd:unix:\(s)"],                       // export "" -> the default export
            ["nbd+unix:///?socket=\(s)"],            // likewise
            ["json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"\(s)\"},\"export\":\"vol1\"}"],
            ["--image-opts", "driver=nbd,server.type=unix,server.path=\(s),export=vol1"],
        ]
        for args in forms {
            let r = try Qemu.run(Qemu.img, ["info"] + args)
            #expect(r.status == 0, "qemu-img info \(args): \(r)")
            #expect(r.output.contains("virtual size: 64 MiB (67108864 bytes)"), "qemu-img info \(args): \(r)")
        }
        // A name this socket does not serve: QEMU shows our reason.
        let missing = try Qemu.run(Qemu.img, ["info", Qemu.uri("other", s)])
        #expect(missing.status != 0)
        #expect(missing.output.contains("'other' is not served on this socket"), "\(missing)")
        try v.finish()

        // Without a default export, the export-less forms are refused.
        let w = try ServedVolume()
        let r = try Qemu.run(Qemu.img, ["info", "nbd:unix:\(w.socket)"])
        #expect(r.status != 0, "\(r)")
        #expect(r.output.contains("default export"), "\(r)")
        try w.finish()
    }

    @Test func qemuImgCompareAgainstTheRawExport() throws {
        let v = try ServedVolume()
        let r = try Qemu.run(Qemu.io, ["-f", "raw",
                                       "-c", "write -P 0x11 0 1M",
                                       "-c", "write -P 0x22 5M 64k",
                                       "-c", "write -P 0x33 63M 1M",     // the last MiB
                                       "-c", "write -P 0x44 8M 4M",      // a whole 4 MiB block
                                       "-c", "write -z 5M 4k",
                                       "-c", "discard 0 512k",
                                       "-c", "read -P 0 0 512k",
                                       "-c", "read -P 0x11 512k 512k",
                                       "-c", "flush", v.uri])
        #expect(r.status == 0 && !r.output.contains("Pattern verification failed"), "\(r)")

        let raw = v.dir.file("export.raw")
        let fd = open(raw, O_CREAT | O_RDWR | O_TRUNC, 0o644)
        try #require(fd >= 0)
        try RawCopy.exportVolume(v.volume, to: fd)
        close(fd)

        let same = try Qemu.run(Qemu.img, ["compare", "-f", "raw", "-F", "raw", raw, v.uri])
        #expect(same.status == 0, "\(same)")
        #expect(same.output.contains("Images are identical"), "\(same)")

        // One byte off in the file: compare must notice (so the check above means something).
        let f = open(raw, O_RDWR)
        var byte: UInt8 = 0x99
        #expect(pwrite(f, &byte, 1, (5 << 20) + 100) == 1)
        close(f)
        let differ = try Qemu.run(Qemu.img, ["compare", "-f", "raw", "-F", "raw", raw, v.uri])
        #expect(differ.status == 1, "\(differ)")
        #expect(differ.output.contains("Content mismatch at offset 5242880"), "\(differ)")
        try v.finish()
    }

    @Test func qemuImgBenchKeepsRequestsInFlight() throws {
        let v = try ServedVolume()
        for args in [["-w", "-s", "4k", "-c", "4000"], ["-s", "4k", "-c", "4000"], ["-w", "-s", "1M", "-c", "200"]] {
            let r = try Qemu.run(Qemu.img, ["bench", "-f", "raw", "-d", "16"] + args + [v.uri])
            #expect(r.status == 0, "\(r)")
            #expect(Qemu.benchSeconds(r.output) != nil, "\(r)")
        }
        let stats = v.server.statistics
        print("qemu-img bench -d 16 over NBD: \(stats)")
        // qemu-img keeps up to 16 requests in flight; the server must have had several at once.
        #expect(stats.peakRequestsInFlight > 1, "\(stats)")
        #expect(stats.requestsCompleted >= 8200)
        try v.finish()
    }

    @Test func snapshotIsServedReadOnly() throws {
        let v = try ServedVolume()
        var r = try Qemu.run(Qemu.io, ["-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "flush", v.uri])
        #expect(r.status == 0, "\(r)")
        try v.volume.snapshot(try VolumeName("snap1"))
        // After the snapshot the volume moves on; the snapshot must not.
        r = try Qemu.run(Qemu.io, ["-f", "raw", "-c", "write -P 0xcd 0 64k", v.uri])
        #expect(r.status == 0, "\(r)")

        let snap = try v.store.open(try VolumeName("snap1"), mode: .readOnly)
        try v.server.add(try NBDExport(name: "snap1", device: VolumeDevice(snap)))
        let snapURI = Qemu.uri("snap1", v.socket)

        let write = try Qemu.run(Qemu.io, ["-f", "raw", "-c", "write -P 0xcd 0 4k", snapURI])
        #expect(write.status != 0 || write.output.contains("failed"), "a write to the snapshot went through: \(write)")
        #expect(!write.output.contains("wrote 4096/4096"), "\(write)")
        print("qemu-io write to a read-only export: \(write.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        let read = try Qemu.run(Qemu.io, ["-r", "-f", "raw", "-c", "read -P 0xab 0 1M", snapURI])
        #expect(read.status == 0 && !read.output.contains("Pattern verification failed"), "\(read)")

        // At the protocol level: READ_ONLY advertised, writes EPERM.
        let (c, info) = try NBDTestClient.connect(path: v.socket, export: "snap1")
        #expect(info.flags & 0b10 != 0)
        #expect(try c.write(0, [UInt8](repeating: 0xCD, count: 4096)) == 1)
        #expect(try c.trim(0, 4096) == 1)
        #expect(try snap.read(at: 0, length: 1 << 20) == [UInt8](repeating: 0xAB, count: 1 << 20))
        #expect(try v.volume.read(at: 0, length: 4) == [0xCD, 0xCD, 0xCD, 0xCD])
        try v.finish()
        try snap.close()
    }

    /// `ARCHIP_NBD_BENCH=1`: qemu-img bench over NBD against the same bench on
    /// a raw file, in one run (numbers for the README; no assertions on speed).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["ARCHIP_NBD_BENCH"] == "1",
                   "set ARCHIP_NBD_BENCH=1 to run the NBD benchmark"))
    func benchmarkAgainstARawFile() throws {
        let size = ByteCount.gibibytes(1)
        // ARCHIP_NBD_WORKERS: try other worker counts per connection.
        let workers = ProcessInfo.processInfo.environment["ARCHIP_NBD_WORKERS"].flatMap { Int($0) }
        let v = try ServedVolume("bench", size: size, workers: workers)
        let raw = v.dir.file("plain.raw")
        var r = try Qemu.run(Qemu.img, ["create", "-f", "raw", raw, "1G"])
        #expect(r.status == 0, "\(r)")
        // Fully written first, so no read is a hole read, on either side.
        r = try Qemu.run(Qemu.io, ["-f", "raw", "-c", "write -P 0x5a 0 1G", raw])
        #expect(r.status == 0, "\(r)")
        let fd = open(raw, O_RDONLY)
        try RawCopy.importFile(fd: fd, length: size.bytes, into: v.volume)
        close(fd)

        let cases: [(String, [String], Int, Int)] = [
            ("4k read", ["-s", "4k"], 100_000, 4096),
            ("4k write", ["-w", "-s", "4k"], 100_000, 4096),
            ("1M read", ["-s", "1M"], 4000, 1 << 20),
            ("1M write", ["-w", "-s", "1M"], 4000, 1 << 20),
        ]
        let targets: [(String, [String])] = [
            ("NBD (archip, VolumeDevice)", [v.uri]),
            ("raw file -t none -i io_uring", ["-t", "none", "-i", "io_uring", raw]),
            ("raw file (page cache)", [raw]),
        ]
        var lines = ["| target | 4k read IOPS | 4k write IOPS | 1M read MB/s | 1M write MB/s |", "|---|---|---|---|---|"]
        for (label, target) in targets {
            var cells: [String] = []
            for (_, args, count, bytes) in cases {
                let b = try Qemu.run(Qemu.img, ["bench", "-f", "raw", "-d", "16", "-c", "\(count)"] + args + target)
                #expect(b.status == 0, "\(b)")
                guard let secs = Qemu.benchSeconds(b.output), secs > 0 else {
                    cells.append("?")
                    continue
                }
                cells.append(bytes == 4096 ? String(format: "%.1fk", Double(count) / secs / 1000)
                                           : String(format: "%.0f", Double(count * bytes) / secs / 1e6))
            }
            lines.append("| \(label) | " + cells.joined(separator: " | ") + " |")
        }
        print("qemu-img bench -d 16, 1 GiB image, fully written:\n" + lines.joined(separator: "\n"))
        print("server (\(v.server.configuration.workersPerConnection) workers per connection): \(v.server.statistics)")
        try v.finish()
    }
}
