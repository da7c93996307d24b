import CCurl
import Foundation

/// Ganeti's remote API over HTTPS (basic auth, the cluster's certificate or
/// `insecure` for tests), through libcurl. Writes return a job id.
public final class RAPIClient: GanetiBackend, DetachableDisks, @unchecked Sendable {
    public let baseURL: String
    let transport: any RAPITransport

    public init(baseURL: String, transport: any RAPITransport) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.transport = transport
    }

    public convenience init(backend: Backend) {
        self.init(baseURL: backend.rapiURL, transport: CurlTransport(username: backend.username, password: backend.password,
                                                                    caFile: backend.caFile, insecure: backend.insecure))
    }

    // MARK: GanetiBackend

    public func createInstance(_ s: InstanceSpec) throws -> Int64 {
        var body: [String: Any] = [
            "__version__": 1, "mode": "create", "name": s.name, "disk_template": s.diskTemplate,
            "disks": s.disks.map(\.json), "nics": [], "os": s.os, "pnode": s.node,
            "name_check": false, "ip_check": false, "start": s.start, "wait_for_sync": false,
            "beparams": ["memory": s.memoryMiB, "vcpus": s.vcpus],
        ]
        if let hv = s.hypervisor { body["hypervisor"] = hv }
        if s.ignoreIPolicy { body["ignore_ipolicy"] = true }
        return try jobID(try call("POST", "/2/instances", body))
    }

    public func addDisk(instance: String, _ disk: DiskSpec) throws -> Int64 {
        try modify(instance, [["add", -1, disk.json]])
    }

    public func removeDisk(instance: String, name: String) throws -> Int64 {
        try modify(instance, [["remove", name, [String: Any]()]])
    }

    /// RAPI backends (by URL) whose OpInstanceSetParams has no `hotplug_if_possible`.
    nonisolated(unsafe) private static var noHotplugIfPossible: Set<String> = []
    private static let hotplugLock = NSLock()

    /// One disk change, hot-plugged where the hypervisor can. Ganeti 3.0
    /// wants `hotplug_if_possible` (its `hotplug` fails without support);
    /// 3.1 dropped that parameter and its `hotplug` (the default) falls back
    /// by itself: refused once with 3.1's answer, the parameter is left out.
    func modify(_ instance: String, _ disks: [[Any]]) throws -> Int64 {
        let path = "/2/instances/\(instance)/modify"
        if Self.hotplugLock.withLock({ Self.noHotplugIfPossible.contains(baseURL) }) {
            return try jobID(try call("PUT", path, ["disks": disks]))
        }
        do {
            return try jobID(try call("PUT", path, ["disks": disks, "hotplug_if_possible": true]))
        } catch let e as CycladesError where e.message.contains("HTTP 400") && e.message.contains("hotplug_if_possible") {
            Self.hotplugLock.withLock { _ = Self.noHotplugIfPossible.insert(baseURL) }
            return try jobID(try call("PUT", path, ["disks": disks]))
        }
    }

    /// OP_INSTANCE_GROW_DISK: POST /2/instances/NAME/disk/INDEX/grow.
    public func growDisk(instance: String, index: Int, amountMiB: Int) throws -> Int64 {
        try jobID(try call("POST", "/2/instances/\(instance)/disk/\(index)/grow", ["amount": amountMiB, "wait_for_sync": false]))
    }

    public func removeInstance(_ name: String) throws -> Int64 {
        try jobID(try call("DELETE", "/2/instances/\(name)", nil))
    }

    public func instanceDisks(_ name: String) throws -> InstanceDisks? {
        let (status, data) = try transport.send(method: "GET", url: baseURL + "/2/instances/\(name)", body: nil)
        if status == 404 { return nil }
        try check(status, data, "GET /2/instances/\(name)")
        return try Self.parseInstance(data)
    }

    public func job(_ id: Int64) throws -> JobState {
        let data = try call("GET", "/2/jobs/\(id)", nil)
        return try Self.parseJob(data)
    }

    // MARK: DetachableDisks

    /// `gnt-instance modify --disk attach:name=NAME` (Ganeti 3.1: only the name, no provider).
    public func attachDisk(instance: String, name: String) throws -> Int64 {
        try modify(instance, [["attach", -1, ["name": name]]])
    }

    /// `gnt-instance modify --disk NAME:detach`.
    public func detachDisk(instance: String, name: String) throws -> Int64 {
        try modify(instance, [["detach", name, [String: Any]()]])
    }

    public func softwareVersion() throws -> String {
        let data = try call("GET", "/2/info", nil)
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let v = o["software_version"] as? String else {
            throw CycladesError(.backend, "RAPI GET /2/info at \(baseURL): no software_version in the answer")
        }
        return v
    }

    // MARK: parsing (static: tested against recorded responses)

    static func parseInstance(_ data: Data) throws -> InstanceDisks {
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let name = o["name"] as? String else {
            throw CycladesError(.backend, "RAPI: an instance answer without a name: \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
        let sizes = o["disk.sizes"] as? [Int] ?? []
        let names = o["disk.names"] as? [Any] ?? []
        let uuids = o["disk.uuids"] as? [Any] ?? []
        var disks: [InstanceDisks.Disk] = []
        for (i, size) in sizes.enumerated() {
            disks.append(.init(name: i < names.count ? names[i] as? String : nil, sizeMiB: size,
                               uuid: i < uuids.count ? uuids[i] as? String : nil, index: i))
        }
        let running = (o["oper_state"] as? Bool) ?? ((o["status"] as? String) == "running")
        return InstanceDisks(instance: name, running: running, disks: disks)
    }

    static func parseJob(_ data: Data) throws -> JobState {
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let status = o["status"] as? String else {
            throw CycladesError(.backend, "RAPI: a job answer without a status: \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
        switch status {
        case "success": return .success
        case "error", "canceled":
            return .failed(jobError(o) ?? "job \(status)")
        default: return .pending   // queued, waiting, running, canceling
        }
    }

    /// The last op's error text (`opresult` holds `[OpPrereqError, [msg, code]]` and the like).
    static func jobError(_ o: [String: Any]) -> String? {
        func flatten(_ x: Any) -> [String] {
            if let s = x as? String { return [s] }
            if let a = x as? [Any] { return a.flatMap(flatten) }
            return []
        }
        guard let results = o["opresult"] as? [Any] else { return nil }
        let texts = results.compactMap { r -> String? in
            let parts = flatten(r).filter { !$0.isEmpty && !$0.hasPrefix("Op") && !["wrong_input", "resolver_error", "environment_error", "wrong_state"].contains($0) }
            return parts.isEmpty ? nil : parts.joined(separator: ": ")
        }
        return texts.last
    }

    /// A write's answer is the job id (a JSON number or string).
    func jobID(_ data: Data) throws -> Int64 {
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let bare = text.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        guard let id = Int64(bare) else { throw CycladesError(.backend, "RAPI: expected a job id, got '\(text.prefix(200))'") }
        return id
    }

    // MARK: transport

    private func call(_ method: String, _ path: String, _ body: [String: Any]?) throws -> Data {
        let payload = try body.map { try JSONSerialization.data(withJSONObject: $0) }
        let (status, data) = try transport.send(method: method, url: baseURL + path, body: payload)
        try check(status, data, "\(method) \(path)")
        return data
    }

    private func check(_ status: Int, _ data: Data, _ what: String) throws {
        guard (200..<300).contains(status) else {
            var detail = String(decoding: data.prefix(300), as: UTF8.self)
            if let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let m = o["message"] as? String { detail = m }
            throw CycladesError(.backend, "RAPI \(what) at \(baseURL): HTTP \(status): \(detail)")
        }
    }
}

/// How RAPI requests travel; libcurl in production, recorded answers in tests.
public protocol RAPITransport: Sendable {
    func send(method: String, url: String, body: Data?) throws -> (status: Int, body: Data)
}

/// One HTTPS request per call through libcurl.
public struct CurlTransport: RAPITransport {
    let username: String
    let password: String
    let caFile: String?
    let insecure: Bool
    let timeoutSeconds = 60

    public init(username: String, password: String, caFile: String?, insecure: Bool) {
        self.username = username; self.password = password; self.caFile = caFile; self.insecure = insecure
    }

    final class Buffer { var data = Data() }

    public func send(method: String, url: String, body: Data?) throws -> (status: Int, body: Data) {
        // libcurl is loaded on the first request, not at start.
        if let why = archip_curl_load() { throw CycladesError(.backend, "RAPI \(method) \(url): \(String(cString: why))") }
        _ = curlReady
        guard let h = curl_easy_init() else { throw CycladesError(.backend, "RAPI: curl_easy_init failed") }
        defer { curl_easy_cleanup(h) }
        let buffer = Buffer()
        let box = Unmanaged.passRetained(buffer)
        defer { box.release() }
        var headers: UnsafeMutablePointer<curl_slist>? = nil
        headers = curl_slist_append(headers, "Content-Type: application/json")
        headers = curl_slist_append(headers, "Accept: application/json")
        defer { curl_slist_free_all(headers) }
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        defer { errorBuffer.deallocate() }
        _ = archip_curl_setopt_string(h, CURLOPT_URL, url)
        _ = archip_curl_setopt_string(h, CURLOPT_CUSTOMREQUEST, method)
        _ = archip_curl_setopt_string(h, CURLOPT_USERPWD, "\(username):\(password)")
        _ = archip_curl_setopt_long(h, CURLOPT_HTTPAUTH, 1)   // CURLAUTH_BASIC (a macro Swift does not import)
        _ = archip_curl_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        _ = archip_curl_setopt_long(h, CURLOPT_TIMEOUT, timeoutSeconds)
        _ = archip_curl_setopt_long(h, CURLOPT_CONNECTTIMEOUT, 10)
        _ = archip_curl_setopt_pointer(h, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(headers))
        _ = archip_curl_setopt_pointer(h, CURLOPT_ERRORBUFFER, UnsafeMutableRawPointer(errorBuffer))
        if insecure {
            _ = archip_curl_setopt_long(h, CURLOPT_SSL_VERIFYPEER, 0)
            _ = archip_curl_setopt_long(h, CURLOPT_SSL_VERIFYHOST, 0)
        } else if let caFile {
            _ = archip_curl_setopt_string(h, CURLOPT_CAINFO, caFile)
        }
        _ = archip_curl_setopt_pointer(h, CURLOPT_WRITEDATA, box.toOpaque())
        _ = archip_curl_setopt_write_function(h) { ptr, size, n, ctx in
            guard let ptr, let ctx else { return 0 }
            let b = Unmanaged<Buffer>.fromOpaque(ctx).takeUnretainedValue()
            b.data.append(UnsafeRawPointer(ptr).assumingMemoryBound(to: UInt8.self), count: size * n)
            return size * n
        }
        let payload = body ?? Data()
        let rc: CURLcode = payload.withUnsafeBytes { p in
            if body != nil {
                _ = archip_curl_setopt_long(h, CURLOPT_POSTFIELDSIZE, payload.count)
                _ = archip_curl_setopt_pointer(h, CURLOPT_POSTFIELDS, UnsafeMutableRawPointer(mutating: p.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!))
            }
            return curl_easy_perform(h)
        }
        guard rc == CURLE_OK else {
            let detail = String(cString: errorBuffer)
            throw CycladesError(.backend, "RAPI \(method) \(url): \(detail.isEmpty ? String(cString: curl_easy_strerror(rc)) : detail)")
        }
        var status: Int = 0
        _ = archip_curl_getinfo_long(h, CURLINFO_RESPONSE_CODE, &status)
        return (status, buffer.data)
    }
}

private let curlReady: CURLcode = {
    signal(SIGPIPE, SIG_IGN)
    return curl_global_init(Int(CURL_GLOBAL_ALL))
}()
