import Foundation

// Node-level verification (`archip verify --all`, `archip repair`): every
// object a set of names reaches is read once, whatever the number of maps
// that reference it, and checked against its name (content blocks) or its
// map entry and page checksums (owned blocks). Damage is then traced back to
// every volume and snapshot that sees the object, with byte ranges.
//
// Order and resumption: objects are checked in the order of their names
// (`blocks/...` before `layers/...`), so a checkpoint (`scrub/checkpoint`)
// holding the first name not yet known to be checked, plus what was found
// before it, lets a killed run go on where it stopped. docs/SCRUB.md.
//
// Memory: the maps the names reach (37 bytes per entry, as loaded for any
// open) plus one entry per object to check: 36 bytes per content block
// (hash and block size), 8 per owned block, 1 byte of progress each. At
// 1 M objects that is about 37 MB for the index, plus the maps.

/// What to verify and how.
public struct ScrubOptions: Sendable {
    /// The names whose objects are checked; nil: every name in the store.
    public var names: [VolumeName]?
    /// Objects read at once.
    public var jobs: Int = ProcessInfo.processInfo.activeProcessorCount
    /// Bytes per second over the run; nil: as fast as the store reads.
    public var maxRate: UInt64?
    /// Go on from a checkpoint of an earlier run of the same scope.
    public var resume = true
    /// Keep a checkpoint at all (repair's scan does not).
    public var checkpoint = true
    /// A checkpoint is written after this many objects or seconds, whichever comes first.
    public var checkpointObjects = 4096
    public var checkpointSeconds: TimeInterval = 2
    /// Record each name's result (in `scrub/results`) at the end.
    public var recordResults = true
    /// Checked before each object: true stops the run (its checkpoint is kept).
    public var stop: @Sendable () -> Bool = { false }
    /// Called now and then from the workers with the progress so far.
    public var progress: (@Sendable (ScrubProgress) -> Void)?

    public init() {}
}

public struct ScrubProgress: Sendable {
    public var objects: Int
    public var objectsDone: Int
    public var bytesDone: UInt64
    public var started: Date
}

/// A byte range of a volume or snapshot.
public struct ScrubRange: Codable, Sendable, Equatable, CustomStringConvertible {
    public var offset: UInt64
    public var length: UInt64
    public var description: String { "bytes \(offset)-\(offset + length - 1)" }
}

/// A name that sees a damaged object, and where.
public struct ScrubReference: Codable, Sendable, Equatable, CustomStringConvertible {
    public var name: String
    /// "volume" or "snapshot".
    public var kind: String
    public var ranges: [ScrubRange]
    public var description: String { "\(kind) \(name): " + ranges.map(\.description).joined(separator: ", ") }
}

/// One damaged or missing object.
public struct ScrubFinding: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable { case damaged, missing }
    /// "content" (a shared, content-addressed block), "owned" (a block one
    /// layer owns), "map" (a layer's map or log) or "record" (a name's record).
    public var kind: String
    public var object: String
    public var state: State
    public var problem: String
    public var references: [ScrubReference] = []
}

/// What a scrub found.
public struct ScrubReport: Codable, Sendable {
    /// "all", or the names checked.
    public var scope: String
    public var startedAt: Date
    public var endedAt: Date
    /// True when this run went on from a checkpoint.
    public var resumed: Bool
    /// True when it stopped before the end (its checkpoint is kept).
    public var interrupted: Bool
    public var names: Int
    /// Objects in scope (maps and records not counted).
    public var objects: Int
    /// Objects and bytes read by this run, and by earlier runs it resumed.
    public var objectsChecked: Int
    public var bytesChecked: UInt64
    public var objectsCheckedBefore: Int
    public var bytesCheckedBefore: UInt64
    /// Owned blocks with unflushed in-place writes of a writer that stopped (not errors).
    public var pending: Int
    /// Volumes some node holds open: their owned blocks were checked against
    /// their page checksums only (a writer may be ahead of the map).
    public var heldOpen: [String]
    public var findings: [ScrubFinding]

    public var damaged: Int { findings.filter { $0.state == .damaged }.count }
    public var missing: Int { findings.filter { $0.state == .missing }.count }
    public var ok: Bool { findings.isEmpty }
}

/// The last verification of one name, kept in the store (`scrub/results`)
/// for `snf-manage volume-inspect` and `reconcile-servers`.
public struct VerificationRecord: Codable, Sendable, Equatable {
    public var name: String
    public var kind: String
    public var checkedAt: Date
    /// The name's top layer when it was checked.
    public var layer: String
    /// When the name was made: a result about an earlier name of the same
    /// spelling (removed and made again since) is not this name's.
    public var created: UInt64
    public var damaged: Int
    public var missing: Int
    /// Up to 16 of the problems, one line each.
    public var problems: [String]
    public var ok: Bool { damaged == 0 && missing == 0 }

    /// One line for an operator: "ok (2026-12-06T10:00:00Z)" or the counts.
    public var summary: String {
        let when = ISO8601DateFormatter().string(from: checkedAt)
        return ok ? "ok (checked \(when))" : "\(damaged) damaged, \(missing) missing object(s) (checked \(when))"
    }
}

enum ScrubLayout {
    static let checkpoint = ObjectName("scrub", "checkpoint")
    /// Every name's last result, in one object: a scrub of 10 000 names
    /// writes one object, not 10 000.
    static let results = ObjectName("scrub", "results")
}

/// The last verification of each name (`scrub/results`).
struct ScrubResults: Codable {
    var version = 1
    var names: [String: VerificationRecord] = [:]
}

/// Progress kept between runs.
struct ScrubCheckpoint: Codable {
    var version = 1
    var scope: String
    var started: Date
    /// Every object whose name sorts before this one was checked.
    var next: String
    var objectsDone: Int
    var bytesDone: UInt64
    var pending: Int
    var findings: [ScrubFinding]
}

extension VolumeStore {
    /// The last verification result of `name`, nil if it was never verified
    /// (or the results cannot be read: they are advisory).
    public func lastVerification(_ name: VolumeName) throws -> VerificationRecord? {
        guard let r = loadResults().names[name.value], let rec = try recordIfPresent(name), rec.createdAt == r.created else { return nil }
        return r
    }

    /// Every recorded verification result that found damage, of names that still exist, by name.
    public func namesWithDamage() throws -> [VerificationRecord] {
        loadResults().names.values.filter { r in
            guard !r.ok, let n = try? VolumeName(r.name), let rec = (try? recordIfPresent(n)) ?? nil else { return false }
            return rec.createdAt == r.created
        }.sorted { $0.name < $1.name }
    }

    /// Records the result of `verify(name)` as the name's last verification.
    public func recordVerification(of r: VerifyReport) throws {
        let n = try VolumeName(r.name)
        let rec = try record(n)
        let missing = r.problems.filter { $0.problem == "object is missing" }.count
        try recordVerifications([VerificationRecord(name: r.name, kind: rec.kind.name, checkedAt: Date(), layer: rec.layer.hex, created: rec.createdAt,
                                                    damaged: r.problems.count - missing, missing: missing,
                                                    problems: r.problems.prefix(16).map { StoreError.bounded($0.description) })],
                                replacingAll: false)
    }

    func loadResults() -> ScrubResults {
        guard let bytes = try? objects.readAll(ScrubLayout.results),
              let r = try? JSONDecoder.scrub.decode(ScrubResults.self, from: Data(bytes)), r.version == 1 else { return ScrubResults() }
        return r
    }

    /// Merges `records` into the results (`replacingAll`: they are all there is,
    /// as after a scrub of every name). Two scrubs ending at once: the last one's view wins.
    func recordVerifications(_ records: [VerificationRecord], replacingAll: Bool) throws {
        var all = replacingAll ? ScrubResults() : loadResults()
        for r in records { all.names[r.name] = r }
        let data = try JSONEncoder.scrub.encode(all)
        try objects.put(ScrubLayout.results, Array(data), durable: true)
    }

    /// Moves `name`'s last verification result to `to` (a rename), or drops
    /// it (`to` nil: a remove). Advisory like the results themselves: a
    /// failure leaves the entry, which `lastVerification` then tells apart
    /// by the new name's creation time.
    func moveVerification(of name: VolumeName, to: VolumeName?) {
        var all = loadResults()
        guard var r = all.names.removeValue(forKey: name.value) else { return }
        if let to {
            r.name = to.value
            all.names[to.value] = r
        }
        guard let data = try? JSONEncoder.scrub.encode(all) else { return }
        _ = try? objects.put(ScrubLayout.results, Array(data), durable: true)
    }

    /// Forgets a scrub's checkpoint, so the next one starts over.
    public func removeScrubCheckpoint() throws {
        try objects.remove(ScrubLayout.checkpoint)
    }

    /// Reads every object the names reach once and checks it. See `ScrubOptions`.
    public func scrub(_ options: ScrubOptions = ScrubOptions()) throws -> ScrubReport {
        try Scrubber(store: self, options: options).run()
    }
}

extension JSONEncoder {
    static var scrub: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        e.dateEncodingStrategy = .iso8601
        return e
    }
}

extension JSONDecoder {
    static var scrub: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

/// Orders content hashes as their hex names sort, without making strings.
private func hashLess(_ a: ContentHash, _ b: ContentHash) -> Bool {
    let a0 = UInt64(bigEndian: a.w0), b0 = UInt64(bigEndian: b.w0)
    if a0 != b0 { return a0 < b0 }
    let a1 = UInt64(bigEndian: a.w1), b1 = UInt64(bigEndian: b.w1)
    if a1 != b1 { return a1 < b1 }
    let a2 = UInt64(bigEndian: a.w2), b2 = UInt64(bigEndian: b.w2)
    if a2 != b2 { return a2 < b2 }
    return UInt64(bigEndian: a.w3) < UInt64(bigEndian: b.w3)
}

/// Bounds the bytes per second of many threads together (a token bucket of
/// one second's worth): each read is charged after it, and the thread waits
/// until the bucket holds what it took.
final class RateLimiter: @unchecked Sendable {
    let rate: Double
    private let state: Locked<(tat: TimeInterval, Void)>

    init(bytesPerSecond: UInt64) {
        rate = Double(max(1, bytesPerSecond))
        state = Locked((tat: ProcessInfo.processInfo.systemUptime, ()))
    }

    func charge(_ bytes: Int) {
        let now = ProcessInfo.processInfo.systemUptime
        let wait: TimeInterval = state.withLock { s in
            // A theoretical arrival time that never runs more than a second behind.
            s.tat = max(s.tat, now - 1) + Double(bytes) / rate
            return s.tat - now
        }
        if wait > 0 { Thread.sleep(forTimeInterval: wait) }
    }
}

/// One scrub run. Separate from `VolumeStore` to keep its index and counters together.
final class Scrubber: @unchecked Sendable {
    let store: VolumeStore
    let options: ScrubOptions
    var objects: any ObjectStore { store.objects }

    /// A name in scope: its record and its chain as indices into `layers`.
    struct Root {
        var name: VolumeName
        var record: VolumeRecord
        var chain: [UInt32]
    }

    // The index: layers sorted by id (so owned blocks sort as their names),
    // content hashes sorted, owned blocks packed as layer << 32 | block.
    var layers: [LayerMap] = []
    var layerIndex: [LayerID: UInt32] = [:]
    var roots: [Root] = []
    var content: [ContentHash] = []
    var contentBlockSize: [UInt32] = []
    var owned: [UInt64] = []
    /// Layers some node holds open (their volume's top layer).
    var busy = Set<UInt32>()
    /// Owned blocks with pending intents, per top layer.
    var pendingIntents: [UInt32: Set<UInt32>] = [:]
    var mapFindings: [ScrubFinding] = []

    init(store: VolumeStore, options: ScrubOptions) {
        self.store = store
        self.options = options
    }

    var scope: String {
        guard let names = options.names else { return "all" }
        return names.map(\.value).sorted().joined(separator: ",")
    }

    var count: Int { content.count + owned.count }

    func objectName(_ i: Int) -> ObjectName {
        if i < content.count { return StoreLayout.content(content[i]) }
        let p = owned[i - content.count]
        return StoreLayout.owned(layers[Int(p >> 32)].id, UInt32(truncatingIfNeeded: p))
    }

    // MARK: index

    func buildIndex() throws {
        var listed: [(VolumeName, VolumeRecord)] = []
        if let names = options.names {
            for n in names {
                do { listed.append((n, try store.record(n))) } catch let e as StoreError where e.code == .corrupt || e.code == .unsupported {
                    mapFindings.append(ScrubFinding(kind: "record", object: StoreLayout.record(n).path, state: .damaged, problem: "\(e)",
                                                    references: [ScrubReference(name: n.value, kind: "name", ranges: [])]))
                }
            }
        } else {
            var names: [ObjectName] = []
            try objects.enumerate(prefix: StoreLayout.namesPrefix) { names.append($0); return true }
            let (good, damaged) = store.recordsTolerant(listed: names)
            listed = good
            for d in damaged {
                let obj = (try? VolumeName(d.name)).map { StoreLayout.record($0).path } ?? "names/\(d.name)"
                mapFindings.append(ScrubFinding(kind: "record", object: obj, state: .damaged, problem: d.error,
                                                references: [ScrubReference(name: d.name, kind: "name", ranges: [])]))
            }
        }

        // Load every map once; a map that cannot be read is a finding for every name whose chain reaches it.
        var maps: [LayerID: LayerMap] = [:]
        var pending: [LayerID: Set<UInt32>] = [:]
        var badMaps: [LayerID: ScrubFinding] = [:]
        var chains: [(VolumeName, VolumeRecord, [LayerID])] = []
        for (name, rec) in listed {
            var chain: [LayerID] = []
            var next = rec.layer
            var seen = Set<LayerID>()
            while !next.isNone {
                guard seen.insert(next).inserted, chain.count < 10_000 else {
                    badMaps[next, default: ScrubFinding(kind: "map", object: StoreLayout.map(next).path, state: .damaged,
                                                        problem: "layer chain loops at \(next.hex)")].references
                        .append(ScrubReference(name: name.value, kind: rec.kind.name, ranges: []))
                    break
                }
                if badMaps[next] != nil {
                    badMaps[next]!.references.append(ScrubReference(name: name.value, kind: rec.kind.name, ranges: []))
                    break
                }
                if let m = maps[next] {
                    chain.append(next)
                    next = m.parent
                    continue
                }
                do {
                    let c = try store.loadCommitted(next)
                    maps[next] = c.map
                    if !c.pendingIntents.isEmpty { pending[next] = c.pendingIntents }
                    chain.append(next)
                    next = c.map.parent
                } catch {
                    let missing = (try? objects.exists(StoreLayout.map(next))) == false
                    badMaps[next] = ScrubFinding(kind: "map", object: StoreLayout.map(next).path, state: missing ? .missing : .damaged,
                                                 problem: missing ? "map is missing" : "\(error)",
                                                 references: [ScrubReference(name: name.value, kind: rec.kind.name, ranges: [])])
                    break
                }
            }
            // A name with a broken chain still has its readable layers checked.
            chains.append((name, rec, chain))
        }
        mapFindings += badMaps.values.sorted { $0.object < $1.object }

        let ids = maps.keys.sorted { $0.hex < $1.hex }
        layers = ids.map { maps[$0]! }
        for (i, id) in ids.enumerated() { layerIndex[id] = UInt32(i) }
        for (id, p) in pending { pendingIntents[layerIndex[id]!] = p }
        roots = chains.map { Root(name: $0.0, record: $0.1, chain: $0.2.map { layerIndex[$0]! }) }
        for r in roots where r.record.kind == .volume {
            if let st = try store.lockState(r.name), !st.holders.isEmpty, let top = r.chain.first { busy.insert(top) }
        }

        // Every object once: content blocks deduplicated, owned blocks as listed.
        var pairs: [(ContentHash, UInt32)] = []
        for (li, m) in layers.enumerated() {
            m.forEachEntry { b, e in
                switch e {
                case .zero: break
                case .content(let h): pairs.append((h, m.blockSize))
                case .owned: owned.append(UInt64(li) << 32 | UInt64(b))
                }
            }
        }
        pairs.sort { hashLess($0.0, $1.0) }
        content.reserveCapacity(pairs.count)
        for (h, bs) in pairs {
            if let last = content.last, last == h {
                contentBlockSize[contentBlockSize.count - 1] = min(contentBlockSize[contentBlockSize.count - 1], bs)
                continue
            }
            content.append(h)
            contentBlockSize.append(bs)
        }
        owned.sort()
    }

    // MARK: checking one object

    enum Outcome {
        case ok(Int)
        case pending
        case problem(ScrubFinding.State, String, Int)
    }

    func check(_ i: Int, buffer: UnsafeMutableRawBufferPointer) -> Outcome {
        let obj = objectName(i)
        do {
            if i < content.count {
                let bs = Int(contentBlockSize[i])
                let n = try objects.read(obj, at: 0, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(bs + 1)]))
                if n > bs { return .problem(.damaged, "the object is longer than the block size \(bs)", n) }
                let got = SHA256.blockHash(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                let want = content[i]
                if got != want { return .problem(.damaged, "its \(n) bytes hash to \(got.hex), expected \(want.hex)", n) }
                return .ok(n)
            }
            let p = owned[i - content.count]
            let li = UInt32(p >> 32), b = UInt32(truncatingIfNeeded: p)
            let map = layers[Int(li)]
            if pendingIntents[li]?.contains(b) == true { return .pending }
            guard case .owned(let want)? = map.entry(b) else { return .ok(0) }
            let bs = Int(map.blockSize)
            let table = BlockChecks.tableBytes(blockSize: bs)
            let live = busy.contains(li)
            var attempt = 0
            while true {
                let n = try objects.read(obj, at: 0, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(bs + table + 1)]))
                var found: [String] = []
                if n == bs + table {
                    if let bad = Scrubber.firstBadPage(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), blockSize: bs) {
                        found.append("4 KiB page \(bad) (bytes \(bad * 4096)-\(bad * 4096 + 4095) of the block) does not match its CRC-32C")
                    }
                } else if n > bs {
                    found.append("the object is \(n) bytes, neither a block (\(bs)) nor a block with its checksums (\(bs + table))")
                } else if live {
                    // A writer without checksums may be ahead of the map: nothing to check.
                    return .ok(n)
                }
                if found.isEmpty && !live {
                    let got = SHA256.blockHash(UnsafeRawBufferPointer(rebasing: buffer[0..<min(n, bs)]))
                    if got != want { found.append("its content hashes to \(got.hex), its map says \(want.hex)") }
                }
                if found.isEmpty { return .ok(n) }
                // A page of a volume held open may be mid-write: look once more.
                if live && attempt == 0 {
                    attempt += 1
                    Thread.sleep(forTimeInterval: 0.05)
                    continue
                }
                return .problem(.damaged, found.joined(separator: "; "), n)
            }
        } catch let e as StoreError where e.code == .notFound {
            return .problem(.missing, "object is missing", 0)
        } catch {
            return .problem(.damaged, "unreadable: \(error)", 0)
        }
    }

    /// The first page of an owned object (block, then its table) whose CRC-32C does not match.
    static func firstBadPage(_ o: UnsafeRawBufferPointer, blockSize: Int) -> Int? {
        let page = BlockChecks.pageSize
        for i in 0..<(blockSize / page) {
            let c = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: o[(i * page)..<((i + 1) * page)]))
            if c != UInt32(littleEndian: o.loadUnaligned(fromByteOffset: blockSize + i * 4, as: UInt32.self)) { return i }
        }
        return nil
    }

    func kind(_ i: Int) -> String { i < content.count ? "content" : "owned" }

    // MARK: the run

    struct Progress {
        var done: [UInt8]
        var next: Int
        var watermark: Int
        var objectsDone = 0
        var bytesDone: UInt64 = 0
        var pending = 0
        var findings: [ScrubFinding] = []
        var sinceSave = 0
        var lastSave = Date()
        var saving = false
    }

    func loadCheckpoint() -> ScrubCheckpoint? {
        guard options.checkpoint, options.resume,
              let bytes = try? objects.readAll(ScrubLayout.checkpoint),
              let c = try? JSONDecoder.scrub.decode(ScrubCheckpoint.self, from: Data(bytes)),
              c.version == 1, c.scope == scope else { return nil }
        return c
    }

    /// The first object whose name sorts at or after `path`.
    func firstIndex(atOrAfter path: String) -> Int {
        var lo = 0, hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if objectName(mid).path < path { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    func run() throws -> ScrubReport {
        let started = Date()
        try buildIndex()
        let checkpoint = loadCheckpoint()
        let start = checkpoint.map { firstIndex(atOrAfter: $0.next) } ?? 0
        let total = count
        let state = Locked(Progress(done: [UInt8](repeating: 0, count: total), next: start, watermark: start))
        if let c = checkpoint {
            state.withLock {
                $0.pending = c.pending
                // Findings of objects still in scope; the rest is gone since.
                $0.findings = c.findings
            }
        }
        let scopeText = scope
        let runStarted = checkpoint?.started ?? started
        let before = (checkpoint?.objectsDone ?? 0, checkpoint?.bytesDone ?? 0)

        @Sendable func save(_ p: Progress) {
            guard options.checkpoint else { return }
            let next = p.watermark < total ? objectName(p.watermark).path : "~"
            let c = ScrubCheckpoint(scope: scopeText, started: runStarted, next: next,
                                    objectsDone: before.0 + p.objectsDone, bytesDone: before.1 + p.bytesDone,
                                    pending: p.pending, findings: p.findings)
            if let data = try? JSONEncoder.scrub.encode(c) {
                // Best effort: a checkpoint that cannot be written only costs a longer resume.
                try? objects.put(ScrubLayout.checkpoint, Array(data), durable: true)
            }
        }

        let limiter = options.maxRate.map { RateLimiter(bytesPerSecond: $0) }
        let maxBuffer = max(layers.map { Int($0.blockSize) + BlockChecks.tableBytes(blockSize: Int($0.blockSize)) }.max() ?? 0,
                            Int(contentBlockSize.max() ?? 0)) + 1
        let jobs = max(1, min(options.jobs, max(1, total - start)))
        let stopped = Locked(false)
        // Threads of their own, not concurrentPerform: that runs no more at
        // once than there are cores, and a RADOS scrub wants more reads in
        // flight than that.
        let group = DispatchGroup()
        @Sendable func worker() {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maxBuffer, alignment: 4096)
            defer { buffer.deallocate() }
            while true {
                if options.stop() { stopped.withLock { $0 = true }; return }
                let i: Int = state.withLock { s in
                    let v = s.next
                    s.next += 1
                    return v
                }
                if i >= total { return }
                let outcome = check(i, buffer: buffer)
                var bytes = 0
                var finding: ScrubFinding?
                switch outcome {
                case .ok(let n): bytes = n
                case .pending: break
                case .problem(let st, let text, let n):
                    bytes = n
                    finding = ScrubFinding(kind: kind(i), object: objectName(i).path, state: st, problem: text)
                }
                limiter?.charge(bytes)
                var snapshot: Progress?
                var report: ScrubProgress?
                state.withLock { s in
                    s.done[i] = 1
                    while s.watermark < total && s.done[s.watermark] != 0 { s.watermark += 1 }
                    s.objectsDone += 1
                    s.bytesDone += UInt64(bytes)
                    if case .pending = outcome { s.pending += 1 }
                    if let finding { s.findings.append(finding) }
                    s.sinceSave += 1
                    if !s.saving, s.sinceSave >= options.checkpointObjects || Date().timeIntervalSince(s.lastSave) >= options.checkpointSeconds {
                        s.saving = true
                        s.sinceSave = 0
                        s.lastSave = Date()
                        snapshot = s
                    }
                    if options.progress != nil, s.objectsDone % 64 == 0 || s.watermark == total {
                        report = ScrubProgress(objects: total, objectsDone: start + s.objectsDone, bytesDone: before.1 + s.bytesDone, started: started)
                    }
                }
                if let snapshot {
                    save(snapshot)
                    state.withLock { $0.saving = false }
                }
                if let report { options.progress?(report) }
            }
        }
        for _ in 0..<jobs {
            group.enter()
            Thread.detachNewThread {
                worker()
                group.leave()
            }
        }
        group.wait()
        let final = state.withLock { $0 }
        let interrupted = stopped.withLock { $0 } && final.watermark < total
        if interrupted {
            save(final)
        } else if options.checkpoint {
            _ = try? objects.remove(ScrubLayout.checkpoint)
        }

        var findings = final.findings
        // A finding from before a resume whose object is no longer in scope is dropped.
        if checkpoint != nil {
            findings = findings.filter { f in
                let i = firstIndex(atOrAfter: f.object)
                return i < total && objectName(i).path == f.object
            }
        }
        findings = addReferences(findings).sorted { $0.object < $1.object }
        findings = mapFindings + findings

        var report = ScrubReport(scope: scopeText, startedAt: runStarted, endedAt: Date(), resumed: checkpoint != nil,
                                 interrupted: interrupted, names: roots.count, objects: total,
                                 objectsChecked: before.0 + final.objectsDone, bytesChecked: before.1 + final.bytesDone,
                                 objectsCheckedBefore: before.0, bytesCheckedBefore: before.1,
                                 pending: final.pending, heldOpen: [], findings: findings)
        report.heldOpen = roots.filter { r in r.chain.first.map { busy.contains($0) } ?? false }.map(\.name.value).sorted()
        if !interrupted && options.recordResults { recordResults(report) }
        return report
    }

    // MARK: who sees a damaged object

    /// Fills in, for each finding about a block, every name that reads it and where.
    func addReferences(_ findings: [ScrubFinding]) -> [ScrubFinding] {
        if findings.isEmpty { return findings }
        // Where each damaged object is listed: (layer, block) pairs.
        var wanted: [String: Int] = [:]
        for (i, f) in findings.enumerated() { wanted[f.object] = i }
        var contentWanted: [ContentHash: Int] = [:]
        for (i, f) in findings.enumerated() where f.kind == "content" {
            if let h = ContentHash(hex: String(f.object.split(separator: "/").last ?? "")) { contentWanted[h] = i }
        }
        var sites: [[(UInt32, UInt32)]] = Array(repeating: [], count: findings.count)
        for (li, m) in layers.enumerated() {
            m.forEachEntry { b, e in
                switch e {
                case .content(let h):
                    if let i = contentWanted[h] { sites[i].append((UInt32(li), b)) }
                case .owned:
                    if !wanted.isEmpty, let i = wanted[StoreLayout.owned(m.id, b).path] { sites[i].append((UInt32(li), b)) }
                case .zero: break
                }
            }
        }
        var out = findings
        for (i, list) in sites.enumerated() where !list.isEmpty {
            var refs: [ScrubReference] = []
            for r in roots {
                var blocks: [UInt32] = []
                for (li, b) in list where r.chain.contains(li) && resolves(r, b) == li { blocks.append(b) }
                if blocks.isEmpty { continue }
                let top = layers[Int(r.chain[0])]
                refs.append(ScrubReference(name: r.name.value, kind: r.record.kind.name, ranges: ranges(blocks.sorted(), top)))
            }
            out[i].references = refs
        }
        return out
    }

    /// The layer (index) block `b` of `root` reads from, nil for zeros.
    func resolves(_ root: Root, _ b: UInt32) -> UInt32? {
        let top = layers[Int(root.chain[0])]
        guard UInt64(b) < top.blockCount else { return nil }
        if let e = top.entry(b) { if case .zero = e { return nil }; return root.chain[0] }
        var limit = top.parentBlocks
        for li in root.chain.dropFirst() {
            if UInt64(b) >= limit { return nil }
            let a = layers[Int(li)]
            if let e = a.entry(b) { if case .zero = e { return nil }; return li }
            limit = min(limit, a.parentBlocks)
        }
        return nil
    }

    func ranges(_ blocks: [UInt32], _ top: LayerMap) -> [ScrubRange] {
        let bs = UInt64(top.blockSize)
        var out: [ScrubRange] = []
        for b in blocks {
            let start = UInt64(b) * bs
            let end = min(start + bs, top.size)
            if let last = out.last, last.offset + last.length == start {
                out[out.count - 1].length = end - last.offset
            } else {
                out.append(ScrubRange(offset: start, length: end - start))
            }
        }
        return out
    }

    func recordResults(_ report: ScrubReport) {
        var perName: [String: (damaged: Int, missing: Int, problems: [String])] = [:]
        for f in report.findings {
            for r in f.references {
                var e = perName[r.name] ?? (0, 0, [])
                if f.state == .missing { e.missing += 1 } else { e.damaged += 1 }
                if e.problems.count < 16 {
                    e.problems.append(StoreError.bounded("\(f.object): \(f.problem)" + (r.ranges.isEmpty ? "" : " (" + r.ranges.map(\.description).joined(separator: ", ") + ")")))
                }
                perName[r.name] = e
            }
        }
        let records = roots.map { r in
            let e = perName[r.name.value] ?? (0, 0, [])
            return VerificationRecord(name: r.name.value, kind: r.record.kind.name, checkedAt: report.endedAt,
                                      layer: r.record.layer.hex, created: r.record.createdAt, damaged: e.damaged, missing: e.missing, problems: e.problems)
        }
        // Advisory: results that cannot be recorded do not fail the scrub.
        try? store.recordVerifications(records, replacingAll: options.names == nil)
    }
}
