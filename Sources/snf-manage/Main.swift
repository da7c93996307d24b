import ArchipRados
import ArchipStore
import ArgumentParser
import Cyclades
import Foundation

/// Every error is one line on stderr: exit 1 when the request was refused or
/// failed (database, quotas and Ganeti unchanged), 2 when the command line was wrong.
@main
enum Main {
    static func main() {
        do {
            var command = try SnfManage.parseAsRoot()
            try command.run()
        } catch let e as CycladesError {
            fail(e.message, status: 1)
        } catch let e as StoreError {
            fail(e.description, status: 1)
        } catch let e as ExitCode {
            exit(e.rawValue)
        } catch {
            let code = SnfManage.exitCode(for: error)
            if code == .success {
                print(SnfManage.fullMessage(for: error))
                exit(0)
            }
            let message = SnfManage.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            fail("\(message) (see 'snf-manage --help')", status: 2)
        }
    }

    static func fail(_ message: String, status: Int32) -> Never {
        FileHandle.standardError.write(Data("snf-manage: \(message.replacingOccurrences(of: "\n", with: " "))\n".utf8))
        exit(status)
    }
}

struct SnfManage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snf-manage",
        abstract: "Cyclades volumes: servers and their volumes on Ganeti, quotas, reconciliation.",
        discussion: """
        The database is SQLite (--db, else $SNF_DB, else 'db' in the [cyclades] section of
        /etc/archip/cyclades.conf, else /var/lib/cyclades/cyclades.db). Ganeti is reached through
        the RAPI of each backend (backend-add). Sizes of volumes are in GB; quotas take units (10G).
        Changes that reach Ganeti send one job; --wait waits for it, otherwise 'jobs-process' or
        'reconcile-servers --fix-all' settles it later.
        Exit status: 0 done, 1 refused or failed (nothing changed), 2 wrong command line.
        """,
        subcommands: [
            BackendAdd.self, BackendList.self, VolumeTypeCreate.self, VolumeTypeList.self, FlavorCreate.self, FlavorList.self,
            ImageRegister.self, ImageList.self, UserCreate.self, UserList.self, QuotaSet.self, QuotaList.self,
            ServerCreate.self, ServerList.self, ServerInspect.self, ServerRemove.self,
            VolumeCreate.self, VolumeRemove.self, VolumeAttach.self, VolumeDetach.self, VolumeList.self, VolumeInfo.self, VolumeShow.self, VolumeInspect.self,
            SnapshotCreate.self, SnapshotRegister.self, SnapshotList.self,
            JobsProcess.self, ReconcileServers.self,
        ]
    )
}

// MARK: shared options

struct Common: ParsableArguments {
    @Option(help: ArgumentHelp("The SQLite database.", valueName: "file")) var db: String?
    @Option(help: ArgumentHelp("Configuration file (default /etc/archip/cyclades.conf).", valueName: "file")) var config: String?
    @Option(help: ArgumentHelp("Output: table, json or csv.", valueName: "format")) var output: OutputFormat = .table

    /// The settings, as cyclades-api resolves them (CycladesSettings).
    func settings(store: String? = nil, runtimeDir: String? = nil) throws -> CycladesSettings {
        try CycladesSettings.load(.init(config: config, db: db, store: store, runtimeDir: runtimeDir))
    }

    func open() throws -> Registry {
        try settings().openRegistry(createFolder: true)
    }

    /// The store, for inspect and reconcile: --store, $ARCHIP_STORE, or [store] path.
    func store(_ explicit: String?) throws -> VolumeStore? {
        guard let path = try settings(store: explicit).storePath else { return nil }
        // A folder or a pool, as archip and the provider open it; never created here.
        return try StoreOpener.open(path, node: ProcessInfo.processInfo.hostName, mustExist: true)
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable { case table, json, csv }

/// Rows for a table, CSV or JSON (a list of objects with the same keys).
struct Rows {
    var columns: [String]
    var rows: [[String]]

    func print(_ format: OutputFormat) {
        switch format {
        case .table:
            var widths = columns.map(\.count)
            for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
            func line(_ cells: [String]) -> String {
                cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ")
            }
            Swift.print(line(columns.map { $0.uppercased() }))
            for r in rows { Swift.print(line(r)) }
        case .csv:
            func q(_ s: String) -> String { s.contains(",") || s.contains("\"") ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s }
            Swift.print(columns.map(q).joined(separator: ","))
            for r in rows { Swift.print(r.map(q).joined(separator: ",")) }
        case .json:
            let objs = rows.map { Dictionary(uniqueKeysWithValues: zip(columns, $0)) }
            let data = try! JSONSerialization.data(withJSONObject: objs, options: [.prettyPrinted, .sortedKeys])
            Swift.print(String(decoding: data, as: UTF8.self))
        }
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    e.dateEncodingStrategy = .iso8601
    print(String(decoding: try e.encode(value), as: UTF8.self))
}

func parseBytes(_ text: String) throws -> Int64 {
    do { return Int64(try ByteCount(parsing: text).bytes) } catch { throw CycladesError(.badRequest, "'\(text)' is not a size (e.g. 100G)") }
}

func waitFor(_ c: Registry, job: Int64?, what: String) throws {
    guard let job else { return }
    let state = try c.wait(job: job)
    if case .failed(let m) = state { throw CycladesError(.backend, "\(what): Ganeti job \(job) failed: \(m)") }
}

/// The registration layer's records (ArchipStore, imported for the store, has its own `Volume`).
typealias Volume = Cyclades.Volume
