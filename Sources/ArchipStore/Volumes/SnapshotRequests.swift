import Foundation

/// Snapshots of a volume another node holds, delegated to the holder through
/// the store itself: the one channel every node and the controller already
/// share, on both backends, with no address to configure.
///
/// A snapshot must hold every write the holder acknowledged, and only the
/// holder's daemon has them (in its open volume), so the store cannot take it
/// on the holder's behalf. The requester leaves a request next to the volume;
/// each daemon looks for requests on the volumes it holds writable (one stat
/// per volume every `pollInterval`), claims one by renaming it (a rename never
/// replaces, so during a migration, when two nodes hold the volume shared,
/// exactly one of them takes it), takes the snapshot through its open volume
/// and leaves the answer:
///
///     requests/<volume>/snapshot          the request (JSON: id, snapshot, from, at)
///     requests/<volume>/claimed-<id>      a holder took it
///     requests/<volume>/done-<id>         the answer (JSON: ok, error)
///
/// The requester waits for the answer with a deadline; with no answer (the
/// holder's daemon is down or hung) it withdraws the request and fails in
/// one line naming the holder. A holder that claimed a request may still take
/// the snapshot after the requester gave up: the failure says so.
public enum SnapshotRequests {
    static let prefix = "requests/"
    static func request(_ v: VolumeName) -> ObjectName { ObjectName("requests", v.value, "snapshot") }
    static func claimed(_ v: VolumeName, _ id: String) -> ObjectName { ObjectName("requests", v.value, "claimed-" + id) }
    static func done(_ v: VolumeName, _ id: String) -> ObjectName { ObjectName("requests", v.value, "done-" + id) }

    /// How often a daemon looks for requests on each volume it holds.
    public static let pollInterval: TimeInterval = 0.25
    /// How long a requester waits by default (ARCHIP_SNAPSHOT_TIMEOUT overrides it).
    public static var defaultTimeout: TimeInterval {
        ProcessInfo.processInfo.environment["ARCHIP_SNAPSHOT_TIMEOUT"].flatMap(TimeInterval.init).map { max(0.1, $0) } ?? 30
    }

    struct Request: Codable {
        var id: String
        var snapshot: String
        var from: String
        var at: Date
    }

    struct Answer: Codable {
        var ok: Bool
        var error: String?
    }

    /// A request a holder claimed: take the snapshot, then `answer`.
    public struct Claimed: Sendable {
        public let volume: VolumeName
        public let snapshot: VolumeName
        public let from: String
        let id: String
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        return Array(try e.encode(value))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], what: String) throws -> T {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        do { return try d.decode(type, from: Data(bytes)) } catch {
            throw StoreError(.corrupt, "\(what) is not a valid snapshot request or answer")
        }
    }
}

extension VolumeStore {
    /// Takes `snapshot` of `volume`: in the store when nobody holds it, and
    /// through the holder's daemon (SnapshotRequests) when another node or
    /// process does. Fails after `timeout` s without an answer.
    public func snapshotDelegating(_ volume: VolumeName, as snapshot: VolumeName,
                                   timeout: TimeInterval = SnapshotRequests.defaultTimeout) throws {
        do {
            try self.snapshot(volume, as: snapshot)
            return
        } catch let e as StoreError where e.code == .locked {
            guard let state = try objects.lockState(StoreLayout.lock(volume)), !state.holders.isEmpty else { throw e }
            try requestSnapshot(volume, as: snapshot, holders: state.holders, timeout: timeout)
        }
    }

    func requestSnapshot(_ volume: VolumeName, as snapshot: VolumeName, holders: [LockOwner], timeout: TimeInterval) throws {
        let id = LockOwner.randomToken()
        let who = holders.map(\.description).joined(separator: ", ")
        let request = SnapshotRequests.Request(id: id, snapshot: snapshot.value, from: "node \(node) pid \(getpid())", at: Date())
        let deadline = Date().addingTimeInterval(timeout)
        // One request per volume at a time: a pending one (another requester) is waited for.
        while !(try objects.create(SnapshotRequests.request(volume), try SnapshotRequests.encode(request), durable: true)) {
            guard Date() < deadline else {
                throw StoreError(.locked, "snapshot \(snapshot) of \(volume): another snapshot request for it is still pending after \(Int(timeout)) s (held by \(who))")
            }
            usleep(50_000)
        }
        let doneName = SnapshotRequests.done(volume, id)
        var pause: UInt32 = 10_000
        while Date() < deadline {
            if let bytes = try? objects.readAll(doneName) {
                _ = try? objects.remove(doneName)
                let answer = try SnapshotRequests.decode(SnapshotRequests.Answer.self, bytes, what: doneName.path)
                guard answer.ok else {
                    throw StoreError(.io, "snapshot \(snapshot) of \(volume) through its holder (\(who))", cause: answer.error ?? "it failed without saying why")
                }
                return
            }
            usleep(pause)
            pause = min(pause * 2, 100_000)
        }
        // No answer. Withdraw the request if nobody claimed it.
        let withdrawn = (try? objects.remove(SnapshotRequests.request(volume))) == true
        throw StoreError(.locked, "snapshot \(snapshot) of \(volume): held by \(who), whose archip serve did not answer within \(Int(timeout)) s"
                         + (withdrawn ? " (is it running on that node?); the request was withdrawn"
                                      : "; it claimed the request and may still take the snapshot"))
    }

    /// For a daemon: the request pending on `volume`, claimed for this
    /// daemon; nil when there is none (or another holder claimed it first).
    public func claimSnapshotRequest(_ volume: VolumeName) -> SnapshotRequests.Claimed? {
        let name = SnapshotRequests.request(volume)
        guard (try? objects.stat(name)) != nil, let bytes = try? objects.readAll(name),
              let r = try? SnapshotRequests.decode(SnapshotRequests.Request.self, bytes, what: name.path) else { return nil }
        do {
            try objects.rename(name, to: SnapshotRequests.claimed(volume, r.id))
        } catch {
            return nil   // withdrawn, or claimed by the other holder
        }
        guard let snap = try? VolumeName(r.snapshot) else {
            answer(SnapshotRequests.Claimed(volume: volume, snapshot: volume, from: r.from, id: r.id),
                   error: "'\(r.snapshot.prefix(80))' is not a valid snapshot name")
            return nil
        }
        return SnapshotRequests.Claimed(volume: volume, snapshot: snap, from: r.from, id: r.id)
    }

    /// For a daemon: the outcome of a claimed request, for its requester.
    public func answer(_ c: SnapshotRequests.Claimed, error: String?) {
        let a = SnapshotRequests.Answer(ok: error == nil, error: error)
        if let bytes = try? SnapshotRequests.encode(a) {
            try? objects.put(SnapshotRequests.done(c.volume, c.id), bytes, durable: true)
        }
        _ = try? objects.remove(SnapshotRequests.claimed(c.volume, c.id))
    }
}
