import ArchipStore
import Foundation

/// Starts `archip serve` on demand, for `archip attach` and the Ganeti
/// provider: in its own session, so it outlives the command that started it
/// (Ganeti's node daemon waits for its scripts, not for their children).
public enum DaemonLauncher {
    /// `archip` next to the running executable (`archip` itself, or
    /// `archip-extstorage` installed beside it).
    public static func siblingExecutable(_ name: String = "archip") -> String {
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent(name).path
    }

    /// Spawns `executable serve --runtime-dir R --store S --node N`, logging to R/serve.log.
    public static func start(executable: String, runtimeDir: String, store: String, node: String,
                             extraArguments: [String] = []) throws {
        try FileManager.default.createDirectory(atPath: runtimeDir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        guard access(executable, X_OK) == 0 else {
            throw StoreError(.notFound, "cannot start the node daemon: \(executable) is not an executable")
        }
        let args = [executable, "serve", "--runtime-dir", runtimeDir, "--store", store, "--node", node] + extraArguments
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, 0x80)   // POSIX_SPAWN_SETSID (glibc; not exported to Swift)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, runtimeDir + "/serve.log", O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // The daemon must not keep our callers' pipes (or any other
        // descriptor) open, or they would wait for it forever.
        if let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            for case let fd? in fds.map({ Int32($0) }) where fd > 2 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
        var cargs = args.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        var pid: pid_t = 0
        let r = posix_spawn(&pid, executable, &actions, &attr, &cargs, environ)
        guard r == 0 else {
            throw StoreError(.io, "cannot start \(executable) serve", cause: String(cString: strerror(r)))
        }
    }

    /// A client of the running daemon, starting one first if none answers.
    public static func connectOrStart(executable: String, runtimeDir: String, store: String, node: String) throws -> ControlClient {
        try ControlClient.connectOrStart(runtimeDir: runtimeDir, store: store) {
            try start(executable: executable, runtimeDir: runtimeDir, store: store, node: node)
        }
    }
}
