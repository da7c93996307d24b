import CArchipFuse
import Foundation

/// The node daemon's FUSE mounts live in a mount namespace of its own.
///
/// Every mount namespace created while a mount exists gets a copy of it
/// (`ip netns exec` makes one per command, as do `unshare -m`, systemd
/// services with PrivateTmp or ProtectSystem, and containers). A copy keeps
/// the FUSE connection alive after the daemon unmounts its own, so the
/// session never ends: Ganeti's `gnt-*` commands run through `ip netns exec`
/// held detaches for ten minutes that way. Nobody else needs the mounts (the
/// loop device refers to the open file, QEMU uses the NBD socket), so the
/// daemon keeps them where no other namespace can copy them. Its namespace
/// is a slave of the one it started in: mounts made there later (the shared
/// store's file system) still reach it, and so do unmounts.
///
/// That holds only where the starting namespace's root is a shared mount
/// (systemd makes it so). Where mounts are private, a new namespace is a
/// frozen copy: it would keep file systems the host unmounts later (a guest
/// disk's ext4 on a loop device, kept busy) and miss ones it mounts later.
/// `auto` (the default) therefore goes private only over a shared root; in
/// the host's namespace, a detach removes its mount point, which detaches the
/// copies other namespaces hold (Linux >= 3.18), and aborts the session if a
/// file open in a copy still keeps it (FUSEExport.stop).
public enum PrivateMountNamespace {
    static let marker = "ARCHIP_SERVE_MOUNT_NS"

    /// Whether this namespace's root mount propagates (mountinfo's `shared:N`).
    public static func rootIsShared() -> Bool {
        let info = KernelText.read("/proc/self/mountinfo") ?? ""
        for line in info.split(separator: "\n") {
            let f = line.split(separator: " ")
            // id parent major:minor root mountpoint options [optional fields...] - ...
            guard f.count > 6, f[4] == "/" else { continue }
            return f[6...].prefix { $0 != "-" }.contains { $0.hasPrefix("shared:") }
        }
        return false
    }

    /// Guests' disks mounted where the daemon started (file systems on loop
    /// and nbd devices, outside `keep`): unmounted in the new namespace at
    /// once, so its copy never keeps one busy after the host lets it go.
    static func dropGuestMounts(keeping keep: [String]) {
        let info = KernelText.read("/proc/self/mountinfo") ?? ""
        var points: [String] = []
        for line in info.split(separator: "\n") {
            let parts = line.components(separatedBy: " - ")
            let f = parts[0].split(separator: " ")
            guard parts.count == 2, f.count > 4 else { continue }
            let source = parts[1].split(separator: " ").dropFirst().first.map(String.init) ?? ""
            guard source.hasPrefix("/dev/loop") || source.hasPrefix("/dev/nbd") else { continue }
            let point = String(f[4]).replacingOccurrences(of: "\\040", with: " ")
            if keep.contains(where: { $0 == point || $0.hasPrefix(point.hasSuffix("/") ? point : point + "/") }) { continue }
            points.append(point)
        }
        for p in points.reversed() { _ = umount2(p, Int32(MNT_DETACH)) }
    }

    /// Moves the whole process into a new mount namespace: `unshare` moves
    /// only the calling thread, so the process then re-executes itself (same
    /// pid, which systemd tracks; one thread, in the new namespace). Call from
    /// the main thread before anything else starts. Returns only when already
    /// inside (after the re-exec), or with the reason it could not be done.
    public static func enter(keeping keep: [String]) -> String? {
        if let v = ProcessInfo.processInfo.environment[marker] {
            unsetenv(marker)
            return v == "private" ? nil : v
        }
        var old: Int32 = -1
        let r = archip_unshare_mounts(&old)
        guard r == 0 else {
            return "cannot make a private mount namespace: \(String(cString: strerror(-r)))"
        }
        dropGuestMounts(keeping: keep)
        setenv(marker, "private", 1)
        let args = CommandLine.arguments
        var cargs = args.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &cargs)
        // Still here: the exec failed. This thread is in the new namespace and
        // the others are not, which must not go on: back to the old one.
        let e = errno
        for a in cargs { free(a) }
        unsetenv(marker)
        _ = archip_return_to_mount_ns(old)
        return "cannot re-execute in a private mount namespace: \(String(cString: strerror(e)))"
    }
}
