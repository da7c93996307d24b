import CCrypto
import Foundation
import GRDB

/// The registration layer: records volumes and servers, charges quotas,
/// sends one Ganeti job per change and settles state from job results,
/// never from hope.
public final class Registry: @unchecked Sendable {
    public let db: CycladesDatabase
    let backendClient: (Backend) -> any GanetiBackend
    /// Cyclades' limits: CYCLADES_VOLUME_MAX_SIZE (GB) and disks per server.
    public var maxVolumeSizeGB = 1024
    public var maxDisks = 8
    public var now: () -> Date = Date.init

    public init(db: CycladesDatabase, backendClient: @escaping (Backend) -> any GanetiBackend = { RAPIClient(backend: $0) }) {
        self.db = db
        self.backendClient = backendClient
    }

    public static let diskResource = "cyclades.disk"

    // MARK: set-up

    public func addBackend(_ b: Backend) throws -> Backend {
        var b = b
        try db.write { db in
            if try Backend.filter(Column("name") == b.name).fetchOne(db) != nil {
                throw CycladesError(.conflict, "backend \(b.name) already exists")
            }
            try b.insert(db)
        }
        return b
    }

    public func createVolumeType(name: String, diskTemplate: String) throws -> VolumeType {
        let template = diskTemplate.split(separator: "_", maxSplits: 1).first.map(String.init) ?? ""
        let known = ["ext", "drbd", "plain", "file", "sharedfile", "rbd", "blockdev", "diskless", "gluster"]
        guard known.contains(template) else {
            throw CycladesError(.badRequest, "disk template '\(diskTemplate)' is not a Ganeti template (\(known.joined(separator: ", ")), optionally _PROVIDER for ext)")
        }
        var t = VolumeType(id: nil, name: name, diskTemplate: diskTemplate, deleted: false)
        try db.write { db in
            if try VolumeType.filter(Column("name") == name).fetchOne(db) != nil {
                throw CycladesError(.conflict, "volume type \(name) already exists")
            }
            try t.insert(db)
        }
        return t
    }

    public func createFlavor(name: String, cpu: Int, ram: Int, disk: Int, volumeType: String) throws -> Flavor {
        guard cpu > 0, ram > 0, disk > 0, disk <= maxVolumeSizeGB else {
            throw CycladesError(.badRequest, "flavor \(name): cpu, ram and disk must be above zero (disk at most \(maxVolumeSizeGB) GB)")
        }
        return try db.write { db in
            guard let t = try VolumeType.filter(Column("name") == volumeType && Column("deleted") == false).fetchOne(db) else {
                throw CycladesError.notFound("volume type", volumeType)
            }
            var f = Flavor(id: nil, name: name, cpu: cpu, ram: ram, disk: disk, volumeTypeID: t.id!)
            if try Flavor.filter(Column("name") == name).fetchOne(db) != nil { throw CycladesError(.conflict, "flavor \(name) already exists") }
            try f.insert(db)
            return f
        }
    }

    public func registerImage(name: String, location: String, size: Int64, owner: String, isPublic: Bool, checksum: String?) throws -> Image {
        guard size > 0 else { throw CycladesError(.badRequest, "image \(name): size must be above zero") }
        // The checksum goes to the provider as origin_sha256, which checks every
        // volume made from the image against it: only a SHA-256 can be one.
        var digest = checksum?.lowercased()
        if let d = digest, d.hasPrefix("sha256:") { digest = String(d.dropFirst(7)) }
        if let d = digest, d.utf8.count != 64 || !d.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) {
            throw CycladesError(.badRequest, "image \(name): checksum '\(d.prefix(80))' is not a SHA-256 (64 hex digits)")
        }
        let img = Image(id: UUID().uuidString.lowercased(), name: name, owner: owner, isPublic: isPublic,
                        location: location, size: size, checksum: digest)
        try db.write { db in try img.insert(db) }
        return img
    }

    /// A user with its own project (quota holder); returns the API token, shown once.
    public func createUser(name: String, diskLimit: Int64) throws -> (User, String) {
        guard diskLimit >= 0 else { throw CycladesError(.badRequest, "quota must not be negative") }
        let token = Self.randomToken()
        let u = User(id: UUID().uuidString.lowercased(), name: name, tokenHash: Self.hash(token), defaultProject: "", created: now())
        var user = u
        user.defaultProject = u.id
        try db.write { db in
            if try User.filter(Column("name") == name).fetchOne(db) != nil { throw CycladesError(.conflict, "user \(name) already exists") }
            try Project(id: user.id, diskLimit: diskLimit, diskUsage: 0).insert(db)
            try user.insert(db)
        }
        return (user, token)
    }

    public func user(token: String) throws -> User? {
        let h = Self.hash(token)
        return try db.read { db in try User.filter(Column("tokenHash") == h).fetchOne(db) }
    }

    public func findUser(_ nameOrID: String) throws -> User {
        try db.read { db in
            guard let u = try User.filter(Column("id") == nameOrID || Column("name") == nameOrID).fetchOne(db) else {
                throw CycladesError.notFound("user", nameOrID)
            }
            return u
        }
    }

    public func setQuota(project: String, diskLimit: Int64) throws {
        guard diskLimit >= 0 else { throw CycladesError(.badRequest, "quota must not be negative") }
        try db.write { db in
            guard var p = try Project.fetchOne(db, key: project) else { throw CycladesError.notFound("project", project) }
            p.diskLimit = diskLimit
            try p.update(db)
        }
    }

    public struct QuotaRow: Codable, Sendable {
        public var project: String
        public var resource: String
        public var limit: Int64
        public var usage: Int64
        public var pending: Int64
    }

    public func quotas() throws -> [QuotaRow] {
        try db.read { db in
            try Project.order(Column("id")).fetchAll(db).map { p in
                QuotaRow(project: p.id, resource: Self.diskResource, limit: p.diskLimit, usage: p.diskUsage,
                         pending: try Self.pendingCharge(db, project: p.id))
            }
        }
    }

    // MARK: quota

    /// Positive pending charges count against the limit; pending refunds do
    /// not count until accepted (a failed removal keeps the disk).
    static func pendingCharge(_ db: GRDB.Database, project: String) throws -> Int64 {
        try Int64.fetchOne(db, sql: "SELECT COALESCE(SUM(delta), 0) FROM commissions WHERE project = ? AND state = 'pending' AND delta > 0",
                           arguments: [project]) ?? 0
    }

    /// Charges `delta` bytes (pending), or refuses before anything is sent.
    func charge(_ db: GRDB.Database, project: String, delta: Int64, serverID: Int64?, volumeIDs: [Int64]) throws -> Commission {
        guard let p = try Project.fetchOne(db, key: project) else { throw CycladesError.notFound("project", project) }
        if delta > 0 {
            let pending = try Self.pendingCharge(db, project: project)
            if p.diskUsage + pending + delta > p.diskLimit {
                throw CycladesError(.overLimit, "project \(project) has not enough capacity of \(Self.diskResource): limit \(p.diskLimit) bytes, in use \(p.diskUsage), pending \(pending), requested \(delta)")
            }
        }
        var c = Commission(id: nil, project: project, resource: Self.diskResource, delta: delta, state: .pending, backendJobID: nil,
                           serverID: serverID, volumeIDs: volumeIDs.map(String.init).joined(separator: ","), created: now(), resolved: nil)
        try c.insert(db)
        return c
    }

    /// Accepts or rejects every pending commission of a job.
    func resolveCommissions(_ db: GRDB.Database, where filter: SQLExpression, accept: Bool) throws {
        for var c in try Commission.filter(filter && Column("state") == Commission.State.pending.rawValue).fetchAll(db) {
            c.state = accept ? .accepted : .rejected
            c.resolved = now()
            try c.update(db)
            if accept {
                guard var p = try Project.fetchOne(db, key: c.project) else { continue }
                p.diskUsage += c.delta
                try p.update(db)
            }
        }
    }

    // MARK: helpers

    static func randomToken() -> String {
        var bytes = [UInt8](repeating: 0, count: 24)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        return bytes.map { String(format: "%02x", $0) }.joined()
    }

    static func hash(_ token: String) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        let bytes = Array(token.utf8)
        _ = bytes.withUnsafeBufferPointer { SHA256($0.baseAddress, $0.count, &digest) }
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}
