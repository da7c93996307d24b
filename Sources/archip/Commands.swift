import ArchipFill
import ArchipRados
import ArchipServe
import ArchipStore
import ArgumentParser
import Foundation

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a thin volume (only its map is written).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name: letters, digits, '.', '_', '-' (e.g. UUID.ext.disk0, snf-vol-42).") var name: String
    @Option(help: ArgumentHelp("Size, e.g. 10G, 512M, 1T.", valueName: "size")) var size: String
    @Option(name: .customLong("block-size"), help: ArgumentHelp("Block size, a power of two from 64K to 64M.", valueName: "size")) var blockSize: String = "4M"
    @Option(name: .customLong("meta"), help: ArgumentHelp("Metadata to record (repeatable).", valueName: "key=value")) var meta: [String] = []
    @Flag(help: "Print the new volume's info as JSON.") var json = false
    @Option(help: ArgumentHelp("Fill it from a source, as 'archip fill' does (see 'archip fill --help').", valueName: "source")) var from: String?
    @OptionGroup var fill: FillArguments

    func run() throws {
        let n = try volumeName(name)
        let s = try parseSize(size)
        let bs = try parseBlockSize(blockSize)
        let store = try global.openStore(creating: true)
        if let from {
            guard bs == LayerMap.defaultBlockSize else {
                throw CLIError(message: "--block-size cannot be combined with --from (the source decides)", status: 2)
            }
            if (try? store.info(n)) != nil { throw StoreError(.alreadyExists, "'\(n)' already exists") }
            var request = try fill.request(target: n, source: from, createSize: s)
            request.metadata = try parseMetadata(meta)
            let outcome = try runFill(request, store: store, source: from)
            FillProgressDisplay.finishLine(mode: fill.progress)
            if json { return try printJSON(try store.info(n)) }
            try fill.report(outcome, target: n, source: from, json: false)
            return
        }
        try store.create(n, size: s, blockSize: bs, metadata: try parseMetadata(meta))
        if json { try printJSON(try store.info(n)) }
    }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a volume or snapshot and the data only it used.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume or snapshot name.") var name: String
    @Flag(name: .customLong("if-exists"), help: "Succeed when the name does not exist.") var ifExists = false

    func run() throws {
        let n = try volumeName(name)
        let store = try global.openStore()
        do {
            try store.remove(n)
        } catch let e as StoreError where e.code == .notFound && ifExists {
            return
        }
    }
}

struct Rename: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Rename a volume or snapshot (not while it is held).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Current name.") var old: String
    @Argument(help: "New name.") var new: String

    func run() throws {
        let a = try volumeName(old), b = try volumeName(new)
        try global.openStore().rename(a, to: b)
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List volumes and snapshots.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Output JSON.") var json = false

    func run() throws {
        let store = try global.openStore()
        let (items, damaged) = try store.listAll()
        let fills = try store.interruptedFills()
        if json {
            try printJSON(items)
        } else {
            let rows = items.map { i in
                [i.name, i.kind, ByteCount.format(i.size), i.parent ?? "-", String(i.blocks),
                 i.lock.map { "\($0.mode.rawValue):" + $0.holders.map(\.node).joined(separator: ",") } ?? "-"]
            }
            printTable(["NAME", "KIND", "SIZE", "PARENT", "BLOCKS", "LOCK"], rows)
        }
        // Notes go to stdout under the table. With --json (the JSON stays a
        // list of volumes) they go to stderr as one line, with the error if any.
        var notes: [String] = []
        for f in fills {
            notes.append("fill in progress or interrupted: \(f.name), \(f.blocksStored) of \(f.blocks) blocks stored (\(ByteCount.format(UInt64(f.bytesStored)))) from \(f.source); continue it with 'archip fill \(f.name) --resume --from SOURCE' or drop it with 'archip fill \(f.name) --abort'")
        }
        for d in damaged { notes.append("damaged: \(StoreError.bounded(d.description))") }
        if !json { notes.forEach { print($0) } }
        if !damaged.isEmpty {
            let failure = "\(damaged.count) name(s) could not be read (\(json ? "named here" : "listed above") as damaged); run 'archip verify NAME' on each"
            throw CLIError(message: json ? (notes + [failure]).joined(separator: "; ") : failure)
        }
        if json && !notes.isEmpty {
            FileHandle.standardError.write(Data("archip: \(notes.joined(separator: "; "))\n".utf8))
        }
    }
}

func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    print(line(header))
    for r in rows { print(line(r)) }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a volume's or snapshot's size, chain, blocks, lock and metadata.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume or snapshot name.") var name: String
    @Flag(help: "Output JSON.") var json = false

    func run() throws {
        let i = try global.openStore().info(try volumeName(name))
        if json { return try printJSON(i) }
        print("name:       \(i.name)")
        print("kind:       \(i.kind)")
        print("size:       \(ByteCount.format(i.size)) (\(i.size) bytes)")
        print("block size: \(ByteCount.format(UInt64(i.blockSize)))")
        print("layer:      \(i.layer) (epoch \(i.epoch))")
        print("parent:     \(i.parent ?? "-")")
        for (n, l) in i.chain.enumerated() {
            print("  chain[\(n)]: \(l.layer) \(l.kind)\(l.names.isEmpty ? "" : " (" + l.names.joined(separator: ", ") + ")")")
        }
        print("blocks:     \(i.blocks) held by this layer (\(ByteCount.format(i.bytes)))")
        if let l = i.lock {
            print("lock:       \(l.mode.rawValue) by " + l.holders.map(\.description).joined(separator: ", "))
        } else {
            print("lock:       none")
        }
        if let l = i.lease {
            let holder = l.holder.map { h in "\(h.node) (token \(h.token)) until \(l.until.map(Lease.time) ?? "?")" } ?? "none"
            print("lease:      epoch \(l.epoch), holder \(holder)")
            if let b = l.lastBreak { print("last break: \(b)") }
        }
        for k in i.metadata.keys.sorted() { print("meta:       \(k)=\(i.metadata[k]!)") }
    }
}

struct Resize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Grow a volume (or shrink it, with --allow-shrink).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name.") var name: String
    @Option(help: ArgumentHelp("New size.", valueName: "size")) var size: String
    @Flag(name: .customLong("allow-shrink"), help: "Allow a smaller size (data past the new end is lost).") var allowShrink = false

    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let n = try volumeName(name)
        let s = try parseSize(size)
        if let client = try daemonClient(global, runtime, start: false),
           let a = try client.call(ControlRequest(op: .list)).attachments?.first(where: { $0.name == n.value }) {
            // Attached here: the daemon grows it and tells the loop device.
            guard s.bytes >= a.size else {
                // An operation refused (exit 1), not a malformed size (exit 2).
                throw StoreError(.locked, "\(n) is attached on this node; detach it before shrinking")
            }
            _ = try client.call(ControlRequest(op: .grow, name: n.value, size: s.bytes))
            return
        }
        try global.openStore().withVolume(n) { try $0.resize(to: s, allowShrink: allowShrink) }
    }
}

struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Take an O(1) snapshot: freeze the volume's layer under a new name.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name.") var volume: String
    @Argument(help: "Snapshot name.") var snapshot: String
    @Option(help: ArgumentHelp("Seconds to wait for the holder's daemon when another node holds the volume (default 30, or ARCHIP_SNAPSHOT_TIMEOUT).", valueName: "seconds"))
    var timeout: Double?

    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let v = try volumeName(volume), s = try volumeName(snapshot)
        // Attached on this node: the daemon holds the writes, so it takes the
        // snapshot, consistent with every write it acknowledged.
        if let client = try daemonClient(global, runtime, start: false),
           try client.call(ControlRequest(op: .list)).attachments?.contains(where: { $0.name == v.value }) == true {
            _ = try client.call(ControlRequest(op: .snapshot, name: v.value, snapshot: s.value))
            return
        }
        // Held by another node (or process): its daemon takes it, asked through the store.
        try global.openStore().snapshotDelegating(v, as: s, timeout: timeout ?? SnapshotRequests.defaultTimeout)
    }
}

struct Clone: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a copy-on-write volume from a snapshot (O(1)).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot name.") var snapshot: String
    @Argument(help: "New volume name.") var volume: String
    @Option(help: ArgumentHelp("Size of the clone (default: the snapshot's; not smaller).", valueName: "size")) var size: String?

    func run() throws {
        let s = try volumeName(snapshot), v = try volumeName(volume)
        let sz = try size.map(parseSize)
        try global.openStore().clone(s, as: v, size: sz)
    }
}

struct Flatten: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make a volume independent of its parent snapshot.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name.") var name: String

    func run() throws {
        let n = try volumeName(name)
        let copied = try global.openStore().withVolume(n) { try $0.flatten() }
        FileHandle.standardError.write(Data("archip: \(n): \(copied) blocks taken over from the parent chain\n".utf8))
    }
}

struct Hash: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Content-address a snapshot's blocks and print its Pithos hashmap and top hash.",
        discussion: "Without --json prints the top hash. --hashmap-out writes the hashmap JSON (block_size, block_hash, hashes, bytes).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot name.") var snapshot: String
    @Flag(help: "Print the hashmap with its top hash as JSON.") var json = false
    @Option(name: .customLong("hashmap-out"), help: ArgumentHelp("Write the hashmap JSON here.", valueName: "file")) var hashmapOut: String?

    struct Output: Encodable {
        var top_hash: String
        var hashmap: PithosHashmap
        var converted_blocks: Int
        var written_blocks: Int
    }

    func run() throws {
        let store = try global.openStore()
        if let hashmapOut { try refuseInsideStore(hashmapOut, store) }
        let r = try store.hash(try volumeName(snapshot))
        if let hashmapOut {
            guard FileManager.default.createFile(atPath: hashmapOut, contents: try r.hashmap.jsonData()) else {
                throw CLIError(message: "cannot write \(hashmapOut)")
            }
        }
        if json {
            try printJSON(Output(top_hash: r.topHash.hex, hashmap: r.hashmap, converted_blocks: r.converted, written_blocks: r.written))
        } else {
            print(r.topHash.hex)
        }
    }
}

struct Lock: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Take a volume's lock for this node (prints the token).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name.") var name: String
    @Flag(help: "Shared lock, for live migration (two holders).") var shared = false
    @Option(help: ArgumentHelp("Token telling this holder apart (default: random).", valueName: "token")) var token: String?
    @Flag(help: "Output JSON.") var json = false

    struct Output: Encodable { var name: String; var node: String; var token: String; var mode: String }

    func run() throws {
        let store = try global.openStore()
        let n = try volumeName(name)
        let owner = LockOwner(node: store.node, token: token ?? LockOwner.randomToken(), pid: nil, since: Date())
        try store.lock(n, owner: owner, mode: shared ? .shared : .exclusive)
        if json { try printJSON(Output(name: n.value, node: owner.node, token: owner.token, mode: shared ? "shared" : "exclusive")) }
        else { print(owner.token) }
    }
}

struct Unlock: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Release this node's hold on a volume, or break another's with --force.",
        discussion: "Without --token every hold of this node is released. --force breaks the lock whoever holds it, records the break in the volume's lease (who, when, the epoch moving on) and prints one line. An exclusive holder whose lease is still valid (its end + [locks] clock_skew still ahead) is refused: wait for it to run out. --ignore-lease breaks it anyway: on the folder backend that is unsafe unless the holder is known dead (it may write until its lease ends); on RADOS the break blocklists it.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name.") var name: String
    @Option(help: ArgumentHelp("The token 'archip lock' printed.", valueName: "token")) var token: String?
    @Flag(help: "Break the lock whoever holds it (not a live lease: see --ignore-lease).") var force = false
    @Flag(name: .customLong("ignore-lease"), help: "With --force: break a holder whose lease is still valid (unsafe on the folder backend unless it is known dead).")
    var ignoreLease = false

    func validate() throws {
        if ignoreLease && !force { throw ValidationError("--ignore-lease goes with --force") }
    }

    func run() throws {
        let store = try global.openStore()
        let n = try volumeName(name)
        _ = try store.info(n)
        guard force else {
            try store.unlock(n, owner: LockOwner(node: store.node, token: token ?? ""), force: false)
            return
        }
        let b = try store.breakLock(n, by: LockOwner.forThisProcess(node: store.node), ignoreLease: ignoreLease)
        let lease: String
        switch (b.reason, b.leaseEnded) {
        case ("ignored-lease", let t?): lease = "lease valid until \(Lease.time(t)), ignored"
        case (_, let t?): lease = "lease expired at \(Lease.time(t))"
        default: lease = "no lease"
        }
        print("broke \(b.broken.node)'s exclusive lock on \(n) (token \(b.broken.token), \(lease)); epoch \(b.epochBefore) -> \(b.epochAfter)")
    }
}

struct GC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Find (and with --apply remove) objects no map references.",
        discussion: "Dry run by default. Objects younger than --grace seconds are spared (work in progress).")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Remove what is found.") var apply = false
    @Option(help: ArgumentHelp("Spare objects younger than this many seconds.", valueName: "seconds")) var grace: Double = 600
    @Option(help: ArgumentHelp("Keep the checkpoint (and blocks) of an interrupted fill this long after its last progress, for --resume: seconds, or with a unit (30m, 24h, 7d).", valueName: "duration")) var fillGrace: String = "24h"
    @Flag(help: "Output JSON.") var json = false

    func run() throws {
        guard grace >= 0 else { throw CLIError(message: "--grace must not be negative", status: 2) }
        let fillSeconds = try parseDuration(fillGrace, option: "--fill-grace")
        let r = try global.openStore().gc(apply: apply, grace: grace, fillGrace: fillSeconds)
        if json {
            try printJSON(r)
            if r.withheld { throw ExitCode(1) }
            return
        }
        let verb = apply ? "removed" : "would remove"
        print("\(verb): \(r.deadLayers.count) dead layer(s), \(r.orphanOwnedBlocks) orphan owned block(s), \(r.unreferencedContentBlocks) unreferenced content block(s), \(ByteCount.format(r.bytes)) bytes")
        if !r.busyLayers.isEmpty { print("skipped \(r.busyLayers.count) layer(s) of volumes held open") }
        if !r.reclaimedFills.isEmpty {
            print("\(apply ? "dropped" : "would drop") the checkpoint of \(r.reclaimedFills.count) abandoned fill(s) (no progress for \(fillGrace)): \(r.reclaimedFills.joined(separator: ", "))")
        }
        if !r.interruptedFills.isEmpty {
            let names = r.interruptedFills.joined(separator: ", ")
            print("kept: \(r.interruptedFills.count) interrupted fill(s) hold \(ByteCount.format(r.interruptedFillBytes)): \(names); continue with 'archip fill NAME --from SOURCE --resume' or drop with 'archip fill NAME --abort' (gc drops them \(fillGrace) after their last progress)")
        }
        if !apply { print("(dry run; pass --apply to remove)") }
        if r.withheld {
            print("kept every dead layer and content block: \(r.damaged.count) damaged name(s) may reference them (never deleted on partial knowledge):")
            for d in r.damaged { print("  damaged: \(StoreError.bounded(d))") }
            throw CLIError(message: "\(r.damaged.count) damaged name(s); run 'archip verify NAME' on each, repair or remove it, then gc again")
        }
    }
}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a raw file into a volume (created with the file's size if missing).",
        discussion: "A plain copy for operators and tests: nothing is verified against the source.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name.") var name: String
    @Argument(help: "Raw image file.") var file: String
    @Option(help: ArgumentHelp("Size when creating the volume (default: the file's, rounded up to 512 bytes).", valueName: "size")) var size: String?
    @Option(help: ArgumentHelp("Parallel block copies (default: cores + 1).", valueName: "n")) var jobs: Int = 0

    func run() throws {
        let n = try volumeName(name)
        let store = try global.openStore(creating: true)
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CLIError(message: "cannot open \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CLIError(message: "cannot stat \(file)") }
        let length = UInt64(st.st_size)
        var created = false
        if (try? store.info(n)) == nil {
            let s = try size.map(parseSize) ?? ByteCount(max(512, (length + 511) / 512 * 512))
            try store.create(n, size: s)
            created = true
        }
        do {
            try store.withVolume(n) { v in
                let p = Progress(label: "import \(n)", total: length)
                try RawCopy.importFile(fd: fd, length: length, into: v, jobs: jobs) { p.update($0) }
                p.finish()
            }
        } catch {
            if created { try? store.remove(n) }
            throw error
        }
    }
}

extension Progress: @unchecked Sendable {}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Copy a volume or snapshot to a raw file (sparse where blocks are zero).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume or snapshot name.") var name: String
    @Argument(help: "Output file (replaced).") var file: String
    @Option(help: ArgumentHelp("Parallel block copies (default: cores + 1).", valueName: "n")) var jobs: Int = 0

    func run() throws {
        let n = try volumeName(name)
        let store = try global.openStore()
        try refuseInsideStore(file, store)
        let v = try store.open(n, mode: .readOnly)
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError(message: "cannot create \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let p = Progress(label: "export \(n)", total: v.size)
        try RawCopy.exportVolume(v, to: fd, jobs: jobs) { p.update($0) }
        p.finish()
    }
}

struct Write: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write standard input into a volume at an offset, then flush.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume name.") var name: String
    @Option(help: ArgumentHelp("Byte offset.", valueName: "bytes")) var offset: String = "0"

    func run() throws {
        let n = try volumeName(name)
        let off = try ByteCount(parsing: offset).bytes
        let data = FileHandle.standardInput.readDataToEndOfFile()
        try global.openStore().withVolume(n) { v in
            try [UInt8](data).withUnsafeBytes { try v.write(at: off, $0) }
        }
    }
}

struct Read: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a byte range of a volume or snapshot to standard output.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume or snapshot name.") var name: String
    @Option(help: ArgumentHelp("Byte offset.", valueName: "bytes")) var offset: String = "0"
    @Option(help: ArgumentHelp("Bytes to read (default: to the end).", valueName: "bytes")) var length: String?

    func run() throws {
        let n = try volumeName(name)
        let off = try ByteCount(parsing: offset).bytes
        let v = try global.openStore().open(n, mode: .readOnly)
        let len = try length.map { try ByteCount(parsing: $0).bytes } ?? (v.size > off ? v.size - off : 0)
        var pos: UInt64 = 0
        let chunk: UInt64 = 4 << 20
        if len == 0 && off > v.size { _ = try v.read(at: off, length: 0) }
        while pos < len {
            let n = Int(min(chunk, len - pos))
            let bytes = try v.read(at: off + pos, length: n)
            FileHandle.standardOutput.write(Data(bytes))
            pos += UInt64(n)
        }
    }
}

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make the store: mark an empty folder (created if missing), pool or namespace as an archip store.",
        discussion: "Only init, and a first create, import or fill, make a store; every other command fails on a location that is not one.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let location = try global.storeLocation()
        if (try? StoreOpener.open(location, node: try global.nodeName(), mustExist: true)) != nil {
            print("\(location): already an archip store")
            return
        }
        _ = try global.openStore(creating: true)
        print("\(location): archip store made")
    }
}

/// Refuses an output file inside a folder store: writing there would
/// overwrite the store's own objects (its marker, a name, a block).
func refuseInsideStore(_ file: String, _ store: VolumeStore) throws {
    guard let dir = store.objects as? DirObjectStore, let root = realpath(dir.root, nil) else { return }
    defer { free(root) }
    let rootPath = String(cString: root)
    let url = URL(fileURLWithPath: file)
    var resolved: String
    if let r = realpath(url.path, nil) {
        resolved = String(cString: r)
        free(r)
    } else if let p = realpath(url.deletingLastPathComponent().path, nil) {
        resolved = String(cString: p) + "/" + url.lastPathComponent
        free(p)
    } else {
        return   // its folder does not exist: opening it fails on its own
    }
    if resolved == rootPath || resolved.hasPrefix(rootPath == "/" ? "/" : rootPath + "/") {
        throw CLIError(message: "\(file) is inside the store \(dir.root); write it outside the store", status: 2)
    }
}

struct SetInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "setinfo", abstract: "Record metadata with a volume or snapshot.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume or snapshot name.") var name: String
    @Argument(help: "KEY=VALUE pairs.") var pairs: [String]
    @Flag(help: "Replace all metadata instead of merging.") var replace = false

    func run() throws {
        let n = try volumeName(name)
        try global.openStore().setMetadata(n, try parseMetadata(pairs), replace: replace)
    }
}

/// A duration for an option: seconds, or a number with s, m, h or d.
func parseDuration(_ text: String, option: String) throws -> Double {
    let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
    var number = Substring(text)
    var scale = 1.0
    if let last = text.last, let u = units[last] {
        number = text.dropLast()
        scale = u
    }
    guard let v = Double(number), v >= 0, v.isFinite else {
        throw CLIError(message: "\(option) '\(text)': give seconds or a number with s, m, h or d (e.g. 24h)", status: 2)
    }
    return v * scale
}
