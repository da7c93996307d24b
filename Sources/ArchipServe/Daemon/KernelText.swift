import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Text files of /proc and /sys, read whole.
///
/// Foundation's `String(contentsOfFile:)` trusts the file's size, which
/// procfs reports as 0, and returns one read's worth: 4 KiB of
/// /proc/self/mountinfo, about 40 mounts. On a machine with more (containers,
/// other daemons' FUSE mounts, a lab in namespaces) the stale mount a crash
/// recovery looked for was past the cut and stayed; the next attach of that
/// volume failed with EEXIST on its mount point.
enum KernelText {
    /// The whole file, read until end of file; nil if it cannot be opened.
    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
