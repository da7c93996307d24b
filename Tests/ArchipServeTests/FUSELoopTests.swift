import ArchipServe
import ArchipStore
import ArchipTestSupport
import Foundation
import Testing

/// Why the kernel block device tests cannot run here, or nil.
let kernelPathUnavailable = missingPrerequisite(devices: ["/dev/fuse", "/dev/loop-control"],
                                                tools: ["mkfs.ext4", "fsck.ext4", "mount", "umount", "blockdev"])

func skipping(_ what: String) -> Bool {
    if let why = kernelPathUnavailable {
        print("SKIP \(what): \(why)")
        return true
    }
    return false
}

/// A volume attached as FUSE file + loop device, for the length of a test.
final class Attached {
    let volume: Volume
    let fuse: FUSEExport
    let loop: LoopDevice

    init(_ store: VolumeStore, _ name: String, mountpoint: String) throws {
        volume = try store.open(try VolumeName(name), mode: .exclusive)
        fuse = try FUSEExport(device: VolumeDevice(volume), mountpoint: mountpoint, fileName: name)
        loop = try LoopDevice.attach(file: fuse.path, readOnly: !volume.isWritable)
    }

    func detach() throws {
        try loop.detach()
        fuse.stop()
        try volume.close()
    }
}

@Suite(.serialized) struct FUSELoop {
    @Test func ext4OnTheLoopDeviceSurvivesDetachAndAttach() throws {
        if skipping("ext4 on the loop device") { return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-fuse-\(UUID().uuidString)").path
        let store = try VolumeStore.directory(dir + "/store", node: "n")
        try store.create(try VolumeName("disk"), size: ByteCount(512 << 20))
        let fs = dir + "/fs"
        try FileManager.default.createDirectory(atPath: fs, withIntermediateDirectories: true)

        var a = try Attached(store, "disk", mountpoint: dir + "/mnt")
        #expect(try a.loop.backingFile() == a.fuse.path)
        #expect(try shell("mkfs.ext4 -q -F \(a.loop.path)").0 == 0)
        #expect(try shell("mount \(a.loop.path) \(fs)").0 == 0)
        let write = try shell("""
            set -e; cd \(fs); mkdir -p d; for i in 1 2 3 4 5; do head -c 40M /dev/urandom > d/f$i; done
            echo hello > d/small; sha256sum d/* > \(dir)/sums; sync
            """)
        #expect(write.0 == 0, "\(write.1)")
        #expect(try shell("umount \(fs)").0 == 0)
        try a.detach()
        #expect(try store.verify(try VolumeName("disk")).ok)

        // Attach again: the files are there, and the file system is clean.
        a = try Attached(store, "disk", mountpoint: dir + "/mnt")
        #expect(try shell("fsck.ext4 -fn \(a.loop.path)").0 == 0)
        #expect(try shell("mount \(a.loop.path) \(fs)").0 == 0)
        let check = try shell("cd \(fs) && sha256sum -c \(dir)/sums")
        #expect(check.0 == 0, "\(check.1)")
        // A snapshot while attached (after the file system is synced) and a clone of it.
        #expect(try shell("sync -f \(fs)/d/small && fsfreeze -f \(fs) 2>/dev/null; true").0 == 0)
        try a.volume.snapshot(try VolumeName("disk-s"))
        _ = try shell("fsfreeze -u \(fs) 2>/dev/null; true")
        #expect(try shell("echo after > \(fs)/d/later && sync").0 == 0)
        // Grow while attached: the loop device sees the new size.
        try a.volume.resize(to: ByteCount(768 << 20), allowShrink: false)
        try a.loop.refreshCapacity()
        #expect(try shell("blockdev --getsize64 \(a.loop.path)").1.trimmingCharacters(in: .whitespacesAndNewlines) == "\(768 << 20)")
        #expect(try shell("umount \(fs)").0 == 0)
        try a.detach()

        try store.clone(try VolumeName("disk-s"), as: try VolumeName("disk-c"))
        let c = try Attached(store, "disk-c", mountpoint: dir + "/mnt-c")
        #expect(try shell("fsck.ext4 -fn \(c.loop.path)").0 == 0)
        #expect(try shell("mount -o ro \(c.loop.path) \(fs)").0 == 0)
        #expect(try shell("cd \(fs) && sha256sum -c \(dir)/sums").0 == 0)
        #expect(!FileManager.default.fileExists(atPath: fs + "/d/later"))   // written after the snapshot
        #expect(try shell("umount \(fs)").0 == 0)
        try c.detach()
    }

    @Test func snapshotsAttachReadOnly() throws {
        if skipping("read-only snapshot") { return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-fuse-ro-\(UUID().uuidString)").path
        let store = try VolumeStore.directory(dir + "/store", node: "n")
        try store.create(try VolumeName("v"), size: ByteCount(64 << 20))
        try store.withVolume(try VolumeName("v")) { try $0.write(at: 0, Array("snapshot data".utf8)) }
        try store.snapshot(try VolumeName("v"), as: try VolumeName("v.snap"))
        let a = try Attached(store, "v.snap", mountpoint: dir + "/mnt")
        #expect(try shell("head -c 13 \(a.loop.path)").1 == "snapshot data")
        let w = try shell("dd if=/dev/zero of=\(a.loop.path) bs=4k count=1 oflag=direct 2>&1")
        #expect(w.0 != 0, "a write to a snapshot's device succeeded: \(w.1)")
        let f = try shell("dd if=/dev/zero of=\(a.fuse.path) bs=4k count=1 conv=notrunc 2>&1")
        #expect(f.0 != 0 && (f.1.contains("Read-only") || f.1.contains("Permission")), "\(f.1)")
        try a.detach()
    }
}
