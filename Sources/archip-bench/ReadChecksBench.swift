@_spi(Bench) import ArchipStore
import Foundation

/// What checked reads cost (docs/CHECKSUMS.md): the same reads through
/// `Volume.read` and `Volume.readPieces` (the zero-copy path of the node
/// daemon) with the checks on and off (`ReadChecks.enabled`, the switch only
/// the bench sets), in alternating rounds of the same process, over owned
/// blocks (CRC-32C per 4 KiB) and content blocks (checked whole once, then
/// their length). The data is in the page cache, so the checks' CPU cost is
/// not hidden behind the disk. Rows: checked/unchecked throughput ratios
/// (goal >= 0.9, i.e. at most 10% slower).
extension Bench {
    mutating func readChecks() throws {
        let mib = Int(ProcessInfo.processInfo.environment["BENCH_CHECKS_MIB"] ?? "256") ?? 256
        let size = mib << 20
        let store = try freshStore("checks")
        let owned = try VolumeName("owned")
        try store.create(owned, size: ByteCount(UInt64(size)))
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var g = SystemRandomNumberGenerator()
        try store.withVolume(owned) { v in
            for off in stride(from: 0, to: size, by: chunk.count) {
                for i in 0..<chunk.count { chunk[i] = UInt8.random(in: 0...255, using: &g) }
                try v.write(at: UInt64(off), chunk)
            }
        }
        try store.snapshot(owned, as: try VolumeName("owned-s"))
        _ = try store.hash(try VolumeName("owned-s"))
        try store.clone(try VolumeName("owned-s"), as: try VolumeName("content"))

        let rounds = 5
        let randomReads = 200_000
        var offsets: [UInt64] = (0..<randomReads).map { _ in UInt64.random(in: 0..<UInt64(size / 4096), using: &g) * 4096 }
        offsets.shuffle(using: &g)

        // One measurement: bytes per second of `body` over the volume.
        func rate(_ v: Volume, _ kind: String) throws -> Double {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            switch kind {
            case "random 4 KiB read":
                let t = try time {
                    try buffer.withUnsafeMutableBytes { b in
                        let page = UnsafeMutableRawBufferPointer(rebasing: b[0..<4096])
                        for o in offsets { try v.read(at: o, into: page) }
                    }
                }
                return Double(randomReads * 4096) / t
            case "sequential 1 MiB read":
                let t = try time {
                    try buffer.withUnsafeMutableBytes { b in
                        for o in stride(from: 0, to: size, by: 1 << 20) { try v.read(at: UInt64(o), into: b) }
                    }
                }
                return Double(size) / t
            default: // "random 4 KiB pieces (zero-copy)": describe, then pread what was described
                let t = try time {
                    try buffer.withUnsafeMutableBytes { b in
                        for o in offsets {
                            guard let pieces = try v.readPieces(at: o, length: 4096) else {
                                try v.read(at: o, into: UnsafeMutableRawBufferPointer(rebasing: b[0..<4096]))
                                continue
                            }
                            var at = 0
                            for p in pieces {
                                switch p {
                                case .zeros(let n): at += n
                                case .file(let d, let offset, let count):
                                    _ = pread(d.fd, b.baseAddress! + at, count, off_t(offset))
                                    at += count
                                }
                            }
                        }
                    }
                }
                return Double(randomReads * 4096) / t
            }
        }

        for (volume, what) in [(owned, "owned blocks"), (try VolumeName("content"), "content blocks")] {
            let v = try store.open(volume, mode: .readOnly)
            defer { try? v.close() }
            for kind in ["random 4 KiB read", "random 4 KiB pieces (zero-copy)", "sequential 1 MiB read"] {
                // Warm: the page cache, and the content blocks' first (whole) check.
                ReadChecks.enabled = true
                _ = try rate(v, kind)
                var ratios: [Double] = [], on: [Double] = [], off: [Double] = []
                for r in 0..<rounds {
                    // Alternate which goes first, so neither always runs on a warmer machine.
                    for checked in (r % 2 == 0 ? [true, false] : [false, true]) {
                        ReadChecks.enabled = checked
                        let x = try rate(v, kind)
                        if checked { on.append(x) } else { off.append(x) }
                    }
                    ratios.append(on[r] / off[r])
                }
                ReadChecks.enabled = true
                let m = median(ratios)
                report(String(format: "checked reads, %@, %@ (%d MiB, in memory): checked %.0f MB/s, unchecked %.0f MB/s: ratio %.2f [%.2f-%.2f] (goal >= 0.90%@)",
                              what, kind, mib, median(on) / 1e6, median(off) / 1e6, m, ratios.min()!, ratios.max()!, m >= 0.9 ? "" : ", NOT MET"))
            }
        }

        // A content block's first read checks it whole: what a cold 4 KiB read costs.
        let cold = try VolumeStore.directory(work + "/checks", node: "bench-cold")
        let c = try cold.open(try VolumeName("content"), mode: .readOnly)
        defer { try? c.close() }
        var page = [UInt8](repeating: 0, count: 4096)
        let blocks = size / (4 << 20)
        let t = try time {
            try page.withUnsafeMutableBytes { p in
                for b in 0..<blocks { try c.read(at: UInt64(b) * UInt64(4 << 20) + 8192, into: p) }
            }
        }
        report(String(format: "checked reads, content blocks, first 4 KiB read of a 4 MiB block (checks the whole block once per process): %.2f ms each",
                      t / Double(blocks) * 1000))
    }
}
