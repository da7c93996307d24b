import ArchipRados
import ArchipStore
import Foundation

/// Crash test for the volume store.
///
///     archip-torture crash --store DIR [--iterations N] [--seed S]
///
/// runs `archip-torture work` children that write, flush, snapshot, remove
/// snapshots and collect garbage on one volume, kills each with SIGKILL at a
/// random moment, and after every kill checks that the store opens, `verify`
/// is clean for the volume and every snapshot, every write acknowledged by a
/// completed flush is there, and snapshots never change.
///
/// Writes are a pure function of (generation, slot), so the checker can tell
/// which write a 4 KiB slot holds without any record of what landed.
@main
enum TortureMain {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        do {
            guard let verb = args.first else { throw TortureError("usage: archip-torture crash|work|hold --store DIR ...") }
            if verb == "hold" {
                try Holder(Array(args.dropFirst())).run()
                return
            }
            let opts = try Options(Array(args.dropFirst()))
            switch verb {
            case "work": try Worker(opts).run()
            case "crash": try Harness(opts).run()
            default: throw TortureError("unknown verb \(verb)")
            }
        } catch {
            FileHandle.standardError.write(Data("archip-torture: \(error)\n".utf8))
            exit(1)
        }
    }
}

struct TortureError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A command's options in order: `--name value` pairs and flags. Both
/// commands (crash, hold) read theirs through it.
struct OptionReader {
    private let args: [String]
    private var i = 0
    init(_ args: [String]) { self.args = args }

    /// The next option name, nil at the end.
    mutating func next() -> String? {
        guard i < args.count else { return nil }
        defer { i += 1 }
        return args[i]
    }

    /// The value after option `name`.
    mutating func value(for name: String) throws -> String {
        guard i < args.count else { throw TortureError("\(name) needs a value") }
        defer { i += 1 }
        return args[i]
    }
}

struct Options {
    var store = ""
    var iterations = 100
    var seed: UInt64 = 1
    var startGen = 1
    var journal = ""
    var verbose = false

    init(_ args: [String]) throws {
        var options = OptionReader(args)
        while let o = options.next() {
            switch o {
            case "--store": store = try options.value(for: o)
            case "--iterations": iterations = Int(try options.value(for: o)) ?? 100
            case "--seed": seed = UInt64(try options.value(for: o)) ?? 1
            case "--start-gen": startGen = Int(try options.value(for: o)) ?? 1
            case "--journal": journal = try options.value(for: o)
            case "--verbose": verbose = true
            default: throw TortureError("unknown option \(o)")
            }
        }
        guard !store.isEmpty else { throw TortureError("--store is required") }
    }
}

/// The deterministic workload.
enum Plan {
    static let slot = 4096
    static let volumeSize: UInt64 = 16 << 20
    static let blockSize: UInt32 = 64 << 10
    static var slots: Int { Int(volumeSize) / slot }
    static let volume = try! VolumeName("torture")

    struct Op { var slot: Int; var count: Int; var trim: Bool }

    /// SplitMix64: small, fast, reproducible.
    struct RNG {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E3779B97F4A7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    /// Slots touched by generation `g`: disjoint ranges, some trims.
    static func ops(seed: UInt64, gen: Int) -> [Op] {
        var r = RNG(state: seed &* 1_000_003 &+ UInt64(gen))
        var used = Set<Int>()
        var out: [Op] = []
        let n = 4 + r.below(24)
        for _ in 0..<n {
            var count = 1 + r.below(r.below(4) == 0 ? 40 : 6)
            let start = r.below(slots - count)
            count = (start..<(start + count)).prefix { !used.contains($0) }.count
            if count == 0 { continue }
            for s in start..<(start + count) { used.insert(s) }
            out.append(Op(slot: start, count: count, trim: r.below(10) == 0))
        }
        return out
    }

    static func content(gen: Int, slot: Int, seed: UInt64) -> [UInt8] {
        var r = RNG(state: seed ^ (UInt64(gen) << 32) ^ UInt64(slot))
        var out = [UInt8](repeating: 0, count: Self.slot)
        out.withUnsafeMutableBytes { p in
            for i in stride(from: 0, to: Self.slot, by: 8) { p.storeBytes(of: r.next(), toByteOffset: i, as: UInt64.self) }
            p.storeBytes(of: UInt64(gen), toByteOffset: 0, as: UInt64.self)
            p.storeBytes(of: UInt64(slot), toByteOffset: 8, as: UInt64.self)
        }
        return out
    }
}

/// The child: works until killed.
struct Worker {
    let opts: Options
    init(_ o: Options) { opts = o }

    func journal(_ line: String, _ fh: FileHandle) {
        fh.write(Data((line + "\n").utf8))
    }

    func run() throws {
        let store = try StoreOpener.open(opts.store, node: "torture-node")
        guard let fh = FileHandle(forWritingAtPath: opts.journal) else { throw TortureError("cannot open journal") }
        fh.seekToEndOfFile()
        let v = try store.open(Plan.volume, mode: .exclusive)
        var gen = opts.startGen
        while true {
            journal("start \(gen)", fh)
            for op in Plan.ops(seed: opts.seed, gen: gen) {
                let off = UInt64(op.slot * Plan.slot)
                if op.trim {
                    try v.zero(at: off, length: UInt64(op.count * Plan.slot))
                } else {
                    var data: [UInt8] = []
                    for s in op.slot..<(op.slot + op.count) { data += Plan.content(gen: gen, slot: s, seed: opts.seed) }
                    try v.write(at: off, data)
                }
            }
            try v.flush()
            journal("flushed \(gen)", fh)
            if gen % 4 == 0 {
                let name = try VolumeName("t-\(gen)")
                try v.snapshot(name)
                journal("snap \(gen)", fh)
                if let old = try? VolumeName("t-\(gen - 40)"), (try? store.info(old)) != nil {
                    try store.remove(old)
                }
            }
            if gen % 7 == 0 {
                _ = try store.gc(apply: true, grace: 0)
            }
            gen += 1
        }
    }
}

/// The parent: starts, kills and checks.
struct Harness {
    let opts: Options
    init(_ o: Options) { opts = o }

    struct History {
        /// slot -> [(gen, trim)] in issue order.
        var writes: [[(Int, Bool)]]
        var started = 0
        var flushed = 0
        /// Generations whose flush completed: only their writes are promised.
        var flushedGens = Set<Int>()
        var plannedUpTo = 0
    }

    func run() throws {
        if RadosLocation.isRados(opts.store) {
            // A pool or namespace of its own: start from nothing.
            try RadosObjectStore(try RadosLocation.parse(opts.store)).removeAll(prefix: "")
        } else {
            try? FileManager.default.removeItem(atPath: opts.store)
        }
        let store = try StoreOpener.open(opts.store, node: "torture-check")
        try store.create(Plan.volume, size: ByteCount(Plan.volumeSize), blockSize: Plan.blockSize)
        let journalPath = RadosLocation.isRados(opts.store)
            ? NSTemporaryDirectory() + "/archip-torture-\(getpid()).journal" : opts.store + ".journal"
        guard FileManager.default.createFile(atPath: journalPath, contents: nil) else { throw TortureError("cannot create \(journalPath)") }
        var history = History(writes: Array(repeating: [], count: Plan.slots))
        var snapshotDigests: [String: ContentHash] = [:]
        var rng = Plan.RNG(state: opts.seed &+ 77)
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        var passed = 0, failed = 0
        var nextGen = 1
        let started = Date()

        for iteration in 1...opts.iterations {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = ["work", "--store", opts.store, "--seed", String(opts.seed),
                           "--start-gen", String(nextGen), "--journal", journalPath]
            let errPipe = Pipe()
            p.standardError = errPipe
            try p.run()
            let delay = 0.03 + Double(rng.below(350)) / 1000
            Thread.sleep(forTimeInterval: delay)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let childErr = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            if p.terminationReason == .exit {
                throw TortureError("iteration \(iteration): worker exited by itself (status \(p.terminationStatus)): \(childErr)")
            }

            // Bring the model up to what the journal says.
            let lines = String(decoding: FileManager.default.contents(atPath: journalPath) ?? Data(), as: UTF8.self)
                .split(separator: "\n")
            for line in lines {
                let parts = line.split(separator: " ")
                guard parts.count == 2, let g = Int(parts[1]) else { continue }
                if parts[0] == "start" { history.started = max(history.started, g) }
                if parts[0] == "flushed" {
                    history.flushed = max(history.flushed, g)
                    history.flushedGens.insert(g)
                }
            }
            while history.plannedUpTo < history.started {
                history.plannedUpTo += 1
                for op in Plan.ops(seed: opts.seed, gen: history.plannedUpTo) {
                    for s in op.slot..<(op.slot + op.count) { history.writes[s].append((history.plannedUpTo, op.trim)) }
                }
            }
            nextGen = history.started + 1

            do {
                let checker = try StoreOpener.open(opts.store, node: "torture-check")
                try check(checker, history: history, snapshotDigests: &snapshotDigests, iteration: iteration)
                // The operator's command for a holder that is gone.
                try checker.unlock(Plan.volume, owner: LockOwner(node: "torture-check", token: ""), force: true)
                if iteration % 10 == 0 {
                    // Recovery by a fresh writer, then everything must still hold.
                    try checker.withVolume(Plan.volume) { _ in }
                    try check(checker, history: history, snapshotDigests: &snapshotDigests, iteration: iteration)
                }
                passed += 1
                if opts.verbose {
                    print("iteration \(iteration): ok (killed after \(Int(delay * 1000)) ms, flushed gen \(history.flushed), started \(history.started))")
                }
            } catch {
                failed += 1
                print("iteration \(iteration): FAILED: \(error)")
                if !childErr.isEmpty { print("  worker stderr: \(childErr)") }
                break
            }
        }
        let secs = Date().timeIntervalSince(started)
        print(String(format: "crash test: %d kills in %.1f s, last flushed generation %d, %d snapshots checked",
                     passed + failed, secs, history.flushed, snapshotDigests.count))
        print("\(passed) passed, \(failed) failed")
        if failed > 0 { exit(1) }
    }

    func check(_ store: VolumeStore, history: History, snapshotDigests: inout [String: ContentHash], iteration: Int) throws {
        let report = try store.verify(Plan.volume)
        guard report.ok else { throw TortureError("verify torture: \(report.problems.map(\.description).joined(separator: "; "))") }
        let v = try store.open(Plan.volume, mode: .readOnly)
        try checkContent(v, history: history, upTo: history.flushed, maxGen: history.started, what: "volume")

        for info in try store.list() where info.kind == "snapshot" {
            let name = try VolumeName(info.name)
            guard let g = Int(info.name.dropFirst(2)) else { continue }
            let s = try store.open(name, mode: .readOnly)
            if let old = snapshotDigests[info.name] {
                // Seen and checked before: it must not have changed since.
                let digest = SHA256.digest(try s.read(at: 0, length: Int(Plan.volumeSize)))
                if old != digest { throw TortureError("snapshot \(name) changed after it was taken") }
                continue
            }
            let r = try store.verify(name)
            guard r.ok else { throw TortureError("verify \(name): \(r.problems.map(\.description).joined(separator: "; "))") }
            snapshotDigests[info.name] = try checkContent(s, history: history, upTo: g, maxGen: g, what: "snapshot \(name)")
        }
    }

    /// Every slot holds the last write whose flush completed (up to generation
    /// `upTo`), or a write issued after it (unflushed writes may or may not
    /// have landed, as on a disk), and nothing from a generation past `maxGen`.
    /// A generation is issued by one worker only, so "flushed g" in the journal
    /// means that worker acknowledged every write of g before it was killed.
    @discardableResult
    func checkContent(_ v: Volume, history: History, upTo: Int, maxGen: Int, what: String) throws -> ContentHash {
        let all = try v.read(at: 0, length: Int(Plan.volumeSize))
        for s in 0..<Plan.slots {
            let writes = history.writes[s].filter { $0.0 <= maxGen }
            let durable = writes.lastIndex { $0.0 <= upTo && history.flushedGens.contains($0.0) }
            let allowed = durable.map { Array(writes[$0...]) } ?? writes
            let zeroAllowed = durable == nil || allowed.contains { $0.1 }
            let bytes = all[(s * Plan.slot)..<((s + 1) * Plan.slot)]
            if bytes.allSatisfy({ $0 == 0 }) {
                if zeroAllowed { continue }
                throw TortureError("\(what): slot \(s) is zero but generation \(writes[durable!].0) wrote it and was flushed by generation \(upTo)")
            }
            let gen = bytes.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self)) }
            guard allowed.contains(where: { $0.0 == gen && !$0.1 }) else {
                let d = durable.map { "\(writes[$0])" } ?? "none"
                throw TortureError("\(what): slot \(s) holds generation \(gen), allowed: \(allowed.map { $0.0 }) (durable write: \(d), flushed up to \(upTo))")
            }
            guard Array(bytes) == Plan.content(gen: gen, slot: s, seed: opts.seed) else {
                throw TortureError("\(what): slot \(s) is damaged (header says generation \(gen))")
            }
        }
        return SHA256.digest(all)
    }
}
