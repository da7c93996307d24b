import Foundation
import GRDB

// The registration layer's records. Units as in Cyclades: sizes in GB in the
// model and the API, MiB towards Ganeti, bytes for quotas and origin_size.

public struct User: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "users"
    public var id: String            // UUID
    public var name: String
    /// SHA-256 of the API token (hex); the token itself is shown once.
    public var tokenHash: String
    public var defaultProject: String
    public var created: Date
}

/// A quota holder for `cyclades.disk` (bytes).
public struct Project: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "projects"
    public var id: String
    public var diskLimit: Int64
    /// Accepted charges: what the project holds.
    public var diskUsage: Int64
}

/// A Ganeti cluster reached through RAPI.
public struct Backend: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "backends"
    public var id: Int64?
    public var name: String
    public var rapiURL: String
    public var username: String
    public var password: String
    public var caFile: String?
    public var insecure: Bool
    /// The node new instances go to (`pnode`).
    public var node: String
    /// The guest OS Ganeti installs (Synnefo: snf-image).
    public var os: String
    public var hypervisor: String?
    public var drained: Bool

    public init(id: Int64?, name: String, rapiURL: String, username: String, password: String, caFile: String?,
                insecure: Bool, node: String, os: String, hypervisor: String?, drained: Bool) {
        self.id = id; self.name = name; self.rapiURL = rapiURL; self.username = username; self.password = password
        self.caFile = caFile; self.insecure = insecure; self.node = node; self.os = os; self.hypervisor = hypervisor; self.drained = drained
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

/// `ext_archipelago`: Ganeti template `ext`, provider `archipelago`.
public struct VolumeType: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "volume_types"
    public var id: Int64?
    public var name: String
    public var diskTemplate: String
    public var deleted: Bool

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

    /// The Ganeti template: the text before the first `_`.
    public var template: String { String(diskTemplate.split(separator: "_", maxSplits: 1).first ?? "") }
    /// The ExtStorage provider: the text after the first `_`, if any.
    public var provider: String? {
        let parts = diskTemplate.split(separator: "_", maxSplits: 1)
        return parts.count == 2 ? String(parts[1]) : nil
    }
    /// Templates whose disks live on shared storage and can move between servers.
    public var isExternallyMirrored: Bool { ["ext", "rbd", "sharedfile", "gluster", "blockdev"].contains(template) }
    /// Providers that clone or fill a disk from a source (Cyclades' GANETI_CLONE_PROVIDERS).
    public var canClone: Bool { ["archipelago", "vlmc"].contains(provider ?? "") }
}

public struct Flavor: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "flavors"
    public var id: Int64?
    public var name: String
    public var cpu: Int
    public var ram: Int        // MiB
    public var disk: Int       // GB, the root volume when no volume is given
    public var volumeTypeID: Int64

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

/// An image: a source the filler accepts (`snapshot:NAME` in the store, a
/// file, an URL, a Pithos hashmap), handed to Ganeti as the disk's origin.
public struct Image: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "images"
    public var id: String        // UUID
    public var name: String
    public var owner: String
    public var isPublic: Bool
    public var location: String
    public var size: Int64       // bytes
    public var checksum: String?
}

public enum ServerStatus: String, Codable, Sendable, DatabaseValueConvertible {
    case build = "BUILD", active = "ACTIVE", stopped = "STOPPED", error = "ERROR", deleted = "DELETED"
}

/// A Ganeti instance.
public struct Server: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "servers"
    public var id: Int64?
    public var name: String
    public var userid: String
    public var project: String
    public var flavorID: Int64
    public var backendID: Int64
    public var imageID: String?
    public var status: ServerStatus
    public var backendJobID: Int64?
    /// What the pending job does: create, remove.
    public var pendingAction: String?
    public var deleted: Bool
    public var created: Date
    public var updated: Date

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

    /// The Ganeti instance name.
    public var instanceName: String { "snf-\(id ?? 0)" }
}

public enum VolumeStatus: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    case creating = "CREATING", available = "AVAILABLE", inUse = "IN_USE", deleting = "DELETING"
    case deleted = "DELETED", error = "ERROR", errorDeleting = "ERROR_DELETING"
    /// A grow (os-extend) is in flight; `pendingSize` is the size asked for.
    case extending = "EXTENDING"
    /// Ganeti attaches the (detached) disk to `pendingServerID`.
    case attaching = "ATTACHING"
    /// Ganeti detaches the disk from `machineID`; it stays, AVAILABLE.
    case detaching = "DETACHING"
}

public struct Volume: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "volumes"
    public var id: Int64?
    public var name: String?
    public var description: String?
    public var userid: String
    public var project: String
    public var size: Int                 // GB
    public var volumeTypeID: Int64
    public var machineID: Int64?
    public var index: Int?
    /// `image:UUID`, `snapshot:UUID`, `volume:ID`, or nil (blank).
    public var source: String?
    /// What Ganeti's provider gets as `origin` (the image's location, the snapshot's store name).
    public var origin: String?
    public var status: VolumeStatus
    public var deleteOnTermination: Bool
    public var deleted: Bool
    public var backendJobID: Int64?
    public var created: Date
    public var updated: Date
    /// GB asked of Ganeti by a grow in flight (status EXTENDING); nil otherwise.
    public var pendingSize: Int? = nil
    /// The server an ATTACHING volume goes to.
    public var pendingServerID: Int64? = nil
    /// A change Ganeti makes in two jobs through the backend's helper server
    /// (a volume without a server is created there and detached; deleted by
    /// attaching it there and removing it): the step in flight.
    public var helperStep: HelperStep? = nil
    /// The backend (Ganeti cluster) whose configuration holds the disk while
    /// it has no server (AVAILABLE and the changes that lead there).
    public var backendID: Int64? = nil

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

    /// The Ganeti disk name: `snf-vol-<id>`.
    public var diskName: String { "snf-vol-\(id ?? 0)" }
    public static func id(fromDiskName name: String) -> Int64? {
        guard name.hasPrefix("snf-vol-") else { return nil }
        return Int64(name.dropFirst(8))
    }
    public var sizeBytes: Int64 { Int64(size) << 30 }
}

extension Volume {
    /// Decodes a `volumes` row by hand: GRDB's Codable decoding of the rows
    /// was ~35% of a detail list of 1000 volumes. Same columns and types as
    /// the Codable encoding that writes them (checked by a round-trip test);
    /// a missing column or a NULL in a non-optional one throws.
    public init(row: Row) throws {
        id = try row.decode(forColumn: "id")
        name = try row.decode(forColumn: "name")
        description = try row.decode(forColumn: "description")
        userid = try row.decode(forColumn: "userid")
        project = try row.decode(forColumn: "project")
        size = try row.decode(forColumn: "size")
        volumeTypeID = try row.decode(forColumn: "volumeTypeID")
        machineID = try row.decode(forColumn: "machineID")
        index = try row.decode(forColumn: "index")
        source = try row.decode(forColumn: "source")
        origin = try row.decode(forColumn: "origin")
        status = try row.decode(forColumn: "status")
        deleteOnTermination = try row.decode(forColumn: "deleteOnTermination")
        deleted = try row.decode(forColumn: "deleted")
        backendJobID = try row.decode(forColumn: "backendJobID")
        created = try row.decode(forColumn: "created")
        updated = try row.decode(forColumn: "updated")
        pendingSize = try row.decode(forColumn: "pendingSize")
        pendingServerID = try row.decode(forColumn: "pendingServerID")
        helperStep = try row.decode(forColumn: "helperStep")
        backendID = try row.decode(forColumn: "backendID")
    }
}

/// The steps of a volume change made through the helper server.
public enum HelperStep: String, Codable, Sendable, DatabaseValueConvertible {
    /// CREATING: the disk is added to the helper; then `createDetach`.
    case createAdd = "create-add"
    /// CREATING: the disk is detached from the helper; then AVAILABLE.
    case createDetach = "create-detach"
    /// DELETING: the detached disk is attached to the helper; then `deleteRemove`.
    case deleteAttach = "delete-attach"
    /// DELETING: the disk is removed from the helper (and the store); then DELETED.
    case deleteRemove = "delete-remove"
    /// ATTACHING (no job yet): attached to `pendingServerID` once that server
    /// is built (block_device_mapping_v2 source_type volume).
    case attachAfterBuild = "attach-after-build"
}

public struct VolumeMetadata: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "volume_metadata"
    public var volumeID: Int64
    public var key: String
    public var value: String

    public init(volumeID: Int64, key: String, value: String) {
        self.volumeID = volumeID; self.key = key; self.value = value
    }
}

/// A snapshot of a volume: a real table (Cyclades 0.16 kept them in Pithos only).
public struct Snapshot: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "snapshots"
    public var id: String          // UUID
    public var volumeID: Int64?
    public var userid: String
    public var name: String
    public var size: Int           // GB
    public var status: String
    /// The store's snapshot name, the origin of volumes made from it.
    public var storeName: String
    public var created: Date

    public init(id: String, volumeID: Int64?, userid: String, name: String, size: Int, status: String, storeName: String, created: Date) {
        self.id = id; self.volumeID = volumeID; self.userid = userid; self.name = name; self.size = size
        self.status = status; self.storeName = storeName; self.created = created
    }
}

/// One charge to a project's `cyclades.disk`: pending when its job is sent,
/// accepted or rejected when the job ends (or by reconcile after a crash).
public struct Commission: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "commissions"
    public enum State: String, Codable, Sendable, DatabaseValueConvertible { case pending, accepted, rejected }
    public var id: Int64?
    public var project: String
    public var resource: String
    public var delta: Int64          // bytes; negative gives back
    public var state: State
    public var backendJobID: Int64?
    public var serverID: Int64?
    public var volumeIDs: String     // comma-separated, for the report
    public var created: Date
    public var resolved: Date?

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}
