import Foundation

/// One disk as Ganeti is asked to create it.
public struct DiskSpec: Sendable, Equatable {
    public var name: String              // snf-vol-N
    public var sizeMiB: Int
    public var provider: String?
    public var origin: String?
    public var originSize: Int64?        // bytes
    /// The SHA-256 the origin must hash to (the image's registered checksum).
    public var originSHA256: String?

    public init(name: String, sizeMiB: Int, provider: String?, origin: String?, originSize: Int64?, originSHA256: String? = nil) {
        self.name = name; self.sizeMiB = sizeMiB; self.provider = provider; self.origin = origin; self.originSize = originSize
        self.originSHA256 = originSHA256
    }

    /// RAPI's disk dict.
    var json: [String: Any] {
        var d: [String: Any] = ["name": name, "size": sizeMiB]
        if let provider { d["provider"] = provider }
        if let origin { d["origin"] = origin }
        if let originSize { d["origin_size"] = originSize }
        if let originSHA256 { d["origin_sha256"] = originSHA256 }
        return d
    }
}

public struct InstanceSpec: Sendable {
    public var name: String
    public var diskTemplate: String
    public var disks: [DiskSpec]
    public var os: String
    public var node: String
    public var hypervisor: String?
    public var start: Bool
    public var memoryMiB: Int
    public var vcpus: Int
}

/// What Ganeti says about an instance's disks (matched to volumes by name).
public struct InstanceDisks: Sendable, Equatable {
    public struct Disk: Sendable, Equatable {
        public var name: String?
        public var sizeMiB: Int
        public var uuid: String?
        public var index: Int

        public init(name: String?, sizeMiB: Int, uuid: String?, index: Int) {
            self.name = name; self.sizeMiB = sizeMiB; self.uuid = uuid; self.index = index
        }
    }
    public var instance: String
    public var running: Bool
    public var disks: [Disk]

    public init(instance: String, running: Bool, disks: [Disk]) {
        self.instance = instance; self.running = running; self.disks = disks
    }
}

public enum JobState: Sendable, Equatable {
    case pending
    case success
    case failed(String)
}

/// The seam to a Ganeti cluster: RAPI in production, a recorded or scripted
/// backend in unit tests. One job per change.
public protocol GanetiBackend: Sendable {
    func createInstance(_ spec: InstanceSpec) throws -> Int64
    func addDisk(instance: String, _ disk: DiskSpec) throws -> Int64
    func removeDisk(instance: String, name: String) throws -> Int64
    func removeInstance(_ name: String) throws -> Int64
    /// nil when Ganeti does not know the instance.
    func instanceDisks(_ name: String) throws -> InstanceDisks?
    func job(_ id: Int64) throws -> JobState
    /// Grows disk `index` of an instance by `amountMiB` (one job).
    func growDisk(instance: String, index: Int, amountMiB: Int) throws -> Int64
}

extension GanetiBackend {
    public func growDisk(instance: String, index: Int, amountMiB: Int) throws -> Int64 {
        throw CycladesError(.notImplemented, "this Ganeti backend cannot grow disks")
    }
}
