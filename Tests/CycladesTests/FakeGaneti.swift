@testable import Cyclades
import Foundation

/// A scripted Ganeti: jobs stay pending until the test ends them, with the
/// outcome the test picks; a successful job changes the instances.
final class FakeGaneti: GanetiBackend, DetachableDisks, @unchecked Sendable {
    struct Job { var state: JobState; var effect: () -> Void }
    private let lock = NSLock()
    var instances: [String: [InstanceDisks.Disk]] = [:]
    /// Instances the test says run (the others count as stopped): what the
    /// rule on disk removal without hotplug asks Ganeti.
    var running: Set<String> = []
    /// Disks no instance holds, by name.
    var detached: [String: InstanceDisks.Disk] = [:]
    /// What RAPI /2/info says.
    var version = "3.1.0~rc2"
    /// Every attach and detach asked for: "attach NAME INSTANCE".
    var diskMoves: [String] = []
    var jobs: [Int64: Job] = [:]
    var nextJob: Int64 = 1
    /// The next submission fails (RAPI down) with this message.
    var refuseNext: String?
    /// Every disk asked for, in order (instance creates and disk adds).
    var sentDisks: [DiskSpec] = []

    /// Runs while a submission is on its way, before Ganeti answers with the
    /// job id: what cyclades-api's poller may do meanwhile.
    var whileSubmitting: (() -> Void)?

    private func submit(_ effect: @escaping () -> Void) throws -> Int64 {
        whileSubmitting?()
        return try lock.withLock {
            if let m = refuseNext { refuseNext = nil; throw CycladesError(.backend, m) }
            let id = nextJob
            nextJob += 1
            jobs[id] = Job(state: .pending, effect: effect)
            return id
        }
    }

    func createInstance(_ spec: InstanceSpec) throws -> Int64 {
        lock.withLock { sentDisks += spec.disks }
        return try submit { [self] in
            instances[spec.name] = spec.disks.enumerated().map { .init(name: $1.name, sizeMiB: $1.sizeMiB, uuid: UUID().uuidString, index: $0) }
        }
    }
    func addDisk(instance: String, _ disk: DiskSpec) throws -> Int64 {
        lock.withLock { sentDisks.append(disk) }
        return try submit { [self] in
            var d = instances[instance] ?? []
            d.append(.init(name: disk.name, sizeMiB: disk.sizeMiB, uuid: UUID().uuidString, index: d.count))
            instances[instance] = d
        }
    }
    func removeDisk(instance: String, name: String) throws -> Int64 {
        try submit { [self] in
            var d = instances[instance] ?? []
            d.removeAll { $0.name == name }
            for i in d.indices { d[i].index = i }
            instances[instance] = d
        }
    }
    func removeInstance(_ name: String) throws -> Int64 {
        try submit { [self] in instances[name] = nil }
    }
    func attachDisk(instance: String, name: String) throws -> Int64 {
        lock.withLock { diskMoves.append("attach \(name) \(instance)") }
        return try submit { [self] in
            guard var disk = detached.removeValue(forKey: name) else { return }
            var d = instances[instance] ?? []
            disk.index = d.count
            d.append(disk)
            instances[instance] = d
        }
    }
    func detachDisk(instance: String, name: String) throws -> Int64 {
        lock.withLock { diskMoves.append("detach \(name) \(instance)") }
        return try submit { [self] in
            var d = instances[instance] ?? []
            if let disk = d.first(where: { $0.name == name }) { detached[name] = disk }
            d.removeAll { $0.name == name }
            for i in d.indices { d[i].index = i }
            instances[instance] = d
        }
    }
    func softwareVersion() throws -> String { lock.withLock { version } }
    func instanceDisks(_ name: String) throws -> InstanceDisks? {
        lock.withLock { instances[name].map { InstanceDisks(instance: name, running: running.contains(name), disks: $0) } }
    }
    func job(_ id: Int64) throws -> JobState {
        lock.withLock { jobs[id]?.state ?? .failed("no such job") }
    }

    /// Ends every pending job; `fail` picks which fail.
    func finishAll(fail: (Int64) -> Bool = { _ in false }) {
        lock.withLock {
            for (id, j) in jobs.sorted(by: { $0.key < $1.key }) where j.state == .pending {
                if fail(id) {
                    jobs[id]!.state = .failed("job \(id) failed on purpose")
                } else {
                    j.effect()
                    jobs[id]!.state = .success
                }
            }
        }
    }
}

/// A registry on a fresh database with one backend, types, a flavor, an image and a user.
struct Fixture {
    let registry: Registry
    let ganeti = FakeGaneti()
    let image: Image
    let user: User

    init(quota: Int64 = 100 << 30) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cyclades-\(UUID().uuidString).db").path
        let g = ganeti
        registry = Registry(db: try CycladesDatabase(path: path), backendClient: { _ in g })
        _ = try registry.addBackend(Backend(id: nil, name: "b1", rapiURL: "https://127.0.0.1:5080", username: "u", password: "p", caFile: nil,
                                            insecure: true, node: "node1", os: "noop", hypervisor: "fake", drained: false))
        _ = try registry.createVolumeType(name: "archipelago", diskTemplate: "ext_archipelago")
        _ = try registry.createVolumeType(name: "drbd", diskTemplate: "drbd")
        _ = try registry.createFlavor(name: "small", cpu: 1, ram: 512, disk: 2, volumeType: "archipelago")
        _ = try registry.createFlavor(name: "classic", cpu: 1, ram: 512, disk: 2, volumeType: "drbd")
        image = try registry.registerImage(name: "debian", location: "snapshot:debian-v1", size: 1 << 30, owner: "system", isPublic: true, checksum: nil)
        user = try registry.createUser(name: "alice", diskLimit: quota).0
    }

    /// Everything the database holds, to prove a refused request changed nothing.
    func dump() throws -> String {
        try registry.db.read { db in
            var out = ""
            for t in ["servers", "volumes", "commissions", "projects", "snapshots"] {
                out += t + ": " + (try Row.fetchAll(db, sql: "SELECT * FROM \(t) ORDER BY rowid").map { $0.description }.joined(separator: "; ")) + "\n"
            }
            return out
        }
    }

    /// alice's server "vm" (the image's root disk only), its create job ended and settled.
    func activeServer() throws -> Server {
        let s = try registry.createServer(name: "vm", user: "alice", flavor: "small", image: image.id, volumes: [])
        ganeti.finishAll()
        try registry.processJobs()
        return s
    }

    func usage() throws -> (Int64, Int64) {
        let q = try registry.quotas().first { $0.project == user.defaultProject }!
        return (q.usage, q.pending)
    }
}

import GRDB
