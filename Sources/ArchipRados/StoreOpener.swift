import ArchipStore
import Foundation

/// Opens a volume store from a location string, whatever the backend: a
/// folder (`dir`) or `rados://POOL?conf=...&id=...` (`rados`). The executables
/// open stores only through here, so the backend is chosen by configuration alone.
public enum StoreOpener {
    /// `mustExist`: refuse a location that is not a store yet (the provider
    /// and the node daemon) instead of initialising it. `rados`: how long a
    /// RADOS client waits for the cluster (`[rados]`; ignored for folders).
    public static func open(_ location: String, node: String, mustExist: Bool = false,
                            rados: RadosSettings = RadosSettings()) throws -> VolumeStore {
        guard RadosLocation.isRados(location) else {
            return mustExist ? try VolumeStore.existingDirectory(location, node: node)
                             : try VolumeStore.directory(location, node: node)
        }
        let objects = try RadosObjectStore(try RadosLocation.parse(location), settings: rados)
        if mustExist, try objects.stat(ObjectName("archip-store")) == nil {
            throw StoreError(.notFound, "\(location) is not an archip store (no archip-store object; 'archip init' makes one in an empty pool or namespace)")
        }
        return try VolumeStore(objects: objects, node: node)
    }
}
