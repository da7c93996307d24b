import Foundation
import Testing
@testable import ArchipStore

/// The kind of every object StoreLayout names, and which kinds a backend
/// must compare-and-swap: records, maps and logs, nothing else.
@Suite struct ObjectKindTests {
    @Test func layoutNamesHaveTheirKinds() throws {
        let layer = LayerID.random()
        let name = try VolumeName("vol-1")
        let cases: [(ObjectName, ObjectKind)] = [
            (StoreLayout.marker, .marker),
            (StoreLayout.record(name), .record),
            (StoreLayout.lock(name), .lock),
            (StoreLayout.map(layer), .map),
            (StoreLayout.log(layer), .log),
            (StoreLayout.owned(layer, 0), .ownedBlock),
            (StoreLayout.owned(layer, 0x2a), .ownedBlock),
            (StoreLayout.content(ContentHash(w0: 1, w1: 2, w2: 3, w3: 4)), .contentBlock),
            (FillStage.checkpointName(name), .other),
            (ObjectName("layers", layer.hex, "bzz"), .other),
        ]
        for (object, kind) in cases {
            #expect(object.kind == kind, "\(object.path)")
        }
    }

    @Test func onlyRecordsMapsAndLogsNeedCompareAndSwap() {
        let guarded = ObjectKind.allCases.filter(\.needsCompareAndSwap)
        #expect(guarded == [.record, .map, .log])
        let layer = LayerID.random()
        #expect(StoreLayout.map(layer).kind.needsCompareAndSwap)
        #expect(!StoreLayout.owned(layer, 7).kind.needsCompareAndSwap)
        #expect(!StoreLayout.lock(try! VolumeName("v")).kind.needsCompareAndSwap)
    }
}
