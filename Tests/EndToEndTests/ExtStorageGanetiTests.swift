import ArchipTestSupport
import Foundation
import Testing

/// Ganeti's own code (`ganeti.storage.extstorage.ExtStorageDevice`, Debian's
/// `ganeti` package) runs the installed provider scripts, with Ganeti's
/// environment, umask and working folder, and stat-checks the device attach
/// prints. tests/e2e/ganeti/extstorage_driver.py is the thin bridge.
let ganetiUnavailable: String? = {
    if let why = dataPathUnavailable { return why }
    if !FileManager.default.fileExists(atPath: "/usr/share/ganeti/3.0/ganeti/storage/extstorage.py") {
        return "Ganeti 3.0 is not installed (apt-get install ganeti)"
    }
    return nil
}()

/// One Ganeti node: its own provider folder (scripts → its config: node name,
/// daemon folder) over the shared store.
struct GanetiNode {
    let provider: ProviderRun
    let searchDir: String

    init(_ name: String, cli: CLI) throws {
        provider = try ProviderRun(node: name, cli: cli)
        searchDir = cli.store + "-" + name + "/extstorage"
        let r = try shell("'\(repoRoot)/scripts/install-extstorage.sh' '\(searchDir)/archipelago' '\(CLI.binDir)' '\(provider.config)'")
        precondition(r.status == 0, r.out)
    }

    struct Outcome {
        var ok: Bool
        var device: String?
        var uris: [String]
        var error: String
        var raw: String
    }

    /// Runs ACTION through ExtStorageDevice; `args` are the driver's (--vol, --size, --shared, ...).
    func ganeti(_ action: String, _ args: [String]) throws -> Outcome {
        let quoted = args.map { "'\($0)'" }.joined(separator: " ")
        let r = try shell("/usr/bin/python3 '\(repoRoot)/tests/e2e/ganeti/extstorage_driver.py' --search-dir '\(searchDir)' archipelago \(action) \(quoted) 2>/dev/null")
        let json = (try? JSONSerialization.jsonObject(with: Data(r.out.utf8))) as? [String: Any] ?? [:]
        let dev = json["device"] as? [String: Any]
        return Outcome(ok: r.status == 0 && json["ok"] as? Bool == true, device: dev?["dev_path"] as? String,
                       uris: dev?["uris"] as? [String] ?? [], error: json["error"] as? String ?? "", raw: r.out)
    }

    func stopDaemon() { provider.stopDaemon() }
}

@Suite(.serialized) struct ExtStorageThroughGaneti {
    let vol = "6f0c1a52-8d2b-4c1e-9a57-3b1f0e2d4c6a.ext.disk0"

    func pattern(_ seed: UInt8, _ count: Int) -> Data {
        Data((0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) })
    }

    /// Writes through a node's block device, bypassing the page cache and
    /// syncing, as a guest with cache=none would.
    func write(_ data: Data, to device: String, atMiB offset: Int, scratch: String) throws {
        try data.write(to: URL(fileURLWithPath: scratch))
        let r = try shell("dd if='\(scratch)' of='\(device)' bs=1M seek=\(offset) oflag=direct conv=notrunc,fsync status=none")
        #expect(r.status == 0, "\(r.out)")
    }

    func read(_ device: String, atMiB offset: Int, MiB count: Int, scratch: String) throws -> Data {
        let r = try shell("dd if='\(device)' of='\(scratch)' bs=1M skip=\(offset) count=\(count) iflag=direct status=none")
        #expect(r.status == 0, "\(r.out)")
        return try Data(contentsOf: URL(fileURLWithPath: scratch))
    }

    @Test func lifecycleSnapshotForExportAndGrowWhileAttached() throws {
        if let why = ganetiUnavailable { print("SKIP Ganeti provider lifecycle: \(why)"); return }
        let cli = CLI()
        let a = try GanetiNode("node-a", cli: cli)
        defer { a.stopDaemon() }
        let scratch = cli.store + "-scratch"
        // create = create script + attach (the device Ganeti gets is stat-checked as a block device).
        let c = try a.ganeti("create", ["--vol", vol, "--size", "64", "--uuid", "u-1", "--name", "snf-vol-9"])
        #expect(c.ok, "\(c.raw)")
        let dev = try #require(c.device)
        #expect(dev.hasPrefix("/dev/loop"))
        #expect(c.uris.count == 1 && c.uris[0].hasPrefix("kvm:nbd:unix:"), "\(c.uris)")
        // attach again: the same device (idempotent), no hold yet.
        #expect(try a.ganeti("attach", ["--vol", vol, "--uuid", "u-1"]).device == dev)
        #expect(try a.provider.info(vol)?["lock"] == nil)
        #expect(try a.ganeti("open", ["--vol", vol, "--uuid", "u-1"]).ok)
        // The remove script alone (Ganeti detaches first) refuses an attached volume.
        let held = try a.provider.call("remove", ProviderRun.vars(vol))
        expectProviderFailure(held, status: 1, mentioning: "attached on this node", "remove while attached")
        #expect(try a.provider.info(vol) != nil)
        let p1 = pattern(1, 4 << 20)
        try write(p1, to: dev, atMiB: 0, scratch: scratch)
        // QEMU's view: the NBD URI after "kvm:".
        let uri = String(c.uris[0].dropFirst(4))
        let q = try shell("qemu-io -f raw -c 'read -v 0 16' '\(uri)'")
        #expect(q.status == 0 && q.out.contains("01 20 3f 5e"), "\(q.out)")

        // grow while attached and held: the device sees the new size.
        #expect(try a.ganeti("grow", ["--vol", vol, "--size", "64", "--new-size", "96"]).ok)
        #expect(try shell("blockdev --getsize64 \(dev)").out.trimmingCharacters(in: .whitespacesAndNewlines) == "\(96 << 20)")

        // gnt-backup export: snapshot while in use, then the .snap is attached,
        // opened (exclusively, as Ganeti does), read, detached and removed.
        let snap = try a.ganeti("snapshot", ["--vol", vol, "--size", "96"])
        #expect(snap.ok, "\(snap.raw)")
        let s = try a.ganeti("attach", ["--vol", vol + ".snap", "--uuid", "u-snap"])
        let sdev = try #require(s.device)
        #expect(sdev != dev)
        #expect(try a.ganeti("open", ["--vol", vol + ".snap", "--uuid", "u-snap"]).ok)
        #expect(try read(sdev, atMiB: 0, MiB: 4, scratch: scratch) == p1)
        #expect(try shell("dd if=/dev/zero of=\(sdev) bs=4096 count=1 oflag=direct status=none").status != 0, "the snapshot is read-only")
        try write(pattern(2, 1 << 20), to: dev, atMiB: 0, scratch: scratch)   // the volume moves on
        #expect(try read(sdev, atMiB: 0, MiB: 4, scratch: scratch) == p1, "the snapshot keeps its content")
        #expect(try a.ganeti("shutdown", ["--vol", vol + ".snap"]).ok)
        #expect(try a.ganeti("remove", ["--vol", vol + ".snap"]).ok)
        #expect(try a.provider.info(vol + ".snap") == nil)

        // shutdown (Ganeti's detach), then remove (detach + remove).
        #expect(try a.ganeti("shutdown", ["--vol", vol]).ok)
        #expect(try a.provider.info(vol)?["lock"] == nil, "detach released the hold")
        #expect(try a.ganeti("remove", ["--vol", vol]).ok)
        #expect(try a.provider.info(vol) == nil)
        // Ganeti's remove of a volume that is gone: attach fails, so Ganeti treats it as removed.
        let again = try a.ganeti("attach", ["--vol", vol])
        #expect(!again.ok && again.error.contains("does not exist"), "\(again.raw)")
    }

    /// A clone of a volume (Cyclades' source_volid: `origin=disk:CNAME`):
    /// taken through the daemon that serves the source, it holds every write
    /// acknowledged before it; another node, where the source is held, refuses
    /// and leaves nothing; once the source is detached any node clones it
    /// through the store; removing a clone removes the snapshot it was made from.
    @Test func cloneOfAVolumeAttachedHereElsewhereOrDetached() throws {
        if let why = ganetiUnavailable { print("SKIP Ganeti provider clone: \(why)"); return }
        let cli = CLI()
        let a = try GanetiNode("node-a", cli: cli)
        let b = try GanetiNode("node-b", cli: cli)
        defer { a.stopDaemon(); b.stopDaemon() }
        let scratch = cli.store + "-scratch"
        let clone1 = vol.replacingOccurrences(of: "disk0", with: "disk1")
        let clone2 = vol.replacingOccurrences(of: "disk0", with: "disk2")
        let c = try a.ganeti("create", ["--vol", vol, "--size", "32", "--uuid", "u-src", "--name", "snf-vol-9"])
        #expect(c.ok, "\(c.raw)")
        #expect(try a.ganeti("open", ["--vol", vol]).ok)
        let dev = try #require(c.device)
        let p1 = pattern(5, 4 << 20)
        try write(p1, to: dev, atMiB: 2, scratch: scratch)

        // Node b, while node a holds the source: refused, naming the holder; nothing is left.
        let refused = try b.ganeti("create", ["--vol", clone2, "--size", "32", "--param", "origin=disk:snf-vol-9"])
        #expect(!refused.ok && refused.error.contains("node-a"), "\(refused.raw)")
        #expect(try a.provider.info(clone2) == nil)
        #expect(try a.provider.info("\(vol).origin-of-\(clone2)") == nil)

        // Node a, where the source is served: every acknowledged write is in the clone.
        let made = try a.ganeti("create", ["--vol", clone1, "--size", "48", "--uuid", "u-c1", "--name", "snf-vol-10",
                                           "--param", "origin=disk:snf-vol-9", "--param", "origin_size=\(32 << 20)"])
        #expect(made.ok, "\(made.raw)")
        let info = try #require(try a.provider.info(clone1))
        #expect(info["parent"] as? String == "\(vol).origin-of-\(clone1)", "an O(1) clone of a snapshot of the source: \(info)")
        #expect(info["size"] as? Int == 48 << 20)
        try write(pattern(6, 4 << 20), to: dev, atMiB: 2, scratch: scratch)   // the source moves on
        #expect(try a.ganeti("open", ["--vol", clone1]).ok)
        let cdev = try #require(made.device)
        #expect(try read(cdev, atMiB: 2, MiB: 4, scratch: scratch) == p1, "the clone has what was acknowledged before it, not after")

        // The source detached (instance shut down): node b clones it through the store.
        #expect(try a.ganeti("shutdown", ["--vol", vol]).ok)
        let late = try b.ganeti("create", ["--vol", clone2, "--size", "32", "--param", "origin=disk:snf-vol-9"])
        #expect(late.ok, "\(late.raw)")
        #expect(try b.ganeti("open", ["--vol", clone2]).ok)
        #expect(try read(try #require(late.device), atMiB: 2, MiB: 4, scratch: scratch + "-b") == pattern(6, 4 << 20))

        // A disk name nothing has: refused, nothing created.
        let none = try a.ganeti("create", ["--vol", vol.replacingOccurrences(of: "disk0", with: "disk3"), "--size", "32", "--param", "origin=disk:snf-vol-404"])
        #expect(!none.ok && none.error.contains("snf-vol-404"), "\(none.raw)")

        // Removing a clone removes its origin snapshot; the source stays.
        #expect(try a.ganeti("shutdown", ["--vol", clone1]).ok)
        #expect(try a.ganeti("remove", ["--vol", clone1]).ok)
        #expect(try a.provider.info("\(vol).origin-of-\(clone1)") == nil)
        #expect(try b.ganeti("shutdown", ["--vol", clone2]).ok)
        #expect(try b.ganeti("remove", ["--vol", clone2]).ok)
        #expect(try a.provider.info("\(vol).origin-of-\(clone2)") == nil)
        #expect(try a.provider.info(vol) != nil)
        #expect(try a.ganeti("remove", ["--vol", vol]).ok)
        let left = try cli.run(["list", "--json"])
        #expect(left.status == 0 && !left.stdout.contains(vol.prefix(8)), "\(left.stdout)")
    }

    @Test func liveMigrationBetweenTwoNodes() throws {
        if let why = ganetiUnavailable { print("SKIP Ganeti live migration: \(why)"); return }
        let cli = CLI()
        let a = try GanetiNode("node-a", cli: cli)
        let b = try GanetiNode("node-b", cli: cli)
        defer { a.stopDaemon(); b.stopDaemon() }
        let scratch = cli.store + "-scratch"
        let c = try a.ganeti("create", ["--vol", vol, "--size", "32", "--uuid", "u-1"])
        #expect(c.ok, "\(c.raw)")
        #expect(try a.ganeti("open", ["--vol", vol]).ok)
        let devA = try #require(c.device)
        let p1 = pattern(7, 4 << 20)
        try write(p1, to: devA, atMiB: 0, scratch: scratch + "-a")

        // The target attaches while the source holds the volume (Ganeti does,
        // before it opens both sides shared); an exclusive open there is refused.
        let tb = try b.ganeti("attach", ["--vol", vol])
        #expect(tb.ok, "\(tb.raw)")
        let devB = try #require(tb.device)
        let refused = try b.ganeti("open", ["--vol", vol])
        #expect(!refused.ok && refused.error.contains("node-a"), "the holder is named: \(refused.raw)")

        // Migration: both sides shared, the source keeps writing, then closes.
        #expect(try a.ganeti("open", ["--vol", vol, "--shared"]).ok)
        #expect(try b.ganeti("open", ["--vol", vol, "--shared"]).ok)
        let lock = try #require(try a.provider.info(vol)?["lock"] as? [String: Any])
        #expect(lock["mode"] as? String == "shared")
        #expect((lock["holders"] as? [Any])?.count == 2)
        let p2 = pattern(9, 4 << 20)
        try write(p2, to: devA, atMiB: 8, scratch: scratch + "-a")
        #expect(try a.ganeti("close", ["--vol", vol]).ok)
        #expect(try b.ganeti("open", ["--vol", vol]).ok, "after the source closed, the target holds it alone")
        // Everything the source acknowledged is on the target.
        #expect(try read(devB, atMiB: 0, MiB: 4, scratch: scratch + "-b") == p1)
        #expect(try read(devB, atMiB: 8, MiB: 4, scratch: scratch + "-b") == p2)
        // The source's devices go (Ganeti shuts its disks down); the target writes on.
        #expect(try a.ganeti("shutdown", ["--vol", vol]).ok)
        try write(pattern(3, 1 << 20), to: devB, atMiB: 20, scratch: scratch + "-b")
        #expect(try b.ganeti("shutdown", ["--vol", vol]).ok)
        let v = try cli.run(["verify", vol])
        #expect(v.status == 0, "\(v.stdout) \(v.stderr)")
        #expect(try b.ganeti("remove", ["--vol", vol]).ok)
    }
}
