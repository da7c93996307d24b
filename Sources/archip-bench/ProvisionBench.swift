@_spi(Bench) import ArchipStore
import Foundation

/// Provisioning at scale, the provider's share: a create from a golden
/// snapshot, from a Ganeti disk (`disk:NAME`, what Cyclades sends to clone a
/// volume) and with `origin_sha256`, each measured in a store of a few
/// volumes and again with 10 000 volumes present. Goal: the provider's time
/// per volume does not grow with the number of volumes or the image's size.
extension Bench {
    mutating func provisioning() throws {
        let provider = URL(fileURLWithPath: archip).deletingLastPathComponent().appendingPathComponent("archip-extstorage").path
        guard FileManager.default.isExecutableFile(atPath: provider) else {
            report("provisioning: SKIPPED (no \(provider); make bench builds it)")
            return
        }
        let storePath = work + "/prov-store"
        let store = try freshStore("prov-store")
        let population = Int(ProcessInfo.processInfo.environment["BENCH_PROVISION_VOLUMES"] ?? "10000") ?? 10_000
        let runs = Int(ProcessInfo.processInfo.environment["BENCH_PROVISION_RUNS"] ?? "30") ?? 30
        // Golden images: 64 MiB and 1 GiB of written blocks, snapshotted.
        var digests: [String: (size: UInt64, sha: String)] = [:]
        for (tag, blocks) in [("small", 16), ("large", 256)] {
            let v = try VolumeName("gold-\(tag)")
            try store.create(v, size: .mebibytes(UInt64(blocks) * 4))
            let sha = SHA256Stream()
            try store.withVolume(v) { vol in
                for b in 0..<blocks {
                    let block = [UInt8](repeating: UInt8(truncatingIfNeeded: b &* 31 &+ blocks), count: 4 << 20)
                    try vol.write(at: UInt64(b) << 22, block)
                    block.withUnsafeBytes { sha.update($0) }
                }
            }
            try store.snapshot(v, as: try VolumeName("gold-\(tag)-v1"))
            digests[tag] = (UInt64(blocks) << 22, sha.finish().hex)
        }
        try store.create(try VolumeName("source-disk"), size: .gibibytes(1), metadata: [GanetiMetadata.cname: "snf-vol-source"])
        sync()
        let config = work + "/prov.conf"
        try "[store]\npath = \(storePath)\n[node]\nname = bench\nruntime_dir = /tmp/archip-bench-prov\n".write(toFile: config, atomically: true, encoding: .utf8)
        let base = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "EXTP_PROVIDER": "archipelago", "EXTP_ACCESS": "kernelspace"]
        var serial = 0
        func create(_ vars: [String: String]) throws -> Double {
            serial += 1
            let name = String(format: "p%07d-0000-0000-0000-000000000000.ext.disk0", serial)
            return try spawn([provider, "--config", config, "create"],
                             env: base.merging(["VOL_NAME": name, "VOL_SIZE": "2048", "VOL_CNAME": "snf-vol-p\(serial)"]) { $1 }.merging(vars) { $1 })
        }
        func sample(_ vars: [String: String]) throws -> Double { median(try (0..<runs).map { _ in try create(vars) }) }
        func round(_ label: String) throws -> [String: Double] {
            var r: [String: Double] = [:]
            r["snapshot, 64 MiB image"] = try sample(["EXTP_ORIGIN": "snapshot:gold-small-v1"])
            r["snapshot, 1 GiB image"] = try sample(["EXTP_ORIGIN": "snapshot:gold-large-v1"])
            let large = digests["large"]!
            r["snapshot + origin_sha256 (recorded)"] = try sample(["EXTP_ORIGIN": "snapshot:gold-large-v1", "EXTP_ORIGIN_SIZE": "\(large.size)",
                                                                 "EXTP_ORIGIN_SHA256": large.sha])
            r["disk:NAME (clone of a volume)"] = try sample(["EXTP_ORIGIN": "disk:snf-vol-source"])
            return r
        }
        // The first clone with a checksum reads the image once; measured alone.
        let large = digests["large"]!
        let firstCheck = try create(["EXTP_ORIGIN": "snapshot:gold-large-v1", "EXTP_ORIGIN_SIZE": "\(large.size)", "EXTP_ORIGIN_SHA256": large.sha])
        let small = try round("small")
        let before = try store.listAll().items.count
        let t = try time {
            for i in 0..<population {
                try store.create(try VolumeName(String(format: "q%07d-0000-0000-0000-000000000000.ext.disk0", i)), size: .gibibytes(1),
                                 metadata: [GanetiMetadata.cname: "snf-vol-q\(i)", GanetiMetadata.uuid: "u\(i)"])
            }
        }
        sync()
        let big = try round("big")
        let count = try store.listAll().items.count
        // The same disk: lookup without its hint: what every lookup cost before hints.
        try? FileManager.default.removeItem(atPath: storePath + "/index")
        let noHint = try create(["EXTP_ORIGIN": "disk:snf-vol-source"])
        report(String(format: "provisioning (provider create, process start included, median of %d): %d volumes vs %d (%d made in %.0f s)",
                      runs, count, before, population, t))
        report(String(format: "  first clone with origin_sha256 (reads the 1 GiB image once)  %8.2f ms", firstCheck * 1e3))
        for key in small.keys.sorted() {
            let a = small[key]!, b = big[key]!
            report("  " + key.padding(toLength: 40, withPad: " ", startingAt: 0)
                   + String(format: " %7.2f ms -> %7.2f ms  ratio %.2f (goal ~1.0)", a * 1e3, b * 1e3, b / a))
        }
        report(String(format: "  snapshot 1 GiB vs 64 MiB image (%d volumes): ratio %.2f (goal ~1.0)", count,
                      big["snapshot, 1 GiB image"]! / big["snapshot, 64 MiB image"]!))
        report(String(format: "  disk:NAME without its lookup hint (reads every record)     %8.2f ms", noHint * 1e3))
    }
}
