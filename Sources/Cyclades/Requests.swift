import Foundation

/// One volume of a server create: `size=N[,image=ID|,snapshot=ID|,volume=ID]`.
public struct VolumeRequest: Sendable, Equatable {
    public var sizeGB: Int?
    /// `image:UUID`, `snapshot:UUID`, `volume:ID` (a clone), or nil (blank).
    public var source: String?
    public var name: String?

    public init(sizeGB: Int?, source: String?, name: String? = nil) {
        self.sizeGB = sizeGB; self.source = source; self.name = name
    }

    /// `size=10,image=UUID` / `size=10,snapshot=UUID` / `size=10`.
    public init(parsing text: String) throws {
        var size: Int? = nil, source: String? = nil, name: String? = nil
        for part in text.split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2, !kv[1].isEmpty else { throw CycladesError(.badRequest, "volume '\(text)': expected key=value pairs (size=N, image=ID, snapshot=ID, volume=ID, source=KIND:ID, name=NAME)") }
            switch kv[0] {
            case "size":
                guard let n = Int(kv[1]) else { throw CycladesError(.badRequest, "volume '\(text)': size '\(kv[1])' is not a whole number of GB") }
                size = n
            case "image", "snapshot", "volume":
                guard source == nil else { throw CycladesError(.badRequest, "volume '\(text)': give one source") }
                source = "\(kv[0]):\(kv[1])"
            case "source":
                guard source == nil else { throw CycladesError(.badRequest, "volume '\(text)': give one source") }
                source = kv[1]   // image:UUID, snapshot:UUID or volume:ID, checked when resolved
            case "name": name = kv[1]
            default: throw CycladesError(.badRequest, "volume '\(text)': unknown key '\(kv[0])' (size, image, snapshot, volume, source, name)")
            }
        }
        self.init(sizeGB: size, source: source, name: name)
    }
}

/// A source resolved against the database: what Ganeti's provider gets.
struct ResolvedSource {
    var source: String        // image:UUID / snapshot:UUID / volume:ID
    var origin: String        // the provider's origin
    var sizeBytes: Int64
    var imageID: String?
    /// The image's registered SHA-256: the provider checks the origin against it.
    var sha256: String? = nil
}
