import Foundation

/// The store location an `archip.conf` names in its `[store]` section:
///
///     [store]                      [store]
///     backend = dir                backend = rados
///     path = /srv/archip           pool = archip
///                                  conf = /etc/ceph/ceph.conf   (default)
///                                  id = admin                   (default; client.admin)
///                                  namespace = ...              (optional)
///
/// A folder path for `dir`, `rados://POOL?conf=FILE&id=NAME[&ns=NS]` for
/// `rados` (the form `--store` and `ARCHIP_STORE` take). Opening a rados
/// location needs the ArchipRados module (`StoreOpener`).
public enum StoreLocation {
    /// nil when the section names no store.
    public static func fromConfig(_ conf: [String: String], file: String) throws -> String? {
        switch conf["store.backend"] ?? "dir" {
        case "dir":
            guard let p = conf["store.path"], !p.isEmpty else { return nil }
            return p
        case "rados":
            guard let pool = conf["store.pool"], !pool.isEmpty else {
                throw StoreError(.invalidArgument, "\(file): [store] backend = rados needs 'pool'")
            }
            func enc(_ s: String) -> String {
                s.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "&=%?#").inverted) ?? s
            }
            var url = "rados://\(pool)?conf=\(enc(conf["store.conf"] ?? "/etc/ceph/ceph.conf"))&id=\(enc(conf["store.id"] ?? "admin"))"
            if let ns = conf["store.namespace"], !ns.isEmpty { url += "&ns=\(enc(ns))" }
            return url
        case let other:
            throw StoreError(.invalidArgument, "\(file): unknown store backend '\(other)' (known: dir, rados)")
        }
    }

    public static func isRados(_ location: String) -> Bool { location.hasPrefix("rados://") }

    /// One spelling per store, to tell whether two locations name the same
    /// one: a folder's absolute path with links resolved and no trailing
    /// slash; a rados URL as written.
    public static func canonical(_ location: String) -> String {
        guard !isRados(location), !location.isEmpty else { return location }
        let absolute = location.hasPrefix("/") ? location : FileManager.default.currentDirectoryPath + "/" + location
        return URL(fileURLWithPath: absolute).standardizedFileURL.resolvingSymlinksInPath().path
    }
}
