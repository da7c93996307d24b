import Foundation
import Testing

/// The nginx of tests/e2e/nginx/nginx-fixture.sh on 127.0.0.1 (HTTP and
/// HTTPS with a CA made for the run), serving a 20 MiB random image.
/// Started once per suite by the `.nginx` trait, always stopped after it.
/// (In ArchipTestSupport so the filler's and the CLI's end-to-end tests share it.)
public final class HTTPFixture: Sendable {
    @TaskLocal public static var current: HTTPFixture?

    public static let repoRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    public static let scriptDir = repoRoot.appendingPathComponent("tests/e2e/nginx").path
    public static let imageSize = 20 << 20

    /// Why the live tests cannot run here, printed once; nil when they can.
    public static let skipReason: String? = {
        var reason: String?
        if geteuid() != 0 {
            reason = "not root (nginx-fixture.sh runs nginx as root)"
        } else if let missing = ["nginx", "openssl"].first(where: { findTool($0) == nil }) {
            reason = "\(missing) not installed (apt-get install nginx-light openssl)"
        } else if python == nil {
            reason = "python3 not found"
        }
        if let reason { FileHandle.standardError.write(Data("HTTP live tests skipped: \(reason)\n".utf8)) }
        return reason
    }()

    public static let python: String? = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")
        ? "/usr/bin/python3" : findTool("python3")

    public static func findTool(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") + ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    public let dir: String
    public let httpPort: Int
    public let httpsPort: Int
    public let caPath: String
    public let www: String
    public let accessLog: String
    /// The bytes of `www/image.raw`.
    public let image: [UInt8]

    public var httpURL: String { "http://127.0.0.1:\(httpPort)" }
    public var httpsURL: String { "https://127.0.0.1:\(httpsPort)" }
    public var imageURL: String { "\(httpURL)/image.raw" }

    private init(dir: String, env: [String: String], image: [UInt8]) throws {
        guard let http = env["NGINX_HTTP_PORT"].flatMap(Int.init), let https = env["NGINX_HTTPS_PORT"].flatMap(Int.init),
              let ca = env["NGINX_CA"], let www = env["NGINX_WWW"], let log = env["NGINX_ACCESS_LOG"] else {
            throw FixtureError("ports.env of \(dir) lacks a value: \(env)")
        }
        self.dir = dir
        httpPort = http; httpsPort = https; caPath = ca; self.www = www; accessLog = log
        self.image = image
    }

    static let dirPrefix = "archip-http-"

    public static func start() throws -> HTTPFixture {
        try sweepOrphans()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(dirPrefix + UUID().uuidString).path
        try FileManager.default.createDirectory(atPath: dir + "/www", withIntermediateDirectories: true)
        // Who owns this fixture: if this process is killed, the next run stops it.
        try "\(getpid())\n".write(toFile: dir + "/owner.pid", atomically: true, encoding: .utf8)
        var rng = SystemRandomNumberGenerator()
        var image = [UInt8](repeating: 0, count: imageSize)
        image.withUnsafeMutableBytes { p in
            for i in stride(from: 0, to: p.count, by: 8) { p.storeBytes(of: rng.next() as UInt64, toByteOffset: i, as: UInt64.self) }
        }
        try Data(image).write(to: URL(fileURLWithPath: dir + "/www/image.raw"))
        let r = try runTool(scriptDir + "/nginx-fixture.sh", ["start", dir], logIn: dir)
        guard r.status == 0 else {
            // Whatever did start must not outlive the failure.
            let stopped = try runTool(scriptDir + "/nginx-fixture.sh", ["stop", dir], logIn: dir)
            throw FixtureError("nginx-fixture.sh start failed (\(r.status)): \(r.output)"
                               + (stopped.status == 0 ? "" : "; stop failed too: \(stopped.output)"))
        }
        let text = try String(contentsOfFile: dir + "/ports.env", encoding: .utf8)
        var env: [String: String] = [:]
        for line in text.split(separator: "\n") {
            if let eq = line.firstIndex(of: "=") { env[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
        }
        return try HTTPFixture(dir: dir, env: env, image: image)
    }

    /// Stops and removes the fixtures of test runs that died without stopping
    /// theirs (killed by a timeout, a crash): their owner pid is gone.
    public static func sweepOrphans() throws {
        let tmp = FileManager.default.temporaryDirectory.path
        // One sweeper at a time: suites start their fixtures in parallel, and
        // two sweeping one orphan made the second fail removing what the
        // first had removed (its whole suite failed).
        let lock = open(tmp + "/" + dirPrefix + "sweep.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw FixtureError("cannot open \(tmp)/\(dirPrefix)sweep.lock: errno \(errno)") }
        defer { close(lock) }
        guard flock(lock, LOCK_EX) == 0 else { throw FixtureError("cannot lock \(tmp)/\(dirPrefix)sweep.lock: errno \(errno)") }
        defer { flock(lock, LOCK_UN) }
        for name in try FileManager.default.contentsOfDirectory(atPath: tmp) where name.hasPrefix(dirPrefix) {
            let dir = "\(tmp)/\(name)"
            guard FileManager.default.fileExists(atPath: dir + "/owner.pid"),
                  let text = try? String(contentsOfFile: dir + "/owner.pid", encoding: .utf8) else { continue }
            guard let owner = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)),
                  kill(owner, 0) == -1, errno == ESRCH else { continue }
            let r = try runTool(scriptDir + "/nginx-fixture.sh", ["stop", dir], logIn: dir)
            guard r.status == 0 else { throw FixtureError("stopping the orphaned fixture \(dir) failed: \(r.output)") }
            try FileManager.default.removeItem(atPath: dir)
            FileHandle.standardError.write(Data("HTTP fixture: stopped \(dir), left by dead test process \(owner)\n".utf8))
        }
    }

    public func stop() throws {
        let r = try HTTPFixture.runTool(HTTPFixture.scriptDir + "/nginx-fixture.sh", ["stop", dir], logIn: dir)
        guard r.status == 0 else { throw FixtureError("nginx-fixture.sh stop failed (\(r.status)): \(r.output)") }
        if ProcessInfo.processInfo.environment["ARCHIP_HTTP_KEEP"] == nil {
            try FileManager.default.removeItem(atPath: dir)
        } else {
            FileHandle.standardError.write(Data("HTTP fixture kept in \(dir)\n".utf8))
        }
    }

    /// Copies the image under a new name, so a test's requests are its own in the access log.
    public func publish(_ name: String, bytes: [UInt8]? = nil) throws -> String {
        try Data(bytes ?? image).write(to: URL(fileURLWithPath: "\(www)/\(name)"))
        return "\(httpURL)/\(name)"
    }

    public struct AccessLine: Sendable {
        public var connection: String
        public var path: String
        public var status: Int
        public var range: String
    }

    /// Access log lines for `path`, waiting up to 2 s for at least `count`:
    /// nginx logs a request after sending the response, so the client can be
    /// done before the line is written.
    public func accessLines(for path: String, awaiting count: Int) throws -> [AccessLine] {
        var lines = try accessLines(for: path)
        for _ in 0..<40 where lines.count < count {
            Thread.sleep(forTimeInterval: 0.05)
            lines = try accessLines(for: path)
        }
        return lines
    }

    /// Access log lines for `path`, e.g. `/image.raw`.
    public func accessLines(for path: String) throws -> [AccessLine] {
        let text = try String(contentsOfFile: accessLog, encoding: .utf8)
        var out: [AccessLine] = []
        // 127.0.0.1 conn=5 req=1 "GET /x HTTP/1.1" 206 1 range="bytes=0-0" t=0.000
        for line in text.split(separator: "\n") {
            let quoted = line.split(separator: "\"", omittingEmptySubsequences: false)
            guard quoted.count >= 4 else { continue }
            let request = quoted[1].split(separator: " ")
            guard request.count >= 2, request[1] == path else { continue }
            let conn = line.split(separator: " ")[1].replacingOccurrences(of: "conn=", with: "")
            let status = Int(quoted[2].split(separator: " ").first ?? "") ?? 0
            out.append(AccessLine(connection: conn, path: path, status: status, range: String(quoted[3])))
        }
        return out
    }

    // MARK: - Helper processes

    /// A child process on 127.0.0.1 (proxy, plain server) that the test stops.
    public final class Child: @unchecked Sendable {
        public let pid: pid_t
        public let port: Int
        public let log: String
        private let lock = NSLock()
        private var exitStatus: Int32?

        init(pid: pid_t, port: Int, log: String) { self.pid = pid; self.port = port; self.log = log }

        public var isRunning: Bool {
            lock.lock()
            defer { lock.unlock() }
            if exitStatus == nil, let s = HTTPFixture.reap(pid, block: false) { exitStatus = s }
            return exitStatus == nil
        }

        /// SIGTERM (both helpers exit on it), SIGKILL after 5 s, and reap; idempotent.
        public func stop() {
            lock.lock()
            defer { lock.unlock() }
            guard exitStatus == nil else { return }
            kill(pid, SIGTERM)
            for _ in 0..<100 {
                if let s = HTTPFixture.reap(pid, block: false) { exitStatus = s; return }
                Thread.sleep(forTimeInterval: 0.05)
            }
            FileHandle.standardError.write(Data("helper \(pid) ignored SIGTERM; killing it\n".utf8))
            kill(pid, SIGKILL)
            exitStatus = HTTPFixture.reap(pid, block: true)
        }

        public var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
    }

    /// cutting-proxy.py in front of nginx's HTTP port.
    public func startCuttingProxy(cutEvery: Int, cutAfter: Int, mode: String = "reset") throws -> Child {
        let id = UUID().uuidString.prefix(8)
        let portFile = "\(dir)/proxy-\(id).port", log = "\(dir)/proxy-\(id).log"
        let pid = try HTTPFixture.spawn(HTTPFixture.python ?? "/usr/bin/python3", [
            HTTPFixture.scriptDir + "/cutting-proxy.py", "--target-port", "\(httpPort)",
            "--cut-every", "\(cutEvery)", "--cut-after", "\(cutAfter)", "--mode", mode,
            // In DIR, so nginx-fixture.sh stop kills it should this test die first.
            "--pid-file", "\(dir)/proxy-\(id).pid", "--port-file", portFile, "--log", log,
        ], output: log)
        let child = Child(pid: pid, port: 0, log: log)
        do {
            let port = try HTTPFixture.waitForFile(portFile, child: child)
            return Child(pid: pid, port: port, log: log)
        } catch {
            child.stop()
            throw error
        }
    }

    /// Python's http.server, which ignores Range (always 200 with the whole file).
    public func startPlainServer() throws -> Child {
        let port = try HTTPFixture.freeLoopbackPort()
        let log = "\(dir)/plain-\(port).log"
        let pid = try HTTPFixture.spawn(HTTPFixture.python ?? "/usr/bin/python3",
                                        ["-m", "http.server", "\(port)", "--bind", "127.0.0.1", "--directory", www],
                                        output: log)
        let child = Child(pid: pid, port: port, log: log)
        do {
            try HTTPFixture.waitForListener(port, child: child)
            return child
        } catch {
            child.stop()
            throw error
        }
    }

    /// posix_spawn, stdout and stderr appended to `output`, stdin from /dev/null.
    /// (Foundation's Process left the fixture script unreaped when waited on
    /// from the suite's async scope; plain waitpid has no such machinery.)
    public static func spawn(_ exe: String, _ args: [String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        // Test threads (libdispatch workers) block most signals, and a child
        // inherits the mask: without this the helpers could not be stopped
        // with SIGTERM, nor nginx with SIGQUIT.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), defaults = sigset_t()
        sigemptyset(&none)
        sigemptyset(&defaults)
        for sig in [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid = pid_t()
        let rc = posix_spawn(&pid, exe, &actions, &attr, argv, environ)
        guard rc == 0 else { throw FixtureError("posix_spawn \(exe): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// waitpid: the exit status (128+signal when killed), or nil if still running (`block: false`).
    public static func reap(_ pid: pid_t, block: Bool) -> Int32? {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, block ? 0 : WNOHANG)
            if r == pid { break }
            if r == 0 { return nil }
            if errno == EINTR { continue }
            return -1  // not our child any more (already reaped)
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    public static func waitForFile(_ path: String, child: Child) throws -> Int {
        for _ in 0..<100 {
            if FileManager.default.fileExists(atPath: path) {
                let text = try String(contentsOfFile: path, encoding: .utf8)
                if let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) { return port }
            }
            guard child.isRunning else { throw FixtureError("helper exited before writing \(path): \(child.logText)") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw FixtureError("no \(path) after 5 s")
    }

    public static func waitForListener(_ port: Int, child: Child) throws {
        for _ in 0..<100 {
            if canConnect(port) { return }
            guard child.isRunning else { throw FixtureError("server for port \(port) exited: \(child.logText)") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw FixtureError("nothing listens on 127.0.0.1:\(port) after 5 s")
    }

    public static func loopbackAddress(_ port: Int) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        return a
    }

    public static func canConnect(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var a = loopbackAddress(port)
        return withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    /// A port nothing listens on right now (bound to 0 and released).
    public static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var a = loopbackAddress(0)
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw FixtureError("bind 127.0.0.1:0: \(String(cString: strerror(errno)))") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    /// Runs a tool to completion; output goes to a file (no pipe a daemon could hold open).
    public static func runTool(_ exe: String, _ args: [String], logIn dir: String) throws -> (status: Int32, output: String) {
        let log = "\(dir)/\(URL(fileURLWithPath: exe).lastPathComponent).\(args.first ?? "run").out"
        let pid = try spawn(exe, args, output: log)
        let status = reap(pid, block: true) ?? -1
        return (status, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }
}

public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Starts the nginx fixture around a whole suite and stops it afterwards,
/// whatever the tests did.
public struct HTTPFixtureTrait: SuiteTrait, TestScoping {
    public var isRecursive: Bool { false }

    public func provideScope(for test: Test, testCase: Test.Case?,
                      performing function: @Sendable () async throws -> Void) async throws {
        let fixture = try HTTPFixture.start()
        do {
            try await HTTPFixture.$current.withValue(fixture) { try await function() }
        } catch {
            try fixture.stop()
            throw error
        }
        try fixture.stop()
    }
}

extension Trait where Self == HTTPFixtureTrait {
    public static var nginx: Self { HTTPFixtureTrait() }
}

/// Skips a suite (with the reason printed) where nginx cannot run.
extension Trait where Self == ConditionTrait {
    public static var needsNginx: Self {
        .enabled(if: HTTPFixture.skipReason == nil, Comment(rawValue: HTTPFixture.skipReason ?? ""))
    }
}
