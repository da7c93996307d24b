import Foundation
import GRDB

/// Which volumes `Registry.volumes(_:)` lists (by id): all the conditions given hold.
public struct VolumeFilter: Sendable {
    public var owner: String?
    public var server: Int64?
    /// The stored status (`VolumeStatus` raw value).
    public var status: VolumeStatus?
    public var name: String?
    /// Only ids above this one (the API's ?marker).
    public var after: Int64?
    /// Only volumes updated at or after this time, deleted ones too (the API's ?changes-since).
    public var changedSince: Date?
    public var includeDeleted: Bool

    public init(owner: String? = nil, server: Int64? = nil, status: VolumeStatus? = nil, name: String? = nil,
                after: Int64? = nil, changedSince: Date? = nil, includeDeleted: Bool = false) {
        self.owner = owner; self.server = server; self.status = status; self.name = name
        self.after = after; self.changedSince = changedSince; self.includeDeleted = includeDeleted
    }
}

/// Which servers `Registry.servers(_:)` lists (by id).
public struct ServerFilter: Sendable {
    public var owner: String?
    public var name: String?
    /// Only ids above this one (the API's ?marker).
    public var after: Int64?
    public var includeDeleted: Bool

    public init(owner: String? = nil, name: String? = nil, after: Int64? = nil, includeDeleted: Bool = false) {
        self.owner = owner; self.name = name; self.after = after; self.includeDeleted = includeDeleted
    }
}

/// What a volume's detailed view needs besides its row: every volume type
/// (deleted ones too) and the volumes' metadata.
public struct VolumeContext: Sendable {
    public var types: [Int64: VolumeType]
    public var metadata: [Int64: [String: String]]

    public init(types: [Int64: VolumeType] = [:], metadata: [Int64: [String: String]] = [:]) {
        self.types = types; self.metadata = metadata
    }
}

/// The reads of the front ends (cyclades-api, snf-manage): they see records,
/// never the database. A record another user owns is as missing as one that
/// never was (the `owner:` lookups throw itemNotFound for both).
extension Registry {
    // MARK: set-up records

    public func users() throws -> [User] {
        try db.read { db in try User.order(Column("name")).fetchAll(db) }
    }

    public func backends() throws -> [Backend] {
        try db.read { db in try Backend.order(Column("id")).fetchAll(db) }
    }

    public func backend(id: Int64) throws -> Backend? {
        try db.read { db in try Backend.fetchOne(db, key: id) }
    }

    /// By id; without `includeDeleted` only the usable ones.
    public func volumeTypes(includeDeleted: Bool = false) throws -> [VolumeType] {
        try db.read { db in
            let q = VolumeType.order(Column("id"))
            return try (includeDeleted ? q : q.filter(Column("deleted") == false)).fetchAll(db)
        }
    }

    /// Every volume type by id, deleted ones too (what records refer to).
    public func volumeTypesByID() throws -> [Int64: VolumeType] {
        try db.read { db in try Self.typesByID(db) }
    }

    /// A usable volume type by id or name.
    public func volumeType(_ ref: String) throws -> VolumeType? {
        try db.read { db in
            try VolumeType.filter((Column("id") == (Int64(ref) ?? -1) || Column("name") == ref) && Column("deleted") == false).fetchOne(db)
        }
    }

    public func volumeType(id: Int64) throws -> VolumeType? {
        try db.read { db in try VolumeType.fetchOne(db, key: id) }
    }

    public func flavors() throws -> [Flavor] {
        try db.read { db in try Flavor.order(Column("id")).fetchAll(db) }
    }

    public func flavor(id: Int64) throws -> Flavor? {
        try db.read { db in try Flavor.fetchOne(db, key: id) }
    }

    /// A flavor by id (as nova sends it) or by name.
    public func flavor(_ ref: String) throws -> Flavor? {
        try db.read { db in try Flavor.filter(Column("id") == (Int64(ref) ?? -1) || Column("name") == ref).fetchOne(db) }
    }

    /// By name (then id): every image, or those `user` sees (public or its own).
    public func images(visibleTo user: String? = nil) throws -> [Image] {
        try db.read { db in
            var q = Image.order(Column("name"), Column("id"))
            if let user { q = q.filter(Column("isPublic") == true || Column("owner") == user) }
            return try q.fetchAll(db)
        }
    }

    /// The image if `user` sees it (public or its own); nil otherwise.
    public func image(_ id: String, visibleTo user: String) throws -> Image? {
        try db.read { db in
            guard let i = try Image.fetchOne(db, key: id), i.isPublic || i.owner == user else { return nil }
            return i
        }
    }

    // MARK: servers

    public func servers(_ filter: ServerFilter = ServerFilter()) throws -> [Server] {
        try db.read { db in
            var q = Server.order(Column("id"))
            if !filter.includeDeleted { q = q.filter(Column("deleted") == false) }
            if let owner = filter.owner { q = q.filter(Column("userid") == owner) }
            if let name = filter.name { q = q.filter(Column("name") == name) }
            if let after = filter.after { q = q.filter(Column("id") > after) }
            return try q.fetchAll(db)
        }
    }

    public func server(id: Int64) throws -> Server? {
        try db.read { db in try Server.fetchOne(db, key: id) }
    }

    /// The user's server, not deleted; anything else is itemNotFound.
    public func server(_ ref: String, owner: String) throws -> Server {
        try db.read { db in
            guard let id = Int64(ref), let s = try Server.fetchOne(db, key: id), s.userid == owner, !s.deleted else {
                throw CycladesError(.itemNotFound, "server \(ref) does not exist")
            }
            return s
        }
    }

    /// A server's volumes by index (disk order), deleted ones too if asked.
    public func volumes(server: Int64, includeDeleted: Bool = false) throws -> [Volume] {
        try db.read { db in
            var q = Volume.filter(Column("machineID") == server)
            if !includeDeleted { q = q.filter(Column("deleted") == false) }
            return try q.order(Column("index")).fetchAll(db)
        }
    }

    /// The servers' volumes (not deleted, by index), in one query for a whole list.
    public func volumes(ofServers servers: [Server]) throws -> [Int64: [Volume]] {
        let ids = servers.compactMap(\.id)
        if ids.count == 1 { return [ids[0]: try volumes(server: ids[0])] }
        guard !ids.isEmpty else { return [:] }
        let users = Array(Set(servers.map(\.userid)))
        return try db.read { db in
            let vols = try Volume.fetchAll(db, sql: """
                SELECT * FROM volumes WHERE deleted = 0 AND machineID IN
                  (SELECT id FROM servers WHERE userid IN (\(users.map { _ in "?" }.joined(separator: ","))))
                ORDER BY machineID, "index"
                """, arguments: StatementArguments(users))
            let wanted = Set(ids)
            var out: [Int64: [Volume]] = [:]
            for v in vols where wanted.contains(v.machineID!) { out[v.machineID!, default: []].append(v) }
            return out
        }
    }

    // MARK: volumes

    public func volumes(_ filter: VolumeFilter) throws -> [Volume] {
        try db.read { db in
            var q = Volume.order(Column("id"))
            if let since = filter.changedSince {
                q = q.filter(Column("updated") >= since)
            } else if !filter.includeDeleted {
                q = q.filter(Column("deleted") == false)
            }
            if let owner = filter.owner { q = q.filter(Column("userid") == owner) }
            if let server = filter.server { q = q.filter(Column("machineID") == server) }
            if let status = filter.status { q = q.filter(Column("status") == status.rawValue) }
            if let name = filter.name { q = q.filter(Column("name") == name) }
            if let after = filter.after { q = q.filter(Column("id") > after) }
            return try q.fetchAll(db)
        }
    }

    public func volume(id: Int64) throws -> Volume? {
        try db.read { db in try Volume.fetchOne(db, key: id) }
    }

    /// The user's volume (deleted ones too); another user's and a missing one are itemNotFound.
    public func volume(_ ref: String, owner: String) throws -> Volume {
        try db.read { db in
            guard let id = Int64(ref), let v = try Volume.fetchOne(db, key: id), v.userid == owner else {
                throw CycladesError(.itemNotFound, "volume \(ref) does not exist")
            }
            return v
        }
    }

    /// The types and metadata the volumes' detailed views show.
    public func volumeContext(_ vols: [Volume]) throws -> VolumeContext {
        try db.read { db in
            var meta: [Int64: [String: String]] = [:]
            let ids = vols.compactMap(\.id)
            if ids.count == 1 {
                for m in try VolumeMetadata.filter(Column("volumeID") == ids[0]).fetchAll(db) { meta[m.volumeID, default: [:]][m.key] = m.value }
            } else if !ids.isEmpty {
                let users = Set(vols.map(\.userid))
                let rows = try Row.fetchAll(db, sql: "SELECT m.volumeID, m.key, m.value FROM volume_metadata m JOIN volumes v ON v.id = m.volumeID WHERE v.userid IN (\(users.map { _ in "?" }.joined(separator: ",")))",
                                            arguments: StatementArguments(Array(users)))
                let wanted = Set(ids)
                for row in rows {
                    let vid: Int64 = row[0]
                    if wanted.contains(vid) { meta[vid, default: [:]][row[1]] = row[2] }
                }
            }
            return VolumeContext(types: try Self.typesByID(db), metadata: meta)
        }
    }

    /// A new volume's size when none is given: its source's, in GB (an image's
    /// rounded up). nil when the snapshot or image is not the user's to use;
    /// a source volume that is not the user's is itemNotFound.
    public func sourceSizeGB(snapshot: String?, image: String?, volume: String?, user: String) throws -> Int? {
        try db.read { db -> Int? in
            if let snapshot, let s = try Snapshot.fetchOne(db, key: snapshot), s.userid == user { return s.size }
            if let image, let i = try Image.fetchOne(db, key: image), i.isPublic || i.owner == user { return Int((i.size + (1 << 30) - 1) >> 30) }
            if let volume {
                guard let id = Int64(volume), let s = try Volume.fetchOne(db, key: id), s.userid == user else {
                    throw CycladesError(.itemNotFound, "volume \(volume.prefix(40)) does not exist")
                }
                return s.size
            }
            return nil
        }
    }

    // MARK: snapshots

    /// By creation time (then id): every snapshot, or one user's.
    public func snapshots(owner: String? = nil) throws -> [Snapshot] {
        try db.read { db in
            var q = Snapshot.order(Column("created"), Column("id"))
            if let owner { q = q.filter(Column("userid") == owner) }
            return try q.fetchAll(db)
        }
    }

    /// The user's snapshot; another user's and a missing one are itemNotFound.
    public func snapshot(_ ref: String, owner: String) throws -> Snapshot {
        try db.read { db in
            guard let s = try Snapshot.fetchOne(db, key: ref), s.userid == owner else {
                throw CycladesError(.itemNotFound, "snapshot \(ref) does not exist")
            }
            return s
        }
    }

    static func typesByID(_ db: GRDB.Database) throws -> [Int64: VolumeType] {
        Dictionary(uniqueKeysWithValues: try VolumeType.fetchAll(db).map { ($0.id!, $0) })
    }
}
