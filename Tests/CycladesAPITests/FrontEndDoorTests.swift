import Foundation
import Testing

/// One door to the database: the front ends (the API and snf-manage) read
/// and change records only through Registry's typed methods. They are not
/// given GRDB in Package.swift, and no source of theirs imports it (SwiftPM
/// lets a target import a module it only reaches through a dependency, so the
/// sources are checked too).
@Suite struct FrontEndDoorTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let frontEnds = ["CycladesAPI", "cyclades-api", "snf-manage"]

    /// `import GRDB`, with any attribute or access level (`@preconcurrency`, `internal import`, `import struct GRDB.Row`).
    static func importsGRDB(_ line: Substring) -> Bool {
        var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })[...]
        while let w = words.first, w.hasPrefix("@") || ["public", "package", "internal", "fileprivate", "private"].contains(String(w)) {
            words = words.dropFirst()
        }
        guard words.first == "import" else { return false }
        words = words.dropFirst()
        if let kind = words.first, ["class", "struct", "enum", "protocol", "typealias", "func", "let", "var"].contains(String(kind)) {
            words = words.dropFirst()
        }
        guard let module = words.first else { return false }
        return module == "GRDB" || module.hasPrefix("GRDB.")
    }

    @Test func frontEndSourcesDoNotImportGRDB() throws {
        var found: [String] = []
        for target in Self.frontEnds {
            let dir = Self.root.appendingPathComponent("Sources/\(target)")
            let files = try #require(FileManager.default.enumerator(atPath: dir.path)).compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
            #expect(!files.isEmpty, "no Swift sources under \(dir.path)")
            for file in files {
                let text = try String(contentsOf: dir.appendingPathComponent(file), encoding: .utf8)
                for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where Self.importsGRDB(line) {
                    found.append("Sources/\(target)/\(file):\(n + 1): \(line.trimmingCharacters(in: .whitespaces))")
                }
            }
        }
        #expect(found.isEmpty, "front ends import GRDB (use a Registry method): \(found.joined(separator: "; "))")
    }

    @Test func packageGivesFrontEndsNoGRDB() throws {
        let manifest = try String(contentsOf: Self.root.appendingPathComponent("Package.swift"), encoding: .utf8)
        // The targets section: one piece per .target( / .executableTarget( / .testTarget( ...
        let targets = manifest.components(separatedBy: "targets: [").dropFirst().joined(separator: "targets: [")
        let pieces = targets.replacingOccurrences(of: ".executableTarget(", with: "\u{1}").replacingOccurrences(of: ".testTarget(", with: "\u{1}")
            .replacingOccurrences(of: ".target(", with: "\u{1}").replacingOccurrences(of: ".systemLibrary(", with: "\u{1}")
            .split(separator: "\u{1}")
        for target in Self.frontEnds {
            let piece = try #require(pieces.first { $0.contains("name: \"\(target)\"") }, "no target \(target) in Package.swift")
            #expect(!piece.contains("\"GRDB\""), "Package.swift gives \(target) the GRDB product: its reads and changes go through Registry")
        }
    }

    @Test func importCheckRecognisesTheForms() {
        for yes in ["import GRDB", "@preconcurrency import GRDB", "internal import GRDB", "import struct GRDB.Row", "  import GRDB.Database"] {
            #expect(Self.importsGRDB(Substring(yes)), "\(yes)")
        }
        for no in ["import Foundation", "// import GRDB", "import GRDBX", "let x = \"import GRDB\""] {
            #expect(!Self.importsGRDB(Substring(no)), "\(no)")
        }
    }
}
