import Cyclades
import Foundation

/// A Ganeti that ends every job at once, successfully (`cyclades-api
/// --fake-ganeti`, for the bench and for tests): it keeps instances and disks
/// in memory so reconcile and extend see what a real one would.
public final class InstantGaneti: GanetiBackend, DetachableDisks, @unchecked Sendable {
    private let lock = NSLock()
    private var instances: [String: [InstanceDisks.Disk]] = [:]
    /// Instances that count as running (none unless a test says so: nothing
    /// runs in memory, so disks come and go as from stopped instances).
    private var running: Set<String> = []
    /// Disks no instance holds (Ganeti 3.1 detach), by name.
    private var detached: [String: InstanceDisks.Disk] = [:]
    /// What /2/info would say.
    public var version = "3.1.0"
    private var nextJob: Int64 = 1
    /// When set, submissions fail with this message (RAPI down).
    public var refuse: String?

    public init() {}

    private func submit(_ effect: () -> Void) throws -> Int64 {
        try lock.withLock {
            if let m = refuse { throw CycladesError(.backend, m) }
            effect()
            nextJob += 1
            return nextJob - 1
        }
    }

    public func createInstance(_ spec: InstanceSpec) throws -> Int64 {
        try submit {
            instances[spec.name] = spec.disks.enumerated().map { .init(name: $1.name, sizeMiB: $1.sizeMiB, uuid: UUID().uuidString, index: $0) }
        }
    }
    public func addDisk(instance: String, _ disk: DiskSpec) throws -> Int64 {
        try submit {
            var d = instances[instance] ?? []
            d.append(.init(name: disk.name, sizeMiB: disk.sizeMiB, uuid: UUID().uuidString, index: d.count))
            instances[instance] = d
        }
    }
    public func removeDisk(instance: String, name: String) throws -> Int64 {
        try submit {
            var d = instances[instance] ?? []
            d.removeAll { $0.name == name }
            for i in d.indices { d[i].index = i }
            instances[instance] = d
        }
    }
    public func removeInstance(_ name: String) throws -> Int64 {
        try submit { instances[name] = nil; running.remove(name) }
    }
    public func attachDisk(instance: String, name: String) throws -> Int64 {
        try submit {
            guard var disk = detached.removeValue(forKey: name) else { return }
            var d = instances[instance] ?? []
            disk.index = d.count
            d.append(disk)
            instances[instance] = d
        }
    }
    public func detachDisk(instance: String, name: String) throws -> Int64 {
        try submit {
            var d = instances[instance] ?? []
            if let disk = d.first(where: { $0.name == name }) { detached[name] = disk }
            d.removeAll { $0.name == name }
            for i in d.indices { d[i].index = i }
            instances[instance] = d
        }
    }
    public func softwareVersion() throws -> String { lock.withLock { version } }
    /// Says whether an instance runs (what the rule on disk removal without hotplug asks).
    public func setRunning(_ name: String, _ on: Bool) {
        lock.withLock { if on { running.insert(name) } else { running.remove(name) } }
    }
    public func growDisk(instance: String, index: Int, amountMiB: Int) throws -> Int64 {
        try submit {
            if var d = instances[instance], index < d.count { d[index].sizeMiB += amountMiB; instances[instance] = d }
        }
    }
    public func instanceDisks(_ name: String) throws -> InstanceDisks? {
        lock.withLock { instances[name].map { InstanceDisks(instance: name, running: running.contains(name), disks: $0) } }
    }
    public func job(_ id: Int64) throws -> JobState { .success }
}
