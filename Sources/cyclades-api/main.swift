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
        let settings: CycladesSettings
        let registry: Registry
        do {
            settings = try CycladesSettings.load(.init(config: config, db: db, store: store, runtimeDir: runtimeDir,
                                                       listen: listen, settleInterval: settleInterval))
            let g = InstantGaneti()
            registry = try settings.openRegistry(backendClient: fakeGaneti ? { _ in g } : nil)
        } catch let e as CycladesError {
            fail(e.message)
        } catch { fail("\(error)") }
        let api = CycladesAPI(registry: registry)
        api.storePath = settings.storePath
        api.runtimeDir = settings.runtimeDir
        if quiet { api.log = { _ in } }
        let host = settings.listenHost, port = settings.listenPort, dbPath = settings.database
        let interval = settings.settleInterval
        let settler = Task.detached {
            // Settle what Ganeti ended: states and quota follow the jobs, not the requests.
            while !Task.isCancelled {
                do { _ = try registry.processJobs() } catch { api.log("settle: \(error)") }
                try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
            }
        }
        let app = Application(router: api.router(), server: api.httpServer, configuration: .init(address: .hostname(host, port: port), serverName: "cyclades-api"),
                              onServerRunning: { _ in api.log("cyclades-api: listening on \(host):\(port), database \(dbPath)") })
        do {
            try await app.runService()
        } catch {
            settler.cancel()
            fail("serving on \(host):\(port): \(error)")
        }
        settler.cancel()
        api.log("cyclades-api: stopped")
    }

    func fail(_ m: String) -> Never {
        FileHandle.standardError.write(Data("cyclades-api: \(m)\n".utf8))
        Foundation.exit(1)
    }
}
