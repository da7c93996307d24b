import Foundation
import Testing
@testable import ArchipStore

@Suite struct MapFormat {
    func sampleMap(entries: Int) -> LayerMap {
        var m = LayerMap(id: .random(), parent: .random(), kind: .clone, size: 1 << 40, blockSize: 4 << 20,
                         parentBlocks: 1000, epoch: 3)
        var updates: [UInt32: BlockEntry?] = [:]
        for i in 0..<entries {
            let h = SHA256.digest(withUnsafeBytes(of: i) { Array($0) })
            updates[UInt32(i * 7)] = .some(i % 3 == 0 ? .zero : i % 3 == 1 ? .owned(h) : .content(h))
        }
        m.apply(updates)
        return m
    }

    @Test func roundTrip() throws {
        let m = sampleMap(entries: 1000)
        let back = try MapFormatV1.decode(MapFormatV1.encode(m), what: "test")
        #expect(back.id == m.id && back.parent == m.parent && back.size == m.size && back.kind == m.kind)
        #expect(back.entryCount == 1000)
        m.forEachEntry { b, e in #expect(back.entry(b) == e) }
        #expect(back.entry(1) == nil)
    }

    @Test func everyFlippedByteIsDetected() throws {
        let bytes = MapFormatV1.encode(sampleMap(entries: 20))
        for i in stride(from: 0, to: bytes.count, by: 7) {
            var bad = bytes
            bad[i] ^= 0x40
            #expect(throws: StoreError.self) { try MapFormatV1.decode(bad, what: "map x") }
        }
    }

    @Test func truncationIsDetected() {
        let bytes = MapFormatV1.encode(sampleMap(entries: 20))
        for cut in [0, 1, 19, 52, bytes.count / 2, bytes.count - 1] {
            do {
                _ = try MapFormatV1.decode(Array(bytes[0..<cut]), what: "map layers/x/map")
                Issue.record("truncated map of \(cut) bytes accepted")
            } catch let e as StoreError {
                #expect(e.code == .corrupt)
                #expect(e.description.contains("layers/x/map"))
            } catch { Issue.record("\(error)") }
        }
    }

    @Test func applyMergesAndClears() {
        var m = sampleMap(entries: 10)
        let clear: BlockEntry? = nil
        m.apply([7: clear, 3: .zero, 700: .content(.ofEmpty)])
        #expect(m.entry(7) == nil)
        #expect(m.entry(3) == .zero)
        #expect(m.entry(700) == .content(.ofEmpty))
        #expect(m.entryCount == 11)
        m.apply([3: clear])
        #expect(m.entry(3) == nil)
    }

    @Test func logTornTailIsIgnoredButMidLogDamageIsNot() throws {
        let layer = LayerID.random()
        let h = SHA256.digest([1, 2, 3])
        var log = LayerLog.header(layer: layer, generation: 5)
        log += LayerLog.batch([.intent(4)])
        log += LayerLog.batch([.set(4, .owned(h)), .set(9, nil)])
        let full = try #require(try LayerLog.read(log, layer: layer, generation: 5, blockCount: 100, what: "log"))
        #expect(full.updates[4] == .some(.owned(h)))
        #expect(full.pendingIntents.isEmpty)
        // A batch cut short by a crash: ignored, the intent before it stands.
        let torn = log + Array(LayerLog.batch([.intent(7)]).dropLast(3))
        let t = try #require(try LayerLog.read(torn, layer: layer, generation: 5, blockCount: 100, what: "log"))
        #expect(t.tornTail && t.pendingIntents.isEmpty && t.validLength == log.count)
        // Damage followed by more batches is corruption.
        var mid = log + LayerLog.batch([.intent(8)])
        mid[LayerLog.headerBytes + 6] ^= 1
        #expect(throws: StoreError.self) { try LayerLog.read(mid, layer: layer, generation: 5, blockCount: 100, what: "log") }
        // A log of an older map generation is stale.
        #expect(try LayerLog.read(log, layer: layer, generation: 6, blockCount: 100, what: "log") == nil)
    }
}
