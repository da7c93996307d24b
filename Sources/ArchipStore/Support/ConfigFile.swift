import Foundation

/// `/etc/archip/archip.conf`: `key = value` lines under `[section]` headers,
/// `#` and `;` start comments. Keys come back as `section.key`. Read by
/// `archip` and by the Ganeti provider, which gets no other configuration
/// (Ganeti passes only its own variables).
public enum ConfigFile {
    public static let defaultPath = "/etc/archip/archip.conf"

    /// A missing file is an empty configuration unless `required`.
    public static func load(_ path: String, required: Bool) throws -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            if required || FileManager.default.fileExists(atPath: path) {
                throw StoreError(.invalidArgument, "cannot read configuration file \(path)")
            }
            return [:]
        }
        return try parse(String(decoding: data, as: UTF8.self), path: path)
    }

    public static func parse(_ text: String, path: String) throws -> [String: String] {
        var out: [String: String] = [:]
        var section = ""
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                continue
            }
            guard let eq = line.firstIndex(of: "=") else {
                throw StoreError(.invalidArgument, "\(path):\(n + 1): expected 'key = value'")
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            out[section.isEmpty ? key : "\(section).\(key)"] = value
        }
        return out
    }
}
