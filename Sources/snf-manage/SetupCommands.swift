import ArgumentParser
import Cyclades
import Foundation

struct BackendAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "backend-add", abstract: "Register a Ganeti cluster (its RAPI).")
    @OptionGroup var common: Common
    @Argument(help: "Backend name.") var name: String
    @Option(help: ArgumentHelp("RAPI URL, e.g. https://cluster.example.org:5080", valueName: "url")) var rapi: String
    @Option(help: "RAPI user (write access).") var user: String
    @Option(help: "RAPI password.") var password: String
    @Option(help: ArgumentHelp("CA certificate of the RAPI (Ganeti's rapi.pem).", valueName: "file")) var ca: String?
    @Flag(help: "Do not verify the RAPI certificate (tests only).") var insecure = false
    @Option(help: "The node new instances go to (pnode).") var node: String
    @Option(help: "The guest OS Ganeti installs (e.g. snf-image+default).") var os: String
    @Option(help: "Hypervisor (default: the cluster's).") var hypervisor: String?

    func run() throws {
        guard rapi.hasPrefix("https://") || rapi.hasPrefix("http://") else { throw CycladesError(.badRequest, "--rapi must be an http(s) URL") }
        let b = try common.open().addBackend(Backend(id: nil, name: name, rapiURL: rapi, username: user, password: password, caFile: ca,
                                                     insecure: insecure, node: node, os: os, hypervisor: hypervisor, drained: false))
        print("backend \(b.id!) \(b.name): \(b.rapiURL)")
    }
}

struct BackendList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "backend-list", abstract: "List the Ganeti backends.")
    @OptionGroup var common: Common
    func run() throws {
        let list = try common.open().backends()
        Rows(columns: ["id", "name", "rapi", "node", "os", "drained"],
             rows: list.map { ["\($0.id!)", $0.name, $0.rapiURL, $0.node, $0.os, "\($0.drained)"] }).print(common.output)
    }
}

struct VolumeTypeCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-type-create", abstract: "Create a volume type (e.g. ext_archipelago).")
    @OptionGroup var common: Common
    @Argument(help: "Type name.") var name: String
    @Option(name: .customLong("disk-template"), help: "Ganeti template, with _PROVIDER for ext (ext_archipelago, drbd).") var diskTemplate: String
    func run() throws {
        let t = try common.open().createVolumeType(name: name, diskTemplate: diskTemplate)
        print("volume type \(t.id!) \(t.name): template \(t.template)\(t.provider.map { ", provider \($0)" } ?? "")")
    }
}

struct VolumeTypeList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-type-list", abstract: "List volume types.")
    @OptionGroup var common: Common
    func run() throws {
        let list = try common.open().volumeTypes(includeDeleted: true)
        Rows(columns: ["id", "name", "disk_template", "deleted"], rows: list.map { ["\($0.id!)", $0.name, $0.diskTemplate, "\($0.deleted)"] }).print(common.output)
    }
}

struct FlavorCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "flavor-create", abstract: "Create a flavor.")
    @OptionGroup var common: Common
    @Argument(help: "Flavor name.") var name: String
    @Option var cpu: Int
    @Option(help: "RAM in MiB.") var ram: Int
    @Option(help: "Root disk in GB.") var disk: Int
    @Option(name: .customLong("volume-type")) var volumeType: String
    func run() throws {
        let f = try common.open().createFlavor(name: name, cpu: cpu, ram: ram, disk: disk, volumeType: volumeType)
        print("flavor \(f.id!) \(f.name)")
    }
}

struct FlavorList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "flavor-list", abstract: "List flavors.")
    @OptionGroup var common: Common
    func run() throws {
        let list = try common.open().flavors()
        Rows(columns: ["id", "name", "cpu", "ram", "disk", "volume_type"],
             rows: list.map { ["\($0.id!)", $0.name, "\($0.cpu)", "\($0.ram)", "\($0.disk)", "\($0.volumeTypeID)"] }).print(common.output)
    }
}

struct ImageRegister: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "image-register", abstract: "Register an image: a source the filler accepts.")
    @OptionGroup var common: Common
    @Argument(help: "Image name.") var name: String
    @Option(help: ArgumentHelp("snapshot:NAME (in the store), file:/path, http(s)://URL or pithos:HASHMAP.", valueName: "source")) var location: String
    @Option(help: "The image's size (e.g. 2G, or bytes).") var size: String
    @Option(help: "Owner (user name or id); default: public, owned by the system.") var owner: String?
    @Flag(help: "Visible to every user.") var `public` = false
    @Option(help: "SHA-256 of the image.") var checksum: String?
    func run() throws {
        let c = try common.open()
        let ownerID = try owner.map { try c.findUser($0).id } ?? "system"
        let img = try c.registerImage(name: name, location: location, size: try parseBytes(size), owner: ownerID,
                                      isPublic: self.public || owner == nil, checksum: checksum)
        print(img.id)
    }
}

struct ImageList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "image-list", abstract: "List images.")
    @OptionGroup var common: Common
    func run() throws {
        let list = try common.open().images()
        Rows(columns: ["id", "name", "owner", "public", "size", "location"],
             rows: list.map { [$0.id, $0.name, $0.owner, "\($0.isPublic)", "\($0.size)", $0.location] }).print(common.output)
    }
}

struct UserCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user-create", abstract: "Create a user (and its project); prints its API token once.")
    @OptionGroup var common: Common
    @Argument(help: "User name.") var name: String
    @Option(help: "cyclades.disk quota of the user's project (e.g. 100G).") var quota: String = "100G"
    func run() throws {
        let (u, token) = try common.open().createUser(name: name, diskLimit: try parseBytes(quota))
        if common.output == .json {
            Rows(columns: ["id", "name", "project", "token"], rows: [[u.id, u.name, u.defaultProject, token]]).print(.json)
        } else {
            print("user \(u.name): id \(u.id), project \(u.defaultProject)")
            print("token: \(token)")
        }
    }
}

struct UserList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user-list", abstract: "List users.")
    @OptionGroup var common: Common
    func run() throws {
        let list = try common.open().users()
        Rows(columns: ["id", "name", "project"], rows: list.map { [$0.id, $0.name, $0.defaultProject] }).print(common.output)
    }
}

struct QuotaSet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "quota-set", abstract: "Set a project's cyclades.disk limit.")
    @OptionGroup var common: Common
    @Argument(help: "Project id, or a user name (its project).") var project: String
    @Option(help: "The limit (e.g. 200G).") var disk: String
    func run() throws {
        let c = try common.open()
        let p = (try? c.findUser(project).defaultProject) ?? project
        try c.setQuota(project: p, diskLimit: try parseBytes(disk))
    }
}

struct QuotaList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "quota-list", abstract: "cyclades.disk per project: limit, usage, pending (bytes).")
    @OptionGroup var common: Common
    func run() throws {
        let rows = try common.open().quotas()
        if common.output == .json { return try printJSON(rows) }
        Rows(columns: ["project", "resource", "limit", "usage", "pending"],
             rows: rows.map { [$0.project, $0.resource, "\($0.limit)", "\($0.usage)", "\($0.pending)"] }).print(common.output)
    }
}
