import Foundation

/// `archip fill` from nginx over loopback (tests/e2e/nginx/nginx-fixture.sh)
/// vs `curl -o` of the same URL to a file on the same disk, same run. The
/// image is in the page cache before each run, so both measure HTTP plus
/// writing, not reading the server's disk. Needs root, nginx and curl;
/// otherwise the row says why it was skipped.
extension Bench {
    mutating func fillHTTP() throws {
        let mib = Int(ProcessInfo.processInfo.environment["BENCH_FILL_MIB"] ?? "2048") ?? 2048
        let script = FileManager.default.currentDirectoryPath + "/tests/e2e/nginx/nginx-fixture.sh"
        var missing: String?
        if geteuid() != 0 { missing = "not root (the nginx fixture runs nginx as root)" }
        for tool in ["nginx", "curl", "openssl", "python3"] where missing == nil {
            if (try? sh("PATH=$PATH:/usr/sbin:/sbin command -v \(tool) >/dev/null")) == nil { missing = "\(tool) not installed" }
        }
        if missing == nil && !FileManager.default.isExecutableFile(atPath: script) { missing = "\(script) not found (run from the repository root)" }
        if let missing {
            report("fill from nginx over loopback vs curl -o: skipped, \(missing)")
            return
        }
        let fx = work + "/nginx"
        let img = fx + "/www/fill-http.raw"
        try FileManager.default.createDirectory(atPath: fx + "/www", withIntermediateDirectories: true)
        // posix_spawn + waitpid, not Process: Foundation's Process waits for a
        // descriptor its child holds, and the nginx daemon would inherit it.
        let environment = ProcessInfo.processInfo.environment
        func fixture(_ action: String) throws {
            _ = try spawn(["/bin/sh", "-c", "\(script) \(action) \(fx) > \(work)/nginx-\(action).log 2>&1"], env: environment)
        }
        try fixture("stop")
        try fixture("start")
        defer { try? fixture("stop") }
        let env = try String(contentsOfFile: fx + "/ports.env", encoding: .utf8)
        guard let port = env.split(separator: "\n").first(where: { $0.hasPrefix("NGINX_HTTP_PORT=") })?.split(separator: "=").last else {
            throw StoreErrorBench("no NGINX_HTTP_PORT in \(fx)/ports.env")
        }
        let url = "http://127.0.0.1:\(port)/fill-http.raw"
        _ = try sh("head -c \(mib)M /dev/urandom > \(img)")
        let store = work + "/fill-http-store", copy = work + "/fill-http-copy.raw"
        func quiet(_ cleanup: String) throws { _ = try sh("\(cleanup); cat \(img) > /dev/null; sync; sleep 0.5") }
        var fillT: [Double] = [], curlT: [Double] = [], curlSyncT: [Double] = []
        var fillCPU: [Double] = [], curlCPU: [Double] = []
        let runs = Int(ProcessInfo.processInfo.environment["BENCH_FILL_RUNS"] ?? "5") ?? 5
        for i in 0..<runs {
            try quiet("rm -rf \(store) \(copy)")
            let c = try measured("curl -sf -o \(copy) \(url)")
            curlT.append(c.wall)
            curlCPU.append(c.cpu)
            try quiet("rm -f \(copy)")
            curlSyncT.append(try sh("curl -sf -o \(copy) \(url) && sync -f \(copy)"))
            try quiet("rm -f \(copy)")
            let m = try measured("\(archip) --store \(store) fill v\(i) --from \(url) --progress none > /dev/null")
            fillT.append(m.wall)
            fillCPU.append(m.cpu)
            if i == 0 {
                // Once: the volume is the image, byte for byte.
                _ = try sh("\(archip) --store \(store) export v0 \(copy) && cmp \(img) \(copy)")
            }
        }
        _ = try sh("rm -rf \(store) \(copy) \(img)")
        let mb = Double(mib) * 1048576 / 1e6
        let f = median(fillT), c = median(curlT), cs = median(curlSyncT)
        func spread(_ xs: [Double]) -> String { xs.map { String(format: "%.0f", mb / $0) }.joined(separator: "/") }
        report("fill from nginx runs (MB/s): fill \(spread(fillT)); curl -o \(spread(curlT)); curl -o + sync \(spread(curlSyncT))")
        report(String(format: "fill from nginx over loopback (%d MiB, http, hashed, durable): %.0f MB/s; curl -o %.0f MB/s, curl -o + sync %.0f MB/s: ratio %.2f vs curl -o (goal >= 1.0), %.2f vs curl+sync (medians of %d runs; median of per-run ratios %.2f vs curl -o, %.2f vs curl+sync)",
                      mib, mb / f, mb / c, mb / cs, c / f, cs / f, runs, pairedRatio(curlT, fillT), pairedRatio(curlSyncT, fillT)))
        report(String(format: "CPU seconds (user+system, median, nginx not counted): fill %.2f, curl -o %.2f", median(fillCPU), median(curlCPU)))
    }
}
