import Cyclades
import Foundation

/// A Ganeti that ends every job at once, successfully (`cyclades-api
/// --fake-ganeti`, for the bench and for tests): it keeps instances and disks
/// in memory so reconcile and extend see what a real one would.
public final class InstantGaneti: GanetiBackend, @unchecked Sendable {
    private let lock = NSLock()
    private var instances: [String: [InstanceDisks.Disk]] = [:]
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
        try submit { instances[spec.name] = spec.disks.enumerated().map { .init(name: $1.name, sizeMiB: $1.sizeMiB, uuid: UUID().uuidString, index: $0) } }
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
        try submit { instances[name] = nil }
    }
    public func growDisk(instance: String, index: Int, amountMiB: Int) throws -> Int64 {
        try submit {
            if var d = instances[instance], index < d.count { d[index].sizeMiB += amountMiB; instances[instance] = d }
        }
    }
    public func instanceDisks(_ name: String) throws -> InstanceDisks? {
        lock.withLock { instances[name].map { InstanceDisks(instance: name, running: true, disks: $0) } }
    }
    public func job(_ id: Int64) throws -> JobState { .success }
}
