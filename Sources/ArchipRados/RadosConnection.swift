import ArchipStore
import CRados
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One client of a Ceph cluster with an I/O context on the store's pool (and
/// namespace): librados loaded (here, on the first rados:// store, not at
/// start), the configuration read, the client's timeouts and queue depth set,
/// connected. Released when its last user is.
///
/// Once the cluster answers ESHUTDOWN (this client was blocklisted: another
/// node broke a lock it held), the connection is dead for good: every later
/// op fails the same way, and `isFenced` tells a long-lived process to open
/// a new one for new work (NodeDaemon).
final class RadosConnection: @unchecked Sendable {
    let cluster: rados_t
    let io: rados_ioctx_t
    let settings: RadosSettings
    /// `settings.opTimeout` where it bounds object ops, else 0.
    var objectOpTimeout: TimeInterval { settings.boundsObjectOps ? settings.opTimeout : 0 }
    private let fenced = Locked(false)

    init(_ loc: RadosLocation, maxInFlight: Int, settings: RadosSettings = RadosSettings()) throws {
        self.settings = settings
        if let why = archip_rados_load() {
            throw StoreError(.io, "store \(loc): \(String(cString: why))")
        }
        var c: rados_t?
        var r = rados_create(&c, loc.id)
        guard r == 0, let c else { throw RadosObjectStore.error(r, "create a client for", "client.\(loc.id)") }
        guard access(loc.conf, R_OK) == 0 else {
            rados_shutdown(c)
            throw StoreError(.notFound, "store \(loc): cannot read Ceph configuration \(loc.conf)")
        }
        r = rados_conf_read_file(c, loc.conf)
        guard r == 0 else {
            rados_shutdown(c)
            throw RadosObjectStore.error(r, "read Ceph configuration", loc.conf)
        }
        // A dead cluster must not hang a command for the 300 s default.
        if Self.confGet(c, "client_mount_timeout").map({ Double($0) ?? 0 }) ?? 0 >= 300 {
            rados_conf_set(c, "client_mount_timeout", "30")
        }
        // An OSD or monitor that does not answer fails an op (ETIMEDOUT) instead
        // of hanging the command, and Ganeti with it ([rados] op_timeout).
        if settings.opTimeout > 0 {
            let t = String(Int(settings.opTimeout.rounded(.up)))
            rados_conf_set(c, "rados_mon_op_timeout", t)
            if settings.boundsObjectOps { rados_conf_set(c, "rados_osd_op_timeout", t) }
        }
        // Deep queues of 4 MiB blocks: the default stops at ~25 ops.
        if let b = Self.confGet(c, "objecter_inflight_op_bytes").flatMap({ UInt64($0) }),
           b < UInt64(maxInFlight + 8) << 22 {
            rados_conf_set(c, "objecter_inflight_op_bytes", String(UInt64(maxInFlight + 8) << 22))
        }
        r = rados_connect(c)
        guard r == 0 else {
            rados_shutdown(c)
            throw RadosObjectStore.error(r, "connect to the Ceph cluster of", "\(loc.conf) as client.\(loc.id)")
        }
        var ioctx: rados_ioctx_t?
        r = rados_ioctx_create(c, loc.pool, &ioctx)
        guard r == 0, let ioctx else {
            rados_shutdown(c)
            if r == -ENOENT { throw StoreError(.notFound, "store \(loc): pool '\(loc.pool)' does not exist (ceph osd pool create \(loc.pool))") }
            throw RadosObjectStore.error(r, "open pool", loc.pool)
        }
        if !loc.namespace.isEmpty { rados_ioctx_set_namespace(ioctx, loc.namespace) }
        cluster = c
        io = ioctx
    }

    deinit {
        rados_ioctx_destroy(io)
        rados_shutdown(cluster)
    }

    static func confGet(_ c: rados_t, _ key: String) -> String? {
        var buf = [CChar](repeating: 0, count: 256)
        guard rados_conf_get(c, key, &buf, buf.count) == 0 else { return nil }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// This client as lock listings name it (`client.<instance id>`).
    var clientName: String { "client.\(rados_get_instance_id(cluster))" }

    /// True once the cluster refused this client (blocklisted).
    var isFenced: Bool { fenced.withLock { $0 } }

    /// `r` as it is, noting a blocklisted client.
    @discardableResult
    func note(_ r: Int32) -> Int32 {
        if r == -ESHUTDOWN { fenced.withLock { $0 = true } }
        return r
    }

    /// A librados result of an op of this client as a StoreError (`RadosObjectStore.error`),
    /// noting a fence; a timeout says how long it waited.
    func error(_ r: Int32, _ op: String, _ what: String, file: String = #fileID, line: Int = #line) -> StoreError {
        note(r)
        if r == -ETIMEDOUT {
            let t = objectOpTimeout > 0 ? objectOpTimeout : settings.opTimeout
            let after = t > 0 ? String(format: " after %g s", t) : ""
            return StoreError(.io, "\(op) \(what): timed out\(after): the cluster did not answer (ceph -s; [rados] op_timeout)",
                              file: file, line: line)
        }
        return RadosObjectStore.error(r, op, what, file: file, line: line)
    }

    /// Keeps the client at `address` from writing anything for an hour.
    func blocklist(address: String) {
        var addr = Array(address.utf8CString)
        _ = rados_blocklist_add(cluster, &addr, 3600)
    }
}

// MARK: errors

extension RadosObjectStore {
    /// A librados result (a negative errno) as a StoreError: a fenced client is `.locked`.
    static func error(_ r: Int32, _ op: String, _ what: String, file: String = #fileID, line: Int = #line) -> StoreError {
        let e = -r
        let text = String(cString: strerror(e))
        let code: StoreError.Code
        switch e {
        case ENOENT: code = .notFound
        case EEXIST: code = .alreadyExists
        case ENOSPC, EDQUOT, EFBIG: code = .noSpace
        case ESHUTDOWN:
            return StoreError(.locked, "\(op) \(what): this client was fenced off (blocklisted) by the cluster",
                              cause: "another node broke this node's lock with 'archip unlock --force'", file: file, line: line)
        default: code = .io
        }
        return StoreError(code, "\(op) \(what)", cause: "\(text) (rados error \(r))", file: file, line: line)
    }
}
