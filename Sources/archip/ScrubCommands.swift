import ArchipFill
import ArchipRados
import ArchipServe
import ArchipStore
import ArgumentParser
import Foundation

/// Set by SIGINT/SIGTERM during a scrub: the workers stop and the checkpoint is kept.
nonisolated(unsafe) private var stopRequested: sig_atomic_t = 0

private func catchStopSignals() {
    signal(SIGINT) { _ in stopRequested = 1 }
    signal(SIGTERM) { _ in stopRequested = 1 }
}

/// "50M", "50M/s", "1G": bytes per second; "0" or "none": no limit.
func parseRate(_ text: String) throws -> UInt64? {
    var t = text.trimmingCharacters(in: .whitespaces)
    if t == "none" || t == "0" { return nil }
    if t.hasSuffix("/s") { t = String(t.dropLast(2)) }
    do {
        let b = try ByteCount(parsing: t).bytes
        return b == 0 ? nil : b
    } catch {
        throw CLIError(message: "invalid rate '\(text)': expected bytes per second with an optional unit (50M, 1G, 200M/s) or 'none'", status: 2)
    }
}

/// Options verify --all and repair share.
struct ScrubRunOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Objects read at once (default: the number of CPUs).", valueName: "n"))
    var jobs: Int?
    @Option(name: .customLong("max-rate"), help: ArgumentHelp("At most this many bytes per second (50M, 1G, 'none').", valueName: "rate"))
    var maxRate: String?
    @Option(help: ArgumentHelp("Write Prometheus textfile metrics here (atomically).", valueName: "file"))
    var metrics: String?

    func validate() throws {
        if let jobs, !(1...256).contains(jobs) { throw ValidationError("--jobs must be from 1 to 256") }
    }
}

/// A one-line progress bar on a terminal (stderr).
final class ScrubProgressBar: @unchecked Sendable {
    let enabled = isatty(2) != 0
    let last = Locked(Date.distantPast)

    func update(_ p: ScrubProgress) {
        guard enabled else { return }
        let now = Date()
        let show = last.withLock { l in
            guard now.timeIntervalSince(l) > 0.2 || p.objectsDone == p.objects else { return false }
            l = now
            return true
        }
        guard show else { return }
        let elapsed = max(now.timeIntervalSince(p.started), 0.001)
        let pct = p.objects == 0 ? 100 : p.objectsDone * 100 / p.objects
        let width = 30
        let filled = p.objects == 0 ? width : p.objectsDone * width / p.objects
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = String(format: "\rverify [%@] %3d%% %d/%d objects %@ %.0f MiB/s ", bar, pct, p.objectsDone, p.objects,
                          ByteCount.format(p.bytesDone & ~0xFFFFF), Double(p.bytesDone) / elapsed / 1048576)
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        if enabled { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

/// JSON lines: one per finding, then a summary.
struct FindingLine: Encodable {
    var type: String
    var kind: String
    var object: String
    var problem: String
    var references: [ScrubReference]
    init(_ f: ScrubFinding) {
        type = f.state.rawValue
        kind = f.kind
        object = f.object
        problem = f.problem
        references = f.references
    }
}

func printLine<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    e.dateEncodingStrategy = .iso8601
    FileHandle.standardOutput.write(try e.encode(value))
    FileHandle.standardOutput.write(Data("\n".utf8))
}

func printFinding(_ f: ScrubFinding, label: String? = nil) {
    print("\(label ?? f.state.rawValue.uppercased()) \(f.kind) \(f.object): \(StoreError.bounded(f.problem))")
    for r in f.references {
        print("  " + (r.ranges.isEmpty ? "\(r.kind) \(r.name)" : r.description))
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read and check every block of some names, or of the whole store (--all) once.",
        discussion: """
        With NAME: every block the name references, through its parent chain (as before). \
        With --all (or --attached: the volumes this node's daemon holds): every object the names \
        reach is read once, however many maps reference it, and each damaged or missing object is \
        reported with every volume and snapshot that reads it and the byte ranges. Safe on a live \
        node (--max-rate bounds the load); a killed or stopped run resumes from its checkpoint in \
        the store (--restart starts over). --scheduled is what archip-scrub.service runs: the \
        [scrub] section of the configuration decides whether to run, and its rate, jobs and metrics. \
        Exit status: 0 clean, 1 damage found (or stopped before the end), 2 bad usage.
        """)
    @OptionGroup var global: GlobalOptions
    @OptionGroup var runtime: RuntimeOptions
    @OptionGroup var scrubOptions: ScrubRunOptions
    @Argument(help: "Volume or snapshot names.") var names: [String] = []
    @Flag(help: "Every name in the store.") var all = false
    @Flag(help: "The volumes this node's daemon holds.") var attached = false
    @Flag(help: "Start over instead of resuming an interrupted --all/--attached run.") var restart = false
    @Flag(help: "Run as the scrub timer does: only if [scrub] enabled = true, with its settings.") var scheduled = false
    @Flag(help: "Output JSON (with --all: JSON lines, one per finding, then a summary).") var json = false

    func validate() throws {
        let modes = (names.isEmpty ? 0 : 1) + (all ? 1 : 0) + (attached ? 1 : 0)
        if scheduled {
            guard names.isEmpty, !attached else { throw ValidationError("--scheduled checks the whole store; give no names and no --attached") }
        } else {
            guard modes == 1 else { throw ValidationError("give NAME..., --all or --attached (one of them)") }
        }
        if restart && !names.isEmpty { throw ValidationError("--restart applies to --all and --attached") }
    }

    func run() throws {
        if !names.isEmpty && scrubOptions.jobs == nil && scrubOptions.maxRate == nil && scrubOptions.metrics == nil {
            return try verifyNames()
        }
        var options = ScrubOptions()
        var metricsPath = scrubOptions.metrics
        if scheduled {
            let env = ProcessInfo.processInfo.environment
            let file = global.config ?? env["ARCHIP_CONFIG"] ?? ArchipStore.ConfigFile.defaultPath
            let conf = try ConfigFile.load(file, required: false)
            guard let on = conf["scrub.enabled"], ["true", "yes", "1", "on"].contains(on.lowercased()) else {
                FileHandle.standardError.write(Data("archip: scrub is off: set 'enabled = true' in the [scrub] section of \(file) to run it\n".utf8))
                return
            }
            options.maxRate = try parseRate(scrubOptions.maxRate ?? conf["scrub.max_rate"] ?? "50M")
            options.jobs = try scrubOptions.jobs ?? conf["scrub.jobs"].map {
                guard let j = Int($0), (1...256).contains(j) else { throw CLIError(message: "[scrub] jobs in \(file) must be from 1 to 256, not '\($0)'", status: 2) }
                return j
            } ?? 2
            metricsPath = scrubOptions.metrics ?? conf["scrub.metrics"]
        } else {
            options.maxRate = try scrubOptions.maxRate.flatMap(parseRate)
            if let j = scrubOptions.jobs { options.jobs = j }
        }
        let store = try global.openStore()
        if attached {
            guard let client = try daemonClient(global, runtime, start: false) else {
                FileHandle.standardError.write(Data("archip: note: no node daemon runs here (runtime folder \(runtime.path(global))): nothing is attached, nothing to verify\n".utf8))
                return
            }
            let list = try client.call(ControlRequest(op: .list)).attachments ?? []
            options.names = try Set(list.map(\.name)).sorted().map(volumeName)
            if options.names!.isEmpty {
                FileHandle.standardError.write(Data("archip: note: the node daemon holds no volume: nothing to verify\n".utf8))
                return
            }
        } else if !names.isEmpty {
            options.names = try names.map(volumeName)
        }
        if restart { try store.removeScrubCheckpoint() }
        catchStopSignals()
        options.stop = { stopRequested != 0 }
        let bar = ScrubProgressBar()
        options.progress = { bar.update($0) }
        let r = try store.scrub(options)
        bar.finish()
        if let metricsPath {
            try ScrubMetrics.write(ScrubMetrics.text(r, store: store.objects.location), to: metricsPath)
        }
        report(r)
        if !r.ok || r.interrupted { throw ExitCode(1) }
    }

    func report(_ r: ScrubReport) {
        let seconds = r.endedAt.timeIntervalSince(r.startedAt)
        if json {
            for f in r.findings { try? printLine(FindingLine(f)) }
            struct Summary: Encodable {
                var type = "summary"
                var scope: String, names: Int, objects: Int, objects_checked: Int, bytes_checked: UInt64
                var objects_checked_before: Int
                var damaged: Int, missing: Int, pending: Int, held_open: [String]
                var resumed: Bool, interrupted: Bool, started: Date, ended: Date, ok: Bool
            }
            try? printLine(Summary(scope: r.scope, names: r.names, objects: r.objects, objects_checked: r.objectsChecked,
                                   bytes_checked: r.bytesChecked, objects_checked_before: r.objectsCheckedBefore, damaged: r.damaged, missing: r.missing, pending: r.pending,
                                   held_open: r.heldOpen, resumed: r.resumed, interrupted: r.interrupted,
                                   started: r.startedAt, ended: r.endedAt, ok: r.ok))
            return
        }
        for f in r.findings { printFinding(f) }
        if !r.heldOpen.isEmpty {
            print("note: \(r.heldOpen.count) volume(s) held open (\(r.heldOpen.prefix(5).joined(separator: ", "))\(r.heldOpen.count > 5 ? ", ..." : "")): their own blocks were checked against their page checksums only")
        }
        if r.pending > 0 {
            print("note: \(r.pending) block(s) have unflushed in-place writes from a writer that stopped; their checksums are re-taken at the next open")
        }
        let resumed = r.resumed ? " (resumed; \(r.objectsCheckedBefore) checked before)" : ""
        print(String(format: "%@: %d name(s), %d of %d objects (%@) checked in %.1f s%@, %d damaged, %d missing",
                     r.scope == "all" ? "store" : r.scope, r.names, r.objectsChecked, r.objects, ByteCount.format(r.bytesChecked),
                     seconds, resumed, r.damaged, r.missing))
        if r.interrupted {
            print("stopped before the end; run the same command again to resume (or add --restart)")
        }
    }

    /// `verify NAME...`: each name's whole chain, as before --all.
    func verifyNames() throws {
        let store = try global.openStore()
        var bad = false
        for n in names {
            let r = try store.verify(try volumeName(n))
            try? store.recordVerification(of: r)
            if json {
                try printJSON(r)
            } else {
                for p in r.problems { print("BAD  \(p)") }
                if !r.pending.isEmpty {
                    print("note: \(r.pending.count) block(s) have unflushed in-place writes from a writer that stopped; their checksums are re-taken at the next open")
                }
                print("\(r.name): \(r.blocksChecked) blocks in \(r.layers) layer(s) checked, \(r.problems.count) problem(s)")
            }
            if !r.ok { bad = true }
        }
        if bad { throw ExitCode(1) }
    }
}

struct Repair: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore damaged or missing content blocks from a source holding the same content.",
        discussion: """
        Scans as 'verify --all' does (or the names given), then restores each damaged or missing \
        block from the first source holding bytes with its hash: --from DIR (a Pithos block folder \
        aa/bb/cc/HASH, or another store: a folder with an archip-store marker or rados://...), \
        --from-image FILE|URL with --hashmap (its Pithos hashmap). Bytes are checked (SHA-256) \
        before anything is written, and written whole (a temporary, then a rename). An owned block \
        no source holds is reported LOST with the volumes and byte ranges that read it, never \
        replaced. Exit status: 0 nothing left damaged, 1 something is, 2 bad usage.
        """)
    @OptionGroup var global: GlobalOptions
    @OptionGroup var scrubOptions: ScrubRunOptions
    @Argument(help: "Volume or snapshot names (or --all).") var names: [String] = []
    @Flag(help: "Every name in the store.") var all = false
    @Option(name: .customLong("from"), help: ArgumentHelp("A block folder or another store to take blocks from (repeatable).", valueName: "dir|store"))
    var from: [String] = []
    @Option(name: .customLong("from-image"), help: ArgumentHelp("An image file or URL to take blocks from (needs --hashmap).", valueName: "file|url"))
    var fromImage: String?
    @Option(help: ArgumentHelp("The image's Pithos hashmap (file or URL).", valueName: "file|url"))
    var hashmap: String?
    @Option(help: ArgumentHelp("CA certificates for HTTPS sources.", valueName: "file")) var cacert: String?
    @Flag(name: .customLong("dry-run"), help: "Check the sources; write nothing.") var dryRun = false
    @Flag(help: "Output JSON.") var json = false

    func validate() throws {
        guard names.isEmpty != !all else { throw ValidationError("give NAME... or --all (one of them)") }
        guard !from.isEmpty || fromImage != nil else { throw ValidationError("give a source: --from DIR|STORE or --from-image FILE|URL --hashmap H") }
        guard (fromImage == nil) == (hashmap == nil) else { throw ValidationError("--from-image and --hashmap go together") }
    }

    func sources(_ store: VolumeStore) throws -> [any RepairSource] {
        var out: [any RepairSource] = []
        for f in from {
            if f.hasPrefix("rados://") || FileManager.default.fileExists(atPath: f + "/archip-store") {
                let other = try StoreOpener.open(f, node: store.node, mustExist: true)
                guard other.objects.location != store.objects.location else {
                    throw CLIError(message: "--from \(f) is the store being repaired; give another store or a block folder", status: 2)
                }
                out.append(StoreRepairSource(objects: other.objects))
            } else {
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: f, isDirectory: &isDir), isDir.boolValue else {
                    throw CLIError(message: "--from \(f): not a folder (a Pithos block folder or a store)", status: 2)
                }
                out.append(BlockFolderRepairSource(root: f))
            }
        }
        if let image = fromImage, let hm = hashmap {
            let remote = try RemoteSources.opener(cacert: cacert, insecure: false)
            let bytes: [UInt8]
            if hm.hasPrefix("http://") || hm.hasPrefix("https://") {
                guard let remote else { throw StoreError(.unsupported, "\(hm): this build has no HTTP client") }
                bytes = try remote.fetchText(url: hm, limit: 64 << 20)
            } else {
                guard let d = FileManager.default.contents(atPath: hm) else { throw StoreError(.notFound, "hashmap \(hm): cannot read it") }
                bytes = [UInt8](d)
            }
            let map = try PithosHashmap.decode(Data(bytes))
            if image.hasPrefix("http://") || image.hasPrefix("https://") {
                guard let remote else { throw StoreError(.unsupported, "\(image): this build has no HTTP client") }
                let src = try remote.openImage(url: image, blockSize: Int(map.blockSize), expectedHashes: nil)
                out.append(try HashmapRepairSource(description: "image \(image)", hashmap: map) { i, buffer in
                    try src.read(i, into: buffer)
                })
            } else {
                out.append(try HashmapRepairSource(imageFile: image, hashmap: map))
            }
        }
        return out
    }

    func run() throws {
        let store = try global.openStore()
        let srcs = try sources(store)
        let r = try store.repair(names: all ? nil : try names.map(volumeName), sources: srcs, dryRun: dryRun,
                                 jobs: scrubOptions.jobs ?? ProcessInfo.processInfo.activeProcessorCount,
                                 maxRate: try scrubOptions.maxRate.flatMap(parseRate))
        if let metrics = scrubOptions.metrics, !dryRun {
            var after = r.scan
            after.findings = r.actions.filter { $0.result != .restored }.map(\.finding)
            try ScrubMetrics.write(ScrubMetrics.text(after, store: store.objects.location, repaired: r.restored, lost: r.lost), to: metrics)
        }
        if json {
            try printJSON(r)
        } else {
            for a in r.actions {
                switch a.result {
                case .restored: print("\(dryRun ? "WOULD RESTORE" : "RESTORED") \(a.finding.kind) \(a.finding.object) from \(a.source ?? "?")")
                case .lost: printFinding(a.finding, label: "LOST")
                case .unrepaired: printFinding(a.finding, label: "NOT REPAIRED")
                }
                for why in a.refused { print("  refused: \(StoreError.bounded(why))") }
            }
            print("\(r.scan.objectsChecked) objects checked: \(r.scan.findings.count) damaged or missing, \(r.restored) \(dryRun ? "restorable" : "restored"), \(r.lost) lost, \(r.actions.count - r.restored - r.lost) not repaired")
        }
        if !r.ok { throw ExitCode(1) }
    }
}
