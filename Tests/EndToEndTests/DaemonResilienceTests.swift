import ArchipTestSupport
import Foundation
import Testing

/// The node daemon as operators run it: started first, in the host's mount
/// namespace (as archip-serve.service runs it), with other mount namespaces
/// and processes around it. It must never hang its callers (Ganeti's jobs
/// wait on them) and nothing that walks its files may take it down.
@Suite(.serialized) struct DaemonResilience {
    /// `archip serve` started the way systemd starts it (its own session, not
    /// on demand by a client), stopped with SIGTERM.
    final class RunningDaemon {
        let cli: CLI
        let runtime: String
        let node: String
        let process = Process()
        var log: String { runtime + ".log" }

        init(_ cli: CLI, node: String = "node-a", extra: [String] = []) throws {
            self.cli = cli
            self.node = node
            runtime = cli.store + "-run-" + node
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
            process.arguments = [CLI.binDir + "/archip", "serve", "--runtime-dir", runtime, "--store", cli.store,
                                 "--node", node] + extra
            process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ARCHIP_") }
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let out = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.standardOutput = out
            process.standardError = out
            process.standardInput = FileHandle.nullDevice
            try process.run()
            for _ in 0..<100 {
                if FileManager.default.fileExists(atPath: runtime + "/control.sock"), pid != nil,
                   try run(["attached"]).status == 0 { return }
                usleep(50_000)
            }
            throw CLIError("archip serve did not start: \(logText)")
        }

        var pid: Int32? {
            (try? String(contentsOfFile: runtime + "/serve.pid", encoding: .utf8))
                .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        var alive: Bool { pid.map { kill($0, 0) == 0 } ?? false }

        @discardableResult
        func run(_ args: [String], env: [String: String] = [:]) throws -> CLI.Result {
            try cli.run(args, env: ["ARCHIP_NODE": node, "ARCHIP_RUNTIME_DIR": runtime].merging(env) { $1 })
        }

        /// `archip attach NAME`: the device and the NBD URI.
        func attach(_ name: String) throws -> (device: String, uri: String) {
            let r = try run(["attach", name])
            let lines = r.stdout.split(separator: "\n").map(String.init)
            guard r.status == 0, lines.count == 2 else { throw CLIError("attach \(name): \(r.stderr)") }
            return (lines[0], lines[1])
        }

        /// How many volumes `archip attached --json` lists.
        func attachedCount() throws -> Int {
            let data = try run(["attached", "--json"]).stdoutData
            return ((try? JSONSerialization.jsonObject(with: data)) as? [Any])?.count ?? -1
        }

        /// Runs `args` and how long it took, in seconds.
        /// Under `timeout -s KILL 60`: a regression that hangs fails the test
        /// instead of hanging the suite.
        func timed(_ args: [String]) throws -> (CLI.Result, Double) {
            let t = Date()
            let r = try cli.run(args, env: ["ARCHIP_NODE": node, "ARCHIP_RUNTIME_DIR": runtime],
                                under: ["/usr/bin/timeout", "-s", "KILL", "60"])
            return (r, Date().timeIntervalSince(t))
        }

        /// A shell command inside the daemon's own mount namespace, where its FUSE mounts are.
        func inDaemonNamespace(_ cmd: String) throws -> (status: Int32, out: String) {
            guard let pid else { throw CLIError("no daemon pid") }
            return try shell("nsenter -t \(pid) -m -- sh -c '\(cmd)'")
        }

        func stop() {
            if let pid, kill(pid, 0) == 0 {
                kill(pid, SIGTERM)
                for _ in 0..<200 where kill(pid, 0) == 0 { usleep(50_000) }
                if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
            }
            process.waitUntilExit()
            try? FileManager.default.removeItem(atPath: cli.store)
        }
    }

    struct CLIError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    /// The FUSE connections alive on the machine, by id (fusectl; mounted
    /// here if it is not). Other suites' mounts come and go meanwhile: tests
    /// look at their own connections' ids, never at the count.
    static func fuseConnections() throws -> Set<String> {
        _ = try shell("mountpoint -q /sys/fs/fuse/connections || mount -t fusectl fusectl /sys/fs/fuse/connections")
        return Set((try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/fuse/connections")) ?? [])
    }

    static let unavailable = dataPathUnavailable ?? missingPrerequisite(devices: [], tools: ["nsenter", "unshare", "setsid", "ip", "python3"])

    static func skip(_ what: String) -> Bool {
        if let why = unavailable { print("SKIP \(what): \(why)"); return true }
        return false
    }

    /// Every FUSE callback with whatever a caller can send through the mount:
    /// none may take the daemon down (a NULL path in readdir once did, and
    /// with it every guest disk of the node).
    @Test func nothingDoneThroughTheMountKillsTheDaemon() throws {
        if DaemonResilience.skip("FUSE callbacks through the mount") { return }
        let cli = CLI()
        try cli.run(["create", "v", "--size", "16M"])
        try cli.run(["create", "s", "--size", "16M"])
        let d = try RunningDaemon(cli)
        defer { d.stop() }
        let (dev, _) = try d.attach("v")
        try d.run(["snapshot", "s", "s-snap"])
        _ = try d.attach("s-snap")
        #expect(try shell("printf 'written before' | dd of=\(dev) bs=4096 conv=notrunc,fsync 2>/dev/null").status == 0)
        let probe = """
        import errno, fcntl, os, stat, sys
        root = sys.argv[1]
        done = 0
        def attempt(f, *a):
            global done
            try: f(*a)
            except OSError: pass
            done += 1
        for mnt in [root + "/v", root + "/s-snap"]:
            name = mnt + "/" + os.path.basename(mnt)
            for p in [mnt, mnt + "/", name, mnt + "/nope", mnt + "/nope/deeper", name + "/x", mnt + "/.", mnt + "/.."]:
                attempt(os.listdir, p); attempt(os.stat, p); attempt(os.lstat, p); attempt(os.statvfs, p)
                attempt(os.access, p, os.R_OK | os.W_OK | os.X_OK); attempt(os.readlink, p)
                attempt(os.getxattr, p, "user.x"); attempt(os.setxattr, p, "user.x", b"1")
                attempt(os.listxattr, p); attempt(os.removexattr, p, "user.x")
                attempt(os.chmod, p, 0o777); attempt(os.chown, p, 1, 1); attempt(os.utime, p, (1, 1))
                attempt(os.truncate, p, 0); attempt(os.truncate, p, 1 << 20)
                attempt(os.mkdir, p + "-d"); attempt(os.rmdir, p); attempt(os.unlink, p)
                attempt(os.rename, p, p + "-r"); attempt(os.link, p, p + "-l"); attempt(os.symlink, "x", p + "-s")
                attempt(os.mknod, p + "-n", 0o600 | stat.S_IFIFO)
                for flags in [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_DIRECTORY, os.O_CREAT | os.O_EXCL | os.O_RDWR,
                              os.O_RDWR | os.O_TRUNC, os.O_WRONLY | os.O_APPEND, os.O_RDONLY | os.O_DIRECT, os.O_PATH, os.O_RDONLY | os.O_NOFOLLOW]:
                    try:
                        fd = os.open(p, flags, 0o600)
                    except OSError:
                        done += 1
                        continue
                    for op in [lambda: os.fstat(fd), lambda: os.fstatvfs(fd), lambda: os.listdir(fd), lambda: os.pread(fd, 4096, 0),
                               lambda: os.pread(fd, 1 << 20, (1 << 40)), lambda: os.pwrite(fd, b"", 0), lambda: os.lseek(fd, 0, os.SEEK_DATA),
                               lambda: os.lseek(fd, 0, os.SEEK_HOLE), lambda: os.fsync(fd), lambda: os.fdatasync(fd),
                               lambda: os.posix_fallocate(fd, 1 << 40, 4096), lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
                               lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), lambda: os.ftruncate(fd, 123),
                               lambda: os.fchmod(fd, 0o700), lambda: os.getxattr(fd, "user.y"), lambda: os.fsetxattr(fd, "user.y", b"2") if hasattr(os, "fsetxattr") else None,
                               lambda: fcntl.ioctl(fd, 0x1261, b"\\0" * 8), lambda: os.copy_file_range(fd, fd, 4096, 0, 1 << 20)]:
                        attempt(op)
                    os.close(fd)
                for (dirpath, dirs, files) in os.walk(mnt): pass
        print(done)
        """
        try probe.write(toFile: cli.store + "-probe.py", atomically: true, encoding: .utf8)
        // The walk an operator, a backup or a monitoring agent does: where the daemon keeps its mounts.
        let r = try d.inDaemonNamespace("ls -la \(d.runtime)/mnt/v; ls \(d.runtime)/mnt/v/; find \(d.runtime) >/dev/null; stat -f \(d.runtime)/mnt/v; python3 \(cli.store)-probe.py \(d.runtime)/mnt")
        #expect(d.alive, "the daemon died: \(d.logText)")
        #expect(r.out.contains("v"), "\(r.out)")
        #expect(Int(r.out.split(separator: "\n").last ?? "") ?? 0 > 1000, "the probe ran: \(r.out.suffix(500))")
        // The devices still serve, with the bytes written before.
        let firstBytes = try shell("dd if=\(dev) bs=4096 count=1 2>/dev/null | head -c 14").out
        #expect(d.alive && firstBytes == "written before")
        #expect(try d.run(["attached"]).stdout.contains("v"))
        #expect(try d.run(["detach", "v"]).status == 0)
        #expect(try d.run(["detach", "s-snap"]).status == 0)
    }

    /// Mount namespaces created while volumes are attached (what `ip netns
    /// exec`, `unshare -m`, PrivateTmp services and containers do) must not
    /// hold a detach: each finishes in well under 5 s and leaves no FUSE
    /// connection behind, in the daemon's private namespace (the default) and
    /// with `--mount-namespace host` (where the copies exist and are aborted).
    @Test(arguments: ["private", "host"])
    func detachIsBoundedWhateverOtherNamespacesHold(namespace: String) throws {
        if DaemonResilience.skip("detach with foreign mount namespaces") { return }
        let cli = CLI()
        for v in ["a", "b", "c"] { try cli.run(["create", v, "--size", "16M"]) }
        let d = try RunningDaemon(cli, extra: ["--mount-namespace", namespace])
        defer { d.stop() }
        let netns = "archip-t-\(getpid())"
        _ = try shell("ip netns add \(netns)")
        defer { _ = try? shell("ip netns delete \(netns)") }
        var holders: [Process] = []
        defer { for p in holders where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        func hold(_ cmd: String) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", cmd]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            holders.append(p)
        }
        let a = try d.attach("a"), b = try d.attach("b"), c = try d.attach("c")
        // Each volume's FUSE connection id: its mount's device minor (major 0).
        var ids: [String: String] = [:]
        for v in ["a", "b", "c"] {
            ids[v] = try d.inDaemonNamespace("stat -c %Ld \(d.runtime)/mnt/\(v)").out.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(Set(ids.values).isSubset(of: try DaemonResilience.fuseConnections()), "\(ids)")
        // Namespaces made now: from the host's, and from the daemon's (where its mounts are),
        // one of them with a file inside a mount held open.
        let daemonPid = try #require(d.pid)
        // Each holder first lets go of other tests' guest disks (file systems on
        // loop devices) its copy took, so that it holds only what is under test.
        let dropLoops = cli.store + "-drop-loops.sh"
        try "for m in $(awk '$1 ~ /^[/]dev[/](loop|nbd)/ {print $2}' /proc/self/mounts); do umount -l \"$m\"; done\nexec \"$@\"\n"
            .write(toFile: dropLoops, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: dropLoops) }
        try hold("exec unshare -m sh \(dropLoops) sleep 120")
        try hold("exec ip netns exec \(netns) sh \(dropLoops) sleep 120")
        try hold("exec nsenter -t \(daemonPid) -m -- unshare -m sleep 120")
        let openFile = "\(d.runtime)/mnt/c/c"
        let where_ = namespace == "private" ? "nsenter -t \(daemonPid) -m -- " : ""
        try hold("exec \(where_)unshare -m sh \(dropLoops) sh -c 'exec 3<\(openFile); exec sleep 120'")
        usleep(500_000)
        for (name, dev) in [("a", a.device), ("b", b.device), ("c", c.device)] {
            let (r, seconds) = try d.timed(["detach", name])
            #expect(r.status == 0, "detach \(name): \(r.stderr)")
            #expect(seconds < 5, "detach \(name) took \(seconds) s")
            #expect(!(try d.run(["attached"]).stdout.contains(dev + " ")), "\(name) still listed")
        }
        #expect(d.alive)
        // Only the connection whose file another process still holds open
        // outlives its detach (aborted: the kernel keeps its entry until that
        // file is closed); the others are gone.
        let left = try DaemonResilience.fuseConnections()
        #expect(!left.contains(ids["a"]!) && !left.contains(ids["b"]!), "FUSE connections left: \(ids) \(d.logText)")
        for p in holders where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        for _ in 0..<40 where (try? DaemonResilience.fuseConnections())?.contains(ids["c"]!) == true { usleep(50_000) }
        #expect(!(try DaemonResilience.fuseConnections()).contains(ids["c"]!), "c's FUSE connection outlived its holder: \(d.logText)")
    }

    /// One stuck volume holds its own operations, not the node's: while a
    /// detach waits for a loop device another process keeps open, `attached`,
    /// `ping` and the attach and detach of other volumes answer at once; a
    /// second operation on the stuck volume says what it waits for; the stuck
    /// detach itself ends within its bound with one line.
    @Test func aStuckVolumeDoesNotStopTheOthers() throws {
        if DaemonResilience.skip("a stuck volume") { return }
        let cli = CLI()
        for v in ["stuck", "other", "third"] { try cli.run(["create", v, "--size", "16M"]) }
        let d = try RunningDaemon(cli)
        defer { d.stop() }
        let stuck = try d.attach("stuck")
        _ = try d.attach("other")
        // A reader that keeps the loop device open: the detach waits for it (at most 10 s).
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/bin/sh")
        holder.arguments = ["-c", "exec 3<\(stuck.device); exec sleep 60"]
        try holder.run()
        // SIGKILL: children of the test runner inherit its blocked SIGTERM.
        defer { if holder.isRunning { kill(holder.processIdentifier, SIGKILL); holder.waitUntilExit() } }
        usleep(300_000)
        let detaching = Process()
        detaching.executableURL = URL(fileURLWithPath: CLI.binDir + "/archip")
        detaching.arguments = ["detach", "stuck", "--runtime-dir", d.runtime, "--store", cli.store, "--node", "node-a"]
        detaching.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ARCHIP_") }
        let detachErr = Pipe()
        detaching.standardError = detachErr
        let started = Date()
        try detaching.run()
        usleep(1_000_000)
        #expect(detaching.isRunning, "the detach should be waiting for the loop device")
        // Each answers while the stuck detach still waits (not after it: what
        // matters, and what holds however loaded the machine is), and well
        // inside the stuck one's 10 s.
        let (list, listSeconds) = try d.timed(["attached", "--json"])
        #expect(list.status == 0 && listSeconds < 5, "attached took \(listSeconds) s: \(list.stderr)")
        #expect(detaching.isRunning, "attached answered only after the stuck detach ended")
        let (third, thirdSeconds) = try d.timed(["attach", "third"])
        #expect(third.status == 0 && thirdSeconds < 5, "attach of another volume took \(thirdSeconds) s: \(third.stderr)")
        #expect(detaching.isRunning, "the attach of another volume ended only after the stuck detach")
        let (otherDetach, otherSeconds) = try d.timed(["detach", "other"])
        #expect(otherDetach.status == 0 && otherSeconds < 5, "detach of another volume took \(otherSeconds) s: \(otherDetach.stderr)")
        #expect(detaching.isRunning, "the detach of another volume ended only after the stuck detach")
        detaching.waitUntilExit()
        let seconds = Date().timeIntervalSince(started)
        let err = String(decoding: detachErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(detaching.terminationStatus != 0 && seconds < 30, "stuck detach: exit \(detaching.terminationStatus) after \(seconds) s")
        #expect(err.split(separator: "\n").count == 1 && err.contains(stuck.device), "\(err)")
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        // Once the holder is gone the volume detaches.
        #expect(try d.run(["detach", "stuck"]).status == 0)
        #expect(try d.run(["detach", "third"]).status == 0)
        #expect(try d.attachedCount() == 0)
    }

    /// A daemon that accepts and never answers: every client call ends with a
    /// one-line error naming its pid, within the bound, never a hang (the
    /// provider's too: a hung script holds Ganeti's job and locks).
    @Test func clientsGiveUpOnADaemonThatNeverAnswers() throws {
        if DaemonResilience.skip("client timeout") { return }
        let cli = CLI()
        let provider = try ProviderRun(cli: cli)
        let runtime = provider.runtime
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: runtime) }
        let mute = Process()
        mute.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        mute.arguments = ["-c", """
            import socket, sys, time, os
            s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(16)
            open(sys.argv[2], "w").write(str(os.getpid()) + "\\n")
            held = []
            while True:
                c, _ = s.accept(); held.append(c)
            """, runtime + "/control.sock", runtime + "/serve.pid"]
        try mute.run()
        defer { kill(mute.processIdentifier, SIGKILL); mute.waitUntilExit() }
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: runtime + "/serve.pid") { usleep(20_000) }
        let env = ["ARCHIP_RUNTIME_DIR": runtime, "ARCHIP_CONTROL_TIMEOUT": "2"]
        for args in [["attached"], ["detach", "v"], ["attach", "v"]] {
            let t = Date()
            let r = try cli.run(args, env: env)
            let seconds = Date().timeIntervalSince(t)
            expectOneLineError(r, status: 1, mentioning: "pid \(mute.processIdentifier)", "\(args[0]) against a mute daemon")
            #expect(r.stderr.contains("does not answer"), "\(r.stderr)")
            #expect(seconds < 10, "\(args[0]) took \(seconds) s")
        }
        // Ganeti's provider scripts, through the same client.
        try cli.run(["create", "v.ext.disk0", "--size", "64M"])
        for action in ["detach", "attach", "close"] {
            let t = Date()
            let r = try provider.call(action, ProviderRun.vars("v.ext.disk0", ["VOL_SIZE": "64", "ARCHIP_CONTROL_TIMEOUT": "2"]))
            let seconds = Date().timeIntervalSince(t)
            expectProviderFailure(r, status: 1, mentioning: "pid \(mute.processIdentifier)", "provider \(action) against a mute daemon")
            #expect(seconds < 10, "provider \(action) took \(seconds) s")
        }
    }

    /// A daemon serves one store: a call for another is refused in one line
    /// naming both, instead of an answer about the wrong store.
    @Test func aCallForAnotherStoreIsRefused() throws {
        if DaemonResilience.skip("store mismatch") { return }
        let cli = CLI(), other = CLI()
        try cli.run(["create", "x", "--size", "8M"])
        try other.run(["create", "x", "--size", "8M"])
        defer { try? FileManager.default.removeItem(atPath: other.store) }
        let d = try RunningDaemon(cli)
        defer { d.stop() }
        for args in [["attach", "x"], ["detach", "x"], ["open", "x"]] {
            let r = try other.run(args, env: ["ARCHIP_NODE": "node-a", "ARCHIP_RUNTIME_DIR": d.runtime])
            expectOneLineError(r, status: 2, mentioning: cli.store, "\(args[0]) for another store")
            #expect(r.stderr.contains(other.store), "\(r.stderr)")
        }
        #expect(try d.attachedCount() == 0)
        // The same store spelled another way is the same store.
        let same = try cli.run(["attach", "x"], env: ["ARCHIP_NODE": "node-a", "ARCHIP_RUNTIME_DIR": d.runtime,
                                                       "ARCHIP_STORE": cli.store + "/"])
        #expect(same.status == 0, "\(same.stderr)")
        #expect(try d.run(["detach", "x"]).status == 0)
    }
}
