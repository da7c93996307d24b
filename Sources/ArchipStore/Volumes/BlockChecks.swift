import CArchipSys
import Foundation

// Checked reads: no byte leaves a block's object before it is checked.
//
// - A content block is checked whole against its name (its block hash) the
//   first time this process reads it; its stored length is then remembered
//   (a bounded cache, `VerifiedObjects`) and checked on every later read, so
//   an emptied or cut object is an error, never zeros.
// - An owned block carries a CRC-32C per 4 KiB page after its data (format
//   1.1, docs/FORMAT.md): every read checks the pages it touches, every write
//   updates the checksums of the pages it changes. An owned object without
//   the table (written by an older archip) is checked whole against the
//   map's block hash once, as a content block is.
//
// docs/CHECKSUMS.md has the design and the measured cost.

/// What a block's bytes are checked against when read.
enum BlockCheck: Sendable {
    /// A content block: its name is its block hash.
    case content(ContentHash)
    /// An owned block: its own 4 KiB checksums; for an object without them,
    /// the committed block hash (nil: written since the last flush).
    case owned(ContentHash?)
}

/// CRC-32C (Castagnoli), hardware-assisted where the CPU has it.
public enum CRC32C {
    public static func checksum(_ data: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        archip_crc32c(crc, data.baseAddress, data.count)
    }
}

enum BlockChecks {
    /// The unit an owned block's checksums cover.
    static let pageSize = 4096

    /// False only in the bench's unchecked runs (ARCHIP_BENCH_UNCHECKED=1 in
    /// the environment, or `ReadChecks.enabled` in archip-bench), which
    /// measure what the checks cost. Writes keep their checksums either way;
    /// only reads skip the checks.
    nonisolated(unsafe) static var enabled: Bool = ProcessInfo.processInfo.environment["ARCHIP_BENCH_UNCHECKED"] != "1"

    /// Bytes of an owned object's checksum table: one u32 per page.
    static func tableBytes(blockSize: Int) -> Int { blockSize / pageSize * 4 }

    /// The checksums (little-endian u32 each) of `data`'s pages; `data` is a
    /// whole number of pages.
    static func table(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        let pages = data.count / pageSize
        var out = [UInt8](repeating: 0, count: pages * 4)
        out.withUnsafeMutableBytes { t in
            for i in 0..<pages {
                let c = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[(i * pageSize)..<((i + 1) * pageSize)]))
                t.storeBytes(of: c.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        }
        return out
    }

    /// The first page of an owned object (block then table) whose checksum
    /// does not match, nil if all do.
    static func firstBadPage(_ object: [UInt8], blockSize: Int) -> Int? {
        object.withUnsafeBytes { o in
            for i in 0..<(blockSize / pageSize) {
                let c = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: o[(i * pageSize)..<((i + 1) * pageSize)]))
                if c != UInt32(littleEndian: o.loadUnaligned(fromByteOffset: blockSize + i * 4, as: UInt32.self)) { return i }
            }
            return nil
        }
    }

    /// The table of an all-zero block.
    static func zeroTable(blockSize: Int) -> [UInt8] {
        let page = [UInt8](repeating: 0, count: pageSize)
        let c = page.withUnsafeBytes { CRC32C.checksum($0) }.littleEndian
        var out = [UInt8](repeating: 0, count: tableBytes(blockSize: blockSize))
        out.withUnsafeMutableBytes { t in
            for i in 0..<(blockSize / pageSize) { t.storeBytes(of: c, toByteOffset: i * 4, as: UInt32.self) }
        }
        return out
    }
}

/// The bench's switch: reads unchecked, to measure what the checks cost.
/// Set it only while no volume is being read.
@_spi(Bench)
public enum ReadChecks {
    public static var enabled: Bool {
        get { BlockChecks.enabled }
        set { BlockChecks.enabled = newValue }
    }
}

/// Objects this process has checked whole, with the length each had then
/// and, where the backend has files, their identity (`FileIdentity`): a
/// later read trusts the check only while the file is the same version
/// (so a byte flipped in place after the check is found at the next read,
/// not when the entry leaves the cache). Bounded: the oldest entries go
/// first (they are checked again when read).
final class VerifiedObjects: @unchecked Sendable {
    struct Entry {
        var length: Int
        var identity: FileIdentity?

        /// Whether a read that sees `now` may rely on this check.
        func holds(for now: FileIdentity?) -> Bool {
            guard let identity, let now else { return true }
            return identity == now
        }
    }

    private let lock = NSLock()
    private var lengths: [ObjectName: Entry] = [:]
    private var ring: [ObjectName?]
    private var next = 0

    /// 65 536 entries: 256 GiB of 4 MiB blocks, a few MiB of memory.
    init(capacity: Int = 1 << 16) {
        ring = [ObjectName?](repeating: nil, count: capacity)
    }

    func entry(_ name: ObjectName) -> Entry? {
        lock.lock()
        defer { lock.unlock() }
        return lengths[name]
    }

    func insert(_ name: ObjectName, length: Int, identity: FileIdentity?) {
        lock.lock()
        defer { lock.unlock() }
        if lengths.updateValue(Entry(length: length, identity: identity), forKey: name) != nil { return }
        if let old = ring[next] { lengths[old] = nil }
        ring[next] = name
        next = (next + 1) % ring.count
    }

    func forget(_ name: ObjectName) {
        lock.lock()
        defer { lock.unlock() }
        lengths[name] = nil
    }
}

/// Owned objects' checksum tables, as this volume last read or wrote them:
/// a read then needs no `pread` of the table. Kept coherent with this
/// process's writes (each write sets what it wrote); frozen layers never
/// change. A damaged table on disk is then simply not used (the data is
/// still checked against the right one; `verify` reads the disk). Not used
/// in shared mode, where the other holder writes too. Bounded: 4096 tables
/// (16 MiB, 16 GiB of 4 MiB blocks), the oldest go first.
final class TableCache: @unchecked Sendable {
    private let lock = NSLock()
    private var tables: [ObjectName: [UInt32]] = [:]
    private var ring: [ObjectName?]
    private var next = 0

    init(capacity: Int = 4096) {
        ring = [ObjectName?](repeating: nil, count: capacity)
    }

    func get(_ name: ObjectName) -> [UInt32]? {
        lock.lock()
        defer { lock.unlock() }
        return tables[name]
    }

    func set(_ name: ObjectName, _ table: [UInt32]) {
        lock.lock()
        defer { lock.unlock() }
        if tables.updateValue(table, forKey: name) != nil { return }
        if let old = ring[next] { tables[old] = nil }
        ring[next] = name
        next = (next + 1) % ring.count
    }

    /// Updates entries from `first` on, if the table is held.
    func update(_ name: ObjectName, from first: Int, _ entries: UnsafeRawBufferPointer) {
        lock.lock()
        defer { lock.unlock() }
        guard var t = tables[name] else { return }
        tables[name] = nil   // keep the array uniquely referenced
        for i in 0..<(entries.count / 4) { t[first + i] = entries.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self) }
        tables[name] = t
    }

    func forget(_ name: ObjectName) {
        lock.lock()
        defer { lock.unlock() }
        tables[name] = nil
    }

    static func entries(_ bytes: UnsafeRawBufferPointer) -> [UInt32] {
        (0..<(bytes.count / 4)).map { bytes.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self) }
    }
}

/// Pages of owned objects whose CRCs this volume checked on the zero-copy
/// path, or that it wrote itself, per version of the object's file. A page
/// checked before is handed out again without being read (the zero-copy
/// path's only extra cost, see docs/CHECKSUMS.md) only while
///
/// - the file is the same version (`FileIdentity`: device, inode, size,
///   mtime, ctime from the `fstat` each zero-copy read does anyway): any
///   write through the file system starts afresh, except this volume's own,
///   which carries the marks from the version just before it to the one
///   just after it (`markWritten`); and
/// - the whole object has stayed in the page cache since (`cachestat`): the
///   bytes handed out are then the very pages that were checked, not a
///   re-read from the disk. An object with a page missing loses its marks.
///
/// Bounded: 4096 objects (16 GiB of 4 MiB blocks), 128 bytes each.
final class CheckedPages: @unchecked Sendable {
    private struct Entry {
        var identity: FileIdentity
        var bits: [UInt64]
    }

    private let lock = NSLock()
    private var entries: [ObjectName: Entry] = [:]
    private var ring: [ObjectName?]
    private var next = 0
    private var hits = 0

    init(capacity: Int = 4096) {
        ring = [ObjectName?](repeating: nil, count: capacity)
    }

    /// Whether pages `first..<first+count` were checked in this version.
    func covers(_ name: ObjectName, _ identity: FileIdentity, first: Int, count: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let e = entries[name], e.identity == identity else { return false }
        for p in first..<(first + count) where e.bits[p >> 6] & (1 << UInt64(p & 63)) == 0 { return false }
        hits += 1
        return true
    }

    /// How many times `covers` said yes (tests; a counter under the lock taken anyway).
    var coveredReads: Int {
        lock.lock()
        defer { lock.unlock() }
        return hits
    }

    /// Marks pages `first..<first+count` checked in version `identity` (a
    /// different version's marks are dropped).
    func mark(_ name: ObjectName, _ identity: FileIdentity, first: Int, count: Int, pagesPerObject: Int) {
        update(name, keepingMarksOf: identity, now: identity, first: first, count: count, pagesPerObject: pagesPerObject)
    }

    /// Pages `first..<first+count` were just written by this volume under
    /// the block's lock, their CRCs computed from the bytes written (or from
    /// bytes checked just before): the file went from version `before`
    /// (taken just before the write; nil: none or unknown) to `after`. The
    /// marks of `before` carry over to `after`; marks of any other version
    /// are dropped (someone else changed the file since they were made).
    func markWritten(_ name: ObjectName, before: FileIdentity?, after: FileIdentity, first: Int, count: Int, pagesPerObject: Int) {
        update(name, keepingMarksOf: before, now: after, first: first, count: count, pagesPerObject: pagesPerObject)
    }

    private func update(_ name: ObjectName, keepingMarksOf kept: FileIdentity?, now identity: FileIdentity,
                        first: Int, count: Int, pagesPerObject: Int) {
        lock.lock()
        defer { lock.unlock() }
        let fresh = Entry(identity: identity, bits: [UInt64](repeating: 0, count: (pagesPerObject + 63) / 64))
        var e: Entry
        if let old = entries[name] {
            entries[name] = nil   // keep the array uniquely referenced
            if let kept, old.identity == kept {
                e = old
                e.identity = identity
            } else {
                e = fresh
            }
        } else {
            e = fresh
            if let old = ring[next] { entries[old] = nil }
            ring[next] = name
            next = (next + 1) % ring.count
        }
        for p in first..<min(first + count, pagesPerObject) { e.bits[p >> 6] |= 1 << UInt64(p & 63) }
        entries[name] = e
    }

    func forget(_ name: ObjectName) {
        lock.lock()
        defer { lock.unlock() }
        if var e = entries[name] {
            for i in e.bits.indices { e.bits[i] = 0 }
            entries[name] = e
        }
    }
}

/// A failed check, before it becomes a StoreError naming the volume and block.
struct ChecksumMismatch: Error {
    var what: String
}

extension Volume {
    /// Reads part of block `b` from `obj`, checked. A mismatch is read once
    /// more (under the block's lock for the top layer's own blocks, so a
    /// write racing with the read is not taken for damage) before it is an error.
    func readChecked(_ b: UInt32, _ obj: ObjectName, _ check: BlockCheck, topLayer: Bool,
                     at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws {
        if buffer.isEmpty { return }
        do {
            try readCheckedOnce(obj, check, at: offset, into: buffer)
        } catch is ChecksumMismatch {
            objects.forgetCached(obj)
            store.verified.forget(obj)
            tables.forget(obj)
            checkedPages.forget(obj)
            do {
                if topLayer, case .owned = check {
                    try blockLocks.with(b) { try readCheckedOnce(obj, check, at: offset, into: buffer) }
                } else {
                    try readCheckedOnce(obj, check, at: offset, into: buffer)
                }
            } catch let m as ChecksumMismatch {
                if topLayer, case .owned = check, state.read({ $0.unsettled.contains(b) }) {
                    // A writer stopped mid-write here (see State.unsettled): its
                    // pages and checksums may be apart until a writable open
                    // settles the block. Read it as the store did before checksums.
                    let n = try objects.read(obj, at: UInt64(offset), into: buffer)
                    if n < buffer.count {
                        UnsafeMutableRawBufferPointer(rebasing: buffer[n...]).initializeMemory(as: UInt8.self, repeating: 0)
                    }
                    return
                }
                throw StoreError(.corrupt, "\(name): block \(b), object \(obj) in \(objects.location): \(m.what)",
                                 cause: "the object is damaged; run 'archip verify \(name)'")
            }
        }
    }

    private func readCheckedOnce(_ obj: ObjectName, _ check: BlockCheck, at offset: Int,
                                 into buffer: UnsafeMutableRawBufferPointer) throws {
        switch check {
        case .content(let h):
            try readWholeChecked(obj, expected: h, maxLength: blockSize, at: offset, into: buffer)
        case .owned(let committed):
            try readOwnedChecked(obj, committed: committed, at: offset, into: buffer)
        }
    }

    /// An object checked whole against a block hash (content blocks, and
    /// owned objects without checksums): the first read checks it and
    /// remembers its length, later reads check that length.
    private func readWholeChecked(_ obj: ObjectName, expected: ContentHash, maxLength: Int, at offset: Int,
                                  into buffer: UnsafeMutableRawBufferPointer) throws {
        // The file's version now (nil where objects are not files): a check
        // of an earlier version does not count.
        let identity = try objects.readDescriptor(obj)?.identity
        if let entry = store.verified.entry(obj), entry.holds(for: identity) {
            let length = entry.length
            let n = try objects.read(obj, at: UInt64(offset), into: buffer)
            let want = max(0, min(buffer.count, length - offset))
            guard n == want else {
                throw ChecksumMismatch(what: "read \(n) bytes at \(offset) where it held \(want) when checked (it was \(length) bytes long)")
            }
            if n < buffer.count {
                UnsafeMutableRawBufferPointer(rebasing: buffer[n...]).initializeMemory(as: UInt8.self, repeating: 0)
            }
            return
        }
        // One byte more than a block: an object longer than that is damaged too.
        let whole = UnsafeMutableRawBufferPointer.allocate(byteCount: maxLength + 1, alignment: 4096)
        defer { whole.deallocate() }
        let n = try objects.read(obj, at: 0, into: whole)
        guard n <= maxLength else {
            throw ChecksumMismatch(what: "the object is longer than the block size \(maxLength)")
        }
        let got = SHA256.blockHash(UnsafeRawBufferPointer(rebasing: whole[0..<n]))
        guard got == expected else {
            throw ChecksumMismatch(what: "its \(n) bytes hash to \(got.hex), expected \(expected.hex)")
        }
        store.verified.insert(obj, length: n, identity: identity)
        let have = max(0, min(buffer.count, n - offset))
        if have > 0 {
            buffer.baseAddress!.copyMemory(from: whole.baseAddress! + offset, byteCount: have)
        }
        if have < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[have...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    /// An owned block's pages, checked against its checksum table.
    private func readOwnedChecked(_ obj: ObjectName, committed: ContentHash?, at offset: Int,
                                  into buffer: UnsafeMutableRawBufferPointer) throws {
        let page = BlockChecks.pageSize
        let first = offset / page
        let last = (offset + buffer.count - 1) / page
        let pages = last - first + 1
        let tableBytes = BlockChecks.tableBytes(blockSize: blockSize)
        var table: [UInt32]
        var tn = tableBytes
        if mode != .shared, let t = tables.get(obj) {
            table = t
        } else {
            table = [UInt32](repeating: 0, count: tableBytes / 4)
            tn = try table.withUnsafeMutableBytes { try objects.read(obj, at: UInt64(blockSize), into: $0) }
            if tn == tableBytes && mode != .shared { tables.set(obj, table) }
        }
        if tn == 0 {
            // No table: an object an older archip wrote (format 1.0).
            guard let committed else {
                // Written since the last flush by a writer that kept no
                // checksums; nothing to check it against yet.
                let n = try objects.read(obj, at: UInt64(offset), into: buffer)
                if n < buffer.count {
                    UnsafeMutableRawBufferPointer(rebasing: buffer[n...]).initializeMemory(as: UInt8.self, repeating: 0)
                }
                return
            }
            try readWholeChecked(obj, expected: committed, maxLength: blockSize, at: offset, into: buffer)
            return
        }
        guard tn == tableBytes else {
            throw ChecksumMismatch(what: "its checksum table is cut short (\(tn) of \(tableBytes) bytes)")
        }
        let start = first * page
        let count = pages * page
        func check(_ data: UnsafeRawBufferPointer) throws {
            for i in 0..<pages {
                let c = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[(i * page)..<((i + 1) * page)]))
                let want = UInt32(littleEndian: table[first + i])
                guard c == want else {
                    throw ChecksumMismatch(what: "4 KiB page \(first + i) (bytes \((first + i) * page)-\((first + i + 1) * page - 1) of the block) has CRC-32C \(String(c, radix: 16)), its table says \(String(want, radix: 16))")
                }
            }
        }
        if start == offset && count == buffer.count {
            let n = try objects.read(obj, at: UInt64(start), into: buffer)
            guard n == count else { throw ChecksumMismatch(what: "the object ends at byte \(start + n), inside the block") }
            try check(UnsafeRawBufferPointer(buffer))
            return
        }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
        defer { scratch.deallocate() }
        let n = try objects.read(obj, at: UInt64(start), into: scratch)
        guard n == count else { throw ChecksumMismatch(what: "the object ends at byte \(start + n), inside the block") }
        try check(UnsafeRawBufferPointer(scratch))
        buffer.baseAddress!.copyMemory(from: scratch.baseAddress! + (offset - start), byteCount: buffer.count)
    }

    // MARK: zero-copy reads

    /// An owned object's page CRC table: the one this volume keeps, or read
    /// from after the block without waiting for the disk (then kept); nil
    /// when it is not in the page cache (the caller copies through `read`).
    private func pageTable(_ obj: ObjectName, fd: Int32, bytes: Int) -> [UInt32]? {
        if let t = tables.get(obj) { return t }
        var t = [UInt32](repeating: 0, count: bytes / 4)
        let n = t.withUnsafeMutableBytes { archip_pread_nowait_sys(fd, $0.baseAddress, $0.count, UInt64(blockSize)) }
        guard n == bytes else { return nil }
        tables.set(obj, t)
        return t
    }

    /// Checks `count` bytes of `obj` at `offset` (inside one block) before
    /// `readPieces` hands out its file: false when that cannot be done
    /// without waiting for the disk or reading the whole block (then the
    /// caller copies through `read`, which checks). Throws on damage.
    func checkForZeroCopy(_ b: UInt32, _ obj: ObjectName, _ check: BlockCheck, _ d: ObjectReadDescriptor,
                          at offset: Int, count: Int) throws -> Bool {
        if !BlockChecks.enabled || count == 0 { return true }
        func whole() throws -> Bool { try checkedWhole(b, obj, d) }
        switch check {
        case .content:
            return try whole()
        case .owned(let committed):
            let table = BlockChecks.tableBytes(blockSize: blockSize)
            if d.size != UInt64(blockSize + table) {
                // Without a table (or damaged): the copying read decides.
                return committed != nil && d.size == UInt64(blockSize) ? try whole() : false
            }
            let page = BlockChecks.pageSize
            let first = offset / page
            let last = (offset + count - 1) / page
            let pages = last - first + 1
            let fd = d.fd, dataAt = UInt64(first * page)
            // Pages checked before, still the same file version and all of
            // the object still in the page cache: the pages handed out are
            // the ones that were checked (CheckedPages). Only reads of 64 KiB
            // and more: for smaller ones the check is as cheap as this.
            let useMarks = pages >= 16 && d.identity != nil
            if useMarks, let id = d.identity, checkedPages.covers(obj, id, first: first, count: pages) {
                if archip_range_cached(fd, 0, d.size) == 1 { return true }
                checkedPages.forget(obj)
            }
            guard let crcs = pageTable(obj, fd: fd, bytes: table) else { return false }
            func verify(_ scratch: UnsafeMutableRawBufferPointer) -> Bool {
                guard archip_pread_nowait_sys(fd, scratch.baseAddress, scratch.count, dataAt) == scratch.count else { return false }
                for i in 0..<pages {
                    let c = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: scratch[(i * page)..<((i + 1) * page)]))
                    // A mismatch may be a write racing with this read: the copying read decides.
                    if c != UInt32(littleEndian: crcs[first + i]) { return false }
                }
                return true
            }
            let ok: Bool
            // Small reads (the guest's 4 KiB) check on the stack: no allocation.
            if pages <= 16 {
                ok = withUnsafeTemporaryAllocation(byteCount: pages * page, alignment: 4096) { verify($0) }
            } else {
                let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: pages * page, alignment: 4096)
                defer { scratch.deallocate() }
                ok = verify(scratch)
            }
            if ok, useMarks, let id = d.identity {
                checkedPages.mark(obj, id, first: first, count: pages, pagesPerObject: blockSize / page)
            }
            return ok
        }
    }

    /// Whether `obj` (read through `d`) was checked whole by this process and
    /// is (where known) the same version of its file since. Throws when its
    /// length changed since.
    private func checkedWhole(_ b: UInt32, _ obj: ObjectName, _ d: ObjectReadDescriptor) throws -> Bool {
        guard let entry = store.verified.entry(obj), entry.holds(for: d.identity) else { return false }
        let length = entry.length
        guard d.size == UInt64(length) else {
            throw StoreError(.corrupt, "\(name): block \(b), object \(obj) in \(objects.location): it is \(d.size) bytes long, \(length) when checked",
                             cause: "the object is damaged; run 'archip verify \(name)'")
        }
        return true
    }

    /// Copies `buffer.count` bytes of `obj` at `offset` (inside one block)
    /// into `buffer` from the page cache alone (`RWF_NOWAIT`) and checks them
    /// there: an owned block's pages against their CRCs, a content block by
    /// its earlier whole check and its length (`readCached`). False when
    /// that cannot be done without the disk or a whole-block read, or the
    /// bytes do not match (the copying read decides: it retries under the
    /// block's lock and names the damage).
    func copyCheckedFromCache(_ b: UInt32, _ obj: ObjectName, _ check: BlockCheck, _ d: ObjectReadDescriptor,
                              at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        if buffer.isEmpty { return true }
        let fd = d.fd
        // The block's bytes in the file (an owned object's table follows them).
        let dataSize = Int(min(d.size, UInt64(blockSize)))
        func copy(_ dst: UnsafeMutableRawBufferPointer, at pos: Int) -> Bool {
            archip_pread_nowait_sys(fd, dst.baseAddress, dst.count, UInt64(pos)) == dst.count
        }
        func copyWithZeros() -> Bool {
            // Past the object's end the block reads as zeros.
            let available = max(0, min(buffer.count, dataSize - offset))
            if available > 0, !copy(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<available]), at: offset) { return false }
            if available < buffer.count {
                UnsafeMutableRawBufferPointer(rebasing: buffer[available...]).initializeMemory(as: UInt8.self, repeating: 0)
            }
            return true
        }
        if !BlockChecks.enabled { return copyWithZeros() }
        let tableBytes = BlockChecks.tableBytes(blockSize: blockSize)
        switch check {
        case .content:
            return try checkedWhole(b, obj, d) && copyWithZeros()
        case .owned(let committed):
            if d.size != UInt64(blockSize + tableBytes) {
                // Without a table (1.0), or damaged: the copying read decides.
                guard committed != nil && d.size == UInt64(blockSize), try checkedWhole(b, obj, d) else { return false }
                return copyWithZeros()
            }
            let page = BlockChecks.pageSize
            let first = offset / page
            let last = (offset + buffer.count - 1) / page
            let pages = last - first + 1
            guard let crcs = pageTable(obj, fd: fd, bytes: tableBytes) else { return false }
            func verified(_ data: UnsafeRawBufferPointer) -> Bool {
                for i in 0..<pages {
                    let c = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[(i * page)..<((i + 1) * page)]))
                    if c != UInt32(littleEndian: crcs[first + i]) { return false }
                }
                return true
            }
            if offset % page == 0 && buffer.count % page == 0 {
                // Whole pages (the guest's 4 KiB reads): read into the reply
                // and check them there.
                return copy(buffer, at: offset) && verified(UnsafeRawBufferPointer(buffer))
            }
            func viaScratch(_ scratch: UnsafeMutableRawBufferPointer) -> Bool {
                guard copy(scratch, at: first * page), verified(UnsafeRawBufferPointer(scratch)) else { return false }
                buffer.baseAddress!.copyMemory(from: scratch.baseAddress! + (offset - first * page), byteCount: buffer.count)
                return true
            }
            if pages <= 16 {
                return withUnsafeTemporaryAllocation(byteCount: pages * page, alignment: 4096) { viaScratch($0) }
            }
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: pages * page, alignment: 4096)
            defer { scratch.deallocate() }
            return viaScratch(scratch)
        }
    }

    // MARK: writes keep the checksums

    /// The version of `obj`'s file just before this volume writes into it
    /// (see `markWritten`); nil where no marks are kept (no files, shared
    /// mode, checks off) or there is no file yet.
    func versionBeforeWrite(_ obj: ObjectName) -> FileIdentity? {
        guard BlockChecks.enabled, mode != .shared else { return nil }
        return (try? objects.readDescriptor(obj))??.identity
    }

    /// After this volume wrote `count` bytes at `inBlock` into `obj` and their
    /// page checksums (caller holds the block's lock): those pages count as
    /// checked in the file's new version, so the first zero-copy read of
    /// what was just written need not read it back (docs/CHECKSUMS.md). The
    /// CRCs were computed from the bytes written, and the edge pages' other
    /// bytes were checked before the write (`checkEdgePages`). `before`:
    /// `versionBeforeWrite`, or nil when the write made a new file.
    func markWritten(_ obj: ObjectName, before: FileIdentity?, inBlock: Int, count: Int) {
        guard BlockChecks.enabled, mode != .shared, count > 0,
              let after = (try? objects.readDescriptor(obj))??.identity else { return }
        let page = BlockChecks.pageSize
        let first = inBlock / page
        checkedPages.markWritten(obj, before: before, after: after, first: first,
                                 count: (inBlock + count - 1) / page - first + 1, pagesPerObject: blockSize / page)
    }

    /// Before a write that covers only part of a page of an owned object
    /// with a table: the rest of that page is checked against its CRC, which
    /// the write is about to recompute over it. Without this, damage in the
    /// bytes the write does not cover would get a matching CRC and be
    /// returned by every later read. Caller holds the block's lock.
    func checkEdgePages(_ b: UInt32, _ obj: ObjectName, inBlock: Int, count: Int) throws {
        let page = BlockChecks.pageSize
        guard BlockChecks.enabled, count > 0, inBlock % page != 0 || (inBlock + count) % page != 0,
              tabled.withLock({ $0.contains(obj) }), !state.read({ $0.unsettled.contains(b) }) else { return }
        var edges = [Int]()
        if inBlock % page != 0 { edges.append(inBlock / page) }
        if (inBlock + count) % page != 0, edges.last != (inBlock + count) / page { edges.append((inBlock + count) / page) }
        try withUnsafeTemporaryAllocation(byteCount: page, alignment: 4096) { scratch in
            for p in edges {
                let n = try objects.read(obj, at: UInt64(p * page), into: scratch)
                var want: UInt32 = 0
                let m = try withUnsafeMutableBytes(of: &want) { try objects.read(obj, at: UInt64(blockSize + p * 4), into: $0) }
                guard n == page, m == 4 else {
                    throw StoreError(.corrupt, "\(name): block \(b), object \(obj) in \(objects.location) ends inside its block or its table",
                                     cause: "the object is damaged; run 'archip verify \(name)'")
                }
                let c = CRC32C.checksum(UnsafeRawBufferPointer(scratch))
                guard c == UInt32(littleEndian: want) else {
                    throw StoreError(.corrupt, "\(name): block \(b), object \(obj) in \(objects.location): 4 KiB page \(p) (bytes \(p * page)-\((p + 1) * page - 1) of the block) has CRC-32C \(String(c, radix: 16)), its table says \(String(UInt32(littleEndian: want), radix: 16)); a write into part of it was refused, as it would hide the damage",
                                     cause: "the object is damaged; run 'archip verify \(name)'")
                }
            }
        }
    }

    /// After `data` was written at `inBlock` into an owned object that has a
    /// table: recompute the checksums of the pages it touched (reading back
    /// the parts of the edge pages it did not cover). Caller holds the block's lock.
    func updateChecksums(_ obj: ObjectName, inBlock: Int, _ data: UnsafeRawBufferPointer) throws {
        if data.isEmpty { return }
        let page = BlockChecks.pageSize
        let first = inBlock / page
        let last = (inBlock + data.count - 1) / page
        let table: [UInt8]
        if inBlock % page == 0 && data.count % page == 0 {
            table = BlockChecks.table(data)
        } else {
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: (last - first + 1) * page, alignment: 4096)
            defer { scratch.deallocate() }
            let n = try objects.read(obj, at: UInt64(first * page), into: scratch)
            guard n == scratch.count else {
                throw StoreError(.corrupt, "\(name): object \(obj) in \(objects.location) ends at byte \(first * page + n), inside its block",
                                 cause: "the object is damaged; run 'archip verify \(name)'")
            }
            table = BlockChecks.table(UnsafeRawBufferPointer(scratch))
        }
        try table.withUnsafeBytes { t in
            try objects.write(obj, at: UInt64(blockSize + first * 4), t)
            tables.update(obj, from: first, t)
        }
    }

    /// After a write into `obj` failed part way, the pages it may have touched
    /// hold old or new bytes (a short write cuts at a page's edge): their
    /// checksums are recomputed from what the object holds, so a later read
    /// returns those bytes rather than failing on a table the write left
    /// stale. Best effort: if this fails too, those pages read as damaged
    /// (loudly) until written again. Caller holds the block's lock.
    func resyncChecksums(_ obj: ObjectName, inBlock: Int, count: Int) throws {
        guard count > 0, tabled.withLock({ $0.contains(obj) }) else { return }
        let page = BlockChecks.pageSize
        let first = inBlock / page
        let last = (inBlock + count - 1) / page
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: (last - first + 1) * page, alignment: 4096)
        defer { scratch.deallocate() }
        let n = try objects.read(obj, at: UInt64(first * page), into: scratch)
        guard n == scratch.count else {
            throw StoreError(.corrupt, "\(name): object \(obj) in \(objects.location) ends at byte \(first * page + n), inside its block")
        }
        let table = BlockChecks.table(UnsafeRawBufferPointer(scratch))
        try table.withUnsafeBytes { t in
            try objects.write(obj, at: UInt64(blockSize + first * 4), t)
            tables.update(obj, from: first, t)
        }
    }

    /// Writes the whole table of an owned object from `block` (its data).
    func writeChecksums(_ obj: ObjectName, of block: UnsafeRawBufferPointer) throws {
        let table = BlockChecks.table(block)
        try table.withUnsafeBytes { try objects.write(obj, at: UInt64(blockSize), $0) }
        wroteTable(obj, table)
    }

    /// Keeps the table cache in step with a table this volume just wrote.
    func wroteTable(_ obj: ObjectName, _ table: [UInt8]) {
        if mode == .shared { return }
        tables.set(obj, table.withUnsafeBytes { TableCache.entries($0) })
    }

    /// The table of a block that was just made all zero.
    func writeZeroChecksums(_ obj: ObjectName) throws {
        let table = BlockChecks.zeroTable(blockSize: blockSize)
        try table.withUnsafeBytes { try objects.write(obj, at: UInt64(blockSize), $0) }
        wroteTable(obj, table)
    }

    /// Before the first in-place write to a committed owned object: one an
    /// older archip wrote has no table yet; give it one (from what it holds,
    /// checked against the map first) so the pages written next can be updated.
    func ensureChecksums(_ b: UInt32, _ obj: ObjectName, committed: ContentHash) throws {
        if tabled.withLock({ $0.contains(obj) }) { return }
        let table = BlockChecks.tableBytes(blockSize: blockSize)
        let size = try objects.stat(obj)?.size ?? 0
        if size != UInt64(blockSize + table) {
            let whole = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: 4096)
            defer { whole.deallocate() }
            let n = try objects.read(obj, at: 0, into: whole)
            if n < blockSize { UnsafeMutableRawBufferPointer(rebasing: whole[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
            if BlockChecks.enabled {
                let got = SHA256.blockHash(UnsafeRawBufferPointer(whole))
                guard got == committed else {
                    throw StoreError(.corrupt, "\(name): block \(b), object \(obj) in \(objects.location): its \(n) bytes hash to \(got.hex), expected \(committed.hex)",
                                     cause: "the object is damaged; run 'archip verify \(name)'")
                }
            }
            if n < blockSize {
                try objects.write(obj, at: UInt64(n), UnsafeRawBufferPointer(rebasing: whole[n...]))
            }
            try writeChecksums(obj, of: UnsafeRawBufferPointer(whole))
        }
        tabled.withLock { _ = $0.insert(obj) }
    }
}
