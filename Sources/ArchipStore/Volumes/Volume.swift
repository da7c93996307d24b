import Foundation

/// How a volume is opened.
public enum OpenMode: String, Sendable {
    /// One writer, holding the volume's lock exclusively.
    case exclusive
    /// Live migration: two holders, nothing cached between operations.
    case shared
    /// No lock, no writes (snapshots always open this way).
    case readOnly
}

/// An open volume or snapshot: byte-addressed reads and writes over the
/// layered maps, copy-on-write, and `flush` that makes acknowledged writes durable.
///
/// Thread-safe. Data I/O runs concurrently (a shared lock); flush, snapshot,
/// resize and flatten take the volume alone. Writes to one block are
/// serialised by a striped lock so that copy-on-write never loses a write.
public final class Volume: @unchecked Sendable {
    public let name: VolumeName
    public let mode: OpenMode
    let store: VolumeStore
    let owner: LockOwner?
    /// What the volume writes through: for an exclusive hold, the store
    /// behind its lease's fence (FencedObjectStore), else the store itself.
    let objects: any ObjectStore
    /// Renews an exclusive hold's lease (nil for shared and read-only opens).
    let keeper: LeaseKeeper?
    /// The expired hold of another node this open broke to take the volume, if any.
    public let tookOver: LeaseBreak?
    /// The lease epoch of this exclusive hold (nil: not exclusive).
    public var epoch: UInt64? { keeper?.fence.epoch }

    /// A block changed since the last flush.
    enum Pending {
        /// The layer's own object holds the block, written whole: its hash.
        case whole(ContentHash)
        /// The layer's own object holds the block, written in pieces: the
        /// hash so far.
        case pieces(PartialBlockHash)
        /// The whole block was zeroed; no object needed.
        case zero
    }

    struct State {
        var record: VolumeRecord
        /// The committed map: the map object plus its log's updates.
        var top: LayerMap
        /// Frozen layers below, nearest first.
        var ancestors: [LayerMap]
        var overlay: [UInt32: Pending] = [:]
        /// Blocks whose intent is already in the log since the last flush.
        var intents: Set<UInt32> = []
        /// Bytes in the log object; 0 when there is none.
        var logLength: Int = 0
        var mapBytes: Int = 0
        /// A compaction failed: the map object may hold either generation, so
        /// nothing may be appended to the log before a compaction succeeds.
        var needsCompaction = false
        var closed = false
        /// Top-layer blocks a writer was changing in place when it stopped
        /// without flushing (their intent is in the log, not yet settled by a
        /// writable open): a page and its checksum may be apart there.
        var unsettled: Set<UInt32> = []
    }

    private let io = ReadWriteLock()
    let blockLocks = StripedLocks()
    private let logLock = NSLock()
    let state: RWLocked<State>
    /// The top layer's owned objects known to carry a checksum table.
    let tabled = Locked<Set<ObjectName>>([])
    /// Owned objects' checksum tables (BlockChecks.swift).
    let tables = TableCache()
    /// Owned objects' pages checked on the zero-copy path (BlockChecks.swift).
    let checkedPages = CheckedPages()

    public let blockSize: Int

    init(store: VolumeStore, name: VolumeName, mode: OpenMode, owner: LockOwner?, state: State,
         keeper: LeaseKeeper? = nil, tookOver: LeaseBreak? = nil) {
        self.store = store
        self.keeper = keeper
        self.tookOver = tookOver
        self.objects = keeper.map { FencedObjectStore(store.objects, fence: $0.fence) } ?? store.objects
        self.name = name
        self.mode = mode
        self.owner = owner
        self.blockSize = Int(state.top.blockSize)
        self.state = RWLocked(state)
    }

    deinit { keeper?.signalStop() }

    // MARK: properties

    public var size: UInt64 { state.read { $0.top.size } }
    public var layer: LayerID { state.withLock { $0.top.id } }
    public var isWritable: Bool { mode != .readOnly }
    var top: LayerMap { state.withLock { $0.top } }

    private func checkOpen(_ s: State) throws {
        if s.closed { throw StoreError(.closed, "volume '\(name)' is closed") }
    }

    private func checkRange(_ offset: UInt64, _ length: Int, size: UInt64) throws {
        let (end, o) = offset.addingReportingOverflow(UInt64(length))
        guard !o, end <= size else {
            throw StoreError(.outOfRange, "\(name): range \(offset)+\(length) is beyond the end (size \(size) bytes)")
        }
    }

    private func checkWritable() throws {
        guard isWritable else {
            let what = state.withLock { $0.record.kind == .snapshot ? "snapshot" : "volume opened read-only" }
            throw StoreError(.readOnly, "\(name): \(what) cannot be written")
        }
    }

    // MARK: block resolution

    enum Source {
        case zero
        /// An object, and what its bytes are checked against when read.
        case object(ObjectName, fromAncestor: Bool, check: BlockCheck)
    }

    /// Where block `b` comes from, not looking at pending changes.
    static func resolveCommitted(_ b: UInt32, top: LayerMap, ancestors: [LayerMap]) -> (Source, BlockEntry?, LayerID?) {
        if let e = top.entry(b) { return (source(e, top.id, b, ancestor: false), e, top.id) }
        return resolveBelow(b, top: top, ancestors: ancestors)
    }

    /// What the parent chain shows at block `b`, ignoring the top layer's own entry.
    static func resolveBelow(_ b: UInt32, top: LayerMap, ancestors: [LayerMap]) -> (Source, BlockEntry?, LayerID?) {
        var limit = top.parentBlocks
        for a in ancestors {
            if UInt64(b) >= limit { return (.zero, nil, nil) }
            if let e = a.entry(b) { return (source(e, a.id, b, ancestor: true), e, a.id) }
            limit = min(limit, a.parentBlocks)
        }
        return (.zero, nil, nil)
    }

    private static func source(_ e: BlockEntry, _ layer: LayerID, _ b: UInt32, ancestor: Bool) -> Source {
        switch e {
        case .zero: return .zero
        case .owned(let h): return .object(StoreLayout.owned(layer, b), fromAncestor: ancestor, check: .owned(h))
        case .content(let h): return .object(StoreLayout.content(h), fromAncestor: ancestor, check: .content(h))
        }
    }

    private func resolve(_ b: UInt32) -> Source {
        state.read { s in
            switch s.overlay[b] {
            case .whole?, .pieces?: return .object(StoreLayout.owned(s.top.id, b), fromAncestor: false, check: .owned(nil))
            case .zero?: return .zero
            case nil: return Volume.resolveCommitted(b, top: s.top, ancestors: s.ancestors).0
            }
        }
    }

    /// Reads `buffer.count` bytes of a block's source at `offset`, checked
    /// (see BlockChecks.swift): a content block against its name, an owned
    /// block against its 4 KiB checksums. Reloads the ancestors once if a
    /// frozen layer's object moved (`archip hash` turns owned blocks into
    /// content blocks).
    func readSource(_ b: UInt32, _ src: Source, at offset: Int, into buffer: UnsafeMutableRawBufferPointer,
                    retried: Bool = false) throws {
        switch src {
        case .zero:
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
        case .object(let obj, let fromAncestor, let check):
            // Shared (migration): the other holder may have replaced the object.
            if mode == .shared { objects.forgetCached(obj) }
            do {
                if BlockChecks.enabled {
                    try readChecked(b, obj, check, topLayer: !fromAncestor, at: offset, into: buffer)
                } else {
                    let n = try objects.read(obj, at: UInt64(offset), into: buffer)
                    if n < buffer.count {
                        UnsafeMutableRawBufferPointer(rebasing: buffer[n...]).initializeMemory(as: UInt8.self, repeating: 0)
                    }
                }
            } catch let e as StoreError where e.code == .notFound && fromAncestor && !retried {
                try reloadAncestors()
                try readSource(b, resolve(b), at: offset, into: buffer, retried: true)
            } catch let e as StoreError where e.code == .notFound {
                throw StoreError(.corrupt, "\(name): block \(b) is missing its object \(obj)", cause: "run 'archip verify \(name)'")
            }
        }
    }

    func reloadAncestors() throws {
        let parent = state.withLock { $0.top.parent }
        let chain = try store.chain(from: parent)
        state.withLock { $0.ancestors = chain }
    }

    // MARK: reads

    /// Reads `buffer.count` bytes at `offset`.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try io.shared {
            try refreshIfShared()
            let size = try state.read { s -> UInt64 in try checkOpen(s); return s.top.size }
            try checkRange(offset, buffer.count, size: size)
            _ = try forEachBlockPiece(offset, buffer.count) { b, inBlock, range in
                try readSource(b, resolve(b), at: inBlock, into: UnsafeMutableRawBufferPointer(rebasing: buffer[range]))
                return true
            }
        }
    }

    /// What `read(at:into:)` would copy, as pieces for a reader that moves
    /// file pages without copying them (the node daemon splices them to FUSE
    /// and sends them to NBD sockets): zeros (holes, zero blocks, past an
    /// object's end) and ranges of object files, in order. Nil when the store
    /// has no descriptors, the volume is open shared (migration: objects may
    /// be replaced by the other node at any time) or an ancestor's object has
    /// moved; then use `read(at:into:)`. Concurrent writes behave as with `read`.
    public func readPieces(at offset: UInt64, length: Int) throws -> [VolumeReadPiece]? {
        guard mode != .shared else { return nil }
        return try io.shared { () throws -> [VolumeReadPiece]? in
            let size = try state.read { s -> UInt64 in try checkOpen(s); return s.top.size }
            try checkRange(offset, length, size: size)
            var pieces: [VolumeReadPiece] = []
            func zeros(_ n: Int) {
                if case .zeros(let m)? = pieces.last { pieces[pieces.count - 1] = .zeros(m + n) } else { pieces.append(.zeros(n)) }
            }
            let whole = try forEachBlockPiece(offset, length) { b, at, range in
                let n = range.count, inBlock = UInt64(at)
                switch resolve(b) {
                case .zero:
                    zeros(n)
                case .object(let obj, _, let check):
                    guard let d = try descriptor(obj),
                          // Only checked bytes leave by this path (BlockChecks.swift).
                          try checkForZeroCopy(b, obj, check, d, at: at, count: n) else { return false }
                    // An owned object's checksum table is not part of the block.
                    let dataSize = min(d.size, UInt64(blockSize))
                    let available = dataSize > inBlock ? Int(min(UInt64(n), dataSize - inBlock)) : 0
                    if available > 0 { pieces.append(.file(d, offset: inBlock, count: available)) }
                    if available < n { zeros(n - available) }
                }
                return true
            }
            guard whole else { return nil }
            return pieces
        }
    }

    /// `read(at:into:)` from the page cache alone, for a small read answered
    /// without a worker (the NBD reader): true when every byte came from the
    /// page cache and was checked in `buffer` itself (the bytes returned are
    /// the bytes checked; no second read); false (the buffer's contents are
    /// then undefined) when a part would wait for the disk, is not yet
    /// checked, or does not match (then use `read(at:into:)`, which checks,
    /// retries and names the damage). False in the cases `readPieces` is nil.
    public func readCached(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        guard mode != .shared else { return false }
        return try io.shared { () throws -> Bool in
            let size = try state.read { s -> UInt64 in try checkOpen(s); return s.top.size }
            try checkRange(offset, buffer.count, size: size)
            return try forEachBlockPiece(offset, buffer.count) { b, inBlock, range in
                let seg = UnsafeMutableRawBufferPointer(rebasing: buffer[range])
                switch resolve(b) {
                case .zero:
                    seg.initializeMemory(as: UInt8.self, repeating: 0)
                    return true
                case .object(let obj, _, let check):
                    guard let d = try descriptor(obj) else { return false }
                    return try copyCheckedFromCache(b, obj, check, d, at: inBlock, into: seg)
                }
            }
        }
    }

    public func read(at offset: UInt64, length: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        try out.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        return out
    }

    // MARK: writes

    /// Writes `data` at `offset`. Acknowledged, not yet durable: call `flush`.
    public func write(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try checkWritable()
        try io.shared {
            try refreshIfShared()
            let size = try state.read { s -> UInt64 in try checkOpen(s); return s.top.size }
            try checkRange(offset, data.count, size: size)
            try writeUnlocked(at: offset, data)
        }
    }

    public func write(at offset: UInt64, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(at: offset, $0) }
    }

    /// Zeroes a range: whole blocks become zero entries (no data stored).
    public func zero(at offset: UInt64, length: UInt64) throws {
        try checkWritable()
        try io.shared {
            try refreshIfShared()
            let size = try state.read { s -> UInt64 in try checkOpen(s); return s.top.size }
            let (end, overflow) = offset.addingReportingOverflow(length)
            guard !overflow, end <= size else {
                throw StoreError(.outOfRange, "\(name): range \(offset)+\(length) is beyond the end (size \(size) bytes)")
            }
            try zeroUnlocked(at: offset, length: length)
        }
    }

    /// One shared block of zeros for partial-block zeroing (never written to).
    private lazy var zeros = [UInt8](repeating: 0, count: blockSize)

    private func zeroUnlocked(at offset: UInt64, length: UInt64) throws {
        let bs = UInt64(blockSize)
        var pos = offset
        let end = offset + length
        while pos < end {
            let b = UInt32(pos / bs)
            let inBlock = pos % bs
            let n = min(bs - inBlock, end - pos)
            // Part of a block that reads as zeros already: nothing to do
            // (and no 4 MiB copy-on-write object for a 4 KiB trim).
            if n < bs, case .zero = resolve(b) {
                pos += n
                continue
            }
            let z = state.withLock { _ in zeros }
            try z.withUnsafeBytes { z in
                try writeSegment(b, inBlock: Int(inBlock), UnsafeRawBufferPointer(rebasing: z[0..<Int(n)]))
            }
            pos += n
        }
    }

    private func writeUnlocked(at offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        _ = try forEachBlockPiece(offset, data.count) { b, inBlock, range in
            try writeSegment(b, inBlock: inBlock, UnsafeRawBufferPointer(rebasing: data[range]))
            return true
        }
    }

    /// Splits `count` bytes at `offset` by block, in order: the block, the
    /// offset in it and the part of the range that falls in it. Stops (and
    /// returns false) when `body` does. Every read and write splits this way.
    private func forEachBlockPiece(_ offset: UInt64, _ count: Int,
                                   _ body: (_ block: UInt32, _ inBlock: Int, _ range: Range<Int>) throws -> Bool) rethrows -> Bool {
        var done = 0
        while done < count {
            let pos = offset + UInt64(done)
            let inBlock = Int(pos % UInt64(blockSize))
            let n = min(blockSize - inBlock, count - done)
            guard try body(UInt32(pos / UInt64(blockSize)), inBlock, done..<(done + n)) else { return false }
            done += n
        }
        return true
    }

    /// An object's read descriptor for the zero-copy and cached paths; nil
    /// when the store has none or the object is gone (the caller falls back
    /// to `read`, which says why).
    private func descriptor(_ obj: ObjectName) throws -> ObjectReadDescriptor? {
        do { return try objects.readDescriptor(obj) } catch let e as StoreError where e.code == .notFound { return nil }
    }

    /// One block's part of a write. Caller holds `io` (shared or exclusive).
    private func writeSegment(_ b: UInt32, inBlock: Int, _ data: UnsafeRawBufferPointer) throws {
        try blockLocks.with(b) {
            let whole = inBlock == 0 && data.count == blockSize
            let (pending, committed, topID) = state.withLock { ($0.overlay[b], $0.top.entry(b), $0.top.id) }
            let obj = StoreLayout.owned(topID, b)
            // Shared (migration): never write into a file the other holder replaced.
            if mode == .shared { objects.forgetCached(obj) }
            if whole && ZeroScan.isZero(data) {
                // Nothing to store; a committed object is dropped at flush.
                state.withLock { $0.overlay[b] = .zero }
                return
            }
            var committedOwned = false
            if case .owned(let h)? = committed {
                committedOwned = true
                // An object an older archip wrote gets its checksums first.
                if pending == nil && !whole { try ensureChecksums(b, obj, committed: h) }
            }
            // Into part of a page of the object as it is: the rest of that
            // page is checked first, before anything is written (a failed
            // write below recomputes its pages' checksums from what they hold).
            switch pending {
            case .pieces?, .whole?: if !whole { try checkEdgePages(b, obj, inBlock: inBlock, count: data.count) }
            case nil: if committedOwned && !whole { try checkEdgePages(b, obj, inBlock: inBlock, count: data.count) }
            case .zero?: break
            }
            if committedOwned {
                // The committed checksum of this object is about to go stale.
                try noteIntent(b)
            }
            do {
                try writeObject(b, obj, inBlock: inBlock, data, whole: whole, pending: pending, committedOwned: committedOwned)
            } catch {
                // The object this layer's map (or the overlay) names may now
                // hold part of the write, or all of it: whatever it holds, the
                // next flush re-hashes it whole, so its checksum never goes
                // stale (the log's intent is dropped only by that flush).
                // A block zeroed since the last flush stays zeroed (its
                // object is dropped at flush): the failed write is lost, the
                // acknowledged zeroing is not.
                let ownsObject: Bool
                switch pending {
                case .whole?, .pieces?: ownsObject = true
                case .zero?: ownsObject = false
                case nil: ownsObject = committedOwned
                }
                if ownsObject {
                    try? resyncChecksums(obj, inBlock: inBlock, count: data.count)
                    state.withLock { $0.overlay[b] = .pieces(PartialBlockHash(knownZeroFrom: blockSize)) }
                }
                throw error
            }
        }
    }

    /// The object part of `writeSegment`: the data, then its page checksums.
    /// Caller holds the block's lock.
    private func writeObject(_ b: UInt32, _ obj: ObjectName, inBlock: Int, _ data: UnsafeRawBufferPointer,
                             whole: Bool, pending: Pending?, committedOwned: Bool) throws {
        if whole {
            let h = SHA256.blockHash(data)
            try objects.put(obj, data, length: 0, durable: false)
            try writeChecksums(obj, of: data)
            markWritten(obj, before: nil, inBlock: 0, count: blockSize)
            // Keep no descriptor open for a block written whole (as the
            // put alone would not): streaming writers touch each block once.
            objects.forgetCached(obj)
            tabled.withLock { _ = $0.insert(obj) }
            state.withLock { $0.overlay[b] = .whole(h) }
            return
        }
        /// Into the object as it is (its edge pages were checked by
        /// `writeSegment`): the data, then its pages' checksums.
        func writeInPlace() throws {
            let before = versionBeforeWrite(obj)
            try objects.write(obj, at: UInt64(inBlock), data)
            try updateChecksums(obj, inBlock: inBlock, data)
            markWritten(obj, before: before, inBlock: inBlock, count: data.count)
        }
        let hash: PartialBlockHash
        switch pending {
        case .pieces(let p)?:
            try writeInPlace()
            hash = p
        case .whole?:
            try writeInPlace()
            hash = PartialBlockHash(knownZeroFrom: blockSize)
        case .zero?:
            try objects.put(obj, UnsafeRawBufferPointer(start: nil, count: 0), length: UInt64(blockSize), durable: false)
            try writeZeroChecksums(obj)
            try objects.write(obj, at: UInt64(inBlock), data)
            try updateChecksums(obj, inBlock: inBlock, data)
            markWritten(obj, before: nil, inBlock: inBlock, count: data.count)
            tabled.withLock { _ = $0.insert(obj) }
            hash = PartialBlockHash(knownZeroFrom: 0)
        case nil:
            if committedOwned {
                try writeInPlace()
                hash = PartialBlockHash(knownZeroFrom: blockSize)
            } else {
                let fromZeros = try copyOnWrite(b, into: obj, inBlock: inBlock, data)
                hash = PartialBlockHash(knownZeroFrom: fromZeros ? 0 : blockSize)
            }
        }
        hash.wrote(at: inBlock, data)
        state.withLock { $0.overlay[b] = .pieces(hash) }
        // A block written up to its end is likely done with (streaming
        // writes): start its writeback now, so the flush finds little left.
        if inBlock + data.count == blockSize { objects.startWriteback(obj) }
    }

    /// First write to a block this layer does not own: copy what shows through
    /// (parent, content block, or zeros) into a new owned object, with the write applied.
    /// Returns whether the block was zeros before.
    private func copyOnWrite(_ b: UInt32, into obj: ObjectName, inBlock: Int, _ data: UnsafeRawBufferPointer) throws -> Bool {
        let src = state.withLock { Volume.resolveCommitted(b, top: $0.top, ancestors: $0.ancestors).0 }
        defer { tabled.withLock { _ = $0.insert(obj) } }
        if case .zero = src {
            try objects.put(obj, UnsafeRawBufferPointer(start: nil, count: 0), length: UInt64(blockSize), durable: false)
            try writeZeroChecksums(obj)
            try objects.write(obj, at: UInt64(inBlock), data)
            try updateChecksums(obj, inBlock: inBlock, data)
            markWritten(obj, before: nil, inBlock: inBlock, count: data.count)
            return true
        }
        // The block, then its checksum table: one object, one put.
        var buffer = [UInt8](repeating: 0, count: blockSize + BlockChecks.tableBytes(blockSize: blockSize))
        try buffer.withUnsafeMutableBytes { buf in
            let block = UnsafeMutableRawBufferPointer(rebasing: buf[0..<blockSize])
            try readSource(b, src, at: 0, into: block)
            (buf.baseAddress! + inBlock).copyMemory(from: data.baseAddress!, byteCount: data.count)
            let table = BlockChecks.table(UnsafeRawBufferPointer(block))
            table.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buf[blockSize...]).copyMemory(from: $0) }
            try objects.put(obj, UnsafeRawBufferPointer(buf), length: 0, durable: false)
            wroteTable(obj, table)
        }
        // Every page: the parent's block was read checked, the data is ours.
        markWritten(obj, before: nil, inBlock: 0, count: blockSize)
        return false
    }

    /// Blocks whose intents are logged together: one synced append covers a
    /// whole group, so random writes pay one log sync per group per flush, not
    /// per block. Over-reporting is harmless: recovery re-hashes a few more blocks.
    static let intentGroup: UInt32 = 16

    private func noteIntent(_ b: UInt32) throws {
        if state.withLock({ $0.intents.contains(b) }) { return }
        logLock.lock()
        defer { logLock.unlock() }
        let group = state.withLock { s -> [UInt32] in
            if s.intents.contains(b) { return [] }
            let first = b - b % Volume.intentGroup
            let end = min(UInt64(first) + UInt64(Volume.intentGroup), s.top.blockCount)
            return (UInt64(first)..<end).map { UInt32($0) }.filter { i in
                if i == b { return true }
                guard !s.intents.contains(i), case .owned? = s.top.entry(i) else { return false }
                return true
            }
        }
        if group.isEmpty { return }
        try appendLog(group.map { .intent($0) })
        state.withLock { s in for i in group { s.intents.insert(i) } }
    }

    /// Appends one batch and syncs it. Caller holds `logLock` or `io` exclusively.
    private func appendLog(_ records: [LayerLog.Record]) throws {
        if mode != .shared, state.withLock({ $0.needsCompaction }) { try compactUnlocked() }
        let (topID, gen, length) = state.withLock { ($0.top.id, $0.top.generation, $0.logLength) }
        let log = StoreLayout.log(topID)
        var at = length
        var foreign = false
        if mode == .shared {
            // Live migration: the other holder may have appended since this
            // node last looked. Append at the log's end, never over its records
            // (nor over its header, when this node still thinks the log empty).
            at = Int(try objects.stat(log)?.size ?? 0)
            foreign = at != length
        }
        if at == 0 {
            try objects.put(log, LayerLog.header(layer: topID, generation: gen), durable: true)
            at = LayerLog.headerBytes
        }
        let batch = LayerLog.batch(records)
        try batch.withUnsafeBytes { try objects.write(log, at: UInt64(at), $0) }
        try objects.syncContents(log)
        state.withLock { $0.logLength = at + batch.count }
        // The other holder's records before ours are not in this node's map yet.
        if foreign { try refreshIfShared(force: true) }
    }

    // MARK: flush

    /// Makes every acknowledged write durable: syncs the layer's objects, then
    /// commits their checksums to the log in one synced append.
    public func flush() throws {
        guard isWritable else { return }
        try io.exclusive { try flushUnlocked() }
    }

    private func flushUnlocked() throws {
        let (overlay, topID, uncertain) = try state.withLock { s -> ([UInt32: Pending], LayerID, Bool) in
            try checkOpen(s)
            return (s.overlay, s.top.id, s.needsCompaction)
        }
        if overlay.isEmpty {
            if uncertain, mode != .shared { try compactUnlocked() }
            return
        }
        let dirty = overlay.compactMap { b, p -> ObjectName? in
            if case .zero = p { return nil }
            return StoreLayout.owned(topID, b)
        }
        // The sync waits for the disk, the hashing below for the CPU: run them
        // at once. Nothing is recorded in the map before both have finished.
        let failure = Locked<Error?>(nil)
        let syncing = DispatchGroup()
        let objects = self.objects
        DispatchQueue.global().async(group: syncing) {
            do { try objects.sync(dirty) } catch { failure.withLock { $0 = $0 ?? error } }
        }

        // Checksums of blocks written in pieces: hash what the writes did not
        // feed already (read back), in parallel.
        let keys = Array(overlay.keys)
        let results = Locked<[UInt32: ContentHash?]>([:])
        let workers = min(keys.count, max(1, ProcessInfo.processInfo.activeProcessorCount))
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var buffer = [UInt8](repeating: 0, count: blockSize)
            var i = w
            while i < keys.count {
                let b = keys[i]
                i += workers
                switch overlay[b]! {
                case .zero:
                    results.withLock { $0[b] = .some(nil) }
                case .whole(let known):
                    results.withLock { $0[b] = known }
                case .pieces(let partial):
                    do {
                        let h = try buffer.withUnsafeMutableBytes { buf -> ContentHash in
                            try partial.finish(buffer: buf) { offset, chunk in
                                try readSource(b, .object(StoreLayout.owned(topID, b), fromAncestor: false, check: .owned(nil)),
                                               at: offset, into: chunk)
                            }
                        }
                        results.withLock { $0[b] = h }
                    } catch {
                        failure.withLock { $0 = error }
                    }
                }
            }
        }
        syncing.wait()
        if let e = failure.withLock({ $0 }) { throw e }

        var updates: [UInt32: BlockEntry?] = [:]
        var drop: [ObjectName] = []
        let hashes = results.withLock { $0 }
        state.withLock { s in
            for (b, h) in hashes {
                if let h, h != ContentHash.ofEmpty {
                    updates[b] = .some(.owned(h))
                } else {
                    // Zero: an explicit entry only where a parent would show data.
                    let below = Volume.resolveBelow(b, top: s.top, ancestors: s.ancestors).1
                    let parentShows = below != nil && below != .zero
                    updates[b] = .some(parentShows ? .zero : nil)
                    drop.append(StoreLayout.owned(s.top.id, b))
                }
            }
        }
        let records = updates.map { LayerLog.Record.set($0.key, $0.value) }
        try appendLog(records)
        state.withLock { s in
            s.top.apply(updates)
            s.overlay = [:]
            s.intents = []
        }
        // Committed: an object left behind (a failed removal) is gc's.
        for obj in drop { _ = try? objects.remove(obj) }
        let (logLength, entries) = state.withLock { ($0.logLength, $0.top.entryCount) }
        if logLength > max(1 << 20, entries * MapFormatV1.entryBytes / 2) {
            // Committed already: a compaction that fails is retried before
            // the next append (needsCompaction), not reported as a failed flush.
            _ = try? compactUnlocked()
        }
    }

    /// Rewrites the map with the log folded in, then drops the log.
    /// `changed`: a new committed map (resize, flatten), which becomes the
    /// volume's only once it is written; by default, the committed one.
    ///
    /// If the write fails, the map object may hold either generation (a put
    /// can fail after its rename): the state stays as it was and is marked,
    /// so nothing is appended to the log (which a newer map would make
    /// stale) before a compaction succeeds.
    private func compactUnlocked(_ changed: LayerMap? = nil) throws {
        var (top, logLength) = state.withLock { ($0.top, $0.logLength) }
        if let changed { top = changed }
        top.generation += 1
        let bytes = MapFormatV1.encode(top)
        do {
            try objects.put(StoreLayout.map(top.id), bytes, durable: true)
        } catch {
            state.withLock { $0.needsCompaction = true }
            throw error
        }
        state.withLock { s in
            s.top = top
            s.logLength = 0
            s.mapBytes = bytes.count
            s.needsCompaction = false
        }
        // The map holds everything the log did; a log left behind (this
        // removal failed) names an older generation and is ignored.
        if logLength > 0 { _ = try? objects.remove(StoreLayout.log(top.id)) }
        // Intents of in-place writes since the last flush were in the old
        // log: the new one must name them too (a crash re-hashes those blocks).
        let intents = state.withLock { $0.intents }
        if !intents.isEmpty {
            do { try appendLog(intents.sorted().map { .intent($0) }) } catch {
                state.withLock { $0.needsCompaction = true }   // the next append carries them again
                throw error
            }
        }
    }

    // MARK: shared mode

    /// In shared (migration) mode the other holder may have committed changes:
    /// nothing is cached between operations, so re-read map and log if they moved.
    private func refreshIfShared(force: Bool = false) throws {
        guard mode == .shared else { return }
        let (topID, logLength, gen) = state.withLock { ($0.top.id, $0.logLength, $0.top.generation) }
        let logSize = try objects.stat(StoreLayout.log(topID))?.size ?? 0
        let fresh = try store.loadCommitted(topID)
        if force || fresh.map.generation != gen || Int(logSize) != logLength {
            state.withLock { s in
                s.top = fresh.map
                s.logLength = fresh.logLength
                s.unsettled = fresh.pendingIntents
            }
        }
    }

    // MARK: snapshot, resize, flatten

    /// Freezes the current layer under `snapshot` and continues on a new empty
    /// layer. O(1): no map is copied, whatever the volume's size.
    public func snapshot(_ snapshot: VolumeName, metadata: [String: String] = [:]) throws {
        try checkWritable()
        try io.exclusive {
            guard state.withLock({ $0.record.kind }) == .volume else {
                throw StoreError(.wrongKind, "\(name) is a snapshot; snapshot a volume")
            }
            if try objects.exists(StoreLayout.record(snapshot)) {
                throw StoreError(.alreadyExists, "'\(snapshot)' already exists")
            }
            // No compaction: the frozen layer keeps its log (readers apply it),
            // so a snapshot costs the same whatever the map's size.
            try flushUnlocked()
            let frozen = state.withLock { $0.top }
            let next = LayerMap(id: LayerID.random(), parent: frozen.id, kind: .continuation, size: frozen.size,
                                blockSize: frozen.blockSize, parentBlocks: frozen.blockCount, epoch: frozen.epoch + 1)
            let nextBytes = MapFormatV1.encode(next)
            try objects.put(StoreLayout.map(next.id), nextBytes, durable: true)
            // Re-read: metadata may have changed since the volume was opened (setinfo).
            var moved = try store.record(name)
            moved.layer = next.id
            try objects.put(StoreLayout.record(name), moved.encode(), durable: true)
            state.withLock { s in
                s.ancestors.insert(s.top, at: 0)
                s.top = next
                s.record = moved
                s.logLength = 0
                s.mapBytes = nextBytes.count
            }
            var meta = metadata
            meta["snapshot-of"] = name.value
            let snap = VolumeRecord(kind: .snapshot, layer: frozen.id, metadata: meta)
            guard try objects.create(StoreLayout.record(snapshot), snap.encode(), durable: true) else {
                throw StoreError(.alreadyExists, "'\(snapshot)' was created by someone else meanwhile; the volume continued on a new layer, no snapshot was made")
            }
        }
    }

    /// Grows (or, with `allowShrink`, shrinks) the volume. Blocks past a new,
    /// smaller end are dropped, and the tail of the last block is zeroed so a
    /// later grow shows zeros there.
    public func resize(to newSize: ByteCount, allowShrink: Bool) throws {
        try checkWritable()
        _ = try newSize.validatedVolumeSize()
        try io.exclusive {
            let old = state.withLock { $0.top.size }
            if newSize.bytes == old { return }
            if newSize.bytes < old && !allowShrink {
                throw StoreError(.invalidSize, "\(name): shrinking from \(ByteCount(old)) to \(newSize) loses data; pass --allow-shrink to do it")
            }
            try flushUnlocked()
            var drop: [ObjectName] = []
            if newSize.bytes < old {
                let bs = UInt64(blockSize)
                let blocks = (newSize.bytes + bs - 1) / bs
                let tailEnd = min(old, blocks * bs)
                if newSize.bytes < tailEnd {
                    try zeroUnlocked(at: newSize.bytes, length: tailEnd - newSize.bytes)
                    try flushUnlocked()
                }
            }
            // The new map is the volume's only once it is written.
            var next = state.withLock { $0.top }
            if newSize.bytes < old {
                let bs = UInt64(blockSize)
                let blocks = (newSize.bytes + bs - 1) / bs
                for (b, e) in next.truncate(toBlocks: blocks) {
                    if case .owned = e { drop.append(StoreLayout.owned(next.id, b)) }
                }
                next.parentBlocks = min(next.parentBlocks, blocks)
            }
            next.size = newSize.bytes
            try compactUnlocked(next)
            // Committed: an object left behind (a failed removal) is gc's.
            for obj in drop { _ = try? objects.remove(obj) }
        }
    }

    /// Copies every block that shows through from the parent chain into this
    /// layer (as shared content blocks, so nothing is stored twice), and cuts
    /// the parent link.
    public func flatten() throws -> Int {
        try checkWritable()
        return try io.exclusive {
            try flushUnlocked()
            let (top, ancestors) = state.withLock { ($0.top, $0.ancestors) }
            guard top.hasParent else { return 0 }
            var updates: [UInt32: BlockEntry?] = [:]
            var created: [ObjectName] = []
            var buffer = [UInt8](repeating: 0, count: blockSize)
            let limit = min(top.parentBlocks, top.blockCount)
            for b64 in 0..<limit {
                let b = UInt32(b64)
                if top.entry(b) != nil { continue }
                let (_, entry, layer) = Volume.resolveCommitted(b, top: top, ancestors: ancestors)
                switch entry {
                case .content(let h)?:
                    updates[b] = .some(.content(h))
                case .owned(let h)?:
                    let obj = StoreLayout.owned(layer!, b)
                    let stored = try buffer.withUnsafeMutableBytes { buf -> Int in
                        try readSource(b, .object(obj, fromAncestor: true, check: .owned(h)), at: 0, into: buf)
                        let got = SHA256.blockHash(UnsafeRawBufferPointer(buf))
                        guard got == h else {
                            throw StoreError(.corrupt, "\(name): block \(b) of layer \(layer!) hashes to \(got.hex), its map says \(h.hex)", cause: "run 'archip verify'")
                        }
                        return ZeroScan.lengthWithoutTrailingZeros(UnsafeRawBufferPointer(buf))
                    }
                    let c = StoreLayout.content(h)
                    if try buffer.withUnsafeBytes({ try objects.create(c, UnsafeRawBufferPointer(rebasing: $0[0..<stored]), durable: false) }) {
                        created.append(c)
                    }
                    updates[b] = .some(.content(h))
                case .zero?, nil:
                    break
                }
            }
            try objects.sync(created)
            var next = top
            next.apply(updates)
            next.removeAllEntries { $0 == .zero }
            next.parent = .none
            next.parentBlocks = 0
            next.kind = .base
            try compactUnlocked(next)
            state.withLock { $0.ancestors = [] }
            return updates.count
        }
    }

    // MARK: close

    /// Flushes, folds the log into the map, and releases the lock.
    public func close() throws {
        try close(keepingLock: false)
    }

    /// As `close`, but the lock stays with its owner when `keepingLock`: the
    /// node daemon switches a held volume between exclusive and shared (live
    /// migration) by converting the lock first and then reopening, so no other
    /// node can take the volume in between.
    public func close(keepingLock: Bool) throws {
        if state.withLock({ $0.closed }) { return }
        if isWritable {
            do {
                try io.exclusive {
                    try flushUnlocked()
                    // Shared (live migration): the other holder may be writing
                    // (the guest resumes on the target before Ganeti closes the
                    // source's disks): a compaction here would rewrite the map
                    // and restart the log under its appends. The exclusive
                    // holder that comes next compacts.
                    if mode != .shared, state.withLock({ $0.logLength > 0 || $0.needsCompaction }) { try compactUnlocked() }
                }
            } catch {
                // What was committed stays committed (the log is replayed, and
                // its intents re-hashed, at the next open); the holder is gone
                // either way, so the lock goes too: otherwise the volume stays
                // locked by a dead process until 'unlock --force'. The close's
                // error is the one to report.
                state.withLock { $0.closed = true }
                keeper?.stop()
                if let owner, !keepingLock { _ = try? releaseHold(owner) }
                throw error
            }
        }
        state.withLock { $0.closed = true }
        keeper?.stop()
        if let owner, !keepingLock { try releaseHold(owner) }
    }

    /// Gives back the lock (and, for an exclusive hold, its lease). A fenced
    /// holder has nothing to give back: its hold was taken over.
    private func releaseHold(_ owner: LockOwner) throws {
        guard let keeper else {
            try store.objects.giveBackLock(StoreLayout.lock(name), owner: owner)
            return
        }
        keeper.fence.expireNow()
        if keeper.fence.isLost { return }
        try store.releaseHold(name, owner: owner)
    }
}

/// One piece of a volume read (`Volume.readPieces`).
public enum VolumeReadPiece: @unchecked Sendable {
    /// This many zero bytes.
    case zeros(Int)
    /// `count` bytes of an object's file at `offset`.
    case file(ObjectReadDescriptor, offset: UInt64, count: Int)
}
