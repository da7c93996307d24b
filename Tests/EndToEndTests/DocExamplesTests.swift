import ArchipStore
import Foundation
import Testing

/// The documents' `archip` examples, so they cannot drift from the command:
/// README's "Using archip" block is run line by line on a new store, and every
/// volume or snapshot name in any `archip` line of README and archip(8) must be
/// one the store accepts.
@Suite struct DocExamples {
    static func text(_ relative: String) throws -> String {
        try String(contentsOfFile: repoRoot + "/" + relative, encoding: .utf8)
    }

    /// The lines of each ```sh block of a Markdown text, after `heading` when given.
    static func shellBlocks(_ markdown: String, after heading: String? = nil) -> [[String]] {
        var lines = markdown.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if let heading, let i = lines.firstIndex(of: heading) { lines = Array(lines[(i + 1)...]) }
        var blocks: [[String]] = [], current: [String]? = nil
        for line in lines {
            if current == nil, line.hasPrefix("```sh") { current = [] } else if current != nil, line.hasPrefix("```") {
                blocks.append(current!)
                current = nil
            } else if current != nil { current!.append(line) }
        }
        return blocks
    }

    /// The man page's EXAMPLES (between .nf and .fi).
    static func manExamples(_ roff: String) -> [String] {
        guard let s = roff.range(of: ".SH EXAMPLES") else { return [] }
        let rest = roff[s.upperBound...]
        guard let nf = rest.range(of: ".nf\n"), let fi = rest.range(of: "\n.fi") else { return [] }
        return rest[nf.upperBound..<fi.lowerBound].split(separator: "\n").map { $0.replacingOccurrences(of: "\\-", with: "-") }
    }

    /// The commands of one line, without a trailing comment; `a | archip x` gives `archip x`.
    static func archipCommands(_ line: String) -> [[String]] {
        let code = line.components(separatedBy: " #").first ?? line
        return code.components(separatedBy: "|").compactMap { part in
            let words = part.split(separator: " ").map(String.init)
            guard words.first == "archip" else { return nil }
            return Array(words.dropFirst())
        }
    }

    /// Positions (among the positional arguments) that are store names, per command.
    static let namePositions: [String: [Int]] = [
        "create": [0], "import": [0], "export": [0], "snapshot": [0, 1], "clone": [0, 1], "hash": [0],
        "info": [0], "verify": [0], "lock": [0], "unlock": [0], "write": [0], "read": [0], "fill": [0],
        "attach": [0], "detach": [0], "open": [0], "close": [0], "resize": [0], "remove": [0], "flatten": [0],
    ]
    static let flags: Set<String> = ["--json", "--apply", "--force", "--shared", "--copy", "--resume", "--abort", "--grow", "--quiet"]

    /// Every name an `archip` command line gives the store: positional names and `--from snapshot:/volume:`.
    static func names(in args: [String]) -> [String] {
        var rest = args
        // Global options before the command.
        while let first = rest.first, first.hasPrefix("--") {
            rest.removeFirst()
            if !first.contains("="), !flags.contains(first), !rest.isEmpty { rest.removeFirst() }
        }
        guard let command = rest.first else { return [] }
        rest.removeFirst()
        var positional: [String] = [], out: [String] = []
        while !rest.isEmpty {
            let w = rest.removeFirst()
            if w.hasPrefix("--") {
                let value: String?
                if let eq = w.firstIndex(of: "=") { value = String(w[w.index(after: eq)...]) } else if !flags.contains(w), !rest.isEmpty { value = rest.removeFirst() } else { value = nil }
                if let value, w.hasPrefix("--from") {
                    for prefix in ["snapshot:", "volume:"] where value.hasPrefix(prefix) { out.append(String(value.dropFirst(prefix.count))) }
                }
            } else {
                positional.append(w)
            }
        }
        for i in namePositions[command] ?? [] where i < positional.count { out.append(positional[i]) }
        return out
    }

    @Test func everyNameInTheExamplesIsAccepted() throws {
        var lines: [(String, String)] = []
        for block in Self.shellBlocks(try Self.text("README.md")) { lines += block.map { ("README.md", $0) } }
        lines += Self.manExamples(try Self.text("docs/man/archip.8")).map { ("archip.8", $0) }
        var checked = 0
        for (doc, line) in lines {
            for args in Self.archipCommands(line) {
                for name in Self.names(in: args) {
                    checked += 1
                    #expect(throws: Never.self, "\(doc): '\(line)' uses the name '\(name)'") { _ = try VolumeName(name) }
                }
            }
        }
        #expect(checked >= 20, "the examples were found (\(checked) names)")
    }

    /// README's "Using archip" block, run as written on a new store.
    @Test func usingArchipRunsAsWritten() throws {
        let blocks = Self.shellBlocks(try Self.text("README.md"), after: "## Using archip")
        let block = try #require(blocks.first, "README has a ```sh block under '## Using archip'")
        let cli = CLI()
        let work = cli.store + "-work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work); try? FileManager.default.removeItem(atPath: cli.store) }
        // The image the block imports, small.
        var image = [UInt8](repeating: 0, count: 6 << 20)
        for i in stride(from: 0, to: image.count, by: 512) { image[i] = UInt8(truncatingIfNeeded: i >> 9) | 1 }
        for raw in block.joined(separator: "\n").matches(of: /[A-Za-z0-9._-]+\.raw/).map({ String($0.output) }) {
            try Data(image).write(to: URL(fileURLWithPath: work + "/" + raw))
        }
        var ran = 0
        for line in block where !Self.archipCommands(line).isEmpty {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = ["-e", "-o", "pipefail", "-c", line]
            p.currentDirectoryURL = URL(fileURLWithPath: work)
            var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ARCHIP_") }
            env["PATH"] = CLI.binDir + ":" + (env["PATH"] ?? "/usr/bin:/bin")
            env["ARCHIP_STORE"] = cli.store
            env["ARCHIP_RUNTIME_DIR"] = work + "/run"
            p.environment = env
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "README: '\(line)' exits \(p.terminationStatus): \(String(decoding: e, as: UTF8.self))")
            ran += 1
        }
        #expect(ran >= 8, "the block's archip lines ran (\(ran))")
    }
}
