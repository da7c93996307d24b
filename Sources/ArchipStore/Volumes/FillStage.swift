import Foundation

/// A fill in progress: verified blocks go into the store as content blocks as
/// they arrive; the target switches to them in one step at `commit`, so a
/// volume never claims data it does not have. A checkpoint (`fills/<name>`)
/// records the verified blocks, so an interrupted fill resumes where it stopped.
///
/// One fill per target at a time: a running fill holds the lock
/// `fill-locks/<name>` from `begin` until `commit` (or `end`), so a second
/// fill or resume of the name fails naming the first, and `gc` can tell a
/// running fill's checkpoint from an abandoned one. The hold has a lease
/// (`fill-leases/<name>`, renewed by a `LeaseKeeper` like a volume's
/// exclusive hold, docs/FENCING.md), so a fill that died on another node
/// frees the name once its lease ended more than `[locks] clock_skew` ago.
public final class FillStage: @unchecked Sendable {
    public let store: VolumeStore
    public let target: VolumeName
    /// Bytes of the image being filled in.
    public let imageSize: UInt64
    public let blockSize: Int
    /// Identity of the source (e.g. URL, size, expected hashes): a resume must match it.
    public let sourceID: String

    struct Checkpoint {
        var sourceID: String
        var imageSize: UInt64
        var blockSize: UInt32
        var done: [UInt32: ContentHash]
    }

    private let state: Locked<(done: [UInt32: ContentHash], unsynced: [ObjectName], written: Int)>
    /// This fill's hold on `fillLock(target)`, until `end`.
    private let holder: Locked<LockOwner?>
    /// Renews the hold's lease until `end`; its fence stops checkpoints
    /// and the commit once the hold is lost.
    let keeper: LeaseKeeper
    /// The break of a dead holder's lease this fill's start made, if any.
    public let tookOver: LeaseBreak?

    static let magic = Array("ARCHFILL".utf8)
    static func checkpointName(_ n: VolumeName) -> ObjectName { ObjectName("fills", n.value) }
    static func fillLock(_ n: VolumeName) -> ObjectName { ObjectName("fill-locks", n.value) }
    static func fillLease(_ n: VolumeName) -> ObjectName { ObjectName("fill-leases", n.value) }
    static func leased(_ n: VolumeName) -> LeasedLock {
        LeasedLock(lock: fillLock(n), lease: fillLease(n), label: "fill of \(n.value)")
    }

    /// A fill lock held without a lease (taken by an archip before fill
    /// leases) on another node counts as gone once the fill's checkpoint is
    /// older than this (a running fill writes it every few seconds while
    /// blocks arrive, `FillOptions.checkpointInterval`).
    static let silentHolderTimeout: TimeInterval = 3600

    /// Whether a holder of a fill's lock still runs, and when its lease ends:
    /// a process of this node while it runs; a holder on another node while
    /// its lease (`fill-leases/<name>`) ends more than the clock skew from
    /// now; one without a lease (an older archip) until its fill made no
    /// checkpoint for an hour.
    static func holderState(_ h: LockOwner, store: VolumeStore, lease: Lease?, lastProgress: Date?,
                            now: Date) -> (live: Bool, until: Date?) {
        if h.node == store.node, let pid = h.pid, pid > 0 {
            return (!(kill(pid, 0) != 0 && errno == ESRCH), nil)
        }
        if let lease, lease.holder == h {
            return (lease.isLive(for: h, now: now, settings: store.leaseSettings), lease.until)
        }
        guard let lastProgress else { return (true, nil) }
        return (now.timeIntervalSince(lastProgress) <= silentHolderTimeout, nil)
    }

    /// The running fill of `target`, if any: the holder of its fill lock,
    /// unless that holder is gone (see `holderState`).
    static func runningHolder(store: VolumeStore, target: VolumeName) throws -> LockOwner? {
        guard let st = try store.objects.lockState(fillLock(target)), !st.holders.isEmpty else { return nil }
        let last = try store.objects.stat(checkpointName(target))?.modified
        // A damaged lease decides nothing: the hour rule then applies.
        let lease = (try? store.lease(at: fillLease(target))) ?? nil
        let now = Date()
        return st.holders.first { holderState($0, store: store, lease: lease, lastProgress: last, now: now).live }
    }

    /// Takes `target`'s fill lock and its lease for a fresh owner: a holder
    /// that is gone is broken first (recorded in the lease, and logged in one
    /// line naming it); a running one is an error naming it.
    static func claim(store: VolumeStore, target: VolumeName, doing what: String) throws -> (owner: LockOwner, lease: Lease, broke: LeaseBreak?) {
        let owner = LockOwner.forThisProcess(node: store.node)
        let last = try store.objects.stat(checkpointName(target))?.modified
        do {
            let (lease, broke) = try store.takeExclusive(leased(target), owner: owner, fresh: true) { h, l, now in
                holderState(h, store: store, lease: l, lastProgress: last, now: now)
            }
            return (owner, lease, broke)
        } catch let e as StoreError where e.code == .locked {
            let running = (try? store.objects.lockState(fillLock(target)))?.holders.map(\.description).joined(separator: ", ") ?? "another process"
            let lease = (try? store.lease(at: fillLease(target))) ?? nil
            let ends = lease?.until.map { "its lease ends at \(Lease.time($0)), + \(LeaseSettings.format(store.leaseSettings.clockSkew)) clock skew" }
                ?? "a holder on another node without a lease counts as gone after \(Int(silentHolderTimeout / 60)) minutes without progress"
            throw StoreError(.locked, "cannot \(what): a fill of '\(target)' is running (\(running)); wait for it to end (\(ends))")
        }
    }

    /// Gives back a hold `claim` took (the lock and its lease).
    static func release(store: VolumeStore, target: VolumeName, owner: LockOwner) {
        _ = try? store.releaseHold(leased(target), owner: owner)
    }

    /// Starts (or with `resume`, continues) a fill of `target`.
    public static func begin(store: VolumeStore, target: VolumeName, imageSize: UInt64, blockSize: Int,
                             sourceID: String, resume: Bool) throws -> FillStage {
        try LayerMap.checkBlockSize(UInt32(blockSize))
        let cp = checkpointName(target)
        // Held from here to commit (or end): a second fill or resume of the
        // name fails here, naming this one.
        let started = MonotonicClock.now()
        let (owner, lease, broke) = try claim(store: store, target: target, doing: resume ? "resume" : "fill")
        do {
            var done: [UInt32: ContentHash] = [:]
            let found = try store.objects.stat(cp) != nil
            if found {
                guard resume else {
                    throw StoreError(.alreadyExists, "a fill of '\(target)' was interrupted; continue it with --resume, or drop it with 'archip fill \(target) --abort'")
                }
                let c = try decode(try store.objects.readAll(cp), what: "fill checkpoint \(cp)")
                guard c.sourceID == sourceID, c.imageSize == imageSize, c.blockSize == UInt32(blockSize) else {
                    throw StoreError(.invalidArgument, "the interrupted fill of '\(target)' was from another source (\(c.sourceID)); drop it with 'archip fill --abort \(target)' first")
                }
                done = c.done
            }
            let keeper = LeaseKeeper(store: store, hold: leased(target), owner: owner, epoch: lease.epoch,
                                     settings: store.leaseSettings, startedAt: started)
            let stage = FillStage(store: store, target: target, imageSize: imageSize, blockSize: blockSize,
                                  sourceID: sourceID, done: done, holder: owner, keeper: keeper, tookOver: broke)
            if !found {
                // Made only if absent: a fill by an archip without fill locks
                // (or one that got past them) still loses the race here.
                let c = Checkpoint(sourceID: sourceID, imageSize: imageSize, blockSize: UInt32(blockSize), done: [:])
                guard try store.objects.create(cp, encode(c), durable: true) else {
                    stage.holder.withLock { $0 = nil }
                    stage.keeper.stop()
                    throw StoreError(.alreadyExists, "another fill of '\(target)' is running (or was just interrupted); wait for it, or see 'archip list'")
                }
            }
            keeper.start()
            return stage
        } catch {
            release(store: store, target: target, owner: owner)
            throw error
        }
    }

    /// Drops an interrupted fill's checkpoint (its blocks are left to `gc`);
    /// a running fill's is an error naming it.
    public static func abort(store: VolumeStore, target: VolumeName) throws -> Bool {
        let owner = try claim(store: store, target: target, doing: "abort").owner
        defer { release(store: store, target: target, owner: owner) }
        return try store.objects.remove(checkpointName(target))
    }

    /// Ends this fill's hold on the name (`commit` does it, whatever its
    /// outcome); the checkpoint stays for a resume. Idempotent; also done
    /// when the stage is dropped.
    public func end() {
        guard let owner = holder.withLock({ h -> LockOwner? in defer { h = nil }; return h }) else { return }
        keeper.stop()
        FillStage.release(store: store, target: target, owner: owner)
    }

    deinit { end() }

    private init(store: VolumeStore, target: VolumeName, imageSize: UInt64, blockSize: Int, sourceID: String,
                 done: [UInt32: ContentHash], holder: LockOwner, keeper: LeaseKeeper, tookOver: LeaseBreak?) {
        self.store = store
        self.target = target
        self.imageSize = imageSize
        self.blockSize = blockSize
        self.sourceID = sourceID
        state = Locked((done, [], 0))
        self.holder = Locked(holder)
        self.keeper = keeper
        self.tookOver = tookOver
    }

    public var blockCount: Int { Int((imageSize + UInt64(blockSize) - 1) / UInt64(blockSize)) }

    /// Blocks already verified and stored (by this run or the one it resumes).
    public var done: [UInt32: ContentHash] { state.withLock { $0.done } }
    public var writtenBlocks: Int { state.withLock { $0.written } }

    public func isDone(_ index: Int) -> Bool { state.withLock { $0.done[UInt32(index)] != nil } }

    /// True if the store already holds a content block with this hash.
    public func hasContent(_ hash: ContentHash) throws -> Bool {
        if hash == ContentHash.ofEmpty { return true }
        return try store.objects.exists(StoreLayout.content(hash))
    }

    /// Records a block whose content the store already holds (nothing is read or written).
    public func recordExisting(_ index: Int, _ hash: ContentHash) throws {
        let obj = StoreLayout.content(hash)
        if hash != ContentHash.ofEmpty {
            // Refresh its age so a concurrent gc spares it, and make sure it is still there.
            guard try !store.objects.create(obj, [], durable: false) else {
                _ = try store.objects.remove(obj)
                throw StoreError(.notFound, "content block \(hash.hex) vanished while filling")
            }
        }
        state.withLock { $0.done[UInt32(index)] = hash }
    }

    /// Stores one verified block (the last may be short); `hash` is its block hash.
    /// Returns true if a new content object was written (false: deduplicated or zero).
    @discardableResult
    public func storeBlock(_ index: Int, _ data: UnsafeRawBufferPointer, hash: ContentHash) throws -> Bool {
        precondition(data.count <= blockSize)
        var wrote = false
        if hash != ContentHash.ofEmpty {
            let obj = StoreLayout.content(hash)
            let n = ZeroScan.lengthWithoutTrailingZeros(data)
            wrote = try store.objects.create(obj, UnsafeRawBufferPointer(rebasing: data[0..<n]), durable: false)
            if wrote { state.withLock { $0.unsynced.append(obj); $0.written += 1 } }
        }
        state.withLock { $0.done[UInt32(index)] = hash }
        return wrote
    }

    /// Makes the stored blocks durable and records them, so a resume skips them.
    public func checkpoint() throws {
        // A fill whose hold was lost (its lease ran out, another node took
        // the name over) writes no checkpoint and commits nothing.
        try keeper.fence.check()
        let (unsynced, done) = state.withLock { s -> ([ObjectName], [UInt32: ContentHash]) in
            defer { s.unsynced = [] }
            return (s.unsynced, s.done)
        }
        try store.objects.sync(unsynced)
        let c = Checkpoint(sourceID: sourceID, imageSize: imageSize, blockSize: UInt32(blockSize), done: done)
        try store.objects.put(FillStage.checkpointName(target), FillStage.encode(c), durable: true)
    }

    /// Reads a block back from the store (for a whole-image digest on resume).
    public func readStored(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard let h = state.withLock({ $0.done[UInt32(index)] }) else {
            throw StoreError(.notFound, "block \(index) of the fill of '\(target)' is not stored yet")
        }
        let length = Int(min(UInt64(blockSize), imageSize - UInt64(index) * UInt64(blockSize)))
        let out = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
        if h == ContentHash.ofEmpty {
            out.initializeMemory(as: UInt8.self, repeating: 0)
            return length
        }
        let obj = StoreLayout.content(h)
        let n = try store.objects.read(obj, at: 0, into: out)
        if n < length { UnsafeMutableRawBufferPointer(rebasing: out[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
        let got = SHA256.blockHash(UnsafeRawBufferPointer(out))
        guard got == h else {
            throw StoreError(.corrupt, "block \(index) of the fill of '\(target)': object \(obj) in \(store.objects.location) hashes to \(got.hex), expected \(h.hex)",
                             cause: "the object is damaged; abort the fill ('archip fill \(target) --abort') and fill again")
        }
        return length
    }

    /// The image's Pithos hashmap, from the stored blocks' hashes.
    public func hashmap() throws -> PithosHashmap {
        let done = self.done
        var hashes: [ContentHash] = []
        hashes.reserveCapacity(blockCount)
        for i in 0..<blockCount {
            guard let h = done[UInt32(i)] else { throw StoreError(.invalidArgument, "block \(i) was not filled") }
            hashes.append(h)
        }
        return PithosHashmap(blockSize: UInt64(blockSize), bytes: imageSize, hashes: hashes)
    }

    /// Switches `target` to the filled blocks in one step. A missing target is
    /// created with `volumeSize` (at least the image's size); an existing one
    /// keeps its size (grown to `volumeSize` if larger), is taken exclusively
    /// for the switch, and its old layers are dropped. `mustCreate`: the fill
    /// began for a new volume; if the name exists by now (another fill or
    /// create won), nothing is switched, and this fill's checkpoint is dropped.
    public func commit(volumeSize: UInt64, metadata: [String: String] = [:], owner: LockOwner? = nil,
                       mustCreate: Bool = false) throws {
        // Whatever happens, this fill is over after its commit.
        defer { end() }
        let done = self.done
        guard done.count == blockCount else {
            throw StoreError(.invalidArgument, "fill of '\(target)' is incomplete: \(done.count) of \(blockCount) blocks")
        }
        try checkpoint()
        let existing = try store.recordIfPresent(target)
        if mustCreate, existing != nil {
            _ = try? store.objects.remove(FillStage.checkpointName(target))
            throw StoreError(.alreadyExists, "'\(target)' was created by someone else during the fill; it was left as they made it")
        }
        var size = max(volumeSize, imageSize)
        let o = owner ?? LockOwner.forThisProcess(node: store.node)
        guard let found = existing else {
            _ = try ByteCount(size).validatedVolumeSize()
            let map = newMap(size: size, done: done)
            try store.objects.put(StoreLayout.map(map.id), MapFormatV1.encode(map), durable: true)
            let rec = VolumeRecord(kind: .volume, layer: map.id, metadata: metadata)
            guard try store.objects.create(StoreLayout.record(target), rec.encode(), durable: true) else {
                try store.objects.removeAll(prefix: StoreLayout.layerPrefix(map.id))
                _ = try? store.objects.remove(FillStage.checkpointName(target))
                throw StoreError(.alreadyExists, "'\(target)' was created by someone else during the fill; it was left as they made it")
            }
            store.noteIndexed(target, metadata)
            // Committed: a checkpoint left behind (failed removal) shows in 'archip list'.
            _ = try? store.objects.remove(FillStage.checkpointName(target))
            return
        }
        guard found.kind == .volume else {
            throw StoreError(.wrongKind, "'\(target)' is a snapshot; fill a volume")
        }
        if owner == nil {
            try store.objects.takeFreshLock(StoreLayout.lock(target), owner: o, mode: .exclusive)
        } else {
            try store.objects.acquireLock(StoreLayout.lock(target), owner: o, mode: .exclusive)
        }
        do {
            // Re-read under the lock: a snapshot may have moved its layer since.
            var rec = try store.record(target)
            let current = try store.loadCommitted(rec.layer).map
            guard current.blockSize == UInt32(blockSize) else {
                throw StoreError(.invalidArgument, "'\(target)' has \(ByteCount(UInt64(current.blockSize))) blocks, the fill \(ByteCount(UInt64(blockSize)))")
            }
            size = max(size, current.size)
            _ = try ByteCount(size).validatedVolumeSize()
            let map = newMap(size: size, done: done)
            try store.objects.put(StoreLayout.map(map.id), MapFormatV1.encode(map), durable: true)
            let old = rec.layer
            rec.layer = map.id
            rec.metadata.merge(metadata) { $1 }
            try store.objects.put(StoreLayout.record(target), rec.encode(), durable: true)
            store.noteIndexed(target, rec.metadata)
            // Switched. Old layers left behind (a failed removal) are gc's;
            // a checkpoint left behind shows in 'archip list'.
            _ = try? store.removeUnreferencedLayers(startingAt: old, remaining: try store.allRecords())
            _ = try? store.objects.remove(FillStage.checkpointName(target))
        } catch {
            _ = try? store.objects.giveBackLock(StoreLayout.lock(target), owner: o)   // report the switch's error
            throw error
        }
        try store.objects.giveBackLock(StoreLayout.lock(target), owner: o)
    }

    private func newMap(size: UInt64, done: [UInt32: ContentHash]) -> LayerMap {
        var map = LayerMap(id: LayerID.random(), parent: .none, kind: .base, size: size,
                           blockSize: UInt32(blockSize), parentBlocks: 0, epoch: 1)
        var updates: [UInt32: BlockEntry?] = [:]
        for (i, h) in done where h != ContentHash.ofEmpty { updates[i] = .some(.content(h)) }
        map.apply(updates)
        return map
    }

    // MARK: checkpoint format

    static func encode(_ c: Checkpoint) -> [UInt8] {
        var w = BinaryWriter(capacity: 64 + c.done.count * 36)
        w.string(c.sourceID)
        w.u64(c.imageSize)
        w.u32(c.blockSize)
        w.u64(UInt64(c.done.count))
        for k in c.done.keys.sorted() {
            w.u32(k)
            w.hash(c.done[k]!)
        }
        return Frame.seal(magic: magic, version: 1, body: w.bytes)
    }

    static func decode(_ bytes: [UInt8], what: String) throws -> Checkpoint {
        let (v, body) = try Frame.open(bytes, magic: magic, what: what)
        guard v == 1 else { throw StoreError(.unsupported, "\(what): version \(v) is not supported") }
        var r = body
        let id = try r.string()
        let size = try r.u64()
        let bs = try r.u32()
        let n = try r.u64()
        guard n <= (size / UInt64(max(bs, 1))) + 1 else { throw StoreError(.corrupt, "\(what): \(n) entries") }
        var done: [UInt32: ContentHash] = [:]
        for _ in 0..<n { done[try r.u32()] = try r.hash() }
        return Checkpoint(sourceID: id, imageSize: size, blockSize: bs, done: done)
    }

    /// Content hashes every checkpoint names: roots for `gc`.
    static func checkpointedHashes(_ store: VolumeStore) throws -> Set<ContentHash> {
        var names: [ObjectName] = []
        try store.objects.enumerate(prefix: fillsPrefix) { names.append($0); return true }
        return checkpointedHashes(store, listed: names)
    }

    static let fillsPrefix = "fills/"

    /// The same, for checkpoint objects (`fills/...`) already listed.
    static func checkpointedHashes(_ store: VolumeStore, listed names: [ObjectName]) -> Set<ContentHash> {
        var out = Set<ContentHash>()
        for n in names {
            guard let bytes = try? store.objects.readAll(n), let c = try? decode(bytes, what: n.path) else { continue }
            out.formUnion(c.done.values)
        }
        return out
    }
}
