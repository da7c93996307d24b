import Cyclades
import Foundation

/// Reading JSON request bodies: every wrong shape is a 400 naming the attribute.
enum Input {
    static func bad(_ m: String) -> CycladesError { CycladesError(.badRequest, m) }

    static func body(_ call: CycladesAPI.Call) throws -> [String: Any] {
        guard let d = call.body, !d.isEmpty else { throw bad("Malformed request: a JSON body is required.") }
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: d, options: [.fragmentsAllowed]) } catch { throw bad("Malformed request: the body is not valid JSON.") }
        guard let o = any as? [String: Any] else { throw bad("Malformed request: the body must be a JSON object.") }
        return o
    }

    static func object(_ o: [String: Any], _ key: String) throws -> [String: Any] {
        guard let v = o[key], !(v is NSNull) else { throw bad("Malformed request. Missing attribute '\(key)'.") }
        guard let d = v as? [String: Any] else { throw bad("Malformed request: '\(key)' must be an object.") }
        return d
    }

    static func isBool(_ v: Any) -> Bool { String(describing: type(of: v)).contains("Boolean") }

    /// A string, or nil when absent or null.
    static func string(_ o: [String: Any], _ key: String, max: Int = 255) throws -> String? {
        guard let v = o[key], !(v is NSNull) else { return nil }
        guard let s = v as? String else { throw bad("'\(key)' must be a string.") }
        guard s.count <= max else { throw bad("'\(key)' is longer than \(max) characters.") }
        return s
    }

    /// A whole number (JSON integer or a string of digits), or nil when absent or null.
    static func int(_ o: [String: Any], _ key: String) throws -> Int? {
        guard let v = o[key], !(v is NSNull) else { return nil }
        if let s = v as? String {
            guard let n = Int(s.trimmingCharacters(in: .whitespaces)) else { throw bad("'\(key)' must be a whole number, not '\(s.prefix(40))'.") }
            return n
        }
        guard !isBool(v), let n = v as? Int else { throw bad("'\(key)' must be a whole number.") }
        return n
    }

    /// A boolean (JSON true/false or the strings "true"/"false"), or nil.
    static func bool(_ o: [String: Any], _ key: String) throws -> Bool? {
        guard let v = o[key], !(v is NSNull) else { return nil }
        if isBool(v), let b = v as? Bool { return b }
        if let s = v as? String {
            switch s.lowercased() {
            case "true", "1", "yes": return true
            case "false", "0", "no": return false
            default: break
            }
        }
        throw bad("'\(key)' must be true or false.")
    }

    /// An id given as a number or a string.
    static func id(_ o: [String: Any], _ key: String) throws -> String? {
        guard let v = o[key], !(v is NSNull) else { return nil }
        if let s = v as? String { return s }
        if !isBool(v), let n = v as? Int { return String(n) }
        throw bad("'\(key)' must be a string or a whole number.")
    }

    static func metadata(_ o: [String: Any], _ key: String = "metadata") throws -> [String: String]? {
        guard let v = o[key], !(v is NSNull) else { return nil }
        guard let d = v as? [String: Any] else { throw bad("'\(key)' must be an object of strings.") }
        var out: [String: String] = [:]
        for (k, x) in d {
            guard let s = x as? String else { throw bad("metadata value of '\(k)' must be a string.") }
            out[k] = s
        }
        return out
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
