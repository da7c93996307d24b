import ArchipTestSupport
import Foundation
import Testing

/// packaging/systemd/cyclades-api.service: an unprivileged user with the
/// database in its state folder, options the binary accepts, and a unit
/// systemd-analyze finds nothing wrong with.
@Suite struct CycladesUnit {
    static let unitPath = SystemdUnit.repoRoot.appendingPathComponent("packaging/systemd/cyclades-api.service").path
    static let sysusersPath = SystemdUnit.repoRoot.appendingPathComponent("packaging/sysusers.d/cyclades.conf").path

    static func unit() throws -> [String: [String]] { SystemdUnit.parse(try String(contentsOfFile: unitPath, encoding: .utf8)) }

    @Test func runsUnprivilegedWithTheDatabaseInItsStateFolder() throws {
        let u = try Self.unit()
        #expect(u["[Service] User"] == ["cyclades"], "not root")
        #expect(u["[Service] Group"] == ["cyclades"])
        #expect(u["[Service] StateDirectory"] == ["cyclades"], "/var/lib/cyclades, owned by the user")
        #expect(u["[Service] NoNewPrivileges"] == ["yes"])
        #expect(u["[Service] ProtectSystem"] == ["strict"])
        #expect(u["[Install] WantedBy"] == ["multi-user.target"])
        // The database the API opens by default is in that state folder.
        let sample = try String(contentsOf: SystemdUnit.repoRoot.appendingPathComponent("docs/cyclades.conf.sample"), encoding: .utf8)
        #expect(sample.contains("db = /var/lib/cyclades/"), "the sample's [cyclades] db is under the state folder")
        // The user exists once systemd-sysusers has run.
        let sysusers = try String(contentsOfFile: Self.sysusersPath, encoding: .utf8)
        #expect(sysusers.split(separator: "\n").contains { $0.hasPrefix("u cyclades ") }, "\(sysusers)")
        // ExecStart: the installed path make install rewrites, and options cyclades-api takes.
        let exec = try #require(u["[Service] ExecStart"]?.first).split(separator: " ").map(String.init)
        #expect(exec.first == "/usr/bin/cyclades-api")
        let binary = CLI.binDir + "/cyclades-api"
        try #require(FileManager.default.isExecutableFile(atPath: binary), "build cyclades-api first (swift build)")
        let help = try shell("'\(binary)' --help")
        #expect(help.status == 0)
        for opt in exec where opt.hasPrefix("--") {
            #expect(help.out.contains(opt), "cyclades-api --help does not list \(opt)")
        }
    }

    @Test func systemdAnalyzeVerifiesTheUnit() throws {
        guard (try? shell("command -v systemd-analyze"))?.status == 0 else {
            print("SKIP systemd-analyze verify: systemd-analyze is not installed")
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cyclades-unit-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = try String(contentsOfFile: Self.unitPath, encoding: .utf8)
            .replacingOccurrences(of: "/usr/bin/cyclades-api", with: CLI.binDir + "/cyclades-api")
        try text.write(toFile: dir + "/cyclades-api.service", atomically: true, encoding: .utf8)
        let r = try shell("cd \(dir) && systemd-analyze verify --man=no ./cyclades-api.service 2>&1")
        // verify exits 0 on unknown keys and bad values too: any output is a finding.
        #expect(r.status == 0 && r.out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(r.out)")
    }
}
