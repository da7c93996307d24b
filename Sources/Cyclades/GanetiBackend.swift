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
    /// Ganeti's instance policy does not apply (the diskless helper server).
    public var ignoreIPolicy = false
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

/// Disks that live apart from instances (Ganeti 3.x `modify --disk
/// attach/detach`). Ganeti 3.0 detaches ext disks but refuses to attach them
/// (fixed in 3.1: upstream b6608d777), so attach is gated on the version.
public protocol DetachableDisks: Sendable {
    /// Attaches the detached disk named `name` as the last disk (one job).
    func attachDisk(instance: String, name: String) throws -> Int64
    /// Detaches disk `name` from its instance; Ganeti keeps it (one job).
    func detachDisk(instance: String, name: String) throws -> Int64
    /// Ganeti's software version (RAPI /2/info `software_version`), e.g. "3.1.0~rc2".
    func softwareVersion() throws -> String
}

/// Versions as Ganeti writes them (`3.0.2`, `3.1.0~rc2`), compared by their numbers.
public enum GanetiVersion {
    public static func numbers(_ v: String) -> [Int] {
        let head = v.split(whereSeparator: { $0 == "~" || $0 == "-" || $0 == "+" }).first.map(String.init) ?? v
        return head.split(separator: ".").map { Int($0.prefix(while: \.isNumber)) ?? 0 }
    }

    /// `v` is at least `minimum` (missing parts count as 0; a pre-release `3.1.0~rc2` is 3.1.0).
    public static func atLeast(_ v: String, _ minimum: [Int]) -> Bool {
        let n = numbers(v)
        for i in 0..<max(n.count, minimum.count) {
            let a = i < n.count ? n[i] : 0, b = i < minimum.count ? minimum[i] : 0
            if a != b { return a > b }
        }
        return true
    }
}
