import Foundation
import GRDB

/// The registration layer's SQLite database: one file, WAL, foreign keys on,
/// versioned migrations. Every state change is one transaction.
public final class CycladesDatabase: Sendable {
    public let path: String
    let queue: DatabaseQueue

    public init(path: String) throws {
        self.path = path
        var config = Configuration()
        config.foreignKeysEnabled = true
        config.busyMode = .timeout(10)
        do {
            queue = try DatabaseQueue(path: path, configuration: config)
            try queue.writeWithoutTransaction { try $0.execute(sql: "PRAGMA journal_mode = WAL") }
            try Self.migrator.migrate(queue)
        } catch let e as DatabaseError {
            throw CycladesError(.backend, "database \(path): \(e.message ?? "\(e)")")
        }
    }

    // The one door: only Registry (this module) reads and writes tables;
    // the front ends call its typed methods (Queries.swift and the operations).
    func read<T>(_ body: (GRDB.Database) throws -> T) throws -> T {
        try mapped { try queue.read(body) }
    }

    func write<T>(_ body: (GRDB.Database) throws -> T) throws -> T {
        try mapped { try queue.write(body) }
    }

    private func mapped<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as DatabaseError {
            throw CycladesError(.backend, "database \(path): \(e.message ?? "\(e)")")
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "users") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("tokenHash", .text).notNull().unique()
                t.column("defaultProject", .text).notNull()
                t.column("created", .datetime).notNull()
            }
            try db.create(table: "projects") { t in
                t.primaryKey("id", .text)
                t.column("diskLimit", .integer).notNull()
                t.column("diskUsage", .integer).notNull().defaults(to: 0)
            }
            try db.create(table: "backends") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("name", .text).notNull().unique()
                t.column("rapiURL", .text).notNull()
                t.column("username", .text).notNull()
                t.column("password", .text).notNull()
                t.column("caFile", .text)
                t.column("insecure", .boolean).notNull()
                t.column("node", .text).notNull()
                t.column("os", .text).notNull()
                t.column("hypervisor", .text)
                t.column("drained", .boolean).notNull().defaults(to: false)
            }
            try db.create(table: "volume_types") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("name", .text).notNull().unique()
                t.column("diskTemplate", .text).notNull()
                t.column("deleted", .boolean).notNull().defaults(to: false)
            }
            try db.create(table: "flavors") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("name", .text).notNull().unique()
                t.column("cpu", .integer).notNull()
                t.column("ram", .integer).notNull()
                t.column("disk", .integer).notNull()
                t.column("volumeTypeID", .integer).notNull().references("volume_types", onDelete: .restrict)
            }
            try db.create(table: "images") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull()
                t.column("owner", .text).notNull()
                t.column("isPublic", .boolean).notNull()
                t.column("location", .text).notNull()
                t.column("size", .integer).notNull()
                t.column("checksum", .text)
            }
            try db.create(table: "servers") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("name", .text).notNull()
                t.column("userid", .text).notNull().indexed().references("users", onDelete: .restrict)
                t.column("project", .text).notNull().references("projects", onDelete: .restrict)
                t.column("flavorID", .integer).notNull().references("flavors", onDelete: .restrict)
                t.column("backendID", .integer).notNull().references("backends", onDelete: .restrict)
                t.column("imageID", .text)
                t.column("status", .text).notNull()
                t.column("backendJobID", .integer)
                t.column("pendingAction", .text)
                t.column("deleted", .boolean).notNull().defaults(to: false)
                t.column("created", .datetime).notNull()
                t.column("updated", .datetime).notNull()
            }
            try db.create(table: "volumes") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("name", .text)
                t.column("description", .text)
                t.column("userid", .text).notNull().indexed().references("users", onDelete: .restrict)
                t.column("project", .text).notNull().references("projects", onDelete: .restrict)
                t.column("size", .integer).notNull()
                t.column("volumeTypeID", .integer).notNull().references("volume_types", onDelete: .restrict)
                t.column("machineID", .integer).indexed().references("servers", onDelete: .restrict)
                t.column("index", .integer)
                t.column("source", .text)
                t.column("origin", .text)
                t.column("status", .text).notNull()
                t.column("deleteOnTermination", .boolean).notNull()
                t.column("deleted", .boolean).notNull().defaults(to: false)
                t.column("backendJobID", .integer)
                t.column("created", .datetime).notNull()
                t.column("updated", .datetime).notNull()
            }
            try db.create(table: "volume_metadata") { t in
                t.column("volumeID", .integer).notNull().references("volumes", onDelete: .cascade)
                t.column("key", .text).notNull()
                t.column("value", .text).notNull()
                t.primaryKey(["volumeID", "key"])
            }
            try db.create(table: "snapshots") { t in
                t.primaryKey("id", .text)
                t.column("volumeID", .integer).references("volumes", onDelete: .setNull)
                t.column("userid", .text).notNull()
                t.column("name", .text).notNull()
                t.column("size", .integer).notNull()
                t.column("status", .text).notNull()
                t.column("storeName", .text).notNull()
                t.column("created", .datetime).notNull()
            }
            try db.create(table: "commissions") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("project", .text).notNull().references("projects", onDelete: .restrict)
                t.column("resource", .text).notNull()
                t.column("delta", .integer).notNull()
                t.column("state", .text).notNull()
                t.column("backendJobID", .integer)
                t.column("serverID", .integer)
                t.column("volumeIDs", .text).notNull()
                t.column("created", .datetime).notNull()
                t.column("resolved", .datetime)
            }
        }
        // cyclades-api (issue 8): a grow in flight (os-extend) records the size it asked Ganeti for.
        m.registerMigration("v2") { db in
            try db.alter(table: "volumes") { t in t.add(column: "pendingSize", .integer) }
        }
        // Snapshot names come from a per-volume counter, never from a count of
        // the records (a count repeats a name after a delete), as Synnefo does.
        // It starts past the snapshots the volume already has.
        m.registerMigration("v3") { db in
            try db.alter(table: "volumes") { t in t.add(column: "snapshotCounter", .integer).notNull().defaults(to: 0) }
            try db.execute(sql: "UPDATE volumes SET snapshotCounter = (SELECT COUNT(*) FROM snapshots WHERE snapshots.volumeID = volumes.id)")
        }
        // Detachable volumes (Ganeti 3.1): the server an attach goes to, the step of a helper-server change.
        m.registerMigration("attach-v1") { db in
            try db.alter(table: "volumes") { t in
                t.add(column: "pendingServerID", .integer)
                t.add(column: "helperStep", .text)
                t.add(column: "backendID", .integer)
            }
        }
        return m
    }
}
