import ArchipStore
import CArchipFuse
import Foundation

/// What a daemon killed with -9 leaves behind, and how the next one removes
/// it without touching anything that is not its own:
///
/// - loop devices over its FUSE files. With the daemon's private mount
///   namespace gone, they are found by the FUSE connection's device number
///   recorded in holds.json (a loop device's backing device, LOOP_GET_STATUS64);
///   a daemon that ran in the host's namespace left mounts under `mnt/`,
///   found in /proc/self/mounts as before.
/// - its locks: released only when they carry its node and recorded token.
struct CrashRecovery {
    let runtimeDir: String
    let store: VolumeStore
    let node: String
    let holds: HoldsFile
    let log: (String) -> Void

    func run() {
        let previous = holds.previous()
        if let devices = previous?.devices {
            for (name, d) in devices.sorted(by: { $0.key < $1.key }) {
                guard let minor = d.loop, let fuse = d.fuse,
                      Self.isOver(minor, device: fuse, deadPath: runtimeDir + "/mnt/\(name)/") else { continue }
                let l = LoopDevice(minor: minor)
                do {
                    try l.detach(waitingUpTo: 5)
                    log("recovery: detached \(l.path) (was \(name) over dead FUSE connection \(fuse))")
                } catch {
                    log("recovery: \(name): \(error)")
                }
                _ = archip_fuse_abort(fuse)
            }
        }
        removeMountsLeftInThisNamespace()
        if let h = previous, h.node == node {
            for n in h.names {
                guard let name = try? VolumeName(n) else { continue }
                do {
                    if try store.unlock(name, owner: LockOwner(node: h.node, token: h.token), force: false) {
                        log("recovery: released this node's stale hold on \(n) (token \(h.token))")
                    }
                } catch {
                    log("recovery: \(n): \(error)")
                }
            }
        }
        holds.discard()
        // Mount points of the dead daemon: empty folders now.
        let mnt = runtimeDir + "/mnt"
        for d in (try? FileManager.default.contentsOfDirectory(atPath: mnt)) ?? [] { _ = rmdir(mnt + "/" + d) }
    }

    /// Mounts under `mnt/` in this namespace: a daemon that ran with
    /// `--mount-namespace host`, or one that died while this namespace was
    /// its own. Their loop devices are found by the mount's device number
    /// (mountinfo) against each loop device's backing device, never by the
    /// backing file's path: nodes that share a kernel (containers, a lab in
    /// namespaces) have loop devices whose paths read the same
    /// `/run/archip/mnt/VOL/VOL`, and another node's live one must stay.
    private func removeMountsLeftInThisNamespace() {
        let mntRoot = runtimeDir + "/mnt"
        let info = KernelText.read("/proc/self/mountinfo") ?? ""
        for m in Self.mounts(info) where m.point.hasPrefix(mntRoot + "/") {
            for minor in LoopDevice.attachedMinors() where Self.isOver(minor, device: m.device, deadPath: m.point + "/") {
                let l = LoopDevice(minor: minor)
                try? l.detach()
                log("recovery: detached \(l.path) (was over the stale mount \(m.point))")
            }
            if umount2(m.point, Int32(MNT_DETACH)) == 0 { log("recovery: unmounted stale \(m.point)") }
        }
    }

    /// Whether loop device `minor` is backed by a file of the FUSE mount
    /// `device`. A live backing file says its device (LOOP_GET_STATUS64); a
    /// dead connection's cannot (the kernel's getattr gets ENOTCONN), and then
    /// its path must be under `deadPath`. Another node's live device on the
    /// same path answers with its own device number and is never taken.
    static func isOver(_ minor: Int32, device: UInt64, deadPath: String) -> Bool {
        var dev: UInt64 = 0, inode: UInt64 = 0
        let r = archip_loop_backing_device(minor, &dev, &inode)
        if r == 0 { return dev == device }
        guard r == -ENOTCONN, let path = try? LoopDevice(minor: minor).backingFile() else { return false }
        return path.hasPrefix(deadPath)
    }

    /// Mount points and device numbers from /proc/self/mountinfo (`id parent
    /// major:minor root point ...`), the device encoded as stat's st_dev is.
    static func mounts(_ mountinfo: String) -> [(point: String, device: UInt64)] {
        mountinfo.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count > 4 else { return nil }
            let mm = f[2].split(separator: ":")
            guard mm.count == 2, let major = UInt64(mm[0]), let minor = UInt64(mm[1]) else { return nil }
            let point = String(f[4]).replacingOccurrences(of: "\\040", with: " ")
            // glibc's makedev: what the kernel's new_encode_dev gives stat.
            let dev = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~UInt64(0xff)) << 12) | ((major & ~UInt64(0xfff)) << 32)
            return (point, dev)
        }
    }
}
