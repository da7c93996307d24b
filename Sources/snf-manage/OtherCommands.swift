import ArchipServe
import ArchipStore
import ArgumentParser
import Cyclades
import Foundation

struct SnapshotCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshot-create", abstract: "Snapshot a volume in the store (O(1)); usable as snapshot:UUID.",
        discussion: "The volume must not be held by a running server's node: snapshots of attached volumes go through that node's daemon (archip snapshot there).")
    @OptionGroup var common: Common
    @Option(help: "The archip store (default: $ARCHIP_STORE or [store] path).") var store: String?
    @Option(name: .customLong("runtime-dir"), help: ArgumentHelp("This node's archip serve folder, for volumes attached here (default [node] runtime_dir or /run/archip).", valueName: "dir"))
    var runtimeDir: String?
    @Argument var volume: Int64
    @Option var name: String
    func run() throws {
        let c = try common.open()
        guard let st = try common.store(store) else { throw CycladesError(.badRequest, "no store: give --store, $ARCHIP_STORE or [store] path") }
        guard let v = try c.volume(id: volume) else {
            throw CycladesError(.badRequest, "volume \(volume) does not exist")
        }
        let rt = try common.settings(runtimeDir: runtimeDir).runtimeDir
        let snap = try c.createSnapshot(of: v, owner: v.userid, name: name, store: st) { source, target in
            try NodeSnapshot.take(source, as: target, runtimeDir: rt)
        }
        print(snap.id)
    }
}

struct SnapshotRegister: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshot-register", abstract: "Record an existing store snapshot for a user.")
    @OptionGroup var common: Common
    @Argument var storeName: String
    @Option var name: String
    @Option var user: String
    @Option(help: "Size in GB.") var size: Int
    func run() throws {
        let snap = try common.open().registerSnapshot(storeName: storeName, name: name, user: user, sizeGB: size)
        print(snap.id)
    }
}

struct SnapshotList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshot-list", abstract: "List snapshots.")
    @OptionGroup var common: Common
    func run() throws {
        let list = try common.open().snapshots()
        Rows(columns: ["id", "name", "user", "volume", "size", "status", "store_name"],
             rows: list.map { [$0.id, $0.name, $0.userid, $0.volumeID.map(String.init) ?? "", "\($0.size)", $0.status, $0.storeName] }).print(common.output)
    }
}

struct JobsProcess: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "jobs-process", abstract: "Settle the changes whose Ganeti jobs ended.")
    @OptionGroup var common: Common
    func run() throws {
        for (job, state) in try common.open().processJobs() {
            print("job \(job.jobID) (\(job.what)): \(state == .success ? "success" : "\(state)")")
        }
    }
}

struct ReconcileServers: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reconcile-servers",
        abstract: "Compare the database with Ganeti and the store; report every difference, fix the safe ones.",
        discussion: "Exit status 0 when nothing differs (or everything found was fixed), 1 otherwise.")
    @OptionGroup var common: Common
    @Option(help: "The archip store (default: $ARCHIP_STORE or [store] path; skipped if none).") var store: String?
    @Flag(name: .customLong("fix-unsynced-disks"), help: "Fix disk differences (missing disks, sizes, indexes) and settle ended jobs.") var fixDisks = false
    @Flag(name: .customLong("fix-all"), help: "Fix everything that is safe to fix.") var fixAll = false

    func run() throws {
        let c = try common.open()
        let diffs = try c.reconcile(store: try common.store(store), fix: fixDisks || fixAll)
        // Store volumes whose last verification (archip verify / the scrub) found damage.
        let damaged = try common.store(store)?.namesWithDamage() ?? []
        if common.output == .table {
            if diffs.isEmpty && damaged.isEmpty { print("in sync: database, Ganeti\(try common.store(store) == nil ? "" : " and the store") agree") }
            for d in diffs { print(d.description) }
            for r in damaged { print("damaged: store \(r.kind) \(r.name): \(r.summary); see 'archip verify --all' and 'archip repair'") }
        } else {
            Rows(columns: ["kind", "server", "volume", "detail", "fixed"],
                 rows: diffs.map { [$0.kind.rawValue, $0.server.map(String.init) ?? "", $0.volume.map(String.init) ?? "", $0.detail, $0.fixed ?? ""] }
                     + damaged.map { ["damaged", "", "", "store \($0.kind) \($0.name): \($0.summary)", ""] }).print(common.output)
        }
        if diffs.contains(where: { $0.fixed == nil }) || !damaged.isEmpty { throw ExitCode(1) }
    }
}
