import Foundation

/// The OSD of a test cluster that a test may stop (SIGSTOP) and resume: only
/// with `ARCHIP_TEST_RADOS_PAUSABLE=1`, which says the cluster of
/// `ARCHIP_TEST_RADOS` is this run's own (`CEPH_DIR=... tests/e2e/ceph/ceph-up.sh up`),
/// never the shared one other suites run on. The pid comes from ceph-up.sh's
/// `run/osd.0.pid` next to the URL's `conf=`.
public struct PausableOSD {
    public let pid: pid_t

    /// Why no OSD may be paused here, or nil.
    public static var unavailable: String? {
        let env = ProcessInfo.processInfo.environment
        guard let url = env["ARCHIP_TEST_RADOS"], !url.isEmpty else { return "ARCHIP_TEST_RADOS is not set" }
        guard env["ARCHIP_TEST_RADOS_PAUSABLE"] == "1" else {
            return "ARCHIP_TEST_RADOS_PAUSABLE=1 is not set (it stops the cluster's OSD: only for a cluster of the test's own)"
        }
        return find(url) == nil ? "no running OSD found next to the configuration of \(url) (run/osd.0.pid)" : nil
    }

    public static func find(_ url: String = ProcessInfo.processInfo.environment["ARCHIP_TEST_RADOS"] ?? "") -> PausableOSD? {
        guard let r = url.range(of: "conf=") else { return nil }
        let conf = (url[r.upperBound...].split(separator: "&").first.map(String.init) ?? "").removingPercentEncoding ?? ""
        let pidFile = URL(fileURLWithPath: conf).deletingLastPathComponent().appendingPathComponent("run/osd.0.pid").path
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0 else { return nil }
        return PausableOSD(pid: pid)
    }

    public func stop() { kill(pid, SIGSTOP) }
    public func resume() { kill(pid, SIGCONT) }
}
