/// Where everything lives in the object namespace (docs/FORMAT.md):
///
///     archip-store                 marker and format version
///     names/<name>                 volume and snapshot records
///     layers/<layer>/map           a layer's map
///     layers/<layer>/log           its flush log (writable layers only)
///     layers/<layer>/b<index>      blocks the layer owns (8 hex digits)
///     blocks/aa/bb/cc/<sha256>     content-addressed blocks (Pithos layout)
///     locks/<name>                 who holds a volume
///     index/<key>/<value>          lookup hints (MetadataIndex)
enum StoreLayout {
    static let marker = ObjectName("archip-store")
    static let markerText = "archip store format 1\n"

    static let namesPrefix = "names/"
    static let layersPrefix = "layers/"
    static let blocksPrefix = "blocks/"

    static func record(_ name: VolumeName) -> ObjectName { ObjectName("names", name.value) }
    static func lock(_ name: VolumeName) -> ObjectName { ObjectName("locks", name.value) }
    static func map(_ layer: LayerID) -> ObjectName { ObjectName("layers", layer.hex, "map") }
    static func log(_ layer: LayerID) -> ObjectName { ObjectName("layers", layer.hex, "log") }
    static func layerPrefix(_ layer: LayerID) -> String { "layers/\(layer.hex)/" }

    static func owned(_ layer: LayerID, _ index: UInt32) -> ObjectName {
        let h = String(index, radix: 16)
        return ObjectName("layers", layer.hex, "b" + String(repeating: "0", count: 8 - h.count) + h)
    }

    /// Block index of an owned-object name (`b0000002a`), or nil.
    static func ownedIndex(_ last: String) -> UInt32? {
        guard last.utf8.count == 9, last.hasPrefix("b") else { return nil }
        return UInt32(last.dropFirst(), radix: 16)
    }

    static func content(_ hash: ContentHash) -> ObjectName {
        ObjectName(components: ("blocks/" + PithosBlockFolder.relativePath(for: hash)).split(separator: "/").map(String.init))
    }
}
