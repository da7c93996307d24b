import Foundation

/// What a name points at: `names/<name>` in the store. Volumes and snapshots
/// share one namespace, so Ganeti can attach `<vol>.snap` like any volume.
public struct VolumeRecord: Sendable, Equatable {
    public enum Kind: UInt8, Sendable, Codable {
        case volume = 1
        case snapshot = 2

        public var name: String { self == .volume ? "volume" : "snapshot" }
    }

    public var kind: Kind
    public var layer: LayerID
    public var createdAt: UInt64
    /// Free-form metadata: Ganeti's VOL_UUID/VOL_CNAME/VOL_METADATA, origin, ...
    public var metadata: [String: String]

    public init(kind: Kind, layer: LayerID, createdAt: UInt64 = UInt64(time(nil)), metadata: [String: String] = [:]) {
        self.kind = kind
        self.layer = layer
        self.createdAt = createdAt
        self.metadata = metadata
    }

    static let magic = Array("ARCHNAME".utf8)
    static let version: UInt32 = 1
    static let maximumMetadataBytes = 64 << 10

    func encode() -> [UInt8] {
        var w = BinaryWriter()
        w.u8(kind.rawValue)
        w.raw(layer.raw)
        w.u64(createdAt)
        w.u32(UInt32(metadata.count))
        for key in metadata.keys.sorted() {
            w.string(key)
            w.string(metadata[key]!)
        }
        return Frame.seal(magic: VolumeRecord.magic, version: VolumeRecord.version, body: w.bytes)
    }

    static func decode(_ bytes: [UInt8], what: String) throws -> VolumeRecord {
        let (v, body) = try Frame.open(bytes, magic: magic, what: what)
        guard v == version else { throw StoreError(.unsupported, "\(what): record version \(v) is not supported") }
        var r = body
        let k = try r.u8()
        guard let kind = Kind(rawValue: k) else { throw StoreError(.corrupt, "\(what): unknown kind \(k)") }
        let layer = LayerID(raw: try r.raw(16))
        let created = try r.u64()
        let n = try r.u32()
        guard n <= 4096 else { throw StoreError(.corrupt, "\(what): \(n) metadata entries") }
        var meta: [String: String] = [:]
        for _ in 0..<n {
            let key = try r.string(max: maximumMetadataBytes)
            meta[key] = try r.string(max: maximumMetadataBytes)
        }
        guard r.remaining == 0 else { throw StoreError(.corrupt, "\(what): \(r.remaining) unexpected trailing bytes") }
        return VolumeRecord(kind: kind, layer: layer, createdAt: created, metadata: meta)
    }
}
