import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// The fault-injection suite (docs/FAULTS.md): every store operation is run
/// once to count its object-store calls by kind, then again for every N up
/// to that count with the Nth call of each kind failing in each way that
/// kind can fail (`Fault.applicable`). After each case:
///
/// - the operation succeeded, or failed with a one-line `StoreError`;
/// - no lock is left: the same node opens every volume again without --force;
/// - each 4 KiB slot of a volume reads the last flushed write or a later
///   acknowledged (or the failed) write there, never a mix within a slot;
///   after a success, exactly the last write; a fill is all or nothing;
/// - `verify` reports no problem on any name (pending intents are fine);
/// - the operation, run again without faults, succeeds.
enum FaultSuite {
    static let slot = 4096
    static let blockSize: UInt32 = 64 << 10
    static let volumeSize: UInt64 = 4 * 64 << 10
    static let slots = Int(volumeSize) / slot
    /// Room for the resize operation's slots past the end.
    static let modelSlots = slots + 16

    // MARK: data

    /// Slot `s` as write `id` writes it: its id and slot number first, so a
    /// read names the write it came from and a mix within a slot is seen.
    static func pattern(_ id: Int, _ s: Int) -> [UInt8] {
        if id == 0 { return [UInt8](repeating: 0, count: slot) }
        var out = [UInt8](repeating: UInt8(truncatingIfNeeded: id &* 31 &+ s) | 1, count: slot)
        withUnsafeBytes(of: UInt32(id).littleEndian) { out.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: UInt32(s).littleEndian) { out.replaceSubrange(4..<8, with: $0) }
        return out
    }

    static func data(_ id: Int, slots range: Range<Int>) -> [UInt8] {
        range.flatMap { pattern(id, $0) }
    }

    /// Which write a slot holds: nil for bytes no write made (a mix, a torn slot).
    static func identify(_ bytes: ArraySlice<UInt8>, _ s: Int) -> Int? {
        if bytes.allSatisfy({ $0 == 0 }) { return 0 }
        let b = Array(bytes)
        let id = Int(UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24)
        return id < 1 << 20 && pattern(id, s) == b ? id : nil
    }

    // MARK: model

    /// What each slot of one volume may read: `durable` (flushed), `current`
    /// (as the writer left it), `since` (writes, acknowledged or failed,
    /// since the last flush).
    struct Model {
        var durable: [Set<Int>]
        var current: [Set<Int>]
        var since: [Set<Int>]

        init(_ initial: [Int]) {
            var all = initial
            all += [Int](repeating: 0, count: max(0, FaultSuite.modelSlots - all.count))
            durable = all.map { [$0] }
            current = durable
            since = all.map { _ in [] }
        }

        mutating func wrote(_ id: Int, _ range: Range<Int>, ok: Bool) {
            for s in range {
                since[s].insert(id)
                if ok { current[s] = [id] } else { current[s].insert(id) }
            }
        }

        mutating func flushed() {
            durable = current
            since = since.map { _ in [] }
        }

        func allowed(_ s: Int, settled: Bool) -> Set<Int> {
            settled ? current[s] : durable[s].union(since[s]).union(current[s])
        }
    }

    /// Base content: `v` (blocks 0-2 written, then snapshot `s0`, then
    /// blocks 1 and part of 2 written again: the top layer owns 1 and 2,
    /// block 0 shows through from `s0`, block 3 is a hole).
    static let s0Content: [Int] = [Int](repeating: 1, count: 48) + [Int](repeating: 0, count: 16)
    static let vContent: [Int] = [Int](repeating: 1, count: 16) + [Int](repeating: 2, count: 24)
        + [Int](repeating: 1, count: 8) + [Int](repeating: 0, count: 16)

    static func setUp(_ store: VolumeStore) throws {
        try store.create(name("v"), size: ByteCount(volumeSize), blockSize: blockSize)
        try store.withVolume(name("v")) { try $0.write(at: 0, data(1, slots: 0..<48)) }
        try store.snapshot(name("v"), as: name("s0"))
        try store.withVolume(name("v")) { try $0.write(at: UInt64(16 * slot), data(2, slots: 16..<40)) }
    }

    // MARK: operations

    /// One volume the operation wrote, with its model, and whether the
    /// operation got as far as a successful close of it.
    final class Tracked {
        let name: VolumeName
        var model: Model
        var settled = false
        /// Slots that must exist afterwards (a resize may shrink the rest).
        var checked: Range<Int> = 0..<FaultSuite.slots
        /// All-or-nothing (fill): the slots read either `model.durable` or this.
        var whole: [Int]?
        init(_ name: VolumeName, _ initial: [Int]) { self.name = name; model = Model(initial) }
    }

    /// Writes through a volume, keeping the model.
    struct Writer {
        let v: Volume
        let t: Tracked
        func write(_ id: Int, _ range: Range<Int>) throws {
            do {
                try v.write(at: UInt64(range.lowerBound * FaultSuite.slot), FaultSuite.data(id, slots: range))
            } catch {
                t.model.wrote(id, range, ok: false)
                throw error
            }
            t.model.wrote(id, range, ok: true)
        }
        func zero(_ range: Range<Int>) throws {
            do {
                try v.zero(at: UInt64(range.lowerBound * FaultSuite.slot), length: UInt64(range.count * FaultSuite.slot))
            } catch {
                t.model.wrote(0, range, ok: false)
                throw error
            }
            t.model.wrote(0, range, ok: true)
        }
        func flush() throws {
            try v.flush()
            t.model.flushed()
        }
        func close() throws {
            try v.close()
            t.model.flushed()
            t.settled = true
        }
    }

    /// Opens `name`, runs `body`, closes; a failure closes too (as
    /// `withVolume` does) and is rethrown.
    static func session(_ store: VolumeStore, _ t: Tracked, _ body: (Writer) throws -> Void) throws {
        let v = try store.open(t.name)
        let w = Writer(v: v, t: t)
        do { try body(w) } catch {
            _ = try? v.close()
            throw error
        }
        try w.close()
    }

    struct Operation: CustomStringConvertible, Sendable {
        var name: String
        /// Extra set-up on the clean store, after `setUp`.
        var prepare: @Sendable (VolumeStore) throws -> Void = { _ in }
        /// The operation on the faulty store; calls `arm` where faults start.
        /// `retry`: the second, fault-free run (names it creates get a suffix).
        var run: @Sendable (VolumeStore, _ arm: () -> Void, _ retry: Bool, inout [Tracked]) throws -> Void
        var description: String { name }
    }

    static let fillImage: [Int] = [Int](repeating: 40, count: 48) + [Int](repeating: 0, count: 16)

    static func fill(_ store: VolumeStore, _ target: VolumeName, _ content: [Int], resume: Bool, mustCreate: Bool) throws {
        let stage = try FillStage.begin(store: store, target: target, imageSize: volumeSize, blockSize: Int(blockSize),
                                        sourceID: "fault-suite", resume: resume)
        let perBlock = Int(blockSize) / slot
        for b in 0..<(content.count / perBlock) {
            let bytes = (b * perBlock..<(b + 1) * perBlock).flatMap { pattern(content[$0], $0) }
            let h = bytes.withUnsafeBytes { SHA256.blockHash($0) }
            if !stage.isDone(b) { try bytes.withUnsafeBytes { _ = try stage.storeBlock(b, $0, hash: h) } }
        }
        try stage.commit(volumeSize: volumeSize, mustCreate: mustCreate)
    }

    static let operations: [Operation] = [
        Operation(name: "write") { store, arm, _, tracked in
            let t = Tracked(name("v"), vContent)
            tracked.append(t)
            arm()
            try session(store, t) { w in
                try w.write(10, 18..<22)   // in place, into an owned block (intent first)
                try w.write(11, 32..<48)   // a whole owned block, replaced
                try w.write(12, 2..<4)     // copy-on-write from the snapshot's block
                try w.write(13, 50..<51)   // into a hole
            }
        },
        Operation(name: "flush") { store, arm, _, tracked in
            let t = Tracked(name("v"), vContent)
            tracked.append(t)
            arm()
            try session(store, t) { w in
                try w.write(10, 18..<22)
                try w.flush()
                try w.write(12, 2..<4)
                try w.flush()
                try w.zero(32..<48)        // a whole owned block zeroed
                try w.write(14, 20..<21)
                try w.flush()
            }
        },
        Operation(name: "snapshot") { store, arm, retry, tracked in
            let t = Tracked(name("v"), vContent)
            tracked.append(t)
            arm()
            try session(store, t) { w in
                try w.write(10, 18..<22)
                let before = t.model
                do {
                    try w.v.snapshot(name(retry ? "s1-retry" : "s1"))
                } catch {
                    // The snapshot may exist or not; if it does, it holds what was written.
                    let s = Tracked(name(retry ? "s1-retry" : "s1"), [])
                    s.model = before
                    tracked.append(s)
                    throw error
                }
                w.t.model.flushed()
                let s = Tracked(name(retry ? "s1-retry" : "s1"), [])
                s.model = w.t.model
                s.settled = true
                tracked.append(s)
                try w.write(12, 2..<4)
            }
        },
        Operation(name: "clone") { store, arm, retry, tracked in
            let c = Tracked(name(retry ? "c-retry" : "c"), s0Content)
            tracked.append(c)
            arm()
            try store.clone(name("s0"), as: c.name)
            try session(store, c) { w in
                try w.write(20, 4..<6)     // copy-on-write from the parent
                try w.write(21, 48..<64)   // a whole block over a hole
            }
        },
        Operation(name: "resize") { store, arm, _, tracked in
            let t = Tracked(name("v"), vContent)
            t.checked = 0..<(FaultSuite.slots - 1)
            tracked.append(t)
            arm()
            try session(store, t) { w in
                try w.v.resize(to: ByteCount(volumeSize + UInt64(blockSize)), allowShrink: false)
                try w.write(30, 66..<68)   // in the new block
                try w.v.resize(to: ByteCount(volumeSize - UInt64(slot)), allowShrink: true)
            }
        },
        Operation(name: "fill") { store, arm, retry, tracked in
            let t = Tracked(name("v"), vContent)
            t.whole = fillImage
            let f = Tracked(name("f"), fillImage)
            f.whole = fillImage
            tracked += [t, f]
            arm()
            try fill(store, t.name, fillImage, resume: retry, mustCreate: false)   // into an existing volume
            try fill(store, f.name, fillImage, resume: retry, mustCreate: !retry)   // a new one
        },
        Operation(name: "gc", prepare: { store in
            // Garbage: a dead layer's owned blocks and unreferenced content blocks.
            try store.create(name("g"), size: ByteCount(volumeSize), blockSize: blockSize)
            try store.withVolume(name("g")) { try $0.write(at: 0, data(50, slots: 0..<20)) }
            try fill(store, name("g"), [Int](repeating: 51, count: 48) + [Int](repeating: 0, count: 16), resume: false, mustCreate: false)
            try store.remove(name("g"))
        }) { store, arm, _, tracked in
            tracked.append(Tracked(name("v"), vContent))
            tracked.append(Tracked(name("s0"), s0Content))
            arm()
            _ = try store.gc(apply: true, grace: 0)
            for t in tracked { t.settled = true }
        },
        Operation(name: "close") { store, arm, _, tracked in
            let t = Tracked(name("v"), vContent)
            tracked.append(t)
            let v = try store.open(t.name)
            let w = Writer(v: v, t: t)
            try w.write(10, 18..<22)
            try w.write(11, 32..<48)
            try w.flush()
            try w.write(12, 2..<4)
            try w.write(13, 50..<51)
            arm()
            try w.close()
        },
    ]

    // MARK: running

    struct Outcome {
        var counts: [FaultCall: Int]
        var fired: Int
        var error: Error?
    }

    /// One case on a store of its own: set up, run the operation with
    /// `plan`, check everything the suite promises. Returns the counts.
    static func runCase(_ backend: TestBackend, _ op: Operation, _ plan: FaultPlan?) throws -> Outcome {
        let t = try backend.store("fault-\(op.name)")
        defer { t.remove() }
        try setUp(t.store)
        try op.prepare(t.store)
        let what = "\(backend) \(op.name) \(plan.map(\.description) ?? "no fault")"

        let (store, faulty) = try t.faulty(node: "n1")
        var tracked: [Tracked] = []
        var failure: Error?
        do { try op.run(store, { faulty.arm(plan) }, false, &tracked) } catch { failure = error }
        let outcome = Outcome(counts: faulty.callCounts, fired: faulty.faultsFired, error: failure)
        faulty.disarm()
        if plan == nil, let failure {
            Issue.record("\(what): failed without a fault: \(failure)")
        }
        if let failure {
            #expect(failure is StoreError, "\(what): untyped error \(failure)")
            #expect(!"\(failure)".contains("\n"), "\(what): error is not one line: \(failure)")
        }
        try check(t, what, tracked, succeeded: failure == nil)

        // The same operation again, without faults, succeeds.
        let (again, quiet) = try t.faulty(node: "n1")
        var retried: [Tracked] = []
        do { try op.run(again, { quiet.arm(nil) }, true, &retried) } catch {
            Issue.record("\(what): the retry failed: \(error)")
        }
        // (Its writes start from what the failed run left: locks and verify only.)
        try check(t, what + " (retry)", [], succeeded: true)
        return outcome
    }

    /// Locks, verify, and the slots, through a fresh handle on the store as
    /// the same node.
    static func check(_ t: TestStore, _ what: String, _ tracked: [Tracked], succeeded: Bool) throws {
        let store = try t.node("n1")
        let (items, damaged) = try store.listAll()
        #expect(damaged.isEmpty, "\(what): damaged names \(damaged)")
        for i in items {
            let n = name(i.name)
            if let l = try store.lockState(n) {
                #expect(l.holders.isEmpty, "\(what): \(n) is still locked by \(l.holders)")
            }
            let r = try store.verify(n)
            #expect(r.problems.isEmpty, "\(what): verify \(n): \(r.problems.map(\.description))")
        }
        for tr in tracked {
            guard let item = items.first(where: { $0.name == tr.name.value }) else {
                // Only what a failed operation was making may be missing.
                #expect(!succeeded, "\(what): \(tr.name) is missing")
                continue
            }
            let bytes: [UInt8]
            do {
                // Exclusive, as the same node: a lock left behind fails this.
                let v = try store.open(tr.name, mode: item.kind == "volume" ? .exclusive : .readOnly)
                defer { try? v.close() }
                bytes = try v.read(at: 0, length: tr.checked.count * slot)
            } catch {
                Issue.record("\(what): \(tr.name) cannot be opened and read: \(error)")
                continue
            }
            let got = tr.checked.map { s in identify(bytes[(s * slot)..<((s + 1) * slot)], s) }
            if let whole = tr.whole {
                let old = tr.checked.map { tr.model.durable[$0].first! }
                let new = tr.checked.map { whole[$0] }
                #expect(got.map { $0 ?? -1 } == old || got.map { $0 ?? -1 } == new,
                        "\(what): \(tr.name) is neither all old nor all new: \(got)")
                if succeeded { #expect(got.map { $0 ?? -1 } == new, "\(what): \(tr.name) after a successful fill: \(got)") }
                continue
            }
            for s in tr.checked {
                let allowed = tr.model.allowed(s, settled: succeeded && tr.settled)
                guard let id = got[s - tr.checked.lowerBound] else {
                    Issue.record("\(what): \(tr.name) slot \(s) holds bytes no single write made (allowed \(allowed.sorted()))")
                    continue
                }
                #expect(allowed.contains(id), "\(what): \(tr.name) slot \(s) reads write \(id), allowed \(allowed.sorted())")
            }
        }
    }

    /// Every case of one operation: a counting pass, then each planned fault.
    static func sweep(_ backend: TestBackend, _ op: Operation) throws -> Int {
        let counted = try runCase(backend, op, nil)
        let calls = FaultCall.allCases.compactMap { c in counted.counts[c].map { "\(c) \($0)" } }
        print("fault injection: \(backend) \(op.name) makes: \(calls.joined(separator: ", "))")
        var cases = 0
        for call in FaultCall.allCases {
            let n = counted.counts[call] ?? 0
            guard n > 0 else { continue }
            for i in 1...n {
                for fault in Fault.applicable(to: call) {
                    let plan = FaultPlan(call, i, fault)
                    let out = try runCase(backend, op, plan)
                    #expect(out.fired >= 1 || out.counts[call, default: 0] < i, "\(backend) \(op.name) \(plan): never fired")
                    cases += 1
                }
                if call == .put || call == .write || call == .create {
                    // A disk that stays full from the Nth write on.
                    _ = try runCase(backend, op, FaultPlan(call, i, .enospc, persistent: true))
                    cases += 1
                }
            }
        }
        return cases
    }
}

@Suite struct FaultInjection {
    static let cases: [(TestBackend, String)] = TestBackend.persistent.flatMap { b in
        FaultSuite.operations.map { (b, $0.name) }
    }

    @Test(arguments: FaultInjection.cases)
    func everyCallOfEveryOperationFails(_ backend: TestBackend, _ operation: String) throws {
        let op = FaultSuite.operations.first { $0.name == operation }!
        let start = Date()
        let n = try FaultSuite.sweep(backend, op)
        print("fault injection: \(backend) \(operation): \(n) cases in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
        #expect(n > 0)
    }
}
