@testable import Cyclades
import Foundation
import Testing

/// One settings loader for snf-manage and cyclades-api: options win over the
/// environment, which wins over the file, which wins over the defaults; a
/// malformed value is refused naming the file, the key and the value.
@Suite struct Settings {
    static func file(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cyclades-\(UUID().uuidString).conf").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static let full = """
        [cyclades]
        db = /srv/file.db
        max_volume_size = 200
        [api]
        listen = [::1]:9000
        settle_interval = 0.5
        [store]
        path = /srv/file-store
        [node]
        runtime_dir = /run/file
        """

    @Test func defaultsWhenNothingIsSet() throws {
        let s = try CycladesSettings.load(.init(config: try Self.file("")), environment: [:])
        #expect(s.database == "/var/lib/cyclades/cyclades.db")
        #expect(s.maxVolumeSizeGB == 1024)
        #expect(s.storePath == nil)
        #expect(s.runtimeDir == "/run/archip")
        #expect(s.listenHost == "127.0.0.1" && s.listenPort == 8776)
        #expect(s.settleInterval == 1)
    }

    @Test func theFileWinsOverDefaults() throws {
        let path = try Self.file(Self.full)
        let s = try CycladesSettings.load(.init(config: path), environment: [:])
        #expect(s == CycladesSettings(configPath: path, database: "/srv/file.db", maxVolumeSizeGB: 200, storePath: "/srv/file-store",
                                      runtimeDir: "/run/file", listenHost: "::1", listenPort: 9000, settleInterval: 0.5))
        // SNF_CONFIG names the file when --config does not.
        #expect(try CycladesSettings.load(environment: ["SNF_CONFIG": path]) == s)
    }

    @Test func theEnvironmentWinsOverTheFileAndOptionsOverBoth() throws {
        let path = try Self.file(Self.full)
        let env = ["SNF_DB": "/srv/env.db", "ARCHIP_STORE": "/srv/env-store"]
        let e = try CycladesSettings.load(.init(config: path), environment: env)
        #expect(e.database == "/srv/env.db" && e.storePath == "/srv/env-store")
        let o = try CycladesSettings.load(.init(config: path, db: "/srv/opt.db", store: "/srv/opt-store", runtimeDir: "/run/opt",
                                                listen: "0.0.0.0:1234", settleInterval: 3), environment: env)
        #expect(o.database == "/srv/opt.db" && o.storePath == "/srv/opt-store" && o.runtimeDir == "/run/opt")
        #expect(o.listenHost == "0.0.0.0" && o.listenPort == 1234 && o.settleInterval == 3)
        #expect(o.maxVolumeSizeGB == 200, "no option for it: the file's")
    }

    /// The store as archip.conf names it: a pool too, so snapshots, inspect and
    /// reconcile reach a rados store.
    @Test func aRadosStoreFromTheFile() throws {
        let path = try Self.file("[store]\nbackend = rados\npool = archip\nconf = /etc/ceph/c.conf\nid = cyclades\nnamespace = ns1\n")
        let s = try CycladesSettings.load(.init(config: path), environment: [:])
        #expect(s.storePath == "rados://archip?conf=/etc/ceph/c.conf&id=cyclades&ns=ns1")
        let bad = try Self.file("[store]\nbackend = rados\n")
        let e = #expect(throws: CycladesError.self) { try CycladesSettings.load(.init(config: bad), environment: [:]) }
        #expect(e?.message.contains("needs 'pool'") == true, "\(e?.message ?? "")")
    }

    @Test func malformedValuesAreRefusedInOneLine() throws {
        let cases: [(String, String)] = [
            ("[cyclades]\nmax_volume_size = lots\n", "max_volume_size 'lots'"),
            ("[cyclades]\nmax_volume_size = 0\n", "max_volume_size '0'"),
            ("[api]\nsettle_interval = soon\n", "settle_interval 'soon'"),
            ("[api]\nlisten = 8776\n", "listen '8776'"),
            ("[api]\nlisten = host:port\n", "listen 'host:port'"),
            ("not a key value line\n", "expected 'key = value'"),
        ]
        for (text, mention) in cases {
            let path = try Self.file(text)
            let e = #expect(throws: CycladesError.self, "\(text)") { try CycladesSettings.load(.init(config: path), environment: [:]) }
            #expect(e?.message.contains(mention) == true, "\(e?.message ?? "no error") should mention \(mention)")
            #expect(e?.message.contains(path) == true, "names the file: \(e?.message ?? "")")
            #expect(e?.message.contains("\n") == false)
        }
        // A named file must exist; the default one may be missing.
        #expect(throws: CycladesError.self) { try CycladesSettings.load(.init(config: "/nonexistent/cyclades.conf"), environment: [:]) }
        #expect(throws: CycladesError.self) { try CycladesSettings.load(environment: ["SNF_CONFIG": "/nonexistent/cyclades.conf"]) }
        #expect(throws: CycladesError.self) { try CycladesSettings.load(.init(config: try Self.file(""), listen: "nowhere"), environment: [:]) }
    }

    @Test func theRegistryGetsTheSizeLimit() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cyclades-settings-\(UUID().uuidString)").path
        let path = try Self.file("[cyclades]\ndb = \(dir)/sub/c.db\nmax_volume_size = 7\n")
        let r = try CycladesSettings.load(.init(config: path), environment: [:]).openRegistry(createFolder: true)
        #expect(r.maxVolumeSizeGB == 7)
        #expect(FileManager.default.fileExists(atPath: dir + "/sub/c.db"))
    }
}
