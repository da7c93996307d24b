/// Hooks for benchmarks: build a large map without writing its data, so map
/// costs (load, snapshot, clone) can be measured at 1 TiB on a small disk.
@_spi(Bench)
extension VolumeStore {
    /// Gives volume `name` `count` content entries, spread evenly over its blocks,
    /// all naming `content` (stored once).
    public func benchInstallEntries(_ name: VolumeName, count: Int, content: [UInt8]) throws {
        let rec = try record(name)
        var map = try loadCommitted(rec.layer).map
        let hash = SHA256.blockHash(content)
        _ = try objects.create(StoreLayout.content(hash), content, durable: false)
        let blocks = map.blockCount
        let step = max(1, blocks / UInt64(count))
        var updates: [UInt32: BlockEntry?] = [:]
        updates.reserveCapacity(count)
        var b: UInt64 = 0
        while updates.count < count && b < blocks {
            updates[UInt32(b)] = .some(.content(hash))
            b += step
        }
        map.apply(updates)
        map.generation += 1
        try objects.put(StoreLayout.map(map.id), MapFormatV1.encode(map), durable: true)
        try objects.remove(StoreLayout.log(map.id))
    }
}
