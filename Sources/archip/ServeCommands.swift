import ArchipServe
import ArchipStore
import ArgumentParser
import Foundation

struct RuntimeOptions: ParsableArguments {
    @Option(name: .customLong("runtime-dir"), help: ArgumentHelp("The node daemon's folder: control socket, mounts, NBD sockets (default /run/archip).", valueName: "dir"))
    var runtimeDir: String?

    /// --runtime-dir, ARCHIP_RUNTIME_DIR, or `[node] runtime_dir` of the
    /// configuration file the global options name (the folder the Ganeti
    /// provider uses), else /run/archip.
    func path(_ global: GlobalOptions) -> String {
        let env = ProcessInfo.processInfo.environment
        if let d = runtimeDir ?? env["ARCHIP_RUNTIME_DIR"] { return d }
        let file = global.config ?? env["ARCHIP_CONFIG"] ?? ArchipStore.ConfigFile.defaultPath
        let conf = (try? ArchipStore.ConfigFile.load(file, required: false)) ?? [:]
        return conf["node.runtime_dir"] ?? "/run/archip"
    }
}

/// Starts `archip serve` in its own session, logging to <runtime>/serve.log.
func startDaemon(store: VolumeStore, runtime: String) throws {
    try DaemonLauncher.start(executable: DaemonLauncher.siblingExecutable(), runtimeDir: runtime,
                             store: store.objects.location, node: store.node)
}

/// A client of this node's daemon for the store the options name (the
/// daemon refuses calls for another store). Without a store in the options,
/// the configuration or the environment, calls go to whatever store it serves.
func daemonClient(_ global: GlobalOptions, _ runtime: RuntimeOptions, start: Bool) throws -> ControlClient? {
    let location = try? global.storeLocation()
    if let c = ControlClient.connect(runtimeDir: runtime.path(global), store: location) { return c }
    guard start else { return nil }
    let store = try global.openStore()
    return try ControlClient.connectOrStart(runtimeDir: runtime.path(global), store: store.objects.location) {
        try startDaemon(store: store, runtime: runtime.path(global))
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the node daemon that holds this node's attached volumes (foreground).",
        discussion: """
        For each attached volume it offers a kernel block device (a FUSE file with a loop device over
        it) and an NBD export on a unix socket for QEMU, and holds the volume's lock. 'archip attach'
        starts it when it is not running. SIGTERM or SIGINT detach everything (flushing) and stop it.
        After a crash, a new daemon cleans up the dead mounts and loop devices and releases the holds
        the dead one recorded.
        """)
    @OptionGroup var global: GlobalOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(name: .customLong("mount-namespace"), help: ArgumentHelp("Where the volumes' FUSE mounts live: private (a mount namespace of the daemon's own, a slave of the host's: namespaces other programs create cannot copy them), host, or auto (private where the host's root mount is shared, as under systemd; host where mounts are private, since a copy would keep file systems the host unmounts).", valueName: "auto|private|host"))
    var mountNamespace = "auto"

    func validate() throws {
        guard ["auto", "private", "host"].contains(mountNamespace) else {
            throw ValidationError("--mount-namespace must be auto, private or host, not '\(mountNamespace)'")
        }
    }

    func run() throws {
        func say(_ line: String) {
            let stamp = ISO8601DateFormatter().string(from: Date())
            FileHandle.standardError.write(Data("\(stamp) archip-serve[\(getpid())]: \(line)\n".utf8))
        }
        // First, before anything starts a thread: this may re-execute the process.
        let privateMounts = mountNamespace == "private" || (mountNamespace == "auto" && PrivateMountNamespace.rootIsShared())
        var mountsWhere = privateMounts ? "a private mount namespace" : "the mount namespace it started in (\(mountNamespace == "auto" ? "its root mount is not shared" : "--mount-namespace host"))"
        let keep = [runtime.path(global)] + ((try? global.storeLocation()).map { [StoreLocation.canonical($0)] } ?? [])
        if privateMounts, let why = PrivateMountNamespace.enter(keeping: keep.map(StoreLocation.canonical)) {
            mountsWhere = "the mount namespace it started in (\(why))"
        }
        let store = try global.openStore(forDaemon: true)
        let daemon = NodeDaemon(store: store, runtimeDir: runtime.path(global), log: say,
                                reopenStore: { [global] in try global.openStore(forDaemon: true) })
        say("FUSE mounts in \(mountsWhere)")
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { daemon.shutdown() }
            s.resume()
            sources.append(s)
        }
        try daemon.run()
        _ = sources
    }
}

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach a volume on this node: prints the block device, then the NBD URI for QEMU.",
        discussion: "Idempotent: attaching an attached volume prints the same lines. Starts 'archip serve' if needed.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var runtime: RuntimeOptions
    @Argument(help: "Volume or snapshot (snapshots attach read-only).") var name: String
    @Flag(help: "Shared lock, for live migration.") var shared = false
    @Option(help: ArgumentHelp("The kernel block device: loop (a FUSE file with a loop device over it) or nbd (nbd-client on the volume's NBD socket; needs the nbd kernel module).",
                               valueName: "loop|nbd"))
    var device = "loop"
    @Flag(help: "Output JSON.") var json = false

    func validate() throws {
        guard KernelDeviceKind(rawValue: device) != nil else {
            throw ValidationError("--device must be loop or nbd, not '\(device)'")
        }
    }

    func run() throws {
        let n = try volumeName(name)
        if device == KernelDeviceKind.nbd.rawValue, let why = KernelNBDDevice.unavailableReason() {
            // Refused here too, before a daemon is started for nothing.
            throw StoreError(.unsupported, why)
        }
        let client = try daemonClient(global, runtime, start: true)!
        let reply = try client.call(ControlRequest(op: .attach, name: n.value, mode: shared ? .shared : .exclusive,
                                                   device: KernelDeviceKind(rawValue: device)))
        guard let a = reply.attachment else { throw CLIError(message: "archip serve returned no device") }
        if json { return try printJSON(a) }
        print(a.device)
        print(a.uri)
    }
}

struct Open: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Attach and hold a volume (exclusive, or --shared for live migration).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var runtime: RuntimeOptions
    @Argument(help: "Volume name.") var name: String
    @Flag(help: "Shared lock, for live migration.") var shared = false

    func run() throws {
        let n = try volumeName(name)
        let client = try daemonClient(global, runtime, start: true)!
        _ = try client.call(ControlRequest(op: .open, name: n.value, mode: shared ? .shared : .exclusive))
    }
}

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Detach a volume from this node: flush, remove its devices, release its lock. Idempotent.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var runtime: RuntimeOptions
    @Argument(help: "Volume name.") var name: String

    func run() throws {
        let n = try volumeName(name)
        guard let client = try daemonClient(global, runtime, start: false) else { return }   // nothing attached here
        _ = try client.call(ControlRequest(op: .detach, name: n.value))
    }
}

struct Close: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Release this node's hold on a volume (flushed); its devices stay until detach. Idempotent.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var runtime: RuntimeOptions
    @Argument(help: "Volume name.") var name: String

    func run() throws {
        let n = try volumeName(name)
        guard let client = try daemonClient(global, runtime, start: false) else { return }
        _ = try client.call(ControlRequest(op: .close, name: n.value))
    }
}

struct Attached: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the volumes attached on this node.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var runtime: RuntimeOptions
    @Flag(help: "Output JSON.") var json = false

    func run() throws {
        let list = try daemonClient(global, runtime, start: false)?.call(ControlRequest(op: .list)).attachments ?? []
        if json { return try printJSON(list) }
        printTable(["NAME", "DEVICE", "MODE", "SIZE", "URI"], list.map {
            [$0.name, $0.device, $0.mode + ($0.readOnly ? ",ro" : ""), ByteCount.format($0.size), $0.uri]
        })
    }
}
