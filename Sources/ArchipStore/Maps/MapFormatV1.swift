/// Version 1 of the layer map object (`layers/<id>/map`); see docs/FORMAT.md.
///
/// Body: id[16] parent[16] kind:u8 flags:u8 reserved:u16 blockSize:u32
/// size:u64 parentBlocks:u64 epoch:u64 generation:u64 createdAt:u64
/// entryCount:u64, then entryCount × (index:u32 kind:u8 hash[32]), indices
/// strictly increasing. Wrapped in the checksummed frame (magic `ARCHMAP_`).
enum MapFormatV1 {
    static let magic = Array("ARCHMAP_".utf8)
    static let version: UInt32 = 1
    static let headerBytes = 16 + 16 + 1 + 1 + 2 + 4 + 8 * 6
    static let entryBytes = 4 + 1 + 32

    static func encode(_ map: LayerMap) -> [UInt8] {
        var w = BinaryWriter(capacity: headerBytes + map.entryCount * entryBytes)
        w.raw(map.id.raw)
        w.raw(map.parent.raw)
        w.u8(map.kind.rawValue)
        w.u8(0)
        w.u16(0)
        w.u32(map.blockSize)
        w.u64(map.size)
        w.u64(map.parentBlocks)
        w.u64(map.epoch)
        w.u64(map.generation)
        w.u64(map.createdAt)
        w.u64(UInt64(map.entryCount))
        map.forEachEntry { index, entry in
            w.u32(index)
            w.u8(entry.kindByte)
            w.hash(entry.hash)
        }
        return Frame.seal(magic: magic, version: version, body: w.bytes)
    }

    static func decode(_ bytes: [UInt8], what: String) throws -> LayerMap {
        let (v, body) = try Frame.open(bytes, magic: magic, what: what)
        guard v == version else {
            throw StoreError(.unsupported, "\(what): map format version \(v) is not supported by this archip (knows \(version))")
        }
        var r = body
        let id = LayerID(raw: try r.raw(16))
        let parent = LayerID(raw: try r.raw(16))
        let kindByte = try r.u8()
        guard let kind = LayerKind(rawValue: kindByte) else { throw StoreError(.corrupt, "\(what): unknown layer kind \(kindByte)") }
        _ = try r.u8(); _ = try r.u16()
        let blockSize = try r.u32()
        do { try LayerMap.checkBlockSize(blockSize) } catch {
            throw StoreError(.corrupt, "\(what): bad block size \(blockSize)")
        }
        let size = try r.u64()
        guard size <= ByteCount.maximumVolumeSize.bytes else { throw StoreError(.corrupt, "\(what): size \(size) out of range") }
        let parentBlocks = try r.u64()
        let epoch = try r.u64()
        let generation = try r.u64()
        let createdAt = try r.u64()
        let count = try r.u64()
        var map = LayerMap(id: id, parent: parent, kind: kind, size: size, blockSize: blockSize,
                           parentBlocks: parentBlocks, epoch: epoch, generation: generation, createdAt: createdAt)
        guard !parent.isNone || parentBlocks == 0 else {
            throw StoreError(.corrupt, "\(what): \(parentBlocks) parent blocks but no parent")
        }
        guard count <= map.blockCount, UInt64(r.remaining) == count * UInt64(entryBytes) else {
            throw StoreError(.corrupt, "\(what): entry count \(count) does not match the object (\(r.remaining) bytes of entries, \(map.blockCount) blocks)")
        }
        let n = Int(count)
        var indices = [UInt32](repeating: 0, count: n)
        var kinds = [UInt8](repeating: 0, count: n)
        var hashes = [ContentHash](repeating: .zero, count: n)
        let start = r.offset
        let blockCount = map.blockCount
        try bytes.withUnsafeBytes { raw in
            var p = start
            var previous: Int64 = -1
            for i in 0..<n {
                let index = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: p, as: UInt32.self))
                let k = raw[p + 4]
                guard Int64(index) > previous, UInt64(index) < blockCount, (1...3).contains(k) else {
                    throw StoreError(.corrupt, "\(what): entry \(i) is invalid (block \(index), kind \(k))")
                }
                previous = Int64(index)
                indices[i] = index
                kinds[i] = k
                hashes[i] = ContentHash(bytes: UnsafeRawBufferPointer(rebasing: raw[(p + 5)..<(p + 37)]))
                p += entryBytes
            }
        }
        map.setEntries(indices: indices, kinds: kinds, hashes: hashes)
        return map
    }
}
