import Foundation
import GRDB

extension Registry {
    /// Applies a job's result to what it changed, in one transaction.
    func settle(_ db: GRDB.Database, change: Change, serverID: Int64?, volumeIDs: [Int64], jobID: Int64?, result: JobState) throws {
        let ok = result == .success
        let t = now()
        switch change {
        case .serverCreate:
            guard let sid = serverID, var s = try Server.fetchOne(db, key: sid) else { return }
            s.status = ok ? .active : .error
            s.pendingAction = nil
            s.updated = t
            try s.update(db)
            for var v in try liveVolumes(db, server: sid) where v.status == .creating {
                v.status = ok ? .inUse : .error
                v.updated = t
                try v.update(db)
            }
            try resolveCommissions(db, where: Column("serverID") == sid && (jobID.map { Column("backendJobID") == $0 } ?? (Column("backendJobID") == nil)), accept: ok)
        case .serverRemove:
            guard let sid = serverID, var s = try Server.fetchOne(db, key: sid) else { return }
            s.pendingAction = nil
            s.updated = t
            if ok {
                s.status = .deleted
                s.deleted = true
                for var v in try liveVolumes(db, server: sid) {
                    v.status = .deleted
                    v.deleted = true
                    v.machineID = nil
                    v.updated = t
                    try v.update(db)
                }
            }
            try s.update(db)
            try resolveCommissions(db, where: Column("serverID") == sid && (jobID.map { Column("backendJobID") == $0 } ?? (Column("backendJobID") == nil)), accept: ok)
        case .volumeExtend:
            for vid in volumeIDs {
                guard var v = try Volume.fetchOne(db, key: vid), v.status == .extending else { continue }
                if ok, let size = v.pendingSize { v.size = size }
                v.status = .inUse
                v.pendingSize = nil
                v.updated = t
                try v.update(db)
                try resolveCommissions(db, where: Column("volumeIDs") == String(vid) && (jobID.map { Column("backendJobID") == $0 } ?? (Column("backendJobID") == nil)), accept: ok)
            }
        case .volumeCreate, .volumeRemove:
            for vid in volumeIDs {
                guard var v = try Volume.fetchOne(db, key: vid) else { continue }
                if change == .volumeCreate {
                    v.status = ok ? .inUse : .error
                } else if ok {
                    v.status = .deleted
                    v.deleted = true
                    v.machineID = nil
                } else {
                    // Ganeti kept the disk: recorded as Synnefo does, never a silent return to IN_USE.
                    v.status = .errorDeleting
                }
                v.updated = t
                try v.update(db)
                try resolveCommissions(db, where: Column("volumeIDs") == String(vid) && (jobID.map { Column("backendJobID") == $0 } ?? (Column("backendJobID") == nil)), accept: ok)
            }
        case .volumeAttach, .volumeDetach, .helperStep:
            for vid in volumeIDs { try settleAttachment(db, change: change, volumeID: vid, jobID: jobID, result: result) }
        }
    }

    /// A job in flight, as recorded: what it changes.
    public struct PendingJob: Sendable, Equatable {
        public var jobID: Int64
        public var serverID: Int64?
        public var volumeIDs: [Int64]
        var change: Change
        public var what: String {
            switch change {
            case .serverCreate: return "create server \(serverID ?? 0)"
            case .serverRemove: return "remove server \(serverID ?? 0)"
            case .volumeCreate: return "create volume \(volumeIDs.map(String.init).joined(separator: ","))"
            case .volumeRemove: return "remove volume \(volumeIDs.map(String.init).joined(separator: ","))"
            case .volumeExtend: return "grow volume \(volumeIDs.map(String.init).joined(separator: ","))"
            case .volumeAttach: return "attach volume \(volumeIDs.map(String.init).joined(separator: ",")) to server \(serverID ?? 0)"
            case .volumeDetach: return "detach volume \(volumeIDs.map(String.init).joined(separator: ",")) from server \(serverID ?? 0)"
            case .helperStep: return "helper-server step of volume \(volumeIDs.map(String.init).joined(separator: ","))"
            }
        }
    }

    public func pendingJobs() throws -> [(PendingJob, Backend)] {
        try db.read { db in
            var out: [(PendingJob, Backend)] = []
            for s in try Server.filter(Column("pendingAction") != nil && Column("backendJobID") != nil).fetchAll(db) {
                out.append((PendingJob(jobID: s.backendJobID!, serverID: s.id, volumeIDs: [],
                                       change: s.pendingAction == "remove" ? .serverRemove : .serverCreate), try backendOf(db, s)))
            }
            for v in try Volume.filter([VolumeStatus.creating.rawValue, VolumeStatus.deleting.rawValue, VolumeStatus.extending.rawValue].contains(Column("status"))
                                       && Column("backendJobID") != nil).fetchAll(db) {
                guard let sid = v.machineID, let s = try Server.fetchOne(db, key: sid), s.pendingAction == nil else { continue }
                out.append((PendingJob(jobID: v.backendJobID!, serverID: sid, volumeIDs: [v.id!],
                                       change: v.status == .creating ? .volumeCreate : v.status == .extending ? .volumeExtend : .volumeRemove), try backendOf(db, s)))
            }
            out += try attachmentJobs(db)
            return out
        }
    }

    /// Asks Ganeti about every job in flight and settles those that ended.
    /// Returns what was settled.
    @discardableResult
    public func processJobs() throws -> [(PendingJob, JobState)] {
        var done: [(PendingJob, JobState)] = []
        for (job, backend) in try pendingJobs() {
            let state = try backendClient(backend).job(job.jobID)
            guard state != .pending else { continue }
            try db.write { db in try settle(db, change: job.change, serverID: job.serverID, volumeIDs: job.volumeIDs, jobID: job.jobID, result: state) }
            done.append((job, state))
        }
        try sendFollowUps()
        return done
    }

    /// Waits until Ganeti ends `jobID` (polling), then settles every job that ended.
    public func wait(job jobID: Int64, timeout: TimeInterval = 600) throws -> JobState {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let pending = try pendingJobs().first { $0.0.jobID == jobID }
            guard let (_, backend) = pending else { return .success }   // already settled
            let state = try backendClient(backend).job(jobID)
            if state != .pending {
                try processJobs()
                return state
            }
            guard Date() < deadline else { throw CycladesError(.backend, "job \(jobID) did not end within \(Int(timeout)) s") }
            usleep(200_000)
        }
    }
}
