import Foundation

/// How long an exclusive hold lasts without renewal, and how far apart the
/// nodes' wall clocks may be (`[locks] lease`, `clock_skew` in archip.conf).
public struct LeaseSettings: Sendable, Equatable, CustomStringConvertible {
    /// Seconds a renewal keeps the hold.
    public var lease: Double
    /// Seconds two nodes' wall clocks may differ by: a lease is taken over
    /// only once `until + clockSkew` has passed on the taker's clock.
    public var clockSkew: Double

    public init(lease: Double = 30, clockSkew: Double = 5) {
        self.lease = lease
        self.clockSkew = clockSkew
    }

    /// The holder renews this often.
    public var renewEvery: Double { lease / 3 }
    /// The holder stops writing this long before its lease ends (on its
    /// monotonic clock, counted from the start of its last good renewal).
    public var guardTime: Double { lease / 6 }

    public var description: String { "lease \(Self.format(lease)), clock skew \(Self.format(clockSkew))" }

    static func format(_ s: Double) -> String {
        s == s.rounded() ? "\(Int(s)) s" : String(format: "%.1f s", s)
    }

    /// `[locks] lease` and `[locks] clock_skew` (seconds, or a number with
    /// ms, s or m); missing keys keep the defaults.
    public static func fromConfig(_ conf: [String: String], file: String) throws -> LeaseSettings {
        var s = LeaseSettings()
        if let v = conf["locks.lease"] { s.lease = try seconds(v, key: "[locks] lease", file: file) }
        if let v = conf["locks.clock_skew"] { s.clockSkew = try seconds(v, key: "[locks] clock_skew", file: file) }
        guard s.lease >= 0.3 else {
            throw StoreError(.invalidArgument, "\(file): [locks] lease \(s.lease) s is too short (at least 0.3 s; 30s is the default)")
        }
        return s
    }

    static func seconds(_ text: String, key: String, file: String) throws -> Double {
        let t = text.trimmingCharacters(in: .whitespaces)
        var number = Substring(t)
        var scale = 1.0
        if t.hasSuffix("ms") { number = t.dropLast(2); scale = 0.001 }
        else if t.hasSuffix("s") { number = t.dropLast() }
        else if t.hasSuffix("m") { number = t.dropLast(); scale = 60 }
        guard let v = Double(number.trimmingCharacters(in: .whitespaces)), v >= 0, v.isFinite else {
            throw StoreError(.invalidArgument, "\(file): \(key) '\(text)': give seconds, or a number with ms, s or m (e.g. 30s)")
        }
        return v * scale
    }
}

/// A break of an exclusive hold: who broke whom, when and why.
public struct LeaseBreak: Codable, Sendable, Equatable, CustomStringConvertible {
    /// The holder whose hold was broken.
    public var broken: LockOwner
    /// The node (and token) that broke it.
    public var by: LockOwner
    public var at: Date
    /// When the broken holder's lease ended (nil: it had none).
    public var leaseEnded: Date?
    /// `expired` (an open took over an expired lease), `forced` (unlock
    /// --force of an expired lease), `ignored-lease` (unlock --force
    /// --ignore-lease of a live one).
    public var reason: String
    public var epochBefore: UInt64
    public var epochAfter: UInt64

    public var description: String {
        let ended = leaseEnded.map { "lease expired at \(Lease.time($0))" } ?? "no lease"
        let live = reason == "ignored-lease" ? "lease valid until \(leaseEnded.map(Lease.time) ?? "?"), ignored" : ended
        return "\(by.node) broke \(broken.node)'s exclusive lock (token \(broken.token), \(live)) at \(Lease.time(at)); epoch \(epochBefore) -> \(epochAfter)"
    }
}

/// `leases/NAME` (docs/FORMAT.md): the lease of a volume's exclusive holder,
/// its epoch (one more for each new exclusive holder or break), and the last
/// break. Written only under `ObjectStore.exclusively(leases/NAME)`, by the
/// holder (renewals) and by whoever takes or breaks the hold.
public struct Lease: Codable, Sendable, Equatable {
    /// The holder this lease is for; nil once released or broken.
    public var holder: LockOwner?
    /// Wall-clock end of the lease (the holder's clock).
    public var until: Date?
    public var epoch: UInt64
    public var renewed: Date?
    public var lastBreak: LeaseBreak?

    public init(holder: LockOwner?, until: Date?, epoch: UInt64, renewed: Date? = nil, lastBreak: LeaseBreak? = nil) {
        self.holder = holder
        self.until = until
        self.epoch = epoch
        self.renewed = renewed
        self.lastBreak = lastBreak
    }

    /// Whether `holder` still holds a live lease at `now` on the reader's
    /// clock: its lease ends more than `clockSkew` from now.
    public func isLive(for holder: LockOwner, now: Date, settings: LeaseSettings) -> Bool {
        guard let h = self.holder, h == holder, let until else { return false }
        return until.addingTimeInterval(settings.clockSkew) > now
    }

    public static func time(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: d)
    }

    func encode() throws -> [UInt8] {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .custom { d, enc in
            var c = enc.singleValueContainer()
            try c.encode(Lease.time(d))
        }
        e.outputFormatting = [.sortedKeys]
        return [UInt8](try e.encode(self))
    }

    static func decode(_ bytes: [UInt8], what: String) throws -> Lease {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { dec in
            let c = try dec.singleValueContainer()
            let s = try c.decode(String.self)
            let f = ISO8601DateFormatter()
            f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            if let v = f.date(from: s) { return v }
            f.formatOptions = [.withInternetDateTime]
            if let v = f.date(from: s) { return v }
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an ISO 8601 time: \(s)")
        }
        do {
            return try d.decode(Lease.self, from: Data(bytes))
        } catch {
            throw StoreError(.corrupt, "\(what) is damaged", cause: "\(error)")
        }
    }
}

/// The monotonic clock that counts through suspends (CLOCK_BOOTTIME), in
/// nanoseconds: what a holder measures its lease against, so a wall-clock
/// step cannot extend it.
public enum MonotonicClock {
    @inline(__always)
    public static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
