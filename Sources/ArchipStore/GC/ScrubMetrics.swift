import Foundation

/// A scrub's result as a Prometheus textfile (node_exporter's textfile
/// collector reads `*.prom` in one folder): written to a temporary in the
/// same folder, then renamed over the file, so a scrape never sees half.
public enum ScrubMetrics {
    public static func text(_ r: ScrubReport, store: String, repaired: Int? = nil, lost: Int? = nil) -> String {
        let label = "store=\"\(escape(store))\""
        var out = ""
        func gauge(_ name: String, _ help: String, _ value: String) {
            out += "# HELP archip_scrub_\(name) \(help)\n# TYPE archip_scrub_\(name) gauge\narchip_scrub_\(name){\(label)} \(value)\n"
        }
        gauge("last_start_timestamp_seconds", "When the last scrub started (a resumed scrub: when its first run did).",
              String(format: "%.3f", r.startedAt.timeIntervalSince1970))
        gauge("last_end_timestamp_seconds", "When the last scrub ended.", String(format: "%.3f", r.endedAt.timeIntervalSince1970))
        gauge("last_complete", "1 if the last scrub went through every object, 0 if it was stopped (it resumes).", r.interrupted ? "0" : "1")
        gauge("objects", "Objects in the scrub's scope.", "\(r.objects)")
        gauge("objects_checked", "Objects read and checked by the last scrub.", "\(r.objectsChecked)")
        gauge("bytes_checked", "Bytes read and checked by the last scrub.", "\(r.bytesChecked)")
        gauge("damaged_objects", "Damaged objects the last scrub found.", "\(r.damaged)")
        gauge("missing_objects", "Missing objects the last scrub found.", "\(r.missing)")
        gauge("pending_blocks", "Owned blocks with unflushed writes of a writer that stopped.", "\(r.pending)")
        if let repaired { gauge("repaired_objects", "Objects the last repair restored.", "\(repaired)") }
        if let lost { gauge("lost_objects", "Owned blocks the last repair found no source for.", "\(lost)") }
        return out
    }

    /// Writes `text` to `path` atomically (temporary + rename in its folder).
    public static func write(_ text: String, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).tmp")
        do {
            try Data(text.utf8).write(to: tmp)
            guard rename(tmp.path, path) == 0 else {
                let e = errno
                try? FileManager.default.removeItem(at: tmp)
                throw StoreError(.io, "metrics file \(path): rename: \(String(cString: strerror(e)))")
            }
        } catch let e as StoreError {
            throw e
        } catch {
            throw StoreError(.io, "metrics file \(path): cannot write \(tmp.path): \(error.localizedDescription)")
        }
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
