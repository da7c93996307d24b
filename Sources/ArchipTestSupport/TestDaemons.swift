import Foundation

/// Node daemons (`archip serve`) that test runs start, and what they leave
/// when the run is killed (CI's timeout, a crash): the daemons run in
/// sessions of their own and outlive the test process, with their FUSE
/// mounts and the loop devices over them.
///
/// A test registers the paths it makes under the temp folder by a root
/// (`/tmp/archip-cli-<uuid>`: its store, `...-run-<node>` runtime folders):
/// `<root>.test-owner` names the owning process (pid and start time). The
/// next run's sweep (serialized with flock, like HTTPFixture's) finds the
/// roots whose owner is gone and stops the daemons whose `--runtime-dir` is
/// under one (SIGTERM, then SIGKILL), detaches the loop devices whose
/// backing file is under one, unmounts (lazily) the mounts under one, and
/// removes the root's files. Daemons of live runs, and every daemon whose
/// runtime folder is not a dead run's (an operator's, another lab's), are
/// never touched.
public enum TestDaemons {
    static let ownerSuffix = ".test-owner"
    static var tmp: String { FileManager.default.temporaryDirectory.path }

    /// What one sweep did.
    public struct Sweep: Sendable {
        /// Roots of dead runs that were cleaned up.
        public var roots: [String] = []
        /// Daemons stopped (pid, how: "SIGTERM" or "SIGKILL").
        public var daemons: [(pid: Int32, how: String)] = []
        public var unmounted: [String] = []
        public var detached: [String] = []
    }

    /// One sweep per test process, before its first registration.
    private static let sweptOnce: Void = {
        do {
            try sweepOrphans()
        } catch {
            FileHandle.standardError.write(Data("test daemons: sweep failed: \(error)\n".utf8))
        }
    }()

    /// Records that `pid` (default: this process) owns every path under the
    /// temp folder that starts with `root`. The first call of a process
    /// sweeps what dead runs left first.
    public static func register(root: String, owner pid: Int32 = getpid()) throws {
        _ = sweptOnce
        guard root.hasPrefix(tmp + "/") else { throw FixtureError("test root \(root) is not under \(tmp)") }
        let line = "\(pid) \(startTime(pid) ?? 0)\n"
        try line.write(toFile: root + ownerSuffix, atomically: true, encoding: .utf8)
    }

    /// The start time of `pid` (clock ticks since boot, /proc/PID/stat's
    /// 22nd field): a pid used again by another process has another.
    static func startTime(_ pid: Int32) -> UInt64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is the 3rd field (state); the 22nd is fields[19].
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// Whether process `pid` runs (a zombie does not).
    static func runs(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    /// Whether the owner recorded in `text` ("pid starttime") is gone.
    static func ownerIsGone(_ text: String) -> (gone: Bool, pid: Int32)? {
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let first = parts.first, let pid = Int32(first), pid > 0 else { return nil }
        guard runs(pid) else { return (true, pid) }
        if parts.count > 1, let recorded = UInt64(parts[1]), recorded != 0,
           let now = startTime(pid), now != recorded { return (true, pid) }
        return (false, pid)
    }

    /// Stops and removes what runs whose owner is gone left behind (see above).
    @discardableResult
    public static func sweepOrphans() throws -> Sweep {
        let lockPath = tmp + "/archip-test-daemons.sweep.lock"
        let lock = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw FixtureError("cannot open \(lockPath): \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        guard flock(lock, LOCK_EX) == 0 else { throw FixtureError("cannot lock \(lockPath): \(String(cString: strerror(errno)))") }
        defer { flock(lock, LOCK_UN) }

        var result = Sweep()
        var owners: [String: Int32] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? [] where name.hasSuffix(ownerSuffix) {
            let file = tmp + "/" + name
            guard let text = try? String(contentsOfFile: file, encoding: .utf8), let o = ownerIsGone(text), o.gone else { continue }
            owners[String(file.dropLast(ownerSuffix.count))] = o.pid
        }
        guard !owners.isEmpty else { return result }
        let roots = owners.keys.sorted()
        func under(_ path: String) -> String? { roots.first { path.hasPrefix($0) } }

        // 1. The daemons: SIGTERM lets them detach and unmount themselves.
        var daemons: [(Int32, String)] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != getpid(),
                  let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard args.contains("serve"), let i = args.firstIndex(of: "--runtime-dir"), i + 1 < args.count,
                  let root = under(args[i + 1]), runs(pid) else { continue }
            daemons.append((pid, root))
            kill(pid, SIGTERM)
        }
        func waitGone(_ pid: Int32, seconds: Double) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while runs(pid) && Date() < deadline { usleep(50_000) }
            return !runs(pid)
        }
        for (pid, root) in daemons {
            var how = "SIGTERM"
            if !waitGone(pid, seconds: 10) {
                kill(pid, SIGKILL)
                how = "SIGKILL"
                _ = waitGone(pid, seconds: 5)
            }
            result.daemons.append((pid, how))
            log("stopped archip serve pid \(pid) (\(how)) of \(root)")
        }

        // 2. Loop devices over a file under a dead root (a killed daemon's).
        for n in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? [] where n.hasPrefix("loop") {
            guard let backing = try? String(contentsOfFile: "/sys/block/\(n)/loop/backing_file", encoding: .utf8),
                  under(backing.trimmingCharacters(in: .newlines)) != nil else { continue }
            let r = try shell("losetup -d /dev/\(n)")
            if r.status == 0 { result.detached.append("/dev/" + n); log("detached /dev/\(n) (\(backing.trimmingCharacters(in: .newlines)))") }
            else { log("cannot detach /dev/\(n): \(r.out.trimmingCharacters(in: .whitespacesAndNewlines))") }
        }

        // 3. Mounts under a dead root, deepest first, lazily (a dead FUSE
        //    connection cannot answer a plain unmount's requests).
        let info = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        let points = info.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            guard f.count > 4 else { return nil }
            return unescapeMountPath(String(f[4]))
        }.filter { under($0) != nil }.sorted { $0.count > $1.count }
        var stillMounted = Set<String>()
        for p in points {
            if umount2(p, Int32(MNT_DETACH)) == 0 { result.unmounted.append(p); log("unmounted \(p)") }
            else { log("cannot unmount \(p): \(String(cString: strerror(errno)))"); under(p).map { _ = stillMounted.insert($0) } }
        }

        // 4. The dead runs' files (stores, runtime folders), then the record.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? [] {
            let path = tmp + "/" + name
            // Never into a mount that is still there: its files are a volume's.
            guard let root = under(path), !stillMounted.contains(root), !name.hasSuffix(ownerSuffix) else { continue }
            try? FileManager.default.removeItem(atPath: path)
        }
        for root in roots where !stillMounted.contains(root) {
            try? FileManager.default.removeItem(atPath: root + ownerSuffix)
            result.roots.append(root)
        }
        return result
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescapeMountPath(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out = [UInt8]()
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func log(_ line: String) {
        FileHandle.standardError.write(Data("test daemons: \(line)\n".utf8))
    }
}
