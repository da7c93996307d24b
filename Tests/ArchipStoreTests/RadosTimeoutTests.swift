import ArchipRados
import ArchipTestSupport
import Foundation
import Testing
@testable import ArchipStore

@Suite struct RadosSettingsFromConfig {
    @Test func opTimeoutIsReadWithUnitsAndDefaultsToAMinute() throws {
        #expect(try RadosSettings.fromConfig([:], file: "f").opTimeout == 60)
        #expect(try RadosSettings.fromConfig(["rados.op_timeout": "3s"], file: "f").opTimeout == 3)
        #expect(try RadosSettings.fromConfig(["rados.op_timeout": "0"], file: "f").opTimeout == 0)
        #expect(try RadosSettings.fromConfig(["rados.op_timeout": "2m"], file: "f").opTimeout == 120)
        #expect(throws: StoreError.self) { try RadosSettings.fromConfig(["rados.op_timeout": "soon"], file: "f") }
        let d = try RadosSettings.fromConfig(["rados.op_timeout": "5s"], file: "f").forDaemon
        #expect(d.opTimeout == 5 && !d.boundsObjectOps)
    }
}

/// What a client does while the cluster's only OSD is stopped (SIGSTOP): only
/// on a cluster of the test's own (PausableOSD).
@Suite(.serialized, .enabled(if: PausableOSD.unavailable == nil, "\(PausableOSD.unavailable ?? "")"))
struct RadosStoppedOSD {
    /// A read, a write and a listing each fail within the bound, in one line
    /// naming the op, the object and the store; all work again once the OSD is back.
    @Test func opsFailWithinTheOpTimeoutAndWorkAfterTheOSDResumes() throws {
        let url = RadosTestPool.url("osdstop")!
        defer { RadosTestPool.removeAll(url) }
        let o = try RadosObjectStore(try RadosLocation.parse(url), settings: RadosSettings(opTimeout: 3))
        let a = ObjectName("layers", "aa", "b00000001")
        try o.put(a, Array("before".utf8), durable: true)
        let osd = try #require(PausableOSD.find())
        osd.stop()
        var resumed = false
        defer { if !resumed { osd.resume() } }
        for (what, op) in [("read", { _ = try o.readAll(a) }),
                           ("write", { try o.put(a, Array("during".utf8), durable: true) }),
                           ("list", { try o.enumerate(prefix: "layers/") { _ in true } })] as [(String, () throws -> Void)] {
            let started = Date()
            do {
                try op()
                Issue.record("\(what) succeeded with the OSD stopped")
            } catch let e as StoreError {
                let took = Date().timeIntervalSince(started)
                print("\(what) with the OSD stopped failed after \(String(format: "%.2f", took)) s: \(e)")
                #expect(took >= 2.5 && took < 8, "\(what) took \(took) s with op_timeout 3 s")
                #expect(e.description.contains("timed out after 3 s"), "\(what): \(e)")
                #expect(!e.description.contains("\n"), "\(what): \(e)")
                if what != "list" { #expect(e.description.contains(a.path) && e.description.contains("rados://"), "\(what): \(e)") }
            }
        }
        osd.resume()
        resumed = true
        try o.put(a, Array("after".utf8), durable: true)
        #expect(try o.readAll(a) == Array("after".utf8))
    }

    /// A write that finds every slot of the async queue taken by ops the
    /// cluster does not complete waits at most op_timeout, then fails in one
    /// line. Object ops themselves are unbounded here (the daemon's settings),
    /// so only the slot wait can end it.
    @Test func aWriteWaitsForAFreeSlotAtMostTheOpTimeout() throws {
        let url = RadosTestPool.url("slots")!
        defer { RadosTestPool.removeAll(url) }
        let o = try RadosObjectStore(try RadosLocation.parse(url), maxInFlight: 1,
                                     settings: RadosSettings(opTimeout: 2, boundsObjectOps: false))
        let first = ObjectName("layers", "aa", "b00000001"), second = ObjectName("layers", "aa", "b00000002")
        try o.put(first, [0], durable: true)   // the client knows the OSD map
        let osd = try #require(PausableOSD.find())
        osd.stop()
        var resumed = false
        defer { if !resumed { osd.resume() } }
        try o.put(first, [1], durable: false)   // takes the only slot; no answer comes
        let started = Date()
        #expect {
            try o.put(second, [2], durable: false)
        } throws: { e in
            let took = Date().timeIntervalSince(started)
            print("a write waiting for a slot failed after \(String(format: "%.2f", took)) s: \(e)")
            return took >= 1.8 && took < 5 && "\(e)".contains("timed out after 2 s waiting for one of 1 writes in flight")
                && "\(e)".contains(second.path) && !"\(e)".contains("\n")
        }
        osd.resume()
        resumed = true
        try o.sync([first])
        #expect(try o.readAll(first) == [1])
    }
}
