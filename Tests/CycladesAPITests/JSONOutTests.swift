@testable import Cyclades
@testable import CycladesAPI
import Foundation
import GRDB
import Hummingbird
import HummingbirdTesting
import Testing

/// The response encoder's JSON writer and the timestamp form against what they
/// replace (JSONSerialization with .withoutEscapingSlashes, String(format:)),
/// and the batched list queries against the answers one item at a time.
@Suite struct JSONOut {
    @Test func stringsAreWrittenAsJSONSerializationWritesThem() throws {
        let samples = ["", "plain", "quote \" and backslash \\", "slash / stays", "tab\tnl\ncr\rbs\u{08}ff\u{0C}", "nul \u{0} esc \u{1B} us \u{1F} del \u{7F}",
                       "ünïcödé ✓ 😀", "\u{2028}\u{2029}", String(repeating: "x\"", count: 300)]
        for s in samples {
            let mine = String(decoding: try ResponseEncoder.encode([s]), as: UTF8.self)
            let theirs = String(decoding: try JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes]), as: UTF8.self)
            #expect(mine == theirs, "\(s.debugDescription)")
            let back = try JSONSerialization.jsonObject(with: Data(mine.utf8)) as? [String]
            #expect(back == [s])
        }
    }

    @Test func numbersBoolsNullsAndNesting() throws {
        for n in [0, 1, -1, 9, 10, 42, -1234567890, Int.max, Int.min, 1 << 40] {
            #expect(String(decoding: try ResponseEncoder.encode(n), as: UTF8.self) == String(n))
        }
        struct V: Encodable {
            var a: [Bool?] = [true, false, nil, nil, nil]
            var b: [String: String] = [:]
            var c: [Int] = []
            var d: [Double] = [1, -2.5, 0.1]
        }
        #expect(String(decoding: try ResponseEncoder.encode(V()), as: UTF8.self) == #"{"a":[true,false,null,null,null],"b":{},"c":[],"d":[1,-2.5,0.1]}"#)
    }

    @Test func timestampsMatchTheFormatString() {
        var dates = [Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: 1_700_000_000.123456), Date(timeIntervalSince1970: 951_782_400.5),
                     Date(timeIntervalSince1970: -86_400.25), Date(timeIntervalSince1970: 253_402_300_799.999), Date()]
        var g = SystemRandomNumberGenerator()
        for _ in 0..<2000 { dates.append(Date(timeIntervalSince1970: Double.random(in: 0..<4_102_444_800, using: &g))) }
        for d in dates {
            let t = d.timeIntervalSince1970
            var secs = time_t(t.rounded(.down))
            var tm = tm()
            gmtime_r(&secs, &tm)
            let micros = Int((t - t.rounded(.down)) * 1_000_000)
            let want = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06d", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                              Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), micros)
            #expect(d.openstack == want, "\(t)")
        }
    }

    @Test func oddQueryStringsAreNotACrash() async throws {
        let f = try APIFixture()
        try await f.app().test(.router) { c in
            for q in ["=", "==", "=x", "&&", "k=", "name=", "limit=", "a=b=c", "%", "limit=%zz"] {
                let r = try await c.call(.get, "/volume/v3/volumes/detail?\(q)", token: f.alice)
                #expect(r.status == 200 || r.status == 400, "?\(q): \(r.status) \(r.raw)")
            }
        }
    }

    func canonical(_ o: Any?) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: o ?? [:], options: [.sortedKeys]), as: UTF8.self)
    }

    /// Detail lists are built from a few queries for all items: each item must
    /// still get its own metadata, type and volumes, and equal its single view.
    @Test func batchedListsEqualSingleViews() async throws {
        let f = try APIFixture(quota: 200 << 30)
        try await f.app().test(.router) { c in
            var sids: [String] = []
            for extra in [0, 3, 1] { sids.append(try await bootServer(f, c, extra: extra)) }
            // bob's server and metadata must not leak into alice's lists
            let rb = try await c.call(.post, "/compute/v2.1/servers", token: f.bob,
                                      json: #"{"server":{"name":"b","imageRef":"\#(f.image.id)","flavorRef":"1"}}"#)
            #expect(rb.status == 202)
            try f.settle()
            var r = try await c.call(.get, "/volume/v3/volumes", token: f.bob)
            let bobVol = (r.json["volumes"] as? [[String: Any]])?.first?["id"] as? String ?? "?"
            _ = try await c.call(.post, "/volume/v3/volumes/\(bobVol)/metadata", token: f.bob, json: #"{"metadata":{"owner":"bob"}}"#)
            for (i, vid) in ["2", "4", "7"].enumerated() {
                r = try await c.call(.post, "/volume/v3/volumes/\(vid)/metadata", token: f.alice, json: #"{"metadata":{"n":"\#(i)","v":"\#(vid)"}}"#)
                #expect(r.status == 200)
            }
            r = try await c.call(.get, "/volume/v3/volumes/detail", token: f.alice)
            let vols = r.json["volumes"] as? [[String: Any]] ?? []
            #expect(vols.count == 7)
            for v in vols {
                let id = v["id"] as? String ?? "?"
                let one = try await c.call(.get, "/volume/v3/volumes/\(id)", token: f.alice)
                #expect(try canonical(one.json["volume"]) == canonical(v), "volume \(id)")
            }
            #expect(vols.first { $0["id"] as? String == "4" }?["metadata"] as? [String: String] == ["n": "1", "v": "4"])
            #expect(vols.allSatisfy { ($0["metadata"] as? [String: String])?["owner"] == nil })

            r = try await c.call(.get, "/compute/v2.1/servers/detail", token: f.alice)
            let servers = r.json["servers"] as? [[String: Any]] ?? []
            #expect(servers.map { $0["id"] as? String ?? "?" } == sids)
            #expect(servers.map { ($0["volumes"] as? [Int])?.count ?? -1 } == [1, 4, 2])
            for s in servers {
                let id = s["id"] as? String ?? "?"
                let one = try await c.call(.get, "/compute/v2.1/servers/\(id)", token: f.alice)
                #expect(try canonical(one.json["server"]) == canonical(s), "server \(id)")
                let att = try await c.call(.get, "/compute/v2.1/servers/\(id)/os-volume_attachments", token: f.alice)
                #expect((att.json["volumeAttachments"] as? [[String: Any]])?.map { Int($0["id"] as? String ?? "") } == (s["volumes"] as? [Int]))
            }
        }
    }
}
