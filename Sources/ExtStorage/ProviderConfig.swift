import ArchipStore
import Foundation

/// The provider's settings, all from the configuration file: Ganeti passes
/// scripts nothing but its own variables, so the store's location, this
/// node's name and the daemon's folder cannot come from the environment.
public struct ProviderConfig: Sendable {
    public var path: String
    public var storePath: String
    public var node: String
    public var runtimeDir: String
    /// The `archip` executable that serves attached volumes (started on demand).
    public var serveExecutable: String
    /// Where `pithos:` origins fetch blocks (a folder or a URL template).
    public var pithosBlocks: String?
    /// CA bundle for https origins.
    public var caCertificate: String?
    /// The only folders `file:` origins and local `pithos:` hashmaps may come
    /// from (`[fill] image_dirs`, absolute paths separated by spaces or
    /// commas). Empty: no local origin is accepted. A disk parameter is the
    /// Ganeti user's, the provider runs as root: without this, any file on the
    /// node (`file:/etc/shadow`) would become a volume's content.
    public var imageDirs: [String]
    public var fillJobs: Int
    public var syslog: Bool
    /// `[locks] lease` and `clock_skew`.
    public var leases: LeaseSettings
    /// `[rados] op_timeout`: a cluster that does not answer fails the call in one line.
    public var rados: RadosSettings

    public static func load(_ path: String) throws -> ProviderConfig {
        let conf: [String: String]
        do {
            conf = try ConfigFile.load(path, required: true)
        } catch let e as StoreError {
            throw ExtStorageError(.failed, e.description)
        }
        return try ProviderConfig(conf, path: path)
    }

    public init(_ conf: [String: String], path: String) throws {
        self.path = path
        let location: String?
        do { location = try StoreLocation.fromConfig(conf, file: path) } catch let e as StoreError {
            throw ExtStorageError(.failed, e.description)
        }
        guard let location else {
            throw ExtStorageError(.failed, "\(path): no 'path' in the [store] section")
        }
        // A folder, or rados://POOL?conf=...&id=... for backend = rados.
        storePath = location
        node = conf["node.name"].flatMap { $0.isEmpty ? nil : $0 } ?? ProcessInfo.processInfo.hostName
        runtimeDir = conf["node.runtime_dir"] ?? "/run/archip"
        serveExecutable = conf["node.archip"] ?? DaemonPaths.defaultServeExecutable
        pithosBlocks = conf["fill.blocks"]
        do { leases = try LeaseSettings.fromConfig(conf, file: path) } catch let e as StoreError {
            throw ExtStorageError(.failed, e.description)
        }
        do { rados = try RadosSettings.fromConfig(conf, file: path) } catch let e as StoreError {
            throw ExtStorageError(.failed, e.description)
        }
        caCertificate = conf["fill.cacert"]
        imageDirs = []
        for dir in (conf["fill.image_dirs"] ?? "").split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\t" }) {
            guard dir.hasPrefix("/") else {
                throw ExtStorageError(.failed, "\(path): [fill] image_dirs '\(dir)' is not an absolute path")
            }
            imageDirs.append(String(dir))
        }
        if let j = conf["fill.jobs"] {
            guard let n = Int(j), (1...256).contains(n) else {
                throw ExtStorageError(.failed, "\(path): [fill] jobs '\(j)' is not a number from 1 to 256")
            }
            fillJobs = n
        } else {
            fillJobs = ProcessInfo.processInfo.activeProcessorCount + 2
        }
        switch (conf["log.syslog"] ?? "no").lowercased() {
        case "yes", "true", "on", "1": syslog = true
        case "no", "false", "off", "0": syslog = false
        case let v: throw ExtStorageError(.failed, "\(path): [log] syslog '\(v)' is neither yes nor no")
        }
    }
}

enum DaemonPaths {
    /// `archip` beside this executable (both go to the same bin folder).
    static var defaultServeExecutable: String {
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent("archip").path
    }
}
