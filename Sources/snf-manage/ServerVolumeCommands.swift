import ArchipStore
import ArgumentParser
import Cyclades
import Foundation

func volumeRows(_ vols: [Volume], _ types: [Int64: VolumeType]) -> Rows {
    Rows(columns: ["id", "name", "user", "size", "status", "source", "disk_template", "server", "index"],
         rows: vols.map { v in
             ["\(v.id!)", v.name ?? "", v.userid, "\(v.size)", v.status.rawValue, v.source ?? "",
              types[v.volumeTypeID]?.diskTemplate ?? "", v.machineID.map(String.init) ?? "", v.index.map(String.init) ?? ""]
         })
}

struct ServerCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "server-create", abstract: "Create a server with its volumes (root = the first).",
        discussion: "--volume size=N[,image=UUID|,snapshot=UUID][,name=NAME], repeatable; without --volume the root is the image at the flavor's disk size.")
    @OptionGroup var common: Common
    @Argument(help: "Server name.") var name: String
    @Option var flavor: String
    @Option(help: "User name or id.") var user: String
    @Option(help: "Image UUID (the root volume's source).") var image: String?
    @Option(name: .customLong("volume"), help: ArgumentHelp("size=N[,image=ID|,snapshot=ID][,name=NAME]", valueName: "spec")) var volumes: [String] = []
    @Option(help: "Backend name (default: the first not drained).") var backend: String?
    @Flag(name: .customLong("no-start"), help: "Create the instance stopped.") var noStart = false
    @Flag(help: "Wait for Ganeti's job.") var wait = false

    func run() throws {
        let c = try common.open()
        let reqs = try volumes.map(VolumeRequest.init(parsing:))
        let s = try c.createServer(name: name, user: user, flavor: flavor, image: image, volumes: reqs, backend: backend, start: !noStart)
        if wait { try waitFor(c, job: s.backendJobID, what: "server \(s.id!)") }
        guard let now = try c.server(id: s.id!) else { throw CycladesError.notFound("server", s.id!) }
        print("server \(now.id!) (\(now.instanceName)): \(now.status.rawValue), job \(now.backendJobID.map(String.init) ?? "-")")
    }
}

struct ServerList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "server-list", abstract: "List servers.")
    @OptionGroup var common: Common
    @Flag(help: "Include deleted servers.") var deleted = false
    func run() throws {
        let list = try common.open().servers(ServerFilter(includeDeleted: deleted))
        Rows(columns: ["id", "name", "instance", "user", "status", "job"],
             rows: list.map { ["\($0.id!)", $0.name, $0.instanceName, $0.userid, $0.status.rawValue + ($0.pendingAction.map { " (\($0))" } ?? ""),
                               $0.backendJobID.map(String.init) ?? ""] }).print(common.output)
    }
}

struct ServerInspect: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "server-inspect", abstract: "A server, its volumes, and its disks in Ganeti.")
    @OptionGroup var common: Common
    @Argument var id: Int64
    func run() throws {
        let c = try common.open()
        guard let s = try c.server(id: id) else { throw CycladesError.notFound("server", id) }
        let vols = try c.volumes(server: id, includeDeleted: true)
        guard let backend = try c.backend(id: s.backendID) else { throw CycladesError.notFound("backend", s.backendID) }
        let disks = try? RAPIClient(backend: backend).instanceDisks(s.instanceName)
        if common.output == .json {
            let obj: [String: Any] = [
                "id": s.id!, "name": s.name, "instance": s.instanceName, "status": s.status.rawValue, "user": s.userid,
                "job": s.backendJobID as Any, "pending": s.pendingAction as Any,
                "volumes": vols.map { ["id": $0.id!, "disk": $0.diskName, "index": $0.index as Any, "size": $0.size, "status": $0.status.rawValue, "source": $0.source as Any] },
                "ganeti_disks": (disks?.disks ?? []).map { ["name": $0.name as Any, "size_mib": $0.sizeMiB, "uuid": $0.uuid as Any, "index": $0.index] },
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
            return
        }
        print("server \(s.id!) \(s.name): \(s.instanceName) on \(backend.name), \(s.status.rawValue)\(s.pendingAction.map { " (\($0) pending)" } ?? ""), user \(s.userid)")
        print("\nVolumes of server \(s.id!):")
        volumeRows(vols, try c.volumeTypesByID()).print(.table)
        print("\nGaneti disks of \(s.instanceName):")
        if let d = disks {
            Rows(columns: ["index", "name", "size_mib", "uuid"], rows: d.disks.map { ["\($0.index)", $0.name ?? "", "\($0.sizeMiB)", $0.uuid ?? ""] }).print(.table)
        } else {
            print("(not in Ganeti)")
        }
    }
}

struct ServerRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "server-remove", abstract: "Remove a server and all its volumes.")
    @OptionGroup var common: Common
    @Argument var id: Int64
    @Flag(help: "Wait for Ganeti's job.") var wait = false
    func run() throws {
        let c = try common.open()
        let s = try c.removeServer(id)
        if wait { try waitFor(c, job: s.backendJobID, what: "removing server \(id)") }
        print("server \(id): removal job \(s.backendJobID.map(String.init) ?? "-")")
    }
}

struct VolumeCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-create", abstract: "Create a volume on a server, or without one (AVAILABLE; Ganeti 3.1).")
    @OptionGroup var common: Common
    @Option(help: "Server id (none: a volume without a server, to attach later).") var server: Int64?
    @Option(help: "Size in GB.") var size: Int
    @Option(help: "image:UUID or snapshot:UUID.") var source: String?
    @Option(name: .customLong("volume-type")) var volumeType: String?
    @Option var name: String?
    @Option var description: String?
    @Option(help: "User name or id.") var user: String
    @Option(name: .customLong("metadata"), help: ArgumentHelp("KEY=VALUE (repeatable, at most 10).", valueName: "pair")) var metadata: [String] = []
    @Flag(help: "Wait for Ganeti's job.") var wait = false
    func run() throws {
        let c = try common.open()
        var meta: [String: String] = [:]
        for p in metadata {
            guard let eq = p.firstIndex(of: "="), eq != p.startIndex else { throw CycladesError(.badRequest, "metadata '\(p)' is not KEY=VALUE") }
            meta[String(p[..<eq])] = String(p[p.index(after: eq)...])
        }
        guard let server else {
            let v = try c.createAvailableVolume(user: user, sizeGB: size, source: source, volumeType: volumeType, name: name,
                                                description: description, metadata: meta)
            let now = wait ? try c.waitVolume(v.id!) : v
            print("volume \(now.id!) (\(now.diskName)): \(now.status.rawValue), job \(now.backendJobID.map(String.init) ?? "-")")
            return
        }
        let v = try c.createVolume(server: server, user: user, sizeGB: size, source: source, volumeType: volumeType, name: name,
                                   description: description, metadata: meta)
        if wait { try waitFor(c, job: v.backendJobID, what: "volume \(v.id!)") }
        guard let now = try c.volume(id: v.id!) else { throw CycladesError.notFound("volume", v.id!) }
        print("volume \(now.id!) (\(now.diskName)): \(now.status.rawValue), job \(now.backendJobID.map(String.init) ?? "-")")
    }
}

struct VolumeRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-remove", abstract: "Remove volumes (their disks leave the servers).")
    @OptionGroup var common: Common
    @Argument var ids: [Int64]
    @Flag(help: "Wait for Ganeti's jobs.") var wait = false
    func run() throws {
        let c = try common.open()
        for id in ids {
            let v = try c.removeVolume(id)
            if wait && v.helperStep != nil { _ = try c.waitVolume(id) }
            else if wait { try waitFor(c, job: v.backendJobID, what: "removing volume \(id)") }
            print("volume \(id): removal job \(v.backendJobID.map(String.init) ?? "-")")
        }
    }
}

struct VolumeList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-list", abstract: "List volumes.")
    @OptionGroup var common: Common
    @Option var user: String?
    @Option var server: Int64?
    @Option var status: String?
    @Flag(help: "Include deleted volumes.") var deleted = false
    func run() throws {
        let c = try common.open()
        let uid = try user.map { try c.findUser($0).id }
        let wanted = try status.map { s in
            guard let st = VolumeStatus(rawValue: s.uppercased()) else {
                throw CycladesError(.badRequest, "--status \(s): not a volume status (\(VolumeStatus.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            return st
        }
        let list = try c.volumes(VolumeFilter(owner: uid, server: server, status: wanted, includeDeleted: deleted))
        volumeRows(list, try c.volumeTypesByID()).print(common.output)
    }
}

struct VolumeInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-info", abstract: "One volume's record.")
    @OptionGroup var common: Common
    @Argument var id: Int64
    func run() throws { try showVolume(common, id, inspect: false, store: nil) }
}

struct VolumeShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-show", abstract: "Alias of volume-info.")
    @OptionGroup var common: Common
    @Argument var id: Int64
    func run() throws { try showVolume(common, id, inspect: false, store: nil) }
}

struct VolumeInspect: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-inspect", abstract: "A volume's record, its Ganeti disk and its store volume.")
    @OptionGroup var common: Common
    @Option(help: "The archip store (default: $ARCHIP_STORE or [store] path).") var store: String?
    @Argument var id: Int64
    func run() throws { try showVolume(common, id, inspect: true, store: store) }
}

func showVolume(_ common: Common, _ id: Int64, inspect: Bool, store storePath: String?) throws {
    let c = try common.open()
    guard let v = try c.volume(id: id) else { throw CycladesError.notFound("volume", id) }
    guard let t = try c.volumeType(id: v.volumeTypeID) else { throw CycladesError.notFound("volume type", v.volumeTypeID) }
    let s = try v.machineID.flatMap { try c.server(id: $0) }
    let b = try s.flatMap { try c.backend(id: $0.backendID) }
    var fields: [(String, String)] = [
        ("id", "\(v.id!)"), ("name", v.name ?? ""), ("disk", v.diskName), ("size", "\(v.size) GB"), ("status", v.status.rawValue),
        ("disk_template", t.template), ("disk_provider", t.provider ?? ""), ("server_id", v.machineID.map(String.init) ?? ""),
        ("userid", v.userid), ("project", v.project), ("index", v.index.map(String.init) ?? ""), ("source", v.source ?? ""),
        ("origin", v.origin ?? ""), ("delete_on_termination", "\(v.deleteOnTermination)"), ("deleted", "\(v.deleted)"),
        ("backendjobid", v.backendJobID.map(String.init) ?? ""),
    ]
    for (k, val) in try c.metadata(volume: id).sorted(by: { $0.key < $1.key }) { fields.append(("metadata." + k, val)) }
    if inspect {
        if let s, let b, let d = try? RAPIClient(backend: b).instanceDisks(s.instanceName), let disk = d.disks.first(where: { $0.name == v.diskName }) {
            fields += [("ganeti.name", disk.name ?? ""), ("ganeti.index", "\(disk.index)"), ("ganeti.size_mib", "\(disk.sizeMiB)"), ("ganeti.uuid", disk.uuid ?? "")]
        } else {
            fields.append(("ganeti", "no such disk"))
        }
        if let store = try common.store(storePath) {
            // Records only (no map is read) to find it; then its own info.
            if let n = try store.volumes(withMetadata: GanetiMetadata.cname, equalTo: v.diskName).first {
                let info = try store.info(n)
                fields += [("store.name", info.name), ("store.size", "\(info.size)"), ("store.parent", info.parent ?? ""),
                           ("store.lock", info.lock.map { "\($0.mode.rawValue) by \($0.holders.map(\.node).joined(separator: ","))" } ?? "")]
                // The last 'archip verify' (or scrub) of it, as recorded in the store.
                fields.append(("store.last_verify", (try? store.lastVerification(n))??.summary ?? "never verified"))
            } else {
                fields.append(("store", "no volume records \(v.diskName)"))
            }
        }
    }
    if common.output == .table {
        let w = fields.map(\.0.count).max() ?? 0
        for (k, val) in fields { print(k.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + val) }
    } else {
        Rows(columns: fields.map(\.0), rows: [fields.map(\.1)]).print(common.output)
    }
}
