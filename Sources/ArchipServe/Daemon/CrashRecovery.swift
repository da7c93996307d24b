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
                guard let minor = d.loop, let fuse = d.fuse else { continue }
                var dev: UInt64 = 0, inode: UInt64 = 0
                guard archip_loop_backing_device(minor, &dev, &inode) == 0, dev == fuse else { continue }
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
    /// its own.
    private func removeMountsLeftInThisNamespace() {
        let mntRoot = runtimeDir + "/mnt"
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 2 else { continue }
            let point = String(fields[1]).replacingOccurrences(of: "\\040", with: " ")
            guard point.hasPrefix(mntRoot + "/") else { continue }
            for minor in LoopDevice.attachedMinors() {
                let l = LoopDevice(minor: minor)
                if let f = try? l.backingFile(), f.hasPrefix(point + "/") {
                    try? l.detach()
                    log("recovery: detached \(l.path) (was over \(f))")
                }
            }
            if umount2(point, Int32(MNT_DETACH)) == 0 { log("recovery: unmounted stale \(point)") }
        }
    }
}
