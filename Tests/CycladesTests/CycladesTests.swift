@testable import Cyclades
import ArchipStore
import Foundation
import GRDB
import Testing

/// Answers recorded from Ganeti 3.0.2's RAPI on the lab cluster (Tests/CycladesTests/Recorded).
func recorded(_ name: String) throws -> Data {
    var url = URL(fileURLWithPath: #filePath)
    url.deleteLastPathComponent()
    return try Data(contentsOf: url.appendingPathComponent("Recorded/\(name).json"))
}

@Suite struct RecordedRAPIAnswers {
    @Test func instance() throws {
        let i = try RAPIClient.parseInstance(try recorded("instance"))
        #expect(i.instance == "snf-77" && !i.running)
        #expect(i.disks.map(\.name) == ["snf-vol-5", "snf-vol-6"])
        #expect(i.disks.map(\.sizeMiB) == [1024, 2048])
        #expect(i.disks.allSatisfy { $0.uuid?.count == 36 })
    }

    @Test func jobs() throws {
        #expect(try RAPIClient.parseJob(try recorded("job-running")) == .pending)
        #expect(try RAPIClient.parseJob(try recorded("job-success")) == .success)
        guard case .failed(let m) = try RAPIClient.parseJob(try recorded("job-error")) else { Issue.record("not failed"); return }
        #expect(m == "Disk template 'plain' is not enabled in cluster. Enabled disk templates are: ext,diskless", "\(m)")
    }

    /// The transport's view of a 404: instanceDisks says "no such instance".
    @Test func missingInstance() throws {
        struct Recorded: RAPITransport {
            let answers: [String: (Int, Data)]
            func send(method: String, url: String, body: Data?) throws -> (status: Int, body: Data) {
                guard let a = answers["\(method) \(url)"] else { return (500, Data()) }
                return a
            }
        }
        let c = RAPIClient(baseURL: "https://127.0.0.1:5080", transport: Recorded(answers: [
            "GET https://127.0.0.1:5080/2/instances/nope": (404, try recorded("instance-404")),
            "GET https://127.0.0.1:5080/2/instances/snf-77": (200, try recorded("instance")),
            "GET https://127.0.0.1:5080/2/jobs/4": (200, try recorded("job-error")),
        ]))
        #expect(try c.instanceDisks("nope") == nil)
        #expect(try c.instanceDisks("snf-77")?.disks.count == 2)
        #expect(try c.job(4) != .success)
        do {
            _ = try c.job(5)
            Issue.record("a 500 was accepted")
        } catch let e as CycladesError {
            #expect(e.kind == .backend && e.message.contains("HTTP 500"), "\(e)")
        }
    }
}

@Suite struct RAPIParsing {
    // Recorded from Ganeti 3.0.2's RAPI (GET /2/instances/NAME, GET /2/jobs/ID), trimmed.
    let instance = #"""
    {"admin_state": "up", "admin_state_source": "admin", "beparams": {}, "ctime": 1764110000.1, "disk.sizes": [1024, 2048],
     "disk.spindles": [null, null], "disk.names": ["snf-vol-1", "snf-vol-2"], "disk.uuids": ["4c7b3a6e-1b1f-4d3e-9a9e-0d3f6e5c2b11", "9f2e1c3d-7a6b-4e5f-8c9d-0a1b2c3d4e5f"],
     "disk_template": "ext", "name": "snf-1", "nic.bridges": [], "oper_state": true, "os": "noop", "pnode": "vm.ganeti.test", "status": "running"}
    """#
    let jobOK = #"{"id": "12", "status": "success", "opresult": [["snf-1"]], "opstatus": ["success"], "summary": ["INSTANCE_CREATE(snf-1)"]}"#
    let jobError = #"""
    {"id": "13", "status": "error", "opstatus": ["error"],
     "opresult": [["OpPrereqError", ["Disk template 'ext' not allowed, allowed templates are: diskless", "wrong_input"]]]}
    """#
    let jobRunning = #"{"id": "14", "status": "running", "opresult": [null], "opstatus": ["running"]}"#

    @Test func instanceDisksByName() throws {
        let i = try RAPIClient.parseInstance(Data(instance.utf8))
        #expect(i.instance == "snf-1" && i.running)
        #expect(i.disks.map(\.name) == ["snf-vol-1", "snf-vol-2"])
        #expect(i.disks.map(\.sizeMiB) == [1024, 2048])
        #expect(i.disks[1].uuid == "9f2e1c3d-7a6b-4e5f-8c9d-0a1b2c3d4e5f" && i.disks[1].index == 1)
    }

    @Test func jobStates() throws {
        #expect(try RAPIClient.parseJob(Data(jobOK.utf8)) == .success)
        #expect(try RAPIClient.parseJob(Data(jobRunning.utf8)) == .pending)
        guard case .failed(let m) = try RAPIClient.parseJob(Data(jobError.utf8)) else { Issue.record("not failed"); return }
        #expect(m.contains("Disk template 'ext' not allowed"), "\(m)")
        #expect(throws: CycladesError.self) { try RAPIClient.parseJob(Data("<html>".utf8)) }
    }

    @Test func jobIDs() throws {
        let c = RAPIClient(baseURL: "https://x:5080/", transport: CurlTransport(username: "", password: "", caFile: nil, insecure: true))
        #expect(try c.jobID(Data("123\n".utf8)) == 123)
        #expect(try c.jobID(Data("\"77\"".utf8)) == 77)
        #expect(throws: CycladesError.self) { try c.jobID(Data("{}".utf8)) }
        #expect(c.baseURL == "https://x:5080")
    }

    @Test func diskNames() {
        #expect(Volume.id(fromDiskName: "snf-vol-42") == 42)
        #expect(Volume.id(fromDiskName: "snf-vol-x") == nil)
        #expect(Volume.id(fromDiskName: "vol-1") == nil)
        #expect(VolumeType(id: 1, name: "a", diskTemplate: "ext_archipelago", deleted: false).provider == "archipelago")
        #expect(VolumeType(id: 1, name: "a", diskTemplate: "drbd", deleted: false).provider == nil)
    }

    @Test func volumeRequests() throws {
        #expect(try VolumeRequest(parsing: "size=10,image=abc") == VolumeRequest(sizeGB: 10, source: "image:abc"))
        #expect(try VolumeRequest(parsing: "size=3") == VolumeRequest(sizeGB: 3, source: nil))
        #expect(try VolumeRequest(parsing: "size=3,source=snapshot:s1") == VolumeRequest(sizeGB: 3, source: "snapshot:s1"))
        #expect(try VolumeRequest(parsing: "size=3,volume=7") == VolumeRequest(sizeGB: 3, source: "volume:7"))
        for bad in ["size=x", "size", "size=1,image=a,snapshot=b", "colour=red"] {
            #expect(throws: CycladesError.self, "\(bad)") { try VolumeRequest(parsing: bad) }
        }
    }
}

@Suite struct Rules {
    @Test func refusedRequestsChangeNothing() throws {
        let f = try Fixture(quota: 10 << 30)
        let r = f.registry
        let s = try f.activeServer()
        let sid = s.id!
        let bob = try r.createUser(name: "bob", diskLimit: 1 << 30).0
        let big = try r.registerImage(name: "big", location: "file:/srv/big.raw", size: 3 << 30, owner: "system", isPublic: true, checksum: nil)
        let before = try f.dump()
        let cases: [(String, () throws -> Void, CycladesError.Kind)] = [
            ("unknown server", { _ = try r.createVolume(server: 99, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil) }, .badRequest),
            ("unknown user", { _ = try r.createVolume(server: sid, user: "mallory", sizeGB: 1, source: nil, volumeType: nil, name: nil) }, .itemNotFound),
            ("another user's server", { _ = try r.createVolume(server: sid, user: bob.id, sizeGB: 1, source: nil, volumeType: nil, name: nil) }, .badRequest),
            ("unknown type", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 1, source: nil, volumeType: "gold", name: nil) }, .badRequest),
            ("other type", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 1, source: nil, volumeType: "drbd", name: nil) }, .badRequest),
            ("size 0", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 0, source: nil, volumeType: nil, name: nil) }, .badRequest),
            ("size -1", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: -1, source: nil, volumeType: nil, name: nil) }, .badRequest),
            ("huge", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 1 << 20, source: nil, volumeType: nil, name: nil) }, .badRequest),
            ("volume source smaller than the volume", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 1, source: "volume:1", volumeType: nil, name: nil) }, .badRequest),
            ("missing volume source", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 2, source: "volume:99", volumeType: nil, name: nil) }, .itemNotFound),
            ("unknown kind", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 1, source: "disk:1", volumeType: nil, name: nil) }, .badRequest),
            ("missing image", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 1, source: "image:nope", volumeType: nil, name: nil) }, .badRequest),
            ("source larger", { _ = try r.createServer(name: "v", user: "alice", flavor: "small", image: nil, volumes: [.init(sizeGB: 2, source: "image:\(big.id)")]) }, .badRequest),
            ("over quota", { _ = try r.createVolume(server: sid, user: "alice", sizeGB: 9, source: nil, volumeType: nil, name: nil) }, .overLimit),
            ("root removal", { _ = try r.removeVolume(1) }, .badRequest),
            ("blank root", { _ = try r.createServer(name: "v", user: "alice", flavor: "small", image: nil, volumes: [.init(sizeGB: 1, source: nil)]) }, .badRequest),
            ("nine disks", { _ = try r.createServer(name: "v", user: "alice", flavor: "small", image: f.image.id, volumes: Array(repeating: .init(sizeGB: 1, source: nil), count: 9)) }, .badRequest),
            ("source on a non-root drbd volume", { _ = try r.createServer(name: "v", user: "alice", flavor: "classic", image: f.image.id, volumes: [.init(sizeGB: 2, source: nil), .init(sizeGB: 2, source: "image:\(f.image.id)")]) }, .badRequest),
        ]
        for (what, call, kind) in cases {
            do {
                try call()
                Issue.record("\(what): accepted")
            } catch let e as CycladesError {
                #expect(e.kind == kind, "\(what): \(e.kind) \(e.message)")
                #expect(!e.message.contains("\n"))
            }
            #expect(try f.dump() == before, "\(what): the database changed")
        }
        #expect(f.ganeti.jobs.count == 1, "only the server create reached Ganeti")
    }

    @Test func aNinthDiskOnAServerIsRefused() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try r.createServer(name: "vm", user: "alice", flavor: "small", image: f.image.id,
                                   volumes: [.init(sizeGB: 2, source: nil)] + Array(repeating: .init(sizeGB: 1, source: nil), count: 7))
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(throws: CycladesError.self) { _ = try r.createVolume(server: s.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil) }
    }
}

/// `volume:ID` sources (Cinder's source_volid): the provider is asked to
/// clone the Ganeti disk of the source, charged and settled like any create.
@Suite struct Clones {
    @Test func aCloneAsksTheProviderForTheSourceDisk() throws {
        let f = try Fixture(quota: 20 << 30)
        let r = f.registry
        let s = try r.createServer(name: "vm", user: "alice", flavor: "small", image: f.image.id, volumes: [.init(sizeGB: 2, source: nil), .init(sizeGB: 3, source: nil)])
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try f.usage() == (5 << 30, 0))
        let c = try r.createVolume(server: s.id!, user: "alice", sizeGB: 4, source: "volume:2", volumeType: nil, name: "copy")
        let spec = try #require(f.ganeti.sentDisks.last)
        #expect(spec == DiskSpec(name: "snf-vol-\(c.id!)", sizeMiB: 4096, provider: "archipelago", origin: "disk:snf-vol-2", originSize: 3 << 30))
        #expect(c.source == "volume:2" && c.origin == "disk:snf-vol-2" && c.status == .creating)
        #expect(try f.usage() == (5 << 30, 4 << 30), "charged as pending, as any create")
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try r.db.read { try Volume.fetchOne($0, key: c.id!)!.status } == .inUse)
        #expect(try f.usage() == (9 << 30, 0))
        // A clone of the root onto a new server, as its root.
        let s2 = try r.createServer(name: "vm2", user: "alice", flavor: "small", image: nil, volumes: [.init(sizeGB: 2, source: "volume:1")])
        #expect(f.ganeti.sentDisks.last?.origin == "disk:snf-vol-1" && f.ganeti.sentDisks.last?.originSize == 2 << 30)
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try r.db.read { try Server.fetchOne($0, key: s2.id!)!.status } == .active)
        // A clone whose job fails: ERROR, charge rejected; the source is untouched.
        _ = try r.createVolume(server: s.id!, user: "alice", sizeGB: 3, source: "volume:2", volumeType: nil, name: nil)
        f.ganeti.finishAll { _ in true }
        try r.processJobs()
        #expect(try f.usage() == (11 << 30, 0))
        #expect(try r.db.read { try Volume.fetchOne($0, key: 2)!.status } == .inUse)
        #expect(try r.reconcile(store: nil, fix: false).isEmpty)
    }

    @Test func refusedClonesChangeNothing() throws {
        let f = try Fixture(quota: 12 << 30)
        let r = f.registry
        let s = try r.createServer(name: "vm", user: "alice", flavor: "small", image: f.image.id, volumes: [.init(sizeGB: 2, source: nil), .init(sizeGB: 1, source: nil)])
        let other = try r.createServer(name: "vm2", user: "alice", flavor: "small", image: f.image.id, volumes: [])
        let classic = try r.createServer(name: "old", user: "alice", flavor: "classic", image: f.image.id, volumes: [])
        f.ganeti.finishAll()
        try r.processJobs()
        // volume 5: a create that failed (ERROR); volume 2: being removed (DELETING).
        let failed = try r.createVolume(server: s.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll { _ in true }
        try r.processJobs()
        let (bob, _) = try r.createUser(name: "bob", diskLimit: 10 << 30)
        let bobServer = try r.createServer(name: "b", user: bob.id, flavor: "small", image: f.image.id, volumes: [])
        f.ganeti.finishAll()
        try r.processJobs()
        _ = try r.removeVolume(2)   // its job stays pending
        let before = try f.dump()
        let sentBefore = f.ganeti.sentDisks.count
        let o = other.id!
        let cases: [(String, () throws -> Void, CycladesError.Kind, String)] = [
            ("another user's volume", { _ = try r.createVolume(server: bobServer.id!, user: bob.id, sizeGB: 2, source: "volume:1", volumeType: nil, name: nil) }, .itemNotFound, "does not exist"),
            ("a missing volume", { _ = try r.createVolume(server: o, user: "alice", sizeGB: 2, source: "volume:404", volumeType: nil, name: nil) }, .itemNotFound, "does not exist"),
            ("not a volume id", { _ = try r.createVolume(server: o, user: "alice", sizeGB: 2, source: "volume:abc", volumeType: nil, name: nil) }, .itemNotFound, "does not exist"),
            ("a source in ERROR", { _ = try r.createVolume(server: o, user: "alice", sizeGB: 2, source: "volume:\(failed.id!)", volumeType: nil, name: nil) }, .badRequest, "ERROR"),
            ("a source being deleted", { _ = try r.createVolume(server: o, user: "alice", sizeGB: 2, source: "volume:2", volumeType: nil, name: nil) }, .badRequest, "DELETING"),
            ("a source of a type that does not clone", { _ = try r.createVolume(server: o, user: "alice", sizeGB: 2, source: "volume:\(try r.db.read { try Volume.filter(Column("machineID") == classic.id!).fetchOne($0)!.id! })", volumeType: nil, name: nil) }, .badRequest, "does not clone"),
            ("onto a type that does not clone", { _ = try r.createVolume(server: classic.id!, user: "alice", sizeGB: 2, source: "volume:1", volumeType: nil, name: nil) }, .badRequest, "clones"),
            ("smaller than the source", { _ = try r.createVolume(server: o, user: "alice", sizeGB: 1, source: "volume:1", volumeType: nil, name: nil) }, .badRequest, "larger"),
            ("over quota", { _ = try r.createVolume(server: o, user: "alice", sizeGB: 9, source: "volume:1", volumeType: nil, name: nil) }, .overLimit, "capacity"),
        ]
        for (what, call, kind, mentioning) in cases {
            do {
                try call()
                Issue.record("\(what): accepted")
            } catch let e as CycladesError {
                #expect(e.kind == kind && e.message.contains(mentioning), "\(what): \(e.kind) \(e.message)")
            }
            #expect(try f.dump() == before, "\(what): the database changed")
        }
        #expect(f.ganeti.sentDisks.count == sentBefore, "nothing reached Ganeti")
    }
}

/// Volume's hand-written init(row:) reads back exactly what the Codable
/// encoding wrote, for every optional set and unset; a bad row throws.
@Suite struct VolumeRows {
    @Test func roundTripThroughTheDatabase() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try r.createServer(name: "vm", user: "alice", flavor: "small", image: f.image.id, volumes: [])
        let t1 = Date(timeIntervalSince1970: 1_764_100_000.125), t2 = Date(timeIntervalSince1970: 1_764_100_007.5)
        let full = Volume(id: nil, name: "ünï \"q\"", description: "d", userid: f.user.id, project: f.user.defaultProject, size: 7,
                          volumeTypeID: 1, machineID: s.id, index: 3, source: "volume:1", origin: "disk:snf-vol-1", status: .extending,
                          deleteOnTermination: false, deleted: true, backendJobID: 42, created: t1, updated: t2, pendingSize: 9)
        let bare = Volume(id: nil, name: nil, description: nil, userid: f.user.id, project: f.user.defaultProject, size: 1,
                          volumeTypeID: 1, machineID: nil, index: nil, source: nil, origin: nil, status: .available,
                          deleteOnTermination: true, deleted: false, backendJobID: nil, created: t2, updated: t1, pendingSize: nil)
        for var v in [full, bare] {
            try r.db.write { try v.insert($0) }
            #expect(try r.db.read { try Volume.fetchOne($0, key: v.id!) } == v)
            #expect(try r.db.read { try Volume.filter(Column("id") == v.id!).fetchAll($0) } == [v])
        }
        #expect(throws: (any Error).self) { try r.db.read { try Volume.fetchOne($0, sql: "SELECT id, name FROM volumes") } }
        #expect(throws: (any Error).self) { try r.db.read { try Volume.fetchOne($0, sql: "SELECT *, NULL AS size FROM (SELECT id, name, description, userid, project, volumeTypeID, machineID, \"index\", source, origin, status, deleteOnTermination, deleted, backendJobID, created, updated FROM volumes)") } }
    }
}

@Suite struct Metadata {
    @Test func atMostTenKeys() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try f.activeServer()
        let eleven = Dictionary(uniqueKeysWithValues: (0..<11).map { ("k\($0)", "v") })
        let before = try f.dump()
        #expect(throws: CycladesError.self) { _ = try r.createVolume(server: s.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil, metadata: eleven) }
        #expect(try f.dump() == before)
        let v = try r.createVolume(server: s.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil,
                                   metadata: Dictionary(uniqueKeysWithValues: (0..<9).map { ("k\($0)", "v") }))
        try r.setMetadata(volume: v.id!, ["extra": "x"], replace: false)
        #expect(try r.metadata(volume: v.id!).count == 10)
        #expect(throws: CycladesError.self) { try r.setMetadata(volume: v.id!, ["one-more": "x"], replace: false) }
        try r.setMetadata(volume: v.id!, ["only": "this"], replace: true)
        #expect(try r.metadata(volume: v.id!) == ["only": "this"])
    }
}

@Suite struct StateMachine {
    @Test func createSucceedsOrFailsByTheJobOnly() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try r.createServer(name: "vm", user: "alice", flavor: "small", image: f.image.id, volumes: [])
        #expect(s.status == .build)
        #expect(try f.usage() == (0, 2 << 30), "charged as pending when the job is sent")
        try r.processJobs()
        #expect(try r.db.read { try Server.fetchOne($0, key: s.id!)!.status } == .build, "nothing settles while the job runs")
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try r.db.read { try Server.fetchOne($0, key: s.id!)!.status } == .active)
        #expect(try f.usage() == (2 << 30, 0))
        let spec = f.ganeti.instances["snf-\(s.id!)"]!
        #expect(spec.map(\.name) == ["snf-vol-1"])

        let v = try r.createVolume(server: s.id!, user: "alice", sizeGB: 3, source: nil, volumeType: nil, name: "data")
        f.ganeti.finishAll { _ in true }
        try r.processJobs()
        #expect(try r.db.read { try Volume.fetchOne($0, key: v.id!)!.status } == .error)
        #expect(try f.usage() == (2 << 30, 0), "a failed job's charge is rejected")

        let w = try r.createVolume(server: s.id!, user: "alice", sizeGB: 3, source: "image:\(f.image.id)", volumeType: nil, name: nil)
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try r.db.read { try Volume.fetchOne($0, key: w.id!)!.status } == .inUse)
        #expect(try f.usage() == (5 << 30, 0))
        let disk = try #require(f.ganeti.instances["snf-\(s.id!)"]?.last)
        #expect(disk.name == "snf-vol-\(w.id!)" && disk.sizeMiB == 3072)

        _ = try r.removeVolume(w.id!)
        f.ganeti.finishAll { _ in true }
        try r.processJobs()
        #expect(try r.db.read { try Volume.fetchOne($0, key: w.id!)!.status } == .errorDeleting, "Ganeti kept the disk: recorded, not a silent IN_USE")
        #expect(try f.usage() == (5 << 30, 0))
        _ = try r.removeVolume(w.id!)
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try r.db.read { try Volume.fetchOne($0, key: w.id!)!.deleted })
        #expect(try f.usage() == (2 << 30, 0))

        _ = try r.removeServer(s.id!)
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try r.db.read { try Server.fetchOne($0, key: s.id!)!.status } == .deleted)
        #expect(try f.usage() == (0, 0))
        #expect(try r.reconcile(store: nil, fix: false).isEmpty)
    }

    /// The poller runs while a remove is being sent: it must not take the
    /// server's previous (ended) job for the remove's and settle it early.
    /// (Seen in CI: the server was marked deleted before Ganeti removed it,
    /// and its refund stayed pending for ever.)
    @Test func thePollerDoesNotSettleARemoveByThePreviousJob() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try f.activeServer()
        #expect(try f.usage() == (2 << 30, 0))
        f.ganeti.whileSubmitting = { _ = try? r.processJobs() }
        _ = try r.removeServer(s.id!)
        f.ganeti.whileSubmitting = nil
        try r.processJobs()
        let pending = try r.db.read { try Server.fetchOne($0, key: s.id!)! }
        #expect(pending.status != .deleted && pending.pendingAction == "remove", "settled before Ganeti ended the remove")
        #expect(try f.usage() == (2 << 30, 0), "refunded only when the remove ends")
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try r.db.read { try Server.fetchOne($0, key: s.id!)!.status } == .deleted)
        #expect(try f.usage() == (0, 0))
    }

    /// What that race left in databases written before the fix: the server
    /// and its volumes deleted, their refund pending with a job id. Reconcile
    /// reports it, and --fix gives the quota back.
    @Test func reconcileResolvesARefundLeftPending() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try f.activeServer()
        try r.db.write { db in
            var srv = try Server.fetchOne(db, key: s.id!)!
            srv.status = .deleted; srv.deleted = true; srv.pendingAction = nil; srv.backendJobID = 7
            try srv.update(db)
            var ids: [Int64] = []
            for var v in try r.liveVolumes(db, server: s.id!) {
                v.status = .deleted; v.deleted = true; v.machineID = nil
                try v.update(db)
                ids.append(v.id!)
            }
            var c = Commission(id: nil, project: f.user.defaultProject, resource: Registry.diskResource, delta: -(2 << 30), state: .pending,
                               backendJobID: 7, serverID: s.id, volumeIDs: ids.map(String.init).joined(separator: ","), created: Date(), resolved: nil)
            try c.insert(db)
        }
        f.ganeti.instances = [:]
        #expect(try f.usage() == (2 << 30, 0))
        let seen = try r.reconcile(store: nil, fix: false)
        #expect(seen.map(\.kind) == [.stuckCommission] && seen.first?.fixed == nil, "\(seen)")
        #expect(try f.usage() == (2 << 30, 0), "a report changes nothing")
        let fixed = try r.reconcile(store: nil, fix: true)
        #expect(fixed.first?.fixed?.hasPrefix("accepted") == true, "\(fixed)")
        #expect(try f.usage() == (0, 0))
        #expect(try r.reconcile(store: nil, fix: false).isEmpty)
    }

    /// Reconcile against the store: an IN_USE volume no store volume records,
    /// and a store volume recording a disk the database does not have live,
    /// are both reported; a store volume whose map is damaged does not stop it.
    @Test func reconcileComparesTheStoreByRecords() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try f.activeServer()
        let disks = try r.db.read { db in try r.liveVolumes(db, server: s.id!) }
        #expect(disks.count == 1 && disks.first?.status == .inUse)
        let disk = try #require(disks.first)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("reconcile-store-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try VolumeStore.directory(dir, node: "node1")
        // In step: the server's disk is in the store.
        try store.create(try VolumeName("d1"), size: .mebibytes(8), metadata: ["ganeti.cname": disk.diskName])
        #expect(try r.reconcile(store: store, fix: false).isEmpty)
        // An orphan: a store volume for a disk the database never had.
        try store.create(try VolumeName("d2"), size: .mebibytes(8), metadata: ["ganeti.cname": "snf-vol-999"])
        var seen = try r.reconcile(store: store, fix: false)
        #expect(seen.map(\.kind) == [.orphanStoreVolume] && seen.first?.volume == 999, "\(seen)")
        // Missing: the server's disk leaves the store; then the orphan's map is damaged.
        try store.remove(try VolumeName("d1"))
        try store.objects.put(ObjectName("layers", try store.info(try VolumeName("d2")).layer, "map"), [1, 2, 3], durable: true)
        seen = try r.reconcile(store: store, fix: false)
        #expect(Set(seen.map(\.kind)) == [.orphanStoreVolume, .missingInStore], "\(seen)")
        #expect(seen.first { $0.kind == .missingInStore }?.volume == disk.id)
    }

    @Test func aJobThatCannotBeSentIsRejectedAtOnce() throws {
        let f = try Fixture()
        f.ganeti.refuseNext = "RAPI: connection refused"
        #expect(throws: CycladesError.self) { _ = try f.registry.createServer(name: "vm", user: "alice", flavor: "small", image: f.image.id, volumes: []) }
        #expect(try f.usage() == (0, 0))
        #expect(try f.registry.db.read { try Server.fetchAll($0).map(\.status) } == [.error])
    }
}

@Suite struct QuotaProperty {
    /// Random operations with random job outcomes, a backend that sometimes
    /// refuses submissions, and "crashes" (a charge committed, its job never
    /// recorded): after settling and reconciling, each project holds exactly
    /// the size of its live volumes, nothing is pending, and reconcile is clean.
    @Test(arguments: [1, 2, 3])
    func noLostOrDoubleCharge(seed: Int) throws {
        var rng = SeededGenerator(seed: UInt64(seed))
        let f = try Fixture(quota: 40 << 30)
        let r = f.registry
        for _ in 0..<120 {
            let servers = try r.db.read { try Server.filter(Column("deleted") == false).fetchAll($0) }
            let op = Int.random(in: 0..<10, using: &rng)
            if Int.random(in: 0..<12, using: &rng) == 0 { f.ganeti.refuseNext = "RAPI unreachable" }
            do {
                switch op {
                case 0, 1:
                    _ = try r.createServer(name: "vm", user: "alice", flavor: "small", image: f.image.id,
                                           volumes: Int.random(in: 0..<2, using: &rng) == 0 ? [] : [.init(sizeGB: 2, source: nil), .init(sizeGB: 1, source: nil)])
                case 2, 3, 4:
                    if let s = servers.randomElement(using: &rng) {
                        _ = try r.createVolume(server: s.id!, user: "alice", sizeGB: Int.random(in: 1...4, using: &rng), source: nil, volumeType: nil, name: nil)
                    }
                case 5, 6:
                    let vols = try r.db.read { try Volume.filter(Column("deleted") == false && Column("index") > 0).fetchAll($0) }
                    if let v = vols.randomElement(using: &rng) { _ = try r.removeVolume(v.id!) }
                case 7:
                    if let s = servers.randomElement(using: &rng) { _ = try r.removeServer(s.id!) }
                case 8:
                    // A crash between the charge and the job: the commission is recorded, the job never sent.
                    if let s = servers.randomElement(using: &rng), s.status == .active, s.pendingAction == nil {
                        try r.db.write { db in
                            var v = Volume(id: nil, name: nil, description: nil, userid: f.user.id, project: f.user.defaultProject, size: 1,
                                           volumeTypeID: 1, machineID: s.id, index: 99, source: nil, origin: nil, status: .creating,
                                           deleteOnTermination: true, deleted: false, backendJobID: nil, created: Date(), updated: Date())
                            try v.insert(db)
                            _ = try r.charge(db, project: f.user.defaultProject, delta: v.sizeBytes, serverID: s.id, volumeIDs: [v.id!])
                        }
                    }
                default:
                    f.ganeti.finishAll { _ in Int.random(in: 0..<4, using: &rng) == 0 }
                    try r.processJobs()
                }
            } catch is CycladesError {
                // refused (busy server, quota, unreachable backend): nothing may change
            }
        }
        f.ganeti.finishAll { _ in Int.random(in: 0..<4, using: &rng) == 0 }
        _ = try r.reconcile(store: nil, fix: true)
        let (usage, pending) = try f.usage()
        let held = try r.db.read { db in
            // IN_USE, and ERROR_DELETING: a removal Ganeti refused keeps the disk and its charge.
            try Int64.fetchOne(db, sql: "SELECT COALESCE(SUM(size), 0) FROM volumes WHERE deleted = 0 AND status IN ('IN_USE', 'ERROR_DELETING')")! << 30
        }
        #expect(pending == 0)
        #expect(usage == held, "usage \(usage) vs live volumes \(held)")
        let again = try r.reconcile(store: nil, fix: false)
        #expect(again.isEmpty, "\(again)")
    }
}

struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
}

/// An image registered with its checksum: every disk made from it carries
/// `origin_sha256`, which the provider checks the origin against.
@Suite struct ImageChecksums {
    @Test func theRegisteredChecksumGoesToTheProviderWithTheOrigin() throws {
        let f = try Fixture(quota: 20 << 30)
        let r = f.registry
        let digest = String(repeating: "ab", count: 32)
        let img = try r.registerImage(name: "checked", location: "file:/srv/checked.raw", size: 1 << 30, owner: "system",
                                      isPublic: true, checksum: "SHA256:" + digest.uppercased())
        #expect(img.checksum == digest, "stored as 64 lower-case hex digits")
        _ = try r.createServer(name: "vm", user: "alice", flavor: "small", image: img.id, volumes: [.init(sizeGB: 2, source: nil)])
        let root = try #require(f.ganeti.sentDisks.last)
        #expect(root.origin == "file:/srv/checked.raw" && root.originSHA256 == digest)
        // An image without one sends none.
        _ = try r.createServer(name: "vm2", user: "alice", flavor: "small", image: f.image.id, volumes: [.init(sizeGB: 2, source: nil)])
        #expect(f.ganeti.sentDisks.last?.originSHA256 == nil)
    }

    @Test func aChecksumThatIsNotASHA256IsRefusedAtRegistration() throws {
        let f = try Fixture()
        for bad in ["abc", "md5:0123", String(repeating: "g", count: 64), String(repeating: "a", count: 63)] {
            #expect(throws: CycladesError.self, "\(bad)") {
                _ = try f.registry.registerImage(name: "x", location: "file:/srv/x.raw", size: 1 << 20, owner: "system", isPublic: true, checksum: bad)
            }
        }
    }
}
