import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// Random operations against an in-memory model, across chains of snapshots
/// and clones, on both backends: contents must always match, and a
/// snapshot's contents must never change.
@Suite struct ModelBased {
    struct Model {
        var volumes: [String: [UInt8]] = [:]
        var snapshots: [String: [UInt8]] = [:]
    }

    /// Every seed on every backend (rados: a namespace of its own per case).
    @Test(arguments: [1 as UInt64, 2, 3], TestBackend.allCases)
    func randomOperationsMatchTheModel(seed: UInt64, backend: TestBackend) throws {
        let t = try backend.store("model-\(seed)")
        defer { t.remove() }
        try run(store: t.store, seed: seed, ops: 1500, backend: backend.rawValue)
    }

    func run(store: VolumeStore, seed: UInt64, ops: Int, backend: String) throws {
        var rng = SplitMix(seed)
        var model = Model()
        var open: [String: Volume] = [:]
        let bs: UInt32 = 64 << 10
        let first = "vol-0"
        try store.create(try VolumeName(first), size: ByteCount(3 << 20), blockSize: bs)
        model.volumes[first] = [UInt8](repeating: 0, count: 3 << 20)
        var counter = 0

        func handle(_ name: String) throws -> Volume {
            if let v = open[name] { return v }
            let v = try store.open(try VolumeName(name))
            open[name] = v
            return v
        }

        for step in 0..<ops {
            let names = model.volumes.keys.sorted()
            let name = names[rng.below(names.count)]
            let size = model.volumes[name]!.count
            let context = "\(backend) seed \(seed) step \(step) on \(name)"
            switch rng.below(100) {
            case 0..<40:
                let len = 1 + rng.below(min(size, 200_000))
                let off = rng.below(size - len + 1)
                var data = [UInt8](repeating: 0, count: len)
                if rng.below(8) != 0 { for i in 0..<len { data[i] = UInt8(truncatingIfNeeded: rng.next()) } }
                try handle(name).write(at: UInt64(off), data)
                model.volumes[name]!.replaceSubrange(off..<(off + len), with: data)
            case 40..<45:
                let len = 1 + rng.below(min(size, 300_000))
                let off = rng.below(size - len + 1)
                try handle(name).zero(at: UInt64(off), length: UInt64(len))
                model.volumes[name]!.replaceSubrange(off..<(off + len), with: repeatElement(0, count: len))
            case 45..<70:
                let len = 1 + rng.below(min(size, 300_000))
                let off = rng.below(size - len + 1)
                let got = try handle(name).read(at: UInt64(off), length: len)
                if !same(got, Array(model.volumes[name]![off..<(off + len)]), "\(context): read \(off)+\(len)") { return }
            case 70..<75:
                try handle(name).flush()
            case 75..<80:
                counter += 1
                let snap = "snap-\(counter)"
                try handle(name).snapshot(try VolumeName(snap))
                model.snapshots[snap] = model.volumes[name]!
            case 80..<84:
                guard !model.snapshots.isEmpty, model.volumes.count < 12 else { continue }
                let snaps = model.snapshots.keys.sorted()
                let snap = snaps[rng.below(snaps.count)]
                counter += 1
                let clone = "vol-\(counter)"
                let base = model.snapshots[snap]!
                let grow = rng.below(2) == 0 ? 0 : 512 * rng.below(4000)
                try store.clone(try VolumeName(snap), as: try VolumeName(clone), size: ByteCount(UInt64(base.count + grow)))
                model.volumes[clone] = base + [UInt8](repeating: 0, count: grow)
            case 84..<88:
                let newSize = max(512, 512 * (rng.below(8000) + 1))
                try handle(name).resize(to: ByteCount(UInt64(newSize)), allowShrink: true)
                if newSize < size { model.volumes[name]!.removeLast(size - newSize) }
                else { model.volumes[name]! += [UInt8](repeating: 0, count: newSize - size) }
            case 88..<90:
                _ = try handle(name).flatten()
            case 90..<94:
                try open[name]?.close()
                open[name] = nil
            case 94..<96:
                guard !model.snapshots.isEmpty else { continue }
                let snaps = model.snapshots.keys.sorted()
                let r = try store.hash(try VolumeName(snaps[rng.below(snaps.count)]))
                #expect(r.hashmap.hashes.count == (model.snapshots[snaps[0]] != nil ? r.hashmap.hashes.count : 0))
            case 96..<98:
                _ = try store.gc(apply: true, grace: 0)
            default:
                // A snapshot's content never changes, whatever happened since.
                guard !model.snapshots.isEmpty else { continue }
                let snaps = model.snapshots.keys.sorted()
                let snap = snaps[rng.below(snaps.count)]
                let s = try store.open(try VolumeName(snap), mode: .readOnly)
                let got = try s.read(at: 0, length: model.snapshots[snap]!.count)
                if !same(got, model.snapshots[snap]!, "\(context): snapshot \(snap) changed") { return }
            }
        }
        for v in open.values { try v.close() }
        _ = try store.gc(apply: true, grace: 0)
        for (name, want) in model.volumes.merging(model.snapshots, uniquingKeysWith: { a, _ in a }) {
            let v = try store.open(try VolumeName(name), mode: .readOnly)
            #expect(v.size == UInt64(want.count), "\(backend): size of \(name)")
            _ = same(try v.read(at: 0, length: want.count), want, "\(backend) seed \(seed): final content of \(name)")
            let report = try store.verify(try VolumeName(name))
            #expect(report.ok, "\(backend): verify \(name): \(report.problems)")
        }
    }
}

/// Compares without dumping megabytes into the log: names the first difference.
func same(_ got: [UInt8], _ want: [UInt8], _ what: String) -> Bool {
    if got == want { return true }
    let first = zip(got, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(got.count, want.count)
    Issue.record("\(what): differs at byte \(first) (got \(got.count) bytes, want \(want.count))")
    return false
}

struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
}
