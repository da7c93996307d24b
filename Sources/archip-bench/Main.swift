@_spi(Bench) import ArchipStore
import Foundation

/// `make bench`: each result is a ratio against a baseline measured in the
/// same run on the same machine, plus the absolute numbers.
@main
enum BenchMain {
    static func main() {
        do {
            var bench = Bench()
            try bench.run()
        } catch {
            FileHandle.standardError.write(Data("archip-bench: \(error)\n".utf8))
            exit(1)
        }
    }
}

struct Bench {
    let work: String
    let archip: String
    var lines: [String] = []

    init() {
        let base = ProcessInfo.processInfo.environment["BENCH_DIR"] ?? FileManager.default.currentDirectoryPath + "/.bench"
        work = base
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        archip = exe.appendingPathComponent("archip").path
    }

    func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    func time(_ body: () throws -> Void) rethrows -> Double {
        let t = now()
        try body()
        return now() - t
    }

    func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

    mutating func report(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
        lines.append(line)
    }

    func sh(_ cmd: String) throws -> Double {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", cmd]
        let t = now()
        try p.run()
        p.waitUntilExit()
        let d = now() - t
        guard p.terminationStatus == 0 else { throw StoreErrorBench("command failed: \(cmd)") }
        return d
    }

    func freshStore(_ name: String) throws -> VolumeStore {
        let dir = work + "/" + name
        try? FileManager.default.removeItem(atPath: dir)
        return try VolumeStore.directory(dir, node: "bench")
    }

    mutating func run() throws {
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] != "writes" { try? FileManager.default.removeItem(atPath: work) }
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        report("# archip bench, \(ISO8601DateFormatter().string(from: Date())), \(ProcessInfo.processInfo.activeProcessorCount) cores, store on \(work)")
        let only = ProcessInfo.processInfo.environment["BENCH_ONLY"] ?? "all"
        if only == "all" || only == "snapshot" { try snapshotAndClone() }
        if only == "all" || only == "map" { try mapLoad() }
        if only == "all" || only == "seq" { try sequential() }
        if only == "all" || only == "fill" { try fill() }
        if only == "all" || only == "fill" || only == "fill-http" { try fillHTTP() }
        if only == "all" || only == "extstorage" { try extStorage() }
        if only == "all" || only == "provision" { try provisioning() }
        if only == "all" || only == "checks" { try readChecks() }
        if only == "all" || only == "random" || only == "writes" {
            if only != "writes" && only != "all" { try sequential() }
            try randomWrites()
        }
        try lines.joined(separator: "\n").appending("\n").write(toFile: work + "/results.txt", atomically: true, encoding: .utf8)
        print("(results also in \(work)/results.txt)")
    }

    // MARK: snapshot and clone, 1 TiB with 10 000 written blocks vs 1 GiB

    mutating func snapshotAndClone() throws {
        let store = try freshStore("snap")
        let block = [UInt8](repeating: 0xA5, count: 4 << 20)
        func measure(size: ByteCount, entries: Int, tag: String) throws -> (Double, Double) {
            var snaps: [Double] = [], clones: [Double] = []
            for i in 0..<7 {
                let v = try VolumeName("\(tag)-\(i)")
                try store.create(v, size: size)
                try store.benchInstallEntries(v, count: entries, content: block)
                snaps.append(try time { try store.snapshot(v, as: try VolumeName("\(tag)-\(i)-s")) })
                clones.append(try time { try store.clone(try VolumeName("\(tag)-\(i)-s"), as: try VolumeName("\(tag)-\(i)-c")) })
            }
            return (median(snaps), median(clones))
        }
        let (bigSnap, bigClone) = try measure(size: .tebibytes(1), entries: 10_000, tag: "tib")
        let (smallSnap, smallClone) = try measure(size: .gibibytes(1), entries: 256, tag: "gib")
        report(String(format: "snapshot: 1 TiB volume with 10 000 written blocks %.2f ms, 1 GiB volume %.2f ms: ratio %.2f (goal ~1.0, each < 20 ms)",
                      bigSnap * 1e3, smallSnap * 1e3, bigSnap / smallSnap))
        report(String(format: "clone:    1 TiB snapshot with 10 000 written blocks %.2f ms, 1 GiB snapshot %.2f ms: ratio %.2f (goal ~1.0, each < 20 ms)",
                      bigClone * 1e3, smallClone * 1e3, bigClone / smallClone))
    }

    // MARK: map load, 1 TiB fully written

    mutating func mapLoad() throws {
        let store = try freshStore("map")
        let v = try VolumeName("full")
        try store.create(v, size: .tebibytes(1))
        try store.benchInstallEntries(v, count: 262_144, content: [UInt8](repeating: 1, count: 4096))
        var ts: [Double] = []
        for _ in 0..<9 {
            ts.append(try time { _ = try store.open(v, mode: .readOnly) })
        }
        let t = median(ts)
        report(String(format: "map load: 1 TiB fully written map (262 144 entries, %.1f MiB) opens in %.1f ms (goal < 50 ms)",
                      Double(MapFormatV1Size.bytes(entries: 262_144)) / 1048576, t * 1e3))
    }

    // MARK: sequential import/export vs cp

    mutating func sequential() throws {
        let src = work + "/image.raw"
        let sizeMiB = Int(ProcessInfo.processInfo.environment["BENCH_SEQ_MIB"] ?? "1024") ?? 1024
        _ = try sh("head -c \(sizeMiB)M /dev/urandom > \(src) && cat \(src) > /dev/null")
        let store = work + "/seq"
        var cpT: [Double] = [], cpSyncT: [Double] = [], impT: [Double] = [], expT: [Double] = [], cpOutT: [Double] = []
        // Each measured command starts from a quiet disk: earlier deletes and
        // writeback are finished (sync + a short pause), so no run pays for another.
        func quiet(_ cleanup: String) throws { _ = try sh("\(cleanup); sync; sleep 0.5") }
        for i in 0..<5 {
            try quiet("rm -rf \(store) \(work)/copy.raw \(work)/copy2.raw \(work)/out.raw")
            cpT.append(try sh("cp \(src) \(work)/copy.raw"))
            try quiet("rm -f \(work)/copy.raw")
            cpSyncT.append(try sh("cp \(src) \(work)/copy.raw && sync -f \(work)/copy.raw"))
            try quiet("rm -f \(work)/copy.raw")
            impT.append(try sh("\(archip) --store \(store) import v\(i) \(src)"))
            try quiet("true")
            expT.append(try sh("\(archip) --store \(store) export v\(i) \(work)/out.raw"))
            try quiet("true")
            cpOutT.append(try sh("cp \(work)/out.raw \(work)/copy2.raw"))
            _ = try sh("cmp \(src) \(work)/out.raw")
        }
        let mb = Double(sizeMiB) * 1048576 / 1e6
        let cp = median(cpT), cpSync = median(cpSyncT), imp = median(impT), exp = median(expT), cpOut = median(cpOutT)
        report(String(format: "import (%d MiB, durable): %.0f MB/s; cp %.0f MB/s, cp+sync %.0f MB/s: ratio %.2f vs cp, %.2f vs cp+sync (goal >= 0.8)",
                      sizeMiB, mb / imp, mb / cp, mb / cpSync, cp / imp, cpSync / imp))
        report(String(format: "export (%d MiB): %.0f MB/s; cp of the same file %.0f MB/s: ratio %.2f (goal >= 0.8)",
                      sizeMiB, mb / exp, mb / cpOut, cpOut / exp))
    }

    // MARK: fill from a local image vs cp and qemu-img convert

    /// Runs a shell command under /usr/bin/time; returns wall seconds, CPU
    /// seconds (user + system, children included) and peak RSS in KiB.
    func measured(_ cmd: String) throws -> (wall: Double, cpu: Double, rssKiB: Int) {
        let out = work + "/time.txt"
        let quoted = "'" + cmd.replacingOccurrences(of: "'", with: "'\\''") + "'"
        let t = try sh("/usr/bin/time -f '%U %S %M' -o \(out) /bin/sh -c \(quoted)")
        let f = (try String(contentsOfFile: out, encoding: .utf8)).split(separator: "\n").last?.split(separator: " ") ?? []
        guard f.count == 3, let u = Double(f[0]), let sy = Double(f[1]), let m = Int(f[2]) else {
            throw StoreErrorBench("cannot parse /usr/bin/time output for: \(cmd)")
        }
        return (t, u + sy, m)
    }

    /// Median of per-run ratios baseline/measured: each pair ran back to back,
    /// so a load change between runs moves both.
    func pairedRatio(_ baseline: [Double], _ measuredT: [Double]) -> Double {
        median(zip(baseline, measuredT).map { $0 / $1 })
    }

    mutating func fill() throws {
        let mib = Int(ProcessInfo.processInfo.environment["BENCH_FILL_MIB"] ?? "2048") ?? 2048
        let img = work + "/fill-image.raw"
        _ = try sh("head -c \(mib)M /dev/urandom > \(img) && cat \(img) > /dev/null")
        let store = work + "/fill-store"
        func quiet(_ cleanup: String) throws { _ = try sh("\(cleanup); sync; sleep 0.5") }
        var fillT: [Double] = [], cpT: [Double] = [], qemuT: [Double] = [], refillT: [Double] = [], cpSyncT: [Double] = [], qemuSyncT: [Double] = []
        var ddT: [Double] = []
        var rss = 0
        var fillCPU: [Double] = [], cpCPU: [Double] = [], cpSyncCPU: [Double] = []
        let runs = Int(ProcessInfo.processInfo.environment["BENCH_FILL_RUNS"] ?? "5") ?? 5
        let hasQemu = (try? sh("command -v qemu-img >/dev/null")) != nil
        let jobs = ProcessInfo.processInfo.activeProcessorCount + 2
        for i in 0..<runs {
            try quiet("rm -rf \(store) \(work)/fill-copy.raw")
            let m = try measured("\(archip) --store \(store) fill v\(i) --from file:\(img) --hashmap-out \(work)/fill.hashmap --progress none > /dev/null")
            fillT.append(m.wall)
            fillCPU.append(m.cpu)
            rss = max(rss, m.rssKiB)
            try quiet("true")
            // The image's blocks are all in the store now: with its hashmap nothing is read.
            refillT.append(try sh("\(archip) --store \(store) fill again\(i) --from file:\(img) --hashmap \(work)/fill.hashmap --progress none > /dev/null"))
            try quiet("rm -f \(work)/fill-copy.raw")
            let c = try measured("cp \(img) \(work)/fill-copy.raw")
            cpT.append(c.wall)
            cpCPU.append(c.cpu)
            try quiet("rm -f \(work)/fill-copy.raw")
            let cs = try measured("cp \(img) \(work)/fill-copy.raw && sync -f \(work)/fill-copy.raw")
            cpSyncT.append(cs.wall)
            cpSyncCPU.append(cs.cpu)
            // The durable ceiling: the fastest any copy that is on the disk when
            // it returns can be here (4 MiB O_DIRECT writes of the cached image,
            // no hashing, one file). A durable fill cannot beat it, so its time
            // against cp's bounds the fill's ratio against cp from above.
            try quiet("rm -f \(work)/fill-copy.raw")
            ddT.append(try sh("dd if=\(img) of=\(work)/fill-copy.raw bs=4M oflag=direct conv=fsync status=none"))
            if hasQemu {
                try quiet("rm -f \(work)/fill-copy.raw")
                qemuT.append(try sh("qemu-img convert -f raw -O raw \(img) \(work)/fill-copy.raw"))
                // qemu-img convert does not sync (its default cache mode for convert is unsafe).
                try quiet("rm -f \(work)/fill-copy.raw")
                qemuSyncT.append(try sh("qemu-img convert -f raw -O raw \(img) \(work)/fill-copy.raw && sync -f \(work)/fill-copy.raw"))
            }
        }
        try quiet("rm -f \(work)/fill-copy.raw")
        let mb = Double(mib) * 1048576 / 1e6
        let f = median(fillT), cp = median(cpT), cps = median(cpSyncT), rf = median(refillT)
        func spread(_ xs: [Double]) -> String { xs.map { String(format: "%.0f", mb / $0) }.joined(separator: "/") }
        report("fill runs (MB/s): fill \(spread(fillT)); cp \(spread(cpT)); cp+sync \(spread(cpSyncT))\(hasQemu ? "; qemu-img \(spread(qemuT)); qemu-img+sync \(spread(qemuSyncT))" : "")")
        report(String(format: "fill from a local %d MiB image (hashed, verified, durable): %.0f MB/s; cp %.0f MB/s, cp+sync %.0f MB/s: ratio %.2f vs cp (goal >= 1.0), %.2f vs cp+sync (medians of %d runs; median of per-run ratios %.2f vs cp, %.2f vs cp+sync)",
                      mib, mb / f, mb / cp, mb / cps, cp / f, cps / f, runs, pairedRatio(cpT, fillT), pairedRatio(cpSyncT, fillT)))
        report(String(format: "CPU seconds (user+system, median): fill %.2f, cp %.2f, cp+sync %.2f",
                      median(fillCPU), median(cpCPU), median(cpSyncCPU)))
        let dd = median(ddT)
        report(String(format: "durable ceiling: dd oflag=direct conv=fsync of the image %.0f MB/s (runs %@): the most any durable copy can reach here is %.2f vs cp%@; fill vs dd %.2f (per-run %.2f)",
                      mb / dd, spread(ddT), cp / dd, hasQemu ? String(format: ", %.2f vs qemu-img", median(qemuT) / dd) : "",
                      dd / f, pairedRatio(ddT, fillT)))
        if hasQemu {
            let q = median(qemuT), qs = median(qemuSyncT)
            report(String(format: "fill vs qemu-img convert -O raw (%.0f MB/s, not synced; + sync %.0f MB/s): ratio %.2f (goal >= 1.2), %.2f vs qemu-img+sync (per-run ratios' median %.2f, %.2f)",
                          mb / q, mb / qs, q / f, qs / f, pairedRatio(qemuT, fillT), pairedRatio(qemuSyncT, fillT)))
        }
        report(String(format: "re-fill of an image whose blocks are in the store (with its hashmap): %.2f s = %.0f MB/s; vs cp: ratio %.1f (goal >= 3)",
                      rf, mb / rf, cp / rf))
        let limit = 64 * 1024 + jobs * 4096
        report("fill peak RSS: \(rss / 1024) MiB (limit 64 MiB + \(jobs) jobs x 4 MiB = \(limit / 1024) MiB)\(rss <= limit ? "" : " OVER")")
    }

    // MARK: 4 KiB random writes through the library

    mutating func randomWrites() throws {
        let store = try VolumeStore.directory(work + "/seq", node: "bench")
        let v = try store.open(try VolumeName("v4"))
        let size = v.size
        let slots = size / 4096
        let ops = 100_000
        var rng = SystemRandomNumberGenerator()
        let offsets = (0..<ops).map { _ in UInt64.random(in: 0..<slots, using: &rng) * 4096 }
        let buf = [UInt8](repeating: 0x3C, count: 4096)
        let w = try time {
            try buf.withUnsafeBytes { p in
                for off in offsets { try v.write(at: off, p) }
            }
        }
        let f = try time { try v.flush() }
        let t = w + f
        try v.close()
        // Baseline: the same writes with pwrite on a plain file, then fdatasync.
        let plain = work + "/image.raw"
        let fd = open(plain, O_RDWR)
        defer { close(fd) }
        let b = time {
            buf.withUnsafeBytes { p in
                for off in offsets { _ = pwrite(fd, p.baseAddress, 4096, off_t(off)) }
            }
            fdatasync(fd)
        }
        report(String(format: "4 KiB random writes through the library (+ final flush): %.0f ops/s (writes %.2f s, flush %.2f s); pwrite on a plain file (+ fdatasync) %.0f ops/s: ratio %.2f",
                      Double(ops) / t, w, f, Double(ops) / b, b / t))
    }
}

struct StoreErrorBench: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

enum MapFormatV1Size {
    static func bytes(entries: Int) -> Int { 20 + 112 + entries * 37 + 32 }
}
