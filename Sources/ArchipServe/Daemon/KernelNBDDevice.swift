import ArchipStore
import CArchipFuse
import Foundation

/// How an attached volume becomes a kernel block device.
public enum KernelDeviceKind: String, Codable, Sendable, CaseIterable {
    /// The volume as a FUSE file with a loop device over it (the default:
    /// needs only the fuse and loop drivers every kernel has).
    case loop
    /// The kernel's NBD client, set up by Debian's `nbd-client`, on the
    /// volume's own NBD socket (needs the nbd module).
    case nbd
}

/// `/dev/nbdN` connected by `nbd-client` to one of the daemon's NBD sockets.
///
/// nbd-client runs without netlink (`-nonetlink`): it hands the connection to
/// the kernel and stays as the process that keeps it (NBD_DO_IT), so the
/// device takes NBD_SET_SIZE after a grow (a netlink-configured device
/// refuses ioctls) and `nbd-client -d` ends it.
public struct KernelNBDDevice: Sendable, CustomStringConvertible {
    public let index: Int
    public var path: String { "/dev/nbd\(index)" }
    public var description: String { path }

    public init(index: Int) { self.index = index }

    static let clientCandidates = ["/usr/sbin/nbd-client", "/sbin/nbd-client", "/usr/bin/nbd-client", "/bin/nbd-client"]

    /// Debian's nbd-client, if installed.
    public static func client() -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { String($0) + "/nbd-client" }
        return (clientCandidates + path).first { access($0, X_OK) == 0 }
    }

    /// Why `--device=nbd` cannot work on this machine, or nil. One line.
    public static func unavailableReason(module: String = "/sys/module/nbd", firstDevice: String = "/dev/nbd0") -> String? {
        if access(module, F_OK) != 0 {
            return "nbd kernel module not available: \(module) is missing (load it with 'modprobe nbd', or attach with the default --device=loop)"
        }
        if access(firstDevice, F_OK) != 0 {
            return "nbd kernel module not available: \(firstDevice) is missing (the module is loaded without devices: 'modprobe nbd nbds_max=16')"
        }
        if client() == nil { return "nbd-client is not installed (apt-get install nbd-client)" }
        return nil
    }

    /// Indexes of /dev/nbdN devices with nothing connected.
    static func freeIndexes() -> [Int] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.compactMap { n -> Int? in
            guard n.hasPrefix("nbd"), let i = Int(n.dropFirst(3)) else { return nil }
            // A connected device has a pid (the process in NBD_DO_IT) and a size.
            if access("/sys/block/\(n)/pid", F_OK) == 0 { return nil }
            let size = (try? String(contentsOfFile: "/sys/block/\(n)/size", encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines)
            return size == nil || size == "0" ? i : nil
        }.sorted()
    }

    /// Runs nbd-client with `arguments`; its output goes to `logFile` (a file,
    /// never a pipe: the process it leaves behind keeps its descriptors).
    static func runClient(_ arguments: [String], logFile: String) throws -> (status: Int32, output: String) {
        guard let exe = client() else { throw StoreError(.unsupported, "nbd-client is not installed (apt-get install nbd-client)") }
        _ = FileManager.default.createFile(atPath: logFile, contents: nil, attributes: [.posixPermissions: 0o600])
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile))
        defer { try? out.close() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = arguments
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = out
        p.standardError = out
        try p.run()
        p.waitUntilExit()
        let text = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
        return (p.terminationStatus, text)
    }

    /// Connects a free /dev/nbdN to `export` on the unix socket `socket`.
    public static func connect(socket: String, export: String, size: UInt64, readOnly: Bool,
                               logFile: String) throws -> KernelNBDDevice {
        if let why = unavailableReason() { throw StoreError(.unsupported, why) }
        let blockSize = size % 4096 == 0 ? 4096 : 512
        var lastError = "no free /dev/nbdN device"
        for index in freeIndexes().prefix(8) {
            let dev = KernelNBDDevice(index: index)
            var args = ["-unix", socket, dev.path, "-name", export, "-block-size", "\(blockSize)", "-nonetlink"]
            if readOnly { args.append("-readonly") }
            let r = try runClient(args, logFile: logFile)
            if r.status == 0, dev.waitConnected(size: size) { return dev }
            lastError = r.output.split(separator: "\n").last.map(String.init) ?? "nbd-client exited with status \(r.status)"
            _ = try? runClient(["-nonetlink", "-d", dev.path], logFile: logFile)
        }
        throw StoreError(.io, "cannot connect a kernel NBD device to \(socket)", cause: lastError)
    }

    /// Waits (up to 5 s) for the device to show the export's size.
    func waitConnected(size: UInt64) -> Bool {
        for _ in 0..<100 {
            if let s = (try? String(contentsOfFile: "/sys/block/nbd\(index)/size", encoding: .utf8))
                .flatMap({ UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }), s * 512 == size {
                return true
            }
            usleep(50_000)
        }
        return false
    }

    /// Disconnects (flushing through the NBD server first, as the kernel does
    /// on NBD_DISCONNECT). Idempotent.
    public func disconnect(logFile: String) throws {
        let r = try KernelNBDDevice.runClient(["-nonetlink", "-d", path], logFile: logFile)
        guard r.status == 0 || access("/sys/block/nbd\(index)/pid", F_OK) != 0 else {
            throw StoreError(.io, "disconnect \(path)", cause: r.output.split(separator: "\n").last.map(String.init) ?? "")
        }
    }

    /// Makes the device see the volume's new size after a grow.
    public func refreshCapacity(size: UInt64) throws {
        let r = archip_nbd_set_size(path, size)
        guard r == 0 else { throw StoreError(.io, "resize \(path)", cause: String(cString: strerror(-r))) }
    }
}
