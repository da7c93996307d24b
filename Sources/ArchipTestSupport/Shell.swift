import Foundation

/// Runs a shell command for a test; returns its status and stdout+stderr.
/// (Never hand it a command that leaves a daemon holding the output: the read waits for EOF.)
@discardableResult
public func shell(_ cmd: String) throws -> (status: Int32, out: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", cmd]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Why a test needing root, these device nodes and these tools cannot run here, or nil.
public func missingPrerequisite(devices: [String], tools: [String]) -> String? {
    if getuid() != 0 { return "not root" }
    for path in devices where !FileManager.default.fileExists(atPath: path) { return "\(path) is missing" }
    for tool in tools where (try? shell("command -v \(tool)"))?.status != 0 { return "\(tool) is not installed" }
    return nil
}
