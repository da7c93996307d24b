import ArchipStore
import Foundation

/// What `snf-manage` and `cyclades-api` take from their options, the
/// environment and `/etc/archip/cyclades.conf`, resolved in one place so the
/// two front ends cannot disagree. For each setting the first that is set
/// wins: the option, the environment variable, the file, the default.
///
/// ```
/// setting          option           environment    file
/// configuration    --config         SNF_CONFIG     (default /etc/archip/cyclades.conf; a named file must exist)
/// database         --db             SNF_DB         [cyclades] db (default /var/lib/cyclades/cyclades.db)
/// max volume size  -                -              [cyclades] max_volume_size (GB, default 1024)
/// store            --store          ARCHIP_STORE   [store] path, or backend = rados with pool, conf, id,
///                                                 namespace, as in archip.conf (none: no store)
/// runtime folder   --runtime-dir    -              [node] runtime_dir (default /run/archip)
/// listen           --listen         -              [api] listen (default 127.0.0.1:8776)
/// settle interval  --settle-interval -             [api] settle_interval (seconds, default 1)
/// ```
public struct CycladesSettings: Sendable, Equatable {
    public static let defaultConfigPath = "/etc/archip/cyclades.conf"
    public static let defaultDatabase = "/var/lib/cyclades/cyclades.db"

    public var configPath: String
    public var database: String
    public var maxVolumeSizeGB: Int
    public var storePath: String?
    public var runtimeDir: String
    public var listenHost: String
    public var listenPort: Int
    public var settleInterval: Double

    /// What the command line gave (nil: not given).
    public struct Options: Sendable {
        public var config: String?
        public var db: String?
        public var store: String?
        public var runtimeDir: String?
        public var listen: String?
        public var settleInterval: Double?

        public init(config: String? = nil, db: String? = nil, store: String? = nil, runtimeDir: String? = nil,
                    listen: String? = nil, settleInterval: Double? = nil) {
            self.config = config; self.db = db; self.store = store; self.runtimeDir = runtimeDir
            self.listen = listen; self.settleInterval = settleInterval
        }
    }

    /// Reads the configuration file once and resolves every setting; a
    /// malformed value is an error naming the file, the key and the value.
    public static func load(_ options: Options = Options(),
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> CycladesSettings {
        let path = options.config ?? environment["SNF_CONFIG"] ?? defaultConfigPath
        let conf: [String: String]
        do {
            conf = try ConfigFile.load(path, required: options.config != nil || environment["SNF_CONFIG"] != nil)
        } catch let e as StoreError {
            throw CycladesError(.badRequest, e.message)
        }
        func bad(_ key: String, _ value: String, _ what: String) -> CycladesError {
            CycladesError(.badRequest, "\(path): \(key) '\(value)' is not \(what)")
        }
        var maxSize = 1024
        if let m = conf["cyclades.max_volume_size"] {
            guard let n = Int(m), n > 0 else { throw bad("[cyclades] max_volume_size", m, "a number of GB above zero") }
            maxSize = n
        }
        let interval: Double
        if let s = options.settleInterval {
            guard s > 0, s.isFinite else { throw CycladesError(.badRequest, "--settle-interval \(s): expected seconds above zero") }
            interval = s
        } else if let s = conf["api.settle_interval"] {
            guard let d = Double(s), d > 0, d.isFinite else { throw bad("[api] settle_interval", s, "a number of seconds above zero") }
            interval = d
        } else {
            interval = 1
        }
        let address = options.listen ?? conf["api.listen"] ?? "127.0.0.1:8776"
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
              (0...65535).contains(port), colon != address.startIndex else {
            throw CycladesError(.badRequest, options.listen != nil ? "--listen \(address): expected HOST:PORT"
                                                                   : "\(path): [api] listen '\(address)' is not HOST:PORT")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return CycladesSettings(
            configPath: path,
            database: options.db ?? environment["SNF_DB"] ?? conf["cyclades.db"] ?? defaultDatabase,
            maxVolumeSizeGB: maxSize,
            storePath: try options.store ?? environment["ARCHIP_STORE"] ?? storeLocation(conf, path),
            runtimeDir: options.runtimeDir ?? conf["node.runtime_dir"] ?? "/run/archip",
            listenHost: host, listenPort: port, settleInterval: interval)
    }

    /// `[store]` as archip.conf has it: a folder, or a pool (`backend = rados`).
    static func storeLocation(_ conf: [String: String], _ path: String) throws -> String? {
        do {
            return try StoreLocation.fromConfig(conf, file: path)
        } catch let e as StoreError {
            throw CycladesError(.badRequest, e.message)
        }
    }

    /// The registry on the database, with the size limit; `createFolder` makes
    /// the database's folder first (snf-manage, which may be the first to use it).
    public func openRegistry(createFolder: Bool = false,
                             backendClient: ((Backend) -> any GanetiBackend)? = nil) throws -> Registry {
        if createFolder {
            let dir = (database as NSString).deletingLastPathComponent
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        }
        let db = try CycladesDatabase(path: database)
        let registry = backendClient.map { Registry(db: db, backendClient: $0) } ?? Registry(db: db)
        registry.maxVolumeSizeGB = maxVolumeSizeGB
        return registry
    }
}
