import ArchipTestSupport
import Foundation
import Testing

private let radosURL: String? = {
    guard let u = ProcessInfo.processInfo.environment["ARCHIP_TEST_RADOS"], !u.isEmpty else { return nil }
    return u
}()

private func namespaced(_ base: String, _ tag: String) -> String {
    base + (base.contains("?") ? "&" : "?") + "ns=\(tag)"
}

/// A call Ganeti makes never hangs on a cluster that does not answer: with
/// the only OSD stopped (SIGSTOP), `archip list` and a provider call fail
/// within `[rados] op_timeout` in one line, exit 1, and work again once it
/// resumes. Only on a cluster of the test's own (PausableOSD).
@Suite(.serialized, .enabled(if: PausableOSD.unavailable == nil, "\(PausableOSD.unavailable ?? "")"))
struct RadosCommandsWithTheOSDStopped {
    @Test func listAndAProviderCallFailWithinTheOpTimeout() throws {
        let base = try #require(radosURL)
        let tag = "osdstop-" + UUID().uuidString.prefix(8).lowercased()
        let store = namespaced(base, tag)
        let cli = CLI(store: store)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-\(tag)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            _ = try? shell("'\(HTTPFixture.repoRoot.path)/tests/e2e/ceph/ceph-up.sh' purge \(tag)")
        }
        let conf = dir + "/archip.conf"
        try "[rados]\nop_timeout = 3s\n".write(toFile: conf, atomically: true, encoding: .utf8)
        // The provider's configuration names the store; Ganeti passes nothing else.
        let cephConf = String(base[base.range(of: "conf=")!.upperBound...].prefix { $0 != "&" })
        let pool = String(base.dropFirst("rados://".count).prefix { $0 != "?" })
        let providerConf = dir + "/provider.conf"
        try """
            [store]
            backend = rados
            pool = \(pool)
            conf = \(cephConf)
            namespace = \(tag)
            [node]
            name = node-a
            runtime_dir = \(dir)/run
            [rados]
            op_timeout = 3s

            """.write(toFile: providerConf, atomically: true, encoding: .utf8)
        func provider(_ action: String, _ vars: [String: String]) throws -> CLI.Result {
            try CLI.runProvider(["--config", providerConf, action], env: ["EXTP_PROVIDER": "archipelago"].merging(vars) { $1 })
        }
        let created = try cli.run(["create", "v", "--size", "16M"])
        try #require(created.status == 0, "create: \(created.stderr)")

        let osd = try #require(PausableOSD.find())
        osd.stop()
        var resumed = false
        defer { if !resumed { osd.resume() } }
        var started = Date()
        let list = try cli.run(["list"], env: ["ARCHIP_CONFIG": conf])
        let listTook = Date().timeIntervalSince(started)
        print("archip list with the OSD stopped: exit \(list.status) after \(String(format: "%.2f", listTook)) s: \(list.stderr)")
        expectOneLineError(list, status: 1, mentioning: "timed out after 3 s", "archip list with the OSD stopped")
        #expect(listTook < 10, "archip list took \(listTook) s with op_timeout 3 s")

        started = Date()
        let grow = try provider("grow", ["VOL_NAME": "v", "VOL_SIZE": "16", "VOL_NEW_SIZE": "32"])
        let growTook = Date().timeIntervalSince(started)
        print("provider grow with the OSD stopped: exit \(grow.status) after \(String(format: "%.2f", growTook)) s: \(grow.stderr)")
        #expect(grow.status == 1, "grow: exit \(grow.status): \(grow.stderr)")
        #expect(grow.stderr.contains("timed out after 3 s"), "grow: \(grow.stderr)")
        #expect(growTook < 10, "provider grow took \(growTook) s with op_timeout 3 s")

        osd.resume()
        resumed = true
        let again = try cli.run(["list"], env: ["ARCHIP_CONFIG": conf])
        #expect(again.status == 0 && again.stdout.contains("v"), "list after the OSD resumed: \(again.stderr)")
        let grown = try provider("grow", ["VOL_NAME": "v", "VOL_SIZE": "16", "VOL_NEW_SIZE": "32"])
        #expect(grown.status == 0, "grow after the OSD resumed: \(grown.stderr)")
    }
}

/// A daemon whose client the cluster blocklisted (node-b broke node-a's hold
/// of v1 with `unlock --force --ignore-lease`): v1 stays fenced on node-a (its
/// I/O fails) until detached, while an attach of v2 on the same daemon works
/// without a restart, on a new client; once node-b lets v1 go, node-a attaches
/// it again. Runs on the shared cluster: only node-a's own client is fenced.
@Suite(.serialized, .enabled(if: radosURL != nil, "ARCHIP_TEST_RADOS is not set (make rados-test sets it)"))
struct RadosFencedDaemon {
    @Test func fencedVolumeStaysFencedAndOtherAttachesGetANewClient() throws {
        if skipDataPath("a fenced daemon on rados") { return }
        let base = try #require(radosURL)
        let tag = "fence-" + UUID().uuidString.prefix(8).lowercased()
        let cli = CLI(store: namespaced(base, tag))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-\(tag)").path
        let a = Node(cli, "node-a", runtime: dir + "/run-a"), b = Node(cli, "node-b", runtime: dir + "/run-b")
        defer {
            a.stop(); b.stop(); try? FileManager.default.removeItem(atPath: dir)
            _ = try? shell("'\(HTTPFixture.repoRoot.path)/tests/e2e/ceph/ceph-up.sh' purge \(tag)")
        }
        for v in ["v1", "v2"] {
            let r = try a.run(["create", v, "--size", "16M"])
            try #require(r.status == 0, "create \(v): \(r.stderr)")
        }
        let v1 = TwoNodes.lines(try a.run(["attach", "v1"]))
        try #require(v1.count == 2)
        try TwoNodes.qemuIO(v1[1], ["write -P 0x11 0 4M", "flush"], "node-a writes v1")
        let pid = try #require(a.daemonPid())

        // node-b breaks node-a's live hold: the cluster blocklists node-a's client.
        let broke = try b.run(["unlock", "--force", "--ignore-lease", "v1"])
        try #require(broke.status == 0, "unlock --force: \(broke.stderr)")

        func ioFails(_ uri: String, _ command: String, _ what: String) throws {
            let r = try shell("qemu-io -f raw -c '\(command)' -c flush '\(uri)' 2>&1")
            #expect(r.status != 0 || r.out.contains("Input/output error") || r.out.contains("failed"),
                    "\(what) succeeded on a fenced volume: \(r.out)")
        }
        try ioFails(v1[1], "write -P 0x22 4M 64k", "a write of v1")
        try ioFails(v1[1], "read 8M 64k", "a read of v1")

        // Another volume attaches on the same daemon, on a new client.
        let started = Date()
        let attach2 = try a.run(["attach", "v2"])
        let took = Date().timeIntervalSince(started)
        let v2 = TwoNodes.lines(attach2)
        try #require(v2.count == 2, "attach v2 on the fenced daemon: \(attach2.stderr)")
        print("attach v2 on the fenced daemon (reconnecting) took \(String(format: "%.2f", took)) s")
        #expect(a.daemonPid() == pid, "the daemon was restarted")
        try TwoNodes.qemuIO(v2[1], ["write -P 0x44 0 4M", "flush", "read -P 0x44 0 4M"], "node-a uses v2")
        let log = (try? String(contentsOfFile: a.runtime + "/serve.log", encoding: .utf8)) ?? ""
        #expect(log.contains("reconnected"), "serve.log says nothing of the new client: \(log)")
        for line in log.split(separator: "\n") where line.contains("fenced") || line.contains("blocklisted") { print("serve.log: \(line)") }
        // v1 was not reopened on the new client behind anyone's back.
        try ioFails(v1[1], "write -P 0x23 4M 64k", "a write of v1 after the reconnect")

        // node-b holds v1 now; node-a detaches its fenced v1, is refused while
        // node-b holds it, and attaches it again once node-b lets go.
        let vb = TwoNodes.lines(try b.run(["attach", "v1"]))
        try #require(vb.count == 2, "node-b attaches v1")
        try TwoNodes.qemuIO(vb[1], ["read -P 0x11 0 4M", "write -P 0x33 1M 1M", "flush"], "node-b uses v1")
        let detached = try a.run(["detach", "v1"])
        #expect(detached.status == 0, "detach of the fenced v1: \(detached.stderr)")
        #expect(try TwoNodes.mode(a, "v1") == nil)
        expectOneLineError(try a.run(["attach", "v1"]), status: 1, mentioning: "node-b", "attach v1 on node-a while node-b holds it")
        #expect(try b.run(["detach", "v1"]).status == 0)
        let back = TwoNodes.lines(try a.run(["attach", "v1"]))
        try #require(back.count == 2, "node-a attaches v1 again")
        try TwoNodes.qemuIO(back[1], ["read -P 0x11 0 1M", "read -P 0x33 1M 1M", "read -P 0x11 2M 2M"], "node-a reads v1 again")
        #expect(a.daemonPid() == pid)
        #expect(try a.run(["detach", "v1"]).status == 0)
        #expect(try a.run(["detach", "v2"]).status == 0)
    }
}
