import ArchipStore

/// What Ganeti passes a script: `VOL_*` variables and the disk's parameters
/// as `EXTP_<NAME>` (upper-cased), on every call. Nothing else in the
/// environment is read.
public struct GanetiEnvironment: Sendable {
    public let variables: [String: String]

    public init(_ environment: [String: String]) {
        variables = environment.filter { $0.key.hasPrefix("VOL_") || $0.key.hasPrefix("EXTP_") }
    }

    /// Parameters the provider declares in `parameters.list`, plus the two
    /// Ganeti adds to every call itself.
    public static let declaredParameters = ["origin", "origin_size", "origin_sha256", "origin_hashmap"]
    public static let ganetiParameters = ["provider", "access"]

    /// `EXTP_ORIGIN=x` as `["ORIGIN": "x"]`: the names exactly as passed
    /// (Ganeti upper-cases them, so `EXTP_origin` is not `origin`).
    public var parameters: [String: String] {
        var out: [String: String] = [:]
        for (k, v) in variables where k.hasPrefix("EXTP_") { out[String(k.dropFirst(5))] = v }
        return out
    }

    public var origin: String? { nonEmpty("EXTP_ORIGIN") }
    /// Cyclades sends the origin's size in bytes with it (`origin_size`).
    public var originSize: UInt64? { nonEmpty("EXTP_ORIGIN_SIZE").flatMap { UInt64($0) } }
    /// The whole image's SHA-256 (`origin_sha256`, what Cyclades registered
    /// as the image's checksum; `sha256:` in front is accepted).
    public var originSHA256: ContentHash? {
        nonEmpty("EXTP_ORIGIN_SHA256").flatMap { ContentHash(hex: Self.bareDigest($0)) }
    }
    /// A Pithos hashmap the origin must match block by block (`origin_hashmap`: a file or an URL).
    public var originHashmap: String? { nonEmpty("EXTP_ORIGIN_HASHMAP") }

    private static func bareDigest(_ text: String) -> String {
        let t = text.lowercased()
        return t.hasPrefix("sha256:") ? String(t.dropFirst(7)) : t
    }

    /// Unknown parameters are an error: Ganeti passes only what the operator
    /// set on the disk, so an unknown one is a typo that would be silently ignored.
    public func checkParameters() throws {
        let known = Set((Self.declaredParameters + Self.ganetiParameters).map { $0.uppercased() })
        let unknown = parameters.keys.filter { !known.contains($0) }.sorted()
        if !unknown.isEmpty {
            let list = unknown.map { "EXTP_\($0)" }.joined(separator: ", ")
            // EXTP_origin is not Ganeti's spelling of a known parameter: say which one was meant.
            let meant = unknown.filter { known.contains($0.uppercased()) }.map { "EXTP_\($0.uppercased())" }
            let hint = meant.isEmpty ? "" : " (Ganeti passes \(meant.joined(separator: ", ")): names are upper case)"
            throw ExtStorageError(.badInput, "unknown parameter\(unknown.count > 1 ? "s" : "") \(list): this provider knows only \(Self.declaredParameters.joined(separator: ", ")) (see parameters.list)\(hint)")
        }
        if let size = variables["EXTP_ORIGIN_SIZE"], !size.isEmpty, UInt64(size) == nil {
            throw ExtStorageError(.badInput, "EXTP_ORIGIN_SIZE '\(size)' is not a size in bytes")
        }
        if let digest = variables["EXTP_ORIGIN_SHA256"], !digest.isEmpty, ContentHash(hex: Self.bareDigest(digest)) == nil {
            throw ExtStorageError(.badInput, "EXTP_ORIGIN_SHA256 '\(digest.prefix(80))' is not a SHA-256 (64 hex digits)")
        }
        if nonEmpty("EXTP_ORIGIN_SHA256") != nil || originHashmap != nil, origin == nil {
            throw ExtStorageError(.badInput, "EXTP_ORIGIN_SHA256 and EXTP_ORIGIN_HASHMAP describe an origin, and EXTP_ORIGIN is not set")
        }
        if let access = variables["EXTP_ACCESS"], !["kernelspace", "userspace"].contains(access) {
            throw ExtStorageError(.badInput, "EXTP_ACCESS '\(access)' is neither kernelspace nor userspace")
        }
    }

    public func volumeName() throws -> VolumeName { try name("VOL_NAME") }

    public func snapshotName() throws -> VolumeName { try name("VOL_SNAPSHOT_NAME") }

    private func name(_ key: String) throws -> VolumeName {
        guard let raw = variables[key] else { throw ExtStorageError(.badInput, "\(key) is not set") }
        guard !raw.isEmpty else { throw ExtStorageError(.badInput, "\(key) is empty") }
        do {
            return try VolumeName(raw)
        } catch let e as StoreError {
            throw ExtStorageError(.badInput, "\(key): \(e.message)")
        }
    }

    /// A size in MiB, as Ganeti passes it: decimal digits, more than zero.
    public func mebibytes(_ key: String) throws -> ByteCount {
        guard let raw = variables[key] else { throw ExtStorageError(.badInput, "\(key) is not set") }
        guard !raw.isEmpty, raw.utf8.count <= 12, raw.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let mib = UInt64(raw), mib > 0 else {
            throw ExtStorageError(.badInput, "\(key) '\(raw)' is not a size in MiB (a whole number above zero)")
        }
        do {
            return try ByteCount(mib << 20).validatedVolumeSize("\(mib) MiB")
        } catch let e as StoreError {
            throw ExtStorageError(.badInput, "\(key): \(e.message)")
        }
    }

    public var cname: String? { nonEmpty("VOL_CNAME") }
    public var uuid: String? { nonEmpty("VOL_UUID") }

    /// `VOL_OPEN_EXCLUSIVE`: Ganeti passes `True`, or `False` for live migration.
    public func openExclusive() throws -> Bool {
        switch variables["VOL_OPEN_EXCLUSIVE"] {
        case nil, "", "True", "true", "1": return true
        case "False", "false", "0": return false
        case let v?: throw ExtStorageError(.badInput, "VOL_OPEN_EXCLUSIVE '\(v)' is neither True nor False")
        }
    }

    public func metadata() throws -> String {
        guard let m = variables["VOL_METADATA"] else { throw ExtStorageError(.badInput, "VOL_METADATA is not set") }
        return m
    }

    private func nonEmpty(_ key: String) -> String? {
        guard let v = variables[key], !v.isEmpty else { return nil }
        return v
    }
}
