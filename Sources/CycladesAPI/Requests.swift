import Cyclades
import Foundation

// Request bodies are Decodable types (VolumeRoutes, ComputeRoutes); they read
// their fields through `Fields`, which takes what OpenStack clients send
// (ids as numbers or strings, numbers and booleans as strings) and turns every
// wrong shape into a 400 naming the attribute.

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// A JSON object of a request body.
struct Fields {
    let c: KeyedDecodingContainer<AnyKey>

    static func bad(_ m: String) -> CycladesError { CycladesError(.badRequest, m) }

    /// The body itself: a JSON object.
    init(_ decoder: any Decoder) throws {
        do { c = try decoder.container(keyedBy: AnyKey.self) } catch { throw Self.bad("Malformed request: the body must be a JSON object.") }
    }

    init(container: KeyedDecodingContainer<AnyKey>) { c = container }

    var keys: [String] { c.allKeys.map(\.stringValue) }

    /// Present and not null.
    func has(_ key: String) -> Bool {
        let k = AnyKey(key)
        return c.contains(k) && !((try? c.decodeNil(forKey: k)) ?? true)
    }

    /// A nested object that must be there.
    func object(_ key: String) throws -> Fields {
        guard has(key) else { throw Self.bad("Malformed request. Missing attribute '\(key)'.") }
        do { return Fields(container: try c.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey(key))) } catch {
            throw Self.bad("Malformed request: '\(key)' must be an object.")
        }
    }

    /// A string, or nil when absent or null.
    func string(_ key: String, max: Int = 255) throws -> String? {
        guard has(key) else { return nil }
        guard let s = try? c.decode(String.self, forKey: AnyKey(key)) else { throw Self.bad("'\(key)' must be a string.") }
        guard s.count <= max else { throw Self.bad("'\(key)' is longer than \(max) characters.") }
        return s
    }

    /// A whole number (JSON integer or a string of digits), or nil when absent or null.
    func int(_ key: String) throws -> Int? {
        guard has(key) else { return nil }
        if let s = try? c.decode(String.self, forKey: AnyKey(key)) {
            guard let n = Int(s.trimmingCharacters(in: .whitespaces)) else { throw Self.bad("'\(key)' must be a whole number, not '\(s.prefix(40))'.") }
            return n
        }
        guard let n = try? c.decode(Int.self, forKey: AnyKey(key)) else { throw Self.bad("'\(key)' must be a whole number.") }
        return n
    }

    /// A boolean (JSON true/false or the strings "true"/"false"), or nil.
    func bool(_ key: String) throws -> Bool? {
        guard has(key) else { return nil }
        if let b = try? c.decode(Bool.self, forKey: AnyKey(key)) { return b }
        if let s = try? c.decode(String.self, forKey: AnyKey(key)) {
            switch s.lowercased() {
            case "true", "1", "yes": return true
            case "false", "0", "no": return false
            default: break
            }
        }
        throw Self.bad("'\(key)' must be true or false.")
    }

    /// An id given as a number or a string.
    func id(_ key: String) throws -> String? {
        guard has(key) else { return nil }
        if let s = try? c.decode(String.self, forKey: AnyKey(key)) { return s }
        if let n = try? c.decode(Int.self, forKey: AnyKey(key)) { return String(n) }
        throw Self.bad("'\(key)' must be a string or a whole number.")
    }

    /// An object of strings, or nil when absent or null.
    func metadata(_ key: String = "metadata") throws -> [String: String]? {
        guard has(key) else { return nil }
        guard let m = try? c.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey(key)) else { throw Self.bad("'\(key)' must be an object of strings.") }
        var out: [String: String] = [:]
        for k in m.allKeys {
            guard let s = try? m.decode(String.self, forKey: k) else { throw Self.bad("metadata value of '\(k.stringValue)' must be a string.") }
            out[k.stringValue] = s
        }
        return out
    }

    /// A list of objects, or nil when absent or null; `wrong` when it is something else.
    func objects(_ key: String, wrong: String) throws -> [Fields]? {
        guard has(key) else { return nil }
        guard var list = try? c.nestedUnkeyedContainer(forKey: AnyKey(key)) else { throw Self.bad(wrong) }
        var out: [Fields] = []
        while !list.isAtEnd {
            guard let o = try? list.nestedContainer(keyedBy: AnyKey.self) else { throw Self.bad(wrong) }
            out.append(Fields(container: o))
        }
        return out
    }
}

extension CycladesAPI.Call {
    /// The body as a request type: a 400 when there is none, it is not JSON, or a field is wrong.
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        guard let d = body, !d.isEmpty else { throw Fields.bad("Malformed request: a JSON body is required.") }
        do {
            return try JSONDecoder().decode(T.self, from: d)
        } catch let e as CycladesError {
            throw e
        } catch {
            throw Fields.bad("Malformed request: the body is not valid JSON.")
        }
    }
}

extension Date {
    static func parseOpenstack(_ s: String) -> Date? {
        let iso = ISO8601DateFormatter()
        if let d = iso.date(from: s) { return d }
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = iso.date(from: s) { return d }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        for form in ["yyyy-MM-dd'T'HH:mm:ss.SSSSSS", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd"] {
            f.dateFormat = form
            if let d = f.date(from: s) { return d }
        }
        return nil
    }
}
