import ArchipStore
import ArgumentParser
import Cyclades
import CycladesAPI
import Foundation
import Hummingbird

/// cyclades-api: the Cinder-compatible volume API and the compute extensions.
@main
struct CycladesAPIServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cyclades-api",
        abstract: "Serve the Cinder-compatible volume API (/volume/v3, /volume/v2.0) and the compute extensions (/compute/v2.1, /compute/v2.0).",
        discussion: """
        Settings come from the options, else the configuration file (default /etc/archip/cyclades.conf):
        [cyclades] db, max_volume_size; [api] listen, settle_interval; [store] path; [node] runtime_dir.
        Users authenticate with X-Auth-Token (the token snf-manage user-create printed).
        One log line per request on stderr. SIGTERM/SIGINT: stop accepting, finish requests in flight, exit 0.
        """
    )

    @Option(help: ArgumentHelp("Address to listen on (default 127.0.0.1:8776).", valueName: "host:port")) var listen: String?
    @Option(help: ArgumentHelp("The SQLite database (as snf-manage's).", valueName: "file")) var db: String?
    @Option(help: ArgumentHelp("Configuration file (default /etc/archip/cyclades.conf).", valueName: "file")) var config: String?
    @Option(help: ArgumentHelp("The archip store, for snapshots (default [store] path).", valueName: "dir")) var store: String?
    @Option(name: .customLong("runtime-dir"), help: ArgumentHelp("This node's archip serve folder (default [node] runtime_dir or /run/archip).", valueName: "dir"))
    var runtimeDir: String?
    @Option(name: .customLong("settle-interval"), help: ArgumentHelp("Seconds between polls of Ganeti jobs in flight (default 1).", valueName: "s"))
    var settleInterval: Double?
    @Flag(name: .customLong("fake-ganeti"), help: "Testing and benchmarks only: a Ganeti in memory that ends every job at once.")
    var fakeGaneti = false
    @Flag(help: "No per-request log lines.") var quiet = false

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let path = config ?? env["SNF_CONFIG"] ?? "/etc/archip/cyclades.conf"
        let conf: [String: String]
        do { conf = try ConfigFile.load(path, required: config != nil) } catch { fail("\(error)") }
        let dbPath = db ?? env["SNF_DB"] ?? conf["cyclades.db"] ?? "/var/lib/cyclades/cyclades.db"
        let registry: Registry
        do {
            if fakeGaneti {
                let g = InstantGaneti()
                registry = Registry(db: try CycladesDatabase(path: dbPath), backendClient: { _ in g })
            } else {
                registry = Registry(db: try CycladesDatabase(path: dbPath))
            }
        } catch { fail("\(error)") }
        if let m = conf["cyclades.max_volume_size"], let n = Int(m) { registry.maxVolumeSizeGB = n }
        let api = CycladesAPI(registry: registry)
        api.storePath = store ?? env["ARCHIP_STORE"] ?? conf["store.path"]
        api.runtimeDir = runtimeDir ?? conf["node.runtime_dir"] ?? "/run/archip"
        if quiet { api.log = { _ in } }
        let address = listen ?? conf["api.listen"] ?? "127.0.0.1:8776"
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            fail("--listen \(address): expected HOST:PORT")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let interval = settleInterval ?? conf["api.settle_interval"].flatMap(Double.init) ?? 1
        let settler = Task.detached {
            // Settle what Ganeti ended: states and quota follow the jobs, not the requests.
            while !Task.isCancelled {
                do { _ = try registry.processJobs() } catch { api.log("settle: \(error)") }
                try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
            }
        }
        let app = Application(router: api.router(), server: api.httpServer, configuration: .init(address: .hostname(host, port: port), serverName: "cyclades-api"),
                              onServerRunning: { _ in api.log("cyclades-api: listening on \(host):\(port), database \(dbPath)") })
        try await app.runService()
        settler.cancel()
        api.log("cyclades-api: stopped")
    }

    func fail(_ m: String) -> Never {
        FileHandle.standardError.write(Data("cyclades-api: \(m)\n".utf8))
        Foundation.exit(1)
    }
}
