import ArchipStore
import Foundation

/// Where a `rados` store lives: `rados://POOL?conf=FILE&id=NAME[&ns=NAMESPACE]`.
///
/// `conf` defaults to /etc/ceph/ceph.conf and `id` to admin (the client is
/// `client.<id>`; its keyring comes from the conf). `ns` puts the store in a
/// RADOS namespace of the pool, so several stores can share one pool (tests do).
/// `description` is the canonical form, which `parse` accepts again: the node
/// daemon is started with it.
public struct RadosLocation: Sendable, Equatable, CustomStringConvertible {
    public var pool: String
    public var conf: String
    public var id: String
    public var namespace: String

    public init(pool: String, conf: String = "/etc/ceph/ceph.conf", id: String = "admin", namespace: String = "") {
        self.pool = pool
        self.conf = conf
        self.id = id
        self.namespace = namespace
    }

    public static let scheme = "rados://"

    public static func isRados(_ location: String) -> Bool { location.hasPrefix(scheme) }

    public static func parse(_ text: String) throws -> RadosLocation {
        func bad(_ why: String) -> StoreError {
            StoreError(.invalidArgument, "invalid store '\(text)': \(why) (expected rados://POOL?conf=/etc/ceph/ceph.conf&id=NAME)")
        }
        guard text.hasPrefix(scheme) else { throw bad("not a rados:// URL") }
        let rest = text.dropFirst(scheme.count)
        let parts = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let pool = String(parts[0])
        guard !pool.isEmpty, pool.utf8.count <= 128,
              pool.utf8.allSatisfy({ $0.isASCIIAlnum || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") })
        else { throw bad("pool name '\(pool)' must be 1-128 of [A-Za-z0-9._-]") }
        var loc = RadosLocation(pool: pool)
        if parts.count == 2 {
            for item in parts[1].split(separator: "&") {
                let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard kv.count == 2, let value = String(kv[1]).removingPercentEncoding, !value.isEmpty else {
                    throw bad("'\(item)' is not KEY=VALUE")
                }
                switch kv[0] {
                case "conf": loc.conf = value
                case "id":
                    guard !value.hasPrefix("client.") else { throw bad("id is the name without 'client.'") }
                    loc.id = value
                case "ns": loc.namespace = value
                default: throw bad("unknown key '\(kv[0])' (known: conf, id, ns)")
                }
            }
        }
        return loc
    }

    public var description: String {
        func enc(_ s: String) -> String {
            s.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "&=%?#").inverted) ?? s
        }
        var s = "\(RadosLocation.scheme)\(pool)?conf=\(enc(conf))&id=\(enc(id))"
        if !namespace.isEmpty { s += "&ns=\(enc(namespace))" }
        return s
    }
}

extension UInt8 {
    fileprivate var isASCIIAlnum: Bool {
        (self >= 0x30 && self <= 0x39) || (self >= 0x41 && self <= 0x5A) || (self >= 0x61 && self <= 0x7A)
    }
}
