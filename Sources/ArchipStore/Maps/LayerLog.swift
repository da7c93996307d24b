/// The append-only log beside a writable layer's map (`layers/<id>/log`).
///
/// A flush appends one batch of entry updates and syncs the log instead of
/// rewriting the whole map; the map is rewritten (compacted) only when the log
/// grows large, at close, and before a snapshot freezes the layer. An *intent*
/// batch is appended (and synced) before the first in-place write to a block
/// the committed map holds as owned, so that after a crash `verify` and
/// recovery know that block's checksum may be stale. See docs/FORMAT.md.
///
/// Header: magic `ARCHLOG_` version:u32 layer[16] generation:u64 sha256[32].
/// Batch: count:u32, count × (type:u8 index:u32 kind:u8 hash[32]), sha256[32]
/// of the count and records. Type 1 = intent, 2 = set (kind 0 clears the entry).
struct LayerLog {
    static let magic = Array("ARCHLOG_".utf8)
    static let version: UInt32 = 1
    static let headerBytes = 8 + 4 + 16 + 8 + 32
    static let recordBytes = 1 + 4 + 1 + 32

    enum Record: Equatable {
        case intent(UInt32)
        case set(UInt32, BlockEntry?)
    }

    /// What a log says once read: committed updates (in order) and the blocks
    /// whose intents are not yet followed by a set.
    struct Contents {
        var updates: [UInt32: BlockEntry?] = [:]
        var pendingIntents: Set<UInt32> = []
        /// Bytes of valid log (a torn last batch is not counted).
        var validLength: Int = 0
        var tornTail = false
    }

    static func header(layer: LayerID, generation: UInt64) -> [UInt8] {
        var w = BinaryWriter(capacity: headerBytes)
        w.raw(magic)
        w.u32(version)
        w.raw(layer.raw)
        w.u64(generation)
        let sum = w.bytes.withUnsafeBytes { SHA256.digest($0) }
        w.raw(sum.bytes)
        return w.bytes
    }

    static func batch(_ records: [Record]) -> [UInt8] {
        var w = BinaryWriter(capacity: 4 + records.count * recordBytes + 32)
        w.u32(UInt32(records.count))
        for r in records {
            switch r {
            case .intent(let i):
                w.u8(1); w.u32(i); w.u8(0); w.hash(.zero)
            case .set(let i, let e):
                w.u8(2); w.u32(i); w.u8(e?.kindByte ?? 0); w.hash(e?.hash ?? .zero)
            }
        }
        let sum = w.bytes.withUnsafeBytes { SHA256.digest($0) }
        w.raw(sum.bytes)
        return w.bytes
    }

    /// Reads a log. Returns nil when it belongs to another map generation
    /// (a leftover of a compaction interrupted after the map was written).
    static func read(_ bytes: [UInt8], layer: LayerID, generation: UInt64, blockCount: UInt64, what: String) throws -> Contents? {
        guard bytes.count >= headerBytes else {
            // A header is written and synced before any batch; a short one is a
            // crash during creation: nothing was ever committed through it.
            return Contents(validLength: 0, tornTail: !bytes.isEmpty)
        }
        let headerSum = bytes.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[0..<(headerBytes - 32)])) }
        var h = BinaryReader(bytes, what: what)
        guard try h.raw(8) == magic else { throw StoreError(.corrupt, "\(what): bad magic") }
        let v = try h.u32()
        guard v == version else { throw StoreError(.unsupported, "\(what): log version \(v) is not supported") }
        let logLayer = LayerID(raw: try h.raw(16))
        let gen = try h.u64()
        guard try h.hash() == headerSum else { throw StoreError(.corrupt, "\(what): header checksum mismatch") }
        guard logLayer == layer else { throw StoreError(.corrupt, "\(what): belongs to layer \(logLayer), not \(layer)") }
        if gen != generation { return nil }

        var out = Contents(validLength: headerBytes)
        var p = headerBytes
        while p < bytes.count {
            var r = BinaryReader(bytes, offset: p, what: what)
            guard let count = try? r.u32() else { out.tornTail = true; break }
            let length = 4 + Int(count) * recordBytes + 32
            guard count <= 1 << 24, p + length <= bytes.count else { out.tornTail = true; break }
            let sum = bytes.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[p..<(p + length - 32)])) }
            let stored = bytes.withUnsafeBytes { ContentHash(bytes: UnsafeRawBufferPointer(rebasing: $0[(p + length - 32)..<(p + length)])) }
            guard sum == stored else {
                // Only the last append can be torn: each append is synced
                // before the next begins. Damage anywhere else is corruption.
                if p + length < bytes.count {
                    throw StoreError(.corrupt, "\(what): batch at offset \(p) is damaged and more batches follow")
                }
                out.tornTail = true
                break
            }
            for _ in 0..<count {
                let type = try r.u8()
                let index = try r.u32()
                let kind = try r.u8()
                let hash = try r.hash()
                guard UInt64(index) < blockCount else {
                    throw StoreError(.corrupt, "\(what): record for block \(index) beyond the layer's \(blockCount) blocks")
                }
                switch type {
                case 1:
                    out.pendingIntents.insert(index)
                case 2:
                    if kind == 0 {
                        out.updates[index] = .some(nil)
                    } else if let e = BlockEntry(kind: kind, hash: hash) {
                        out.updates[index] = .some(e)
                    } else {
                        throw StoreError(.corrupt, "\(what): record with unknown entry kind \(kind)")
                    }
                    out.pendingIntents.remove(index)
                default:
                    throw StoreError(.corrupt, "\(what): unknown record type \(type)")
                }
            }
            p += length
            out.validLength = p
        }
        return out
    }
}
