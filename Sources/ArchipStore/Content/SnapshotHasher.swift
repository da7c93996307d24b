import Foundation

/// The result of `archip hash`: a Pithos hashmap and its top hash.
public struct HashResult: Sendable {
    public var hashmap: PithosHashmap
    public var topHash: ContentHash
    /// Owned blocks turned into content blocks by this run.
    public var converted: Int
    /// Content blocks this run had to write (the rest were already in the store).
    public var written: Int
}

extension VolumeStore {
    /// Turns every owned block of a snapshot's frozen layers into an immutable
    /// content-addressed block (shared with every image, snapshot and volume
    /// holding the same bytes) and returns the snapshot's Pithos hashmap.
    public func hash(_ name: VolumeName) throws -> HashResult {
        let rec = try record(name)
        guard rec.kind == .snapshot else {
            throw StoreError(.wrongKind, "'\(name)' is a volume, which can still change; snapshot it and hash the snapshot")
        }
        var layers = try chain(from: rec.layer)
        var converted = 0, written = 0
        for i in layers.indices {
            let (c, w, map) = try convertOwned(layers[i])
            converted += c; written += w
            layers[i] = map
        }
        let top = layers[0]
        let ancestors = Array(layers.dropFirst())
        var hashes: [ContentHash] = []
        hashes.reserveCapacity(Int(top.blockCount))
        for b in 0..<top.blockCount {
            switch Volume.resolveCommitted(UInt32(b), top: top, ancestors: ancestors).1 {
            case .content(let h)?, .owned(let h)?: hashes.append(h)
            case .zero?, nil: hashes.append(ContentHash.ofEmpty)
            }
        }
        let map = PithosHashmap(blockSize: UInt64(top.blockSize), bytes: top.size, hashes: hashes)
        return HashResult(hashmap: map, topHash: PithosHashmap.topHash(hashes), converted: converted, written: written)
    }

    /// Owned → content for one frozen layer; the map is rewritten before the
    /// owned objects go, and readers that miss one reload the map.
    private func convertOwned(_ layer: LayerMap) throws -> (Int, Int, LayerMap) {
        var ownedList: [(UInt32, ContentHash)] = []
        layer.forEachEntry { b, e in if case .owned(let h) = e { ownedList.append((b, h)) } }
        if ownedList.isEmpty { return (0, 0, layer) }
        let bs = Int(layer.blockSize)
        let owned = ownedList
        let created = Locked<[ObjectName]>([])
        let failure = Locked<Error?>(nil)
        let workers = max(1, min(owned.count, ProcessInfo.processInfo.activeProcessorCount))
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var buffer = [UInt8](repeating: 0, count: bs)
            var i = w
            while i < owned.count {
                let (b, h) = owned[i]
                i += workers
                do {
                    let obj = StoreLayout.owned(layer.id, b)
                    let n = try buffer.withUnsafeMutableBytes { try objects.read(obj, at: 0, into: $0) }
                    let data = buffer.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[0..<n]) }
                    let got = SHA256.blockHash(data)
                    guard got == h else {
                        throw StoreError(.corrupt, "block \(b) of layer \(layer.id) hashes to \(got.hex), its map says \(h.hex)", cause: "run 'archip verify'")
                    }
                    let stored = ZeroScan.lengthWithoutTrailingZeros(data)
                    let c = StoreLayout.content(h)
                    if try objects.create(c, UnsafeRawBufferPointer(rebasing: data[0..<stored]), durable: false) {
                        created.withLock { $0.append(c) }
                    }
                } catch {
                    failure.withLock { $0 = error }
                }
            }
        }
        if let e = failure.withLock({ $0 }) { throw e }
        let newBlocks = created.withLock { $0 }
        try objects.sync(newBlocks)
        var map = layer
        var updates: [UInt32: BlockEntry?] = [:]
        for (b, h) in owned { updates[b] = .some(.content(h)) }
        map.apply(updates)
        map.generation += 1
        try objects.put(StoreLayout.map(map.id), MapFormatV1.encode(map), durable: true)
        // The new map holds the frozen log's updates; the log is now stale (older generation).
        try objects.remove(StoreLayout.log(map.id))
        for (b, _) in owned { try objects.remove(StoreLayout.owned(layer.id, b)) }
        return (owned.count, newBlocks.count, map)
    }
}
