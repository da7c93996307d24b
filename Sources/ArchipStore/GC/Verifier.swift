import Foundation

/// The result of `archip verify`.
public struct VerifyReport: Codable, Sendable {
    public struct Problem: Codable, Sendable, CustomStringConvertible {
        public var layer: String
        public var block: UInt32
        public var object: String
        public var problem: String
        public var description: String { "block \(block) (layer \(layer), object \(object)): \(problem)" }
    }

    public var name: String
    public var layers: Int
    public var blocksChecked: Int
    public var bytesRead: UInt64
    /// Blocks written in place when a writer stopped without flushing: their
    /// checksum is re-taken when the volume is next opened for writing.
    public var pending: [UInt32]
    public var problems: [Problem]
    public var ok: Bool { problems.isEmpty }
}

extension VolumeStore {
    /// Re-reads every block the name references, through its whole parent
    /// chain, and checks each against its checksum or content address.
    /// Reports every bad or missing block rather than stopping at the first.
    public func verify(_ name: VolumeName) throws -> VerifyReport {
        let rec = try record(name)
        let top = try loadCommitted(rec.layer)
        let layers = [top.map] + (try chain(from: top.map.parent))
        var pending: [UInt32] = []
        var todo: [(LayerMap, UInt32, BlockEntry)] = []
        for (i, layer) in layers.enumerated() {
            layer.forEachEntry { b, e in
                if case .zero = e { return }
                if i == 0, case .owned = e, top.pendingIntents.contains(b) {
                    pending.append(b)
                    return
                }
                todo.append((layer, b, e))
            }
        }
        let work = todo
        let problems = Locked<[VerifyReport.Problem]>([])
        let bytesRead = Locked<UInt64>(0)
        let workers = max(1, min(work.count, ProcessInfo.processInfo.activeProcessorCount * 2))
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var i = w
            while i < work.count {
                let (layer, b, e) = work[i]
                i += workers
                let bs = Int(layer.blockSize)
                let obj: ObjectName
                let expected: ContentHash
                switch e {
                case .owned(let h): obj = StoreLayout.owned(layer.id, b); expected = h
                case .content(let h): obj = StoreLayout.content(h); expected = h
                case .zero: continue
                }
                func report(_ text: String) {
                    problems.withLock { $0.append(.init(layer: layer.id.hex, block: b, object: obj.path, problem: text)) }
                }
                do {
                    guard let st = try objects.stat(obj) else { report("object is missing"); continue }
                    // Owned objects of format 1.1 carry a CRC-32C per 4 KiB page after the block.
                    var withTable = false
                    if case .owned = e, st.size == UInt64(bs + BlockChecks.tableBytes(blockSize: bs)) { withTable = true }
                    if st.size > UInt64(bs) && !withTable {
                        report("object is \(st.size) bytes, larger than the block size \(bs)")
                        continue
                    }
                    let data = try objects.readAll(obj)
                    bytesRead.withLock { $0 += UInt64(data.count) }
                    let block = data.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[0..<min(data.count, bs)]) }
                    let got = SHA256.blockHash(block)
                    var found: [String] = []
                    if got != expected { found.append("content hashes to \(got.hex), expected \(expected.hex)") }
                    if withTable, let bad = BlockChecks.firstBadPage(data, blockSize: bs) {
                        found.append("4 KiB page \(bad) does not match its CRC-32C")
                    }
                    if !found.isEmpty { report(found.joined(separator: "; ")) }
                } catch {
                    report("unreadable: \(error)")
                }
            }
        }
        let sorted = problems.withLock { $0 }.sorted { ($0.layer, $0.block) < ($1.layer, $1.block) }
        return VerifyReport(name: name.value, layers: layers.count, blocksChecked: work.count,
                            bytesRead: bytesRead.withLock { $0 }, pending: pending.sorted(), problems: sorted)
    }
}
