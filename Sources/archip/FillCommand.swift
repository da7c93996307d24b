import ArchipFill
import ArchipStore
import ArgumentParser
import Foundation

/// Options shared by `archip fill` and `archip create --from`.
struct FillArguments: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Per-block hashes the image must match (a Pithos hashmap JSON file or URL).", valueName: "file|url"))
    var hashmap: String?

    @Option(name: .long, help: ArgumentHelp("The whole image's SHA-256; nothing is committed unless it matches.", valueName: "hex"))
    var sha256: String?

    @Option(name: .long, help: ArgumentHelp("Where pithos: blocks come from: a folder in Pithos' aa/bb/cc/<hash> layout, or a URL template with {hash}.", valueName: "dir|url"))
    var blocks: String?

    @Flag(help: "Copy an in-store snapshot or volume block by block instead of cloning it.")
    var copy = false

    @Flag(help: "Let an image larger than the volume grow it.")
    var grow = false

    @Flag(help: "Continue an interrupted fill; blocks it verified are not fetched again.")
    var resume = false

    @Option(help: ArgumentHelp("Blocks in flight (memory: jobs x block size).", valueName: "n"))
    var jobs: Int = ProcessInfo.processInfo.activeProcessorCount + 2

    @Option(name: .customLong("max-memory"), help: ArgumentHelp("Cap on block buffers; lowers --jobs to fit (e.g. 64M).", valueName: "size"))
    var maxMemory: String?

    @Option(help: ArgumentHelp("Progress: auto (a bar on a terminal, else nothing), bar, json (one line a second on stderr), none.", valueName: "mode"))
    var progress: String = "auto"

    @Option(name: .customLong("hashmap-out"), help: ArgumentHelp("Write the image's Pithos hashmap here.", valueName: "file"))
    var hashmapOut: String?

    @Option(help: ArgumentHelp("CA bundle for https sources.", valueName: "file"))
    var cacert: String?

    @Flag(help: "Do not verify TLS certificates (tests only).")
    var insecure = false

    func validate() throws {
        guard ["auto", "bar", "json", "none"].contains(progress) else {
            throw ValidationError("--progress must be auto, bar, json or none")
        }
        guard jobs >= 1 && jobs <= 256 else { throw ValidationError("--jobs must be from 1 to 256") }
        if let sha256, ContentHash(hex: sha256) == nil {
            throw ValidationError("--sha256 must be 64 hex digits")
        }
    }

    func request(target: VolumeName, source: String, createSize: ByteCount?) throws -> FillRequest {
        var r = FillRequest(target: target, source: try SourceSpec(parsing: source))
        r.createSize = createSize
        r.hashmap = hashmap
        r.blocks = blocks
        r.sha256 = sha256.flatMap(ContentHash.init(hex:))
        r.copy = copy
        r.grow = grow
        r.resume = resume
        var j = jobs
        if let maxMemory {
            let cap = try ByteCount(parsing: maxMemory).bytes
            j = max(1, min(j, Int(cap / UInt64(LayerMap.defaultBlockSize))))
        }
        r.options.jobs = j
        r.remote = try RemoteSources.opener(cacert: cacert, insecure: insecure)
        r.options.progress = FillProgressDisplay(mode: progress).callback
        return r
    }

    struct Output: Encodable {
        var volume: String
        var source: String
        var cloned: Bool
        var blocks: Int
        var fetched: Int
        var reused: Int
        var resumed: Int
        var written: Int
        var bytes: UInt64
        var seconds: Double
        var top_hash: String?
        var sha256: String?
    }

    func report(_ outcome: FillOutcome, target: VolumeName, source: String, json: Bool) throws {
        switch outcome {
        case .cloned(let from):
            if json {
                try printJSON(Output(volume: target.value, source: source, cloned: true, blocks: 0, fetched: 0, reused: 0,
                                     resumed: 0, written: 0, bytes: 0, seconds: 0, top_hash: nil, sha256: nil))
            } else {
                print("\(target): cloned from \(from) (O(1), nothing copied)")
            }
        case .filled(let r):
            if let hashmapOut {
                guard FileManager.default.createFile(atPath: hashmapOut, contents: try r.hashmap.jsonData()) else {
                    throw CLIError(message: "cannot write \(hashmapOut)")
                }
            }
            let p = r.progress
            if json {
                try printJSON(Output(volume: target.value, source: source, cloned: false, blocks: p.blocksTotal, fetched: p.fetched,
                                     reused: p.reused, resumed: p.resumed, written: r.written, bytes: p.bytesTotal,
                                     seconds: p.elapsedSeconds, top_hash: r.topHash.hex, sha256: r.sha256?.hex))
            } else {
                print(String(format: "%@: %d blocks from %@ in %.1f s (fetched %d, already in the store %d, resumed %d; %d new objects), top hash %@",
                             target.value, p.blocksTotal, source, p.elapsedSeconds, p.fetched, p.reused, p.resumed, r.written, r.topHash.hex))
            }
        }
    }
}

struct Fill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fill a volume from an image, snapshot or Pithos hashmap: verified, parallel, resumable.",
        discussion: """
        SOURCE is snapshot:NAME or volume:NAME (cloned in O(1) unless --copy), file:/path (a raw image),
        http(s)://URL (ranged GETs through libcurl), or pithos:HASHMAP (a Pithos hashmap file or URL,
        blocks from --blocks). Every block is hashed (SHA-256) and checked against --hashmap or the
        pithos hashmap; with --sha256 the whole image is checked before anything is committed.
        Blocks are stored content-addressed: blocks the store already holds are not stored again
        (and, with a hashmap, not even fetched). The volume switches to the new content in one step at
        the end; a failed or killed fill leaves it as it was, and --resume continues without fetching
        verified blocks again. A missing VOLUME is created (--size, default: the image's size).
        """)
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume to fill (created if missing).") var volume: String
    @Option(help: ArgumentHelp("The source (see above).", valueName: "source")) var from: String?
    @Option(help: ArgumentHelp("Size for a volume that does not exist yet.", valueName: "size")) var size: String?
    @Flag(help: "Drop the checkpoint of an interrupted fill of VOLUME (its blocks are left to gc).") var abort = false
    @Flag(help: "Print the result as JSON.") var json = false
    @OptionGroup var fill: FillArguments

    func run() throws {
        let target = try volumeName(volume)
        let store = try global.openStore(creating: !abort)
        // A take-over of a dead fill's name (its lease ended on another
        // node) and a lost hold are one line each on stderr.
        store.leaseLog = { FileHandle.standardError.write(Data("archip: \($0)\n".utf8)) }
        if abort {
            let dropped = try FillStage.abort(store: store, target: target)
            print(dropped ? "\(target): interrupted fill dropped" : "\(target): no interrupted fill")
            return
        }
        guard let from else { throw CLIError(message: "--from SOURCE is required (or --abort)", status: 2) }
        let request = try fill.request(target: target, source: from, createSize: try size.map(parseSize))
        let outcome = try runFill(request, store: store, source: from)
        FillProgressDisplay.finishLine(mode: fill.progress)
        try fill.report(outcome, target: target, source: from, json: json)
    }
}

/// Runs a fill; if it fails and leaves its checkpoint behind (the blocks it
/// verified, kept for a resume), the error says so and how to resume or drop it.
func runFill(_ request: FillRequest, store: VolumeStore, source: String) throws -> FillOutcome {
    let before = (try? store.interruptedFills().contains { $0.name == request.target.value }) ?? false
    do {
        return try Filler.run(request, store: store)
    } catch {
        let t = request.target.value
        guard let left = try? store.interruptedFills().first(where: { $0.name == t }) else { throw error }
        let kept = "\(left.blocksStored) of \(left.blocks) blocks (\(ByteCount.format(UInt64(left.bytesStored)))) are kept"
        let hint = "\(kept) for 'archip fill \(t) --resume --from \(source)'; drop them with 'archip fill \(t) --abort'"
        if before && !request.resume {
            throw error   // the error is about that earlier fill, and says what to do
        }
        if let e = error as? StoreError, e.code == .alreadyExists || e.code == .locked {
            throw error   // another fill's checkpoint or running fill, or a name taken meanwhile: nothing of this one is kept
        }
        let code: Int32 = (error as? StoreError).map { Main.isUsage($0) ? 2 : 1 } ?? 1
        throw CLIError(message: "\(error); \(hint)", status: code)
    }
}

/// Terminal bar (rate, ETA) or JSON lines, at most a few times a second.
final class FillProgressDisplay: @unchecked Sendable {
    let mode: String
    let last = Locked(Date.distantPast)

    init(mode: String) { self.mode = mode }

    var enabled: Bool {
        switch mode {
        case "bar", "json": return true
        case "auto": return isatty(2) != 0
        default: return false
        }
    }

    var callback: (@Sendable (FillProgress) -> Void)? {
        guard enabled else { return nil }
        let json = mode == "json"
        return { [self] p in
            let now = Date()
            let finished = p.blocksDone == p.blocksTotal
            let due = last.withLock { l -> Bool in
                guard now.timeIntervalSince(l) >= (json ? 1.0 : 0.2) || (finished && l != .distantFuture) else { return false }
                l = finished ? .distantFuture : now
                return true
            }
            guard due else { return }
            if json {
                let e = JSONEncoder()
                e.outputFormatting = [.sortedKeys]
                if let d = try? e.encode(p) { FileHandle.standardError.write(d + Data("\n".utf8)) }
            } else {
                let pct = p.blocksTotal == 0 ? 100 : p.blocksDone * 100 / p.blocksTotal
                let left = p.bytesPerSecond > 0 ? Double(p.bytesTotal - p.bytesDone) / p.bytesPerSecond : 0
                let line = String(format: "\rfill %3d%% %d/%d blocks %.0f MiB/s ETA %.0fs (reused %d) ", pct, p.blocksDone,
                                  p.blocksTotal, p.bytesPerSecond / 1048576, left, p.reused)
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
    }

    static func finishLine(mode: String) {
        if mode == "bar" || (mode == "auto" && isatty(2) != 0) { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
