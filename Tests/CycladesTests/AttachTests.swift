@testable import Cyclades
import Foundation
import GRDB
import Testing

/// Detachable volumes (Ganeti 3.1) against the scripted Ganeti.
@Suite struct DetachableVolumes {
    func status(_ r: Registry, _ id: Int64) throws -> Volume { try r.db.read { try Volume.fetchOne($0, key: id)! } }

    /// A volume moves from one server to another through detach and attach;
    /// the quota does not change, Ganeti gets one job each.
    @Test func detachThenAttachElsewhere() throws {
        let f = try Fixture()
        let r = f.registry
        let s1 = try f.activeServer(), s2 = try f.activeServer()
        let v = try r.createVolume(server: s1.id!, user: "alice", sizeGB: 3, source: nil, volumeType: nil, name: "data")
        f.ganeti.finishAll()
        try r.processJobs()
        let usage = try f.usage()
        #expect(usage == (7 << 30, 0))

        let d = try r.detachVolume(v.id!, user: "alice")
        #expect(d.status == .detaching && d.backendJobID != nil)
        #expect(f.ganeti.diskMoves == ["detach snf-vol-\(v.id!) snf-\(s1.id!)"])
        f.ganeti.finishAll()
        try r.processJobs()
        let avail = try status(r, v.id!)
        #expect(avail.status == .available && avail.machineID == nil && avail.index == nil && avail.backendID == 1)
        #expect(f.ganeti.detached["snf-vol-\(v.id!)"] != nil)
        #expect(try f.usage() == usage, "detach keeps the charge")

        let a = try r.attachVolume(v.id!, server: s2.id!, user: "alice")
        #expect(a.status == .attaching && a.pendingServerID == s2.id && a.machineID == nil)
        f.ganeti.finishAll()
        try r.processJobs()
        let used = try status(r, v.id!)
        #expect(used.status == .inUse && used.machineID == s2.id && used.index == 1 && used.pendingServerID == nil)
        #expect(f.ganeti.instances["snf-\(s2.id!)"]?.count == 2 && f.ganeti.instances["snf-\(s2.id!)"]?.last?.name == "snf-vol-\(v.id!)")
        #expect(try f.usage() == usage, "attach keeps the charge")
        #expect(f.ganeti.diskMoves.last == "attach snf-vol-\(v.id!) snf-\(s2.id!)")
    }

    /// A failed detach or attach leaves the volume where it was (no silent loss).
    @Test func failedJobsLeaveTheVolumeWhereItWas() throws {
        let f = try Fixture()
        let r = f.registry
        let s1 = try f.activeServer(), s2 = try f.activeServer()
        let v = try r.createVolume(server: s1.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll()
        try r.processJobs()
        _ = try r.detachVolume(v.id!)
        f.ganeti.finishAll { _ in true }
        try r.processJobs()
        #expect(try status(r, v.id!).status == .inUse && status(r, v.id!).machineID == s1.id)
        _ = try r.detachVolume(v.id!)
        f.ganeti.finishAll()
        try r.processJobs()
        _ = try r.attachVolume(v.id!, server: s2.id!)
        f.ganeti.finishAll { _ in true }
        try r.processJobs()
        let back = try status(r, v.id!)
        #expect(back.status == .available && back.machineID == nil && back.pendingServerID == nil)
    }

    /// Every refusal is one line, and neither the database nor Ganeti changes.
    @Test func refusalsChangeNothing() throws {
        let f = try Fixture(quota: 20 << 30)
        let r = f.registry
        let s1 = try f.activeServer(), s2 = try f.activeServer()
        let inUse = try r.createVolume(server: s1.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll()
        try r.processJobs()
        let loose = try r.createVolume(server: s1.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        let classic = try r.createServer(name: "old", user: "alice", flavor: "classic", image: f.image.id, volumes: [])
        let (bob, _) = try r.createUser(name: "bob", diskLimit: 10 << 30)
        let bobServer = try r.createServer(name: "b", user: bob.id, flavor: "small", image: f.image.id, volumes: [])
        f.ganeti.finishAll()
        try r.processJobs()
        _ = try r.detachVolume(loose.id!)
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try status(r, loose.id!).status == .available)
        let root1 = try r.db.read { try Volume.filter(Column("machineID") == s1.id! && Column("index") == 0).fetchOne($0)! }
        let classicRoot = try r.db.read { try Volume.filter(Column("machineID") == classic.id!).fetchOne($0)! }

        let before = try f.dump()
        let jobs = f.ganeti.jobs.count
        let cases: [(String, () throws -> Void, CycladesError.Kind, String)] = [
            ("detach of a root volume", { _ = try r.detachVolume(root1.id!, user: "alice") }, .badRequest, "root volume"),
            ("attach of a volume in use", { _ = try r.attachVolume(inUse.id!, server: s2.id!, user: "alice") }, .badRequest, "in use"),
            ("attach of another user's volume", { _ = try r.attachVolume(loose.id!, server: bobServer.id!, user: bob.id) }, .itemNotFound, "does not exist"),
            ("attach to another user's server", { _ = try r.attachVolume(loose.id!, server: bobServer.id!, user: "alice") }, .itemNotFound, "does not exist"),
            ("attach to a server of another type", { _ = try r.attachVolume(loose.id!, server: classic.id!, user: "alice") }, .badRequest, "type"),
            ("detach of a drbd root volume", { _ = try r.detachVolume(classicRoot.id!, user: "alice") }, .badRequest, "root volume"),
            ("detach of an available volume", { _ = try r.detachVolume(loose.id!, user: "alice") }, .badRequest, "not attached"),
            ("a missing volume", { _ = try r.attachVolume(999, server: s2.id!, user: "alice") }, .itemNotFound, "does not exist"),
        ]
        for (what, call, kind, mentioning) in cases {
            do {
                try call()
                Issue.record("\(what): accepted")
            } catch let e as CycladesError {
                #expect(e.kind == kind, "\(what): \(e.kind) \(e.message)")
                #expect(e.message.contains(mentioning), "\(what): \(e.message)")
                #expect(!e.message.contains("\n"))
            }
            #expect(try f.dump() == before, "\(what): the database changed")
            #expect(f.ganeti.jobs.count == jobs, "\(what): a job reached Ganeti")
        }
    }

    /// Without hotplug (the fake hypervisor), Ganeti refuses to remove a disk
    /// from a running instance: refused up front, with why; detach likewise.
    /// Once Ganeti says the instance is stopped, both go through.
    @Test func runningServerWithoutHotplug() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try f.activeServer()
        let v = try r.createVolume(server: s.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll()
        try r.processJobs()
        f.ganeti.running.insert("snf-\(s.id!)")
        let before = try f.dump()
        let jobs = f.ganeti.jobs.count
        for (what, call) in [("delete", { _ = try r.removeVolume(v.id!, user: "alice") }), ("detach", { _ = try r.detachVolume(v.id!, user: "alice") })] as [(String, () throws -> Void)] {
            do {
                try call()
                Issue.record("\(what) on a running server: accepted")
            } catch let e as CycladesError {
                #expect(e.kind == .conflict, "\(what): \(e.kind)")
                #expect(e.message.contains("while it runs") && e.message.contains("hotplug") && e.message.contains("stop the server"), "\(e.message)")
            }
            #expect(try f.dump() == before && f.ganeti.jobs.count == jobs, "\(what): something changed")
        }
        f.ganeti.running.remove("snf-\(s.id!)")
        _ = try r.removeVolume(v.id!, user: "alice")
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(try status(r, v.id!).deleted)
    }

    /// Ganeti 3.0 cannot attach ext disks: attach, detach and volumes without
    /// a server are refused in one line naming the version needed.
    @Test func ganeti30IsToldApart() throws {
        let f = try Fixture()
        let r = f.registry
        let s = try f.activeServer()
        let v = try r.createVolume(server: s.id!, user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll()
        try r.processJobs()
        f.ganeti.version = "3.0.2"
        let before = try f.dump()
        for call in [{ _ = try r.detachVolume(v.id!) }, { _ = try r.createAvailableVolume(user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil) }] as [() throws -> Void] {
            do {
                try call()
                Issue.record("accepted on Ganeti 3.0")
            } catch let e as CycladesError {
                #expect(e.kind == .notImplemented && e.message.contains("Ganeti 3.0.2") && e.message.contains("3.1"), "\(e.message)")
            }
            #expect(try f.dump() == before)
        }
        #expect(GanetiVersion.atLeast("3.1.0~rc2", [3, 1]) && GanetiVersion.atLeast("3.10", [3, 1]) && !GanetiVersion.atLeast("3.0.2", [3, 1]))
    }

    /// A volume without a server: added to the helper server and detached
    /// there (AVAILABLE, charged); deleted by attaching it there and removing
    /// it (DELETED, the quota given back); nothing left in Ganeti.
    @Test func volumeWithoutAServerThroughTheHelper() throws {
        let f = try Fixture()
        let r = f.registry
        f.ganeti.instances[Registry.helperInstance] = []   // the helper exists (its creation job is not scripted here)
        let v = try r.createAvailableVolume(user: "alice", sizeGB: 2, source: nil, volumeType: nil, name: "loose")
        #expect(v.status == .creating && v.helperStep == .createAdd && v.machineID == nil)
        #expect(f.ganeti.sentDisks.last?.name == "snf-vol-\(v.id!)")
        #expect(try f.usage() == (0, 2 << 30))
        f.ganeti.finishAll()
        try r.processJobs()   // settles the add and sends the detach
        #expect(try status(r, v.id!).helperStep == .createDetach)
        #expect(f.ganeti.diskMoves == ["detach snf-vol-\(v.id!) \(Registry.helperInstance)"])
        f.ganeti.finishAll()
        try r.processJobs()
        let avail = try status(r, v.id!)
        #expect(avail.status == .available && avail.helperStep == nil)
        #expect(try f.usage() == (2 << 30, 0))
        #expect(f.ganeti.instances[Registry.helperInstance] == [] && f.ganeti.detached["snf-vol-\(v.id!)"] != nil)

        let d = try r.removeVolume(v.id!, user: "alice")
        #expect(d.status == .deleting && d.helperStep == .deleteAttach)
        f.ganeti.finishAll()
        try r.processJobs()
        #expect(f.ganeti.instances[Registry.helperInstance]?.map(\.name) == ["snf-vol-\(v.id!)"])
        f.ganeti.finishAll()
        try r.processJobs()
        let gone = try status(r, v.id!)
        #expect(gone.deleted && gone.status == .deleted)
        #expect(try f.usage() == (0, 0), "the size is given back")
        #expect(f.ganeti.instances[Registry.helperInstance] == [] && f.ganeti.detached.isEmpty)
    }

    /// A helper-server delete that Ganeti refuses ends in ERROR_DELETING, the
    /// quota still held; a second delete finishes it from where it stopped.
    @Test func failedDeleteIsRecordedAndRetried() throws {
        let f = try Fixture()
        let r = f.registry
        f.ganeti.instances[Registry.helperInstance] = []
        let v = try r.createAvailableVolume(user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll(); try r.processJobs()
        f.ganeti.finishAll(); try r.processJobs()
        _ = try r.removeVolume(v.id!)
        f.ganeti.finishAll(); try r.processJobs()            // attached to the helper
        f.ganeti.finishAll { _ in true }; try r.processJobs() // the remove fails
        #expect(try status(r, v.id!).status == .errorDeleting)
        #expect(try f.usage() == (1 << 30, 0))
        let again = try r.removeVolume(v.id!)
        #expect(again.helperStep == .deleteRemove, "the disk is on the helper already")
        f.ganeti.finishAll(); try r.processJobs()
        #expect(try status(r, v.id!).deleted)
        #expect(try f.usage() == (0, 0))
    }
}

/// Ganeti 3.1's RAPI refuses `hotplug_if_possible` (3.0 needs it): what the lab answered.
@Suite struct RAPIHotplugParameter {
    final class Ganeti31: RAPITransport, @unchecked Sendable {
        let lock = NSLock()
        var bodies: [String] = []
        func send(method: String, url: String, body: Data?) throws -> (status: Int, body: Data) {
            let text = String(decoding: body ?? Data(), as: UTF8.self)
            lock.withLock { bodies.append(text) }
            if text.contains("hotplug_if_possible") {
                return (400, Data(#"{"code": 400, "message": "Invalid body parameters: Object OpInstanceSetParams doesn&#x27;t support the parameter &#x27;hotplug_if_possible&#x27;", "explain": ""}"#.utf8))
            }
            return (200, Data("42\n".utf8))
        }
    }

    @Test func leftOutOnceRefused() throws {
        let t = Ganeti31()
        let url = "https://ganeti31-\(UUID().uuidString).test:5080"
        let c = RAPIClient(baseURL: url, transport: t)
        #expect(try c.detachDisk(instance: "snf-1", name: "snf-vol-2") == 42)
        #expect(t.bodies.count == 2 && !t.bodies[1].contains("hotplug") && t.bodies[1].contains(#""detach""#))
        // Known from now on for this backend, also by a new client: one request each.
        let again = RAPIClient(baseURL: url, transport: t)
        #expect(try again.attachDisk(instance: "snf-1", name: "snf-vol-2") == 42)
        #expect(try again.removeDisk(instance: "snf-1", name: "snf-vol-2") == 42)
        #expect(t.bodies.count == 4 && t.bodies[2].contains(#"{"name":"snf-vol-2"}"#))
    }
}

/// reconcile-servers and detachable volumes: what Ganeti did behind
/// Cyclades' back, and a helper step that failed half way.
@Suite struct ReconcileDetachable {
    @Test func attachedBehindOurBackAndLeftOnTheHelper() throws {
        let f = try Fixture()
        let r = f.registry
        f.ganeti.instances[Registry.helperInstance] = []
        let s = try f.activeServer()
        let v = try r.createAvailableVolume(user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll(); try r.processJobs()
        f.ganeti.finishAll(); try r.processJobs()
        #expect(try r.reconcile(store: nil, fix: false).isEmpty)

        // gnt-instance modify --disk attach:name=snf-vol-N behind Cyclades' back
        _ = try f.ganeti.attachDisk(instance: "snf-\(s.id!)", name: "snf-vol-\(v.id!)")
        f.ganeti.finishAll()
        let found = try r.reconcile(store: nil, fix: false)
        #expect(found.map(\.kind) == [.attachedInGaneti] && found.first?.volume == v.id, "\(found)")
        let fixed = try r.reconcile(store: nil, fix: true)
        #expect(fixed.first?.fixed != nil)
        let now = try r.db.read { try Volume.fetchOne($0, key: v.id!)! }
        #expect(now.status == .inUse && now.machineID == s.id && now.index == 1)
        #expect(try r.reconcile(store: nil, fix: false).isEmpty)

        // a volume whose detach from the helper failed: left there, in ERROR
        let w = try r.createAvailableVolume(user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll(); try r.processJobs()            // added to the helper
        f.ganeti.finishAll { _ in true }; try r.processJobs() // the detach fails
        #expect(try r.db.read { try Volume.fetchOne($0, key: w.id!)!.status } == .error)
        let left = try r.reconcile(store: nil, fix: false)
        #expect(left.map(\.kind) == [.helperDisk] && left.first?.volume == w.id, "\(left)")
        _ = try r.reconcile(store: nil, fix: true)            // sends the detach again
        f.ganeti.finishAll(); try r.processJobs()
        #expect(try r.db.read { try Volume.fetchOne($0, key: w.id!)!.status } == .available)
        #expect(try r.reconcile(store: nil, fix: false).isEmpty)
        #expect(try f.usage() == (4 << 30, 0))
    }
}

extension DetachableVolumes {
    /// A volume without a server whose creation failed (Ganeti never had it)
    /// can be deleted: no job, no refund (its charge was rejected).
    @Test func failedCreateWithoutServerIsDeletable() throws {
        let f = try Fixture()
        let r = f.registry
        f.ganeti.instances[Registry.helperInstance] = []
        let v = try r.createAvailableVolume(user: "alice", sizeGB: 1, source: nil, volumeType: nil, name: nil)
        f.ganeti.finishAll { _ in true }
        try r.processJobs()
        #expect(try status(r, v.id!).status == .error)
        #expect(try f.usage() == (0, 0))
        let jobs = f.ganeti.jobs.count
        let d = try r.removeVolume(v.id!, user: "alice")
        #expect(d.deleted && d.status == .deleted && f.ganeti.jobs.count == jobs)
        #expect(try f.usage() == (0, 0))
    }
}
