import ArchipRados
import ArchipStore
import ArgumentParser
import Foundation

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The store: a folder, or rados://POOL?conf=FILE&id=NAME.", valueName: "store"))
    var store: String?

    @Option(name: .long, help: ArgumentHelp("This node's name in locks (default: the host name).", valueName: "name"))
    var node: String?

    @Option(name: .long, help: ArgumentHelp("Configuration file (default: /etc/archip/archip.conf).", valueName: "file"))
    var config: String?

    static let names = ["--store", "--node", "--config"]

    /// Lets the global options come before the subcommand too
    /// (`archip --store /srv/archip list`), as operators type them.
    static func hoisted(_ args: [String]) -> [String] {
        var leading: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i]
            if names.contains(a), i + 1 < args.count {
                leading += [a, args[i + 1]]
                i += 2
            } else if names.contains(where: { a.hasPrefix($0 + "=") }) {
                leading.append(a)
                i += 1
            } else {
                break
            }
        }
        guard !leading.isEmpty, i < args.count, !args[i].hasPrefix("-") else { return args }
        return [args[i]] + leading + args[(i + 1)...]
    }

    /// Opens the store. Only `creating` (init, and a first create, import or
    /// fill) turns an empty folder, pool or namespace into a store: a read on
    /// a mistyped path, or on a shared file system that is not mounted, fails
    /// instead of leaving an empty store behind.
    /// `forDaemon`: the node daemon's client, whose object I/O waits out an
    /// OSD restart (RadosSettings).
    func openStore(creating: Bool = false, forDaemon: Bool = false) throws -> VolumeStore {
        let rados = try radosSettings()
        let store = try StoreOpener.open(try storeLocation(), node: nodeName(), mustExist: !creating,
                                         rados: forDaemon ? rados.forDaemon : rados)
        store.leaseSettings = try leaseSettings()
        return store
    }

    /// The configuration file (--config, else $ARCHIP_CONFIG: either must
    /// exist; else /etc/archip/archip.conf if it does) and its path.
    func configFile() throws -> (conf: [String: String], path: String) {
        let env = ProcessInfo.processInfo.environment
        let path = config ?? env["ARCHIP_CONFIG"] ?? "/etc/archip/archip.conf"
        return (try ConfigFile.load(path, required: config != nil || env["ARCHIP_CONFIG"] != nil), path)
    }

    /// Settings read from the configuration file; a bad value is a usage error (exit 2).
    func settings<T>(_ read: ([String: String], String) throws -> T) throws -> T {
        let (conf, path) = try configFile()
        do { return try read(conf, path) } catch let e as StoreError {
            throw CLIError(message: e.description, status: 2)
        }
    }

    /// `[rados]` of the configuration file.
    func radosSettings() throws -> RadosSettings { try settings { try RadosSettings.fromConfig($0, file: $1) } }

    /// `[locks]` of the configuration file.
    func leaseSettings() throws -> LeaseSettings { try settings { try LeaseSettings.fromConfig($0, file: $1) } }

    func nodeName() throws -> String {
        let (conf, _) = try configFile()
        return node ?? ProcessInfo.processInfo.environment["ARCHIP_NODE"] ?? conf["node.name"] ?? ProcessInfo.processInfo.hostName
    }

    /// Where the store is: --store, else $ARCHIP_STORE, else the configuration.
    func storeLocation() throws -> String {
        let env = ProcessInfo.processInfo.environment
        if store == "" { throw CLIError(message: "--store is empty; give a folder or rados://POOL?conf=FILE&id=NAME", status: 2) }
        if store == nil, env["ARCHIP_STORE"] == "" {
            throw CLIError(message: "ARCHIP_STORE is set but empty; give a folder or rados://POOL?conf=FILE&id=NAME, or unset it", status: 2)
        }
        let (conf, configPath) = try configFile()
        var configured: String?
        if store == nil, env["ARCHIP_STORE"] == nil {
            do { configured = try StoreLocation.fromConfig(conf, file: configPath) } catch let e as StoreError {
                throw CLIError(message: e.description, status: 2)
            }
        }
        guard let location = store ?? env["ARCHIP_STORE"] ?? configured else {
            throw CLIError(message: "no store given: use --store DIR (or rados://POOL?conf=FILE&id=NAME), set ARCHIP_STORE, or set 'path' (or backend = rados and 'pool') in the [store] section of \(configPath)", status: 2)
        }
        return location
    }
}

/// The shared configuration file, with the CLI's exit status for a bad one.
enum ConfigFile {
    static func load(_ path: String, required: Bool) throws -> [String: String] {
        do {
            return try ArchipStore.ConfigFile.load(path, required: required)
        } catch let e as StoreError {
            throw CLIError(message: e.description, status: 2)
        }
    }
}

func volumeName(_ text: String) throws -> VolumeName { try VolumeName(text) }

func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    e.dateEncodingStrategy = .iso8601
    FileHandle.standardOutput.write(try e.encode(value))
    FileHandle.standardOutput.write(Data("\n".utf8))
}

func parseSize(_ text: String) throws -> ByteCount {
    try ByteCount(parsing: text).validatedVolumeSize(text)
}

func parseBlockSize(_ text: String) throws -> UInt32 {
    let b = try ByteCount(parsing: text)
    guard b.bytes <= UInt64(UInt32.max) else { throw StoreError(.invalidSize, "invalid block size '\(text)'") }
    return UInt32(b.bytes)
}

func parseMetadata(_ pairs: [String]) throws -> [String: String] {
    var out: [String: String] = [:]
    for p in pairs {
        guard let eq = p.firstIndex(of: "="), eq != p.startIndex else {
            throw CLIError(message: "metadata '\(p)' is not KEY=VALUE", status: 2)
        }
        out[String(p[..<eq])] = String(p[p.index(after: eq)...])
    }
    return out
}

/// A one-line progress display on a terminal; silent otherwise.
final class Progress {
    let total: UInt64
    let label: String
    let enabled: Bool
    let start = Date()
    var last = Date.distantPast

    init(label: String, total: UInt64) {
        self.label = label
        self.total = total
        enabled = isatty(2) != 0
    }

    func update(_ done: UInt64) {
        guard enabled else { return }
        let now = Date()
        guard now.timeIntervalSince(last) > 0.2 || done == total else { return }
        last = now
        let elapsed = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(done) / elapsed
        let pct = total == 0 ? 100 : Int(Double(done) * 100 / Double(total))
        let eta = rate > 0 ? Int(Double(total - done) / rate) : 0
        let line = String(format: "\r%@ %3d%% %@/%@ %.0f MiB/s ETA %ds ", label, pct,
                          ByteCount.format(done & ~0xFFFFF), ByteCount.format(total), rate / 1048576, eta)
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
