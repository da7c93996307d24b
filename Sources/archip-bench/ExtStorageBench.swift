@_spi(Bench) import ArchipStore
import Foundation

/// The Ganeti provider's scripts, as Ganeti runs them: a new process per
/// call, process start included, vs `/bin/true` in the same run. Ganeti runs
/// scripts one after another (attach 1-5 times around nearly every
/// operation), so each must stay fast.
extension Bench {
    /// Spawns `argv` with exactly `env`; returns the wall time. Fails on a non-zero exit.
    func spawn(_ argv: [String], env: [String: String]) throws -> Double {
        var cargs = argv.map { strdup($0) } + [nil]
        var cenv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for a in cargs { free(a) }; for e in cenv { free(e) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, work + "/extstorage-stderr.log", O_WRONLY | O_CREAT | O_APPEND, 0o600)
        var pid: pid_t = 0
        let t = now()
        let r = posix_spawn(&pid, argv[0], &actions, nil, &cargs, &cenv)
        guard r == 0 else { throw StoreErrorBench("spawn \(argv[0]): \(String(cString: strerror(r)))") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let d = now() - t
        guard status == 0 else { throw StoreErrorBench("\(argv.joined(separator: " ")) failed (status \(status)); see \(work)/extstorage-stderr.log") }
        return d
    }

    func percentile(_ xs: [Double], _ p: Double) -> Double {
        let s = xs.sorted()
        return s[min(s.count - 1, Int((Double(s.count) * p).rounded(.up)) - 1)]
    }

    mutating func extStorage() throws {
        let provider = URL(fileURLWithPath: archip).deletingLastPathComponent().appendingPathComponent("archip-extstorage").path
        guard FileManager.default.isExecutableFile(atPath: provider) else {
            report("extstorage: SKIPPED (no \(provider); make bench builds it)")
            return
        }
        let storePath = work + "/es-store"
        let store = try freshStore("es-store")
        // Origins: a 1 GiB and a 1 TiB snapshot (10 000 written blocks), as in the snapshot bench.
        let block = [UInt8](repeating: 0x5A, count: 4 << 20)
        for (tag, size, entries) in [("gib", ByteCount.gibibytes(1), 256), ("tib", ByteCount.tebibytes(1), 10_000)] {
            let v = try VolumeName("img-\(tag)")
            try store.create(v, size: size)
            try store.benchInstallEntries(v, count: entries, content: block)
            try store.snapshot(v, as: try VolumeName("img-\(tag)-v1"))
        }
        // Let writeback of the preparation finish: the scripts' fsyncs are what is measured.
        sync()
        let runtime = "/tmp/archip-bench-rt"   // short: NBD socket paths must fit in 108 bytes
        try? FileManager.default.removeItem(atPath: runtime)
        let config = work + "/es.conf"
        try "[store]\npath = \(storePath)\n[node]\nname = bench\nruntime_dir = \(runtime)\n".write(toFile: config, atomically: true, encoding: .utf8)
        defer {
            // Stop the node daemon the provider started (it detaches everything).
            if let pid = (try? String(contentsOfFile: runtime + "/serve.pid", encoding: .utf8)).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                kill(pid, SIGTERM)
                for _ in 0..<100 where kill(pid, 0) == 0 { usleep(50_000) }
            }
        }
        let runs = Int(ProcessInfo.processInfo.environment["BENCH_EXTSTORAGE_RUNS"] ?? "50") ?? 50
        let base = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "EXTP_PROVIDER": "archipelago", "EXTP_ACCESS": "kernelspace"]
        func call(_ action: String, _ vars: [String: String]) throws -> Double {
            try spawn([provider, "--config", config, action], env: base.merging(vars) { $1 })
        }
        func name(_ i: Int, _ tag: String) -> String { "\(tag)\(String(format: "%08d", i))-0000-0000-0000-000000000000.ext.disk0" }

        var times: [(String, [Double])] = []
        times.append(("/bin/true (baseline)", try (0..<runs).map { _ in try spawn(["/bin/true"], env: base) }))
        times.append(("create 1 GiB (thin)", try (0..<runs).map { i in try call("create", ["VOL_NAME": name(i, "a"), "VOL_SIZE": "1024", "VOL_UUID": "u\(i)"]) }))
        times.append(("create from a 1 GiB snapshot", try (0..<runs).map { i in
            try call("create", ["VOL_NAME": name(i, "b"), "VOL_SIZE": "1024", "EXTP_ORIGIN": "snapshot:img-gib-v1"]) }))
        times.append(("create from a 1 TiB snapshot", try (0..<runs).map { i in
            try call("create", ["VOL_NAME": name(i, "c"), "VOL_SIZE": "1048576", "EXTP_ORIGIN": "snapshot:img-tib-v1"]) }))
        times.append(("setinfo", try (0..<runs).map { i in try call("setinfo", ["VOL_NAME": name(i, "a"), "VOL_METADATA": "originstname+vm\(i)"]) }))
        times.append(("grow", try (0..<runs).map { i in try call("grow", ["VOL_NAME": name(i, "a"), "VOL_SIZE": "1024", "VOL_NEW_SIZE": "2048"]) }))
        times.append(("snapshot", try (0..<runs).map { i in
            try call("snapshot", ["VOL_NAME": name(i, "a"), "VOL_SNAPSHOT_NAME": name(i, "a") + ".snap", "VOL_SNAPSHOT_SIZE": "2048"]) }))
        times.append(("verify", try (0..<runs).map { i in try call("verify", ["VOL_NAME": name(i, "a"), "EXTP_ORIGIN": "snapshot:img-gib-v1"]) }))
        // The data path needs root, FUSE and loop devices.
        let dataPath = getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/fuse") && FileManager.default.fileExists(atPath: "/dev/loop-control")
        if dataPath {
            let attachRuns = min(runs, 20)   // each first attach makes a FUSE mount, a loop device and an NBD socket
            _ = try call("attach", ["VOL_NAME": name(0, "b")])   // starts the node daemon, not measured
            times.append(("attach (first: devices made)", try (1..<attachRuns).map { i in try call("attach", ["VOL_NAME": name(i, "b")]) }))
            times.append(("attach (again, as Ganeti repeats it)", try (0..<runs).map { i in try call("attach", ["VOL_NAME": name(i % attachRuns, "b")]) }))
            times.append(("open (exclusive)", try (0..<attachRuns).map { i in try call("open", ["VOL_NAME": name(i, "b"), "VOL_OPEN_EXCLUSIVE": "True"]) }))
            times.append(("close", try (0..<attachRuns).map { i in try call("close", ["VOL_NAME": name(i, "b")]) }))
            times.append(("detach", try (0..<attachRuns).map { i in try call("detach", ["VOL_NAME": name(i, "b")]) }))
        } else {
            report("extstorage: attach/open/close/detach SKIPPED (needs root, /dev/fuse, /dev/loop-control)")
        }
        times.append(("remove", try (0..<runs).map { i in try call("remove", ["VOL_NAME": name(i, "c")]) }))
        let t0 = median(times[0].1)
        report(String(format: "extstorage scripts, %d runs each, process start included; /bin/true median %.2f ms (goal: every script < 30 ms median)", runs, t0 * 1e3))
        for (what, ts) in times.dropFirst() {
            let m = median(ts)
            let label = what.padding(toLength: 38, withPad: " ", startingAt: 0)
            report("  " + label + String(format: " median %6.2f ms  p95 %6.2f ms  = %5.1fx /bin/true%@", m * 1e3,
                                          percentile(ts, 0.95) * 1e3, m / t0, m < 0.030 ? "" : "  OVER 30 ms"))
        }
        let gib = median(times.first { $0.0 == "create from a 1 GiB snapshot" }!.1)
        let tib = median(times.first { $0.0 == "create from a 1 TiB snapshot" }!.1)
        report(String(format: "  create-from-snapshot 1 TiB vs 1 GiB origin: ratio %.2f (goal ~1.0)", tib / gib))
    }
}
