import CCurl
import Foundation

/// What `HTTPClient.probe` learned about a file: enough to read it in ranges
/// and to notice if it is replaced on the server while being read.
public struct HTTPResource: Sendable, Equatable {
    public let url: String
    public let size: UInt64
    /// The strong ETag, if the server sent one. Later reads send it as
    /// If-Match, so an image replaced mid-fill fails instead of mixing versions.
    public let entityTag: String?

    public init(url: String, size: UInt64, entityTag: String?) {
        self.url = url
        self.size = size
        self.entityTag = entityTag
    }
}

/// Counters since the client was made (for tests, metrics and progress).
public struct HTTPStatistics: Sendable, Equatable {
    /// HTTP requests sent (each attempt is one; redirects followed inside one count once).
    public var requests = 0
    /// Attempts that were retries of a failed one.
    public var retries = 0
    /// Operations that failed after their last attempt.
    public var failures = 0
    /// Body bytes accepted (the data asked for; error pages not counted).
    public var bytesReceived: UInt64 = 0
}

/// HTTP(S) ranged reads on libcurl, for image sources of the filler.
///
/// Thread-safe: any number of threads may call it at once. Each call takes a
/// libcurl easy handle from a pool for all its attempts and returns it, so a
/// fixed set of N jobs keeps N connections alive (no handshake per block).
/// Calls block; run them on threads, not on the Swift concurrency pool.
///
/// Every answer is checked: a ranged GET must come back as a 206 for exactly
/// that range of the same file, complete. Transient failures (5xx, 408, 429,
/// timeouts, stalls, resets, refused connections, truncated bodies) are
/// retried with exponential backoff and jitter; a truncated range resumes
/// where it stopped. Other failures throw at once.
public final class HTTPClient: @unchecked Sendable {
    public let options: HTTPOptions
    private let pool: CurlHandlePool
    private let statsLock = NSLock()
    private var stats = HTTPStatistics()

    public init(options: HTTPOptions = HTTPOptions()) throws(HTTPError) {
        try ensureCurlInitialised()
        guard options.maxRetries >= 0, options.maxRedirects >= 0, options.lowSpeedLimit >= 0,
              options.receiveBufferSize > 0 else {
            throw HTTPError(.invalidArgument, operation: "configure", url: "",
                            message: "retries, redirects, low-speed limit and buffer size must not be negative")
        }
        if let ca = options.caCertificatePath, !FileManager.default.isReadableFile(atPath: ca) {
            throw HTTPError(.tls, operation: "configure", url: "", message: "CA file \(ca) is not readable",
                            remedy: "--cacert needs a PEM file with the CA certificate(s) that signed the server's")
        }
        self.options = options
        pool = CurlHandlePool(maxIdle: 64)
    }

    public var statistics: HTTPStatistics {
        statsLock.lock()
        defer { statsLock.unlock() }
        return stats
    }

    /// HTTP requests made so far (all attempts of all operations).
    public var requestCount: Int { statistics.requests }

    /// Size (and validator) of the file at `url`, with one `GET Range: bytes=0-0`:
    /// a 206 proves the server honours ranges, which a HEAD's Accept-Ranges
    /// only promises (proxies strip it or lie). Servers that ignore Range are
    /// refused here, before any block is read.
    public func probe(_ url: String) throws(HTTPError) -> HTTPResource {
        let op = "size"
        try checkURL(url, op)
        let byte = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
        defer { byte.deallocate() }
        return try withRetries(op, url) { handle throws(HTTPError) -> HTTPResource in
            let t = CurlTransfer(sink: .buffer(byte), requested: 0..<1)
            let code = try perform(handle, url: url, range: 0..<1, ifMatch: nil, transfer: t, op)
            try checkStop(t, code: code, handle, op, url)
            let tag = t.entityTag.flatMap { $0.hasPrefix("W/") ? nil : $0 }
            switch t.status {
            case 206:
                if code != CURLE_OK { throw transportError(code, handle, op, url, status: 206) }
                guard let value = t.contentRange, let cr = ContentRange(header: value), cr.matches(0..<1) else {
                    throw badContentRange(t.contentRange, for: 0..<1, op, url)
                }
                guard let total = cr.total else {
                    throw HTTPError(.badResponse, operation: op, url: url, message: "the server does not say how large the file is",
                                    status: 206, cause: "Content-Range: \(value)",
                                    remedy: "serve the image as a plain file (not generated on the fly)")
                }
                return HTTPResource(url: url, size: total, entityTag: tag)
            case 200 where code == CURLE_OK && t.contentLength == 0:
                // An empty file has no byte 0 to serve as a range; nginx answers 200.
                return HTTPResource(url: url, size: 0, entityTag: tag)
            case 200:
                throw rangeIgnored(op, url)
            case 416:
                // `bytes */0`: the file is empty, so no range is satisfiable.
                if let value = t.contentRange, let cr = ContentRange(header: value), cr.first == nil, cr.total == 0 {
                    return HTTPResource(url: url, size: 0, entityTag: tag)
                }
                throw statusError(t, handle, code, op, url)
            default:
                throw statusError(t, handle, code, op, url)
            }
        }
    }

    /// Size of the file at `url` (see `probe`).
    public func size(of url: String) throws(HTTPError) -> UInt64 {
        try probe(url).size
    }

    /// Reads exactly the bytes `range` of `url` into the start of `buffer`;
    /// returns `range.count`. With `resource` (from `probe`), the server must
    /// still serve that file: same size, same strong ETag (sent as If-Match).
    @discardableResult
    public func get(_ url: String, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer,
                    validating resource: HTTPResource? = nil) throws(HTTPError) -> Int {
        let op = "get bytes=\(range.isEmpty ? "none" : httpRangeSpec(range))"
        guard !range.isEmpty else {
            throw HTTPError(.invalidArgument, operation: op, url: url, message: "empty range")
        }
        guard range.count <= UInt64(buffer.count) else {
            throw HTTPError(.invalidArgument, operation: op, url: url,
                            message: "buffer of \(buffer.count) bytes is smaller than the range (\(range.count) bytes)")
        }
        if let resource, range.upperBound > resource.size {
            throw HTTPError(.invalidArgument, operation: op, url: url,
                            message: "range ends past the end of the file (\(resource.size) bytes)")
        }
        try checkURL(url, op)
        let total = Int(range.count)
        var done = 0
        try withRetries(op, url) { handle throws(HTTPError) in
            // After a truncated attempt only the rest is asked for: a flaky
            // link still makes progress on a large block.
            let part = range.lowerBound + UInt64(done)..<range.upperBound
            let dest = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<total])
            let t = CurlTransfer(sink: .buffer(dest), requested: part,
                                 expectedTotal: resource?.size, expectedTag: resource?.entityTag)
            let code = try perform(handle, url: url, range: part, ifMatch: resource?.entityTag, transfer: t, op)
            // Bytes are accepted only after the 206's Content-Range (and the
            // file's size/ETag) matched, so they are the right ones even if the
            // transfer broke later.
            done += t.received
            try checkStop(t, code: code, handle, op, url)
            switch t.status {
            case 206:
                if code != CURLE_OK { throw transportError(code, handle, op, url, status: 206) }
                if t.received == 0 {
                    // No body, so the callback never checked the headers.
                    guard let value = t.contentRange, let cr = ContentRange(header: value), cr.matches(part) else {
                        throw badContentRange(t.contentRange, for: part, op, url)
                    }
                }
                guard done == total else {
                    throw HTTPError(.transport, operation: op, url: url,
                                    message: "short body: \(done) of \(total) bytes", status: 206,
                                    remedy: "the connection ended early; check the server and the network",
                                    isTransient: true)
                }
            case 200:
                throw rangeIgnored(op, url)
            default:
                throw statusError(t, handle, code, op, url)
            }
        }
        return total
    }

    /// Downloads the whole file at `url` (a hashmap, a checksum list), at most
    /// `limit` bytes: a wrong URL pointing at an image must not fill memory.
    public func getAll(_ url: String, limit: Int) throws(HTTPError) -> [UInt8] {
        let op = "get"
        try checkURL(url, op)
        guard limit >= 0 else {
            throw HTTPError(.invalidArgument, operation: op, url: url, message: "negative size limit \(limit)")
        }
        return try withRetries(op, url) { handle throws(HTTPError) -> [UInt8] in
            let t = CurlTransfer(sink: .collect(limit: limit), requested: nil)
            let code = try perform(handle, url: url, range: nil, ifMatch: nil, transfer: t, op)
            try checkStop(t, code: code, handle, op, url)
            switch t.status {
            case 200:
                if code != CURLE_OK { throw transportError(code, handle, op, url, status: 200) }
                return t.collected
            default:
                throw statusError(t, handle, code, op, url)
            }
        }
    }

    /// Downloads the whole file at `url` into `buffer`; returns its length.
    /// A file larger than the buffer is an error (`.tooLarge`): for blocks
    /// fetched by name (Pithos), whose size is bounded by the block size.
    public func getAll(_ url: String, into buffer: UnsafeMutableRawBufferPointer) throws(HTTPError) -> Int {
        let op = "get"
        try checkURL(url, op)
        return try withRetries(op, url) { handle throws(HTTPError) -> Int in
            let t = CurlTransfer(sink: .buffer(buffer), requested: nil)
            let code = try perform(handle, url: url, range: nil, ifMatch: nil, transfer: t, op)
            try checkStop(t, code: code, handle, op, url)
            switch t.status {
            case 200:
                if code != CURLE_OK { throw transportError(code, handle, op, url, status: 200) }
                return t.received
            default:
                throw statusError(t, handle, code, op, url)
            }
        }
    }

    // MARK: - Attempts

    /// Runs `attempt` until it succeeds, fails for good, or retries run out.
    private func withRetries<T>(_ op: String, _ url: String,
                                _ attempt: (CurlEasy) throws(HTTPError) -> T) throws(HTTPError) -> T {
        guard let handle = pool.take() else {
            throw HTTPError(.setup, operation: op, url: url, message: "curl_easy_init failed (out of memory?)")
        }
        defer { pool.give(handle) }
        var n = 1
        while true {
            do {
                return try attempt(handle)
            } catch var error {
                error.attempts = n
                guard error.isTransient, n <= options.maxRetries else {
                    count { $0.failures += 1 }
                    throw error
                }
                let delay = HTTPClient.retryDelay(after: n, options: options, retryAfter: error.retryAfter,
                                                  jitter: Double.random(in: 0...1))
                Thread.sleep(forTimeInterval: delay.secondsDouble)
                n += 1
                count { $0.retries += 1 }
            }
        }
    }

    /// Backoff before the retry that follows attempt `n` (1-based):
    /// `base * 2^(n-1)` capped at `retryMaxDelay`, of which a random half is
    /// dropped ("equal jitter": still backs off, but many fillers failing
    /// together do not come back in lockstep). A server's Retry-After is
    /// honoured up to the cap.
    static func retryDelay(after n: Int, options: HTTPOptions, retryAfter: Duration?, jitter: Double) -> Duration {
        let cap = options.retryMaxDelay.secondsDouble
        let exponential = min(cap, options.retryBaseDelay.secondsDouble * pow(2, Double(min(n - 1, 62))))
        var seconds = exponential * (0.5 + 0.5 * min(max(jitter, 0), 1))
        if let retryAfter { seconds = max(seconds, min(retryAfter.secondsDouble, cap)) }
        return .milliseconds(Int((seconds * 1000).rounded()))
    }

    private func count(_ update: (inout HTTPStatistics) -> Void) {
        statsLock.lock()
        update(&stats)
        statsLock.unlock()
    }

    /// One request on `handle`. The handle is reset first (nothing leaks from
    /// the previous request) but keeps its connection cache.
    private func perform(_ handle: CurlEasy, url: String, range: Range<UInt64>?, ifMatch: String?,
                         transfer t: CurlTransfer, _ op: String) throws(HTTPError) -> CURLcode {
        let c = handle.raw
        curl_easy_reset(c)
        handle.errorBuffer[0] = 0
        var headers: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(headers) }

        func check(_ rc: CURLcode, _ name: String) throws(HTTPError) {
            guard rc == CURLE_OK else {
                throw HTTPError(.setup, operation: op, url: url, message: "libcurl refused option \(name)",
                                cause: String(cString: curl_easy_strerror(rc)),
                                remedy: "libcurl 7.85 or newer is required")
            }
        }
        func long(_ o: CURLoption, _ v: Int, _ name: String) throws(HTTPError) {
            try check(archip_curl_setopt_long(c, o, v), name)
        }
        func string(_ o: CURLoption, _ v: String, _ name: String) throws(HTTPError) {
            // libcurl copies string options, so a temporary C string is enough.
            try check(v.withCString { archip_curl_setopt_string(c, o, $0) }, name)
        }

        try string(CURLOPT_URL, url, "URL")
        try long(CURLOPT_NOSIGNAL, 1, "NOSIGNAL")
        try string(CURLOPT_USERAGENT, options.userAgent, "USERAGENT")
        try string(CURLOPT_PROTOCOLS_STR, "http,https", "PROTOCOLS_STR")
        try string(CURLOPT_REDIR_PROTOCOLS_STR, "http,https", "REDIR_PROTOCOLS_STR")
        try long(CURLOPT_FOLLOWLOCATION, options.maxRedirects > 0 ? 1 : 0, "FOLLOWLOCATION")
        try long(CURLOPT_MAXREDIRS, options.maxRedirects, "MAXREDIRS")
        try long(CURLOPT_CONNECTTIMEOUT_MS, max(1, options.connectTimeout.wholeMilliseconds), "CONNECTTIMEOUT_MS")
        if options.lowSpeedLimit > 0 {
            try long(CURLOPT_LOW_SPEED_LIMIT, options.lowSpeedLimit, "LOW_SPEED_LIMIT")
            // libcurl counts whole seconds; round up so a sub-second setting still arms it.
            try long(CURLOPT_LOW_SPEED_TIME, max(1, (options.lowSpeedTime.wholeMilliseconds + 999) / 1000), "LOW_SPEED_TIME")
        }
        try long(CURLOPT_TCP_KEEPALIVE, 1, "TCP_KEEPALIVE")
        try long(CURLOPT_BUFFERSIZE, options.receiveBufferSize, "BUFFERSIZE")
        try long(CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_2, "SSLVERSION")
        if let ca = options.caCertificatePath { try string(CURLOPT_CAINFO, ca, "CAINFO") }
        if options.insecure {
            try long(CURLOPT_SSL_VERIFYPEER, 0, "SSL_VERIFYPEER")
            try long(CURLOPT_SSL_VERIFYHOST, 0, "SSL_VERIFYHOST")
        }
        if let range { try string(CURLOPT_RANGE, httpRangeSpec(range), "RANGE") }
        if let ifMatch {
            headers = curl_slist_append(headers, "If-Match: \(ifMatch)")
            try check(archip_curl_setopt_pointer(c, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(headers)), "HTTPHEADER")
        }
        try check(archip_curl_setopt_pointer(c, CURLOPT_ERRORBUFFER, UnsafeMutableRawPointer(handle.errorBuffer)), "ERRORBUFFER")
        try check(archip_curl_setopt_write_function(c, curlWriteCallback), "WRITEFUNCTION")
        try check(archip_curl_setopt_header_function(c, curlHeaderCallback), "HEADERFUNCTION")
        let context = Unmanaged.passUnretained(t).toOpaque()
        try check(archip_curl_setopt_pointer(c, CURLOPT_WRITEDATA, context), "WRITEDATA")
        try check(archip_curl_setopt_pointer(c, CURLOPT_HEADERDATA, context), "HEADERDATA")

        let code = withExtendedLifetime(t) { curl_easy_perform(c) }
        count {
            $0.requests += 1
            $0.bytesReceived += UInt64(t.received)
        }
        return code
    }

    // MARK: - Classification

    private func checkURL(_ url: String, _ op: String) throws(HTTPError) {
        let lower = url.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://") else {
            throw HTTPError(.invalidArgument, operation: op, url: url, message: "not an http:// or https:// URL")
        }
    }

    /// A callback stopped the transfer: say why.
    private func checkStop(_ t: CurlTransfer, code: CURLcode, _ handle: CurlEasy, _ op: String, _ url: String) throws(HTTPError) {
        guard let reason = t.stopReason else { return }
        switch reason {
        case .rangeIgnored:
            throw rangeIgnored(op, url)
        case .wrongContentRange(let value):
            throw badContentRange(Substring(value), for: t.requested ?? 0..<0, op, url)
        case .changed(let detail):
            throw HTTPError(.changed, operation: op, url: url, message: "the file changed on the server while being read",
                            status: t.status, cause: detail,
                            remedy: "the image was replaced; start the fill again")
        case .longerThanRequested:
            throw HTTPError(.badResponse, operation: op, url: url, message: "the server sent more bytes than the range asked for",
                            status: t.status, remedy: "the server's range support is broken; use another server")
        case .tooLarge(let limit, let announced):
            throw HTTPError(.tooLarge, operation: op, url: url,
                            message: "larger than the limit of \(limit) bytes" + (announced.map { " (\($0) bytes)" } ?? ""),
                            status: t.status, remedy: "check that the URL names the small file meant (a hashmap, not an image)")
        case .errorBodyTooLong:
            // The status says what went wrong; the body was only cut short.
            throw statusError(t, handle, CURLE_OK, op, url)
        }
    }

    private func outOfRange(total: UInt64?, status: Int, _ op: String, _ url: String) -> HTTPError {
        HTTPError(.outOfRange, operation: op, url: url,
                  message: "the range ends past the end of the file" + (total.map { " (\($0) bytes)" } ?? ""),
                  status: status,
                  remedy: "if the size was read before, the image was truncated or replaced on the server; start again")
    }

    private func rangeIgnored(_ op: String, _ url: String) -> HTTPError {
        HTTPError(.rangeNotSupported, operation: op, url: url,
                  message: "the server ignores HTTP range requests (200 OK with the whole file instead of 206)",
                  status: 200,
                  remedy: "serve the image from a server with range support (nginx, Apache, an object store), or download it and fill from file:")
    }

    private func badContentRange(_ value: Substring?, for range: Range<UInt64>, _ op: String, _ url: String) -> HTTPError {
        // Servers answer a range running past the end with the part that
        // exists (RFC 9110 §14.1.1): that is a caller's range, not a broken server.
        if let value, let cr = ContentRange(header: value), cr.first == range.lowerBound,
           let total = cr.total, range.upperBound > total {
            return outOfRange(total: total, status: 206, op, url)
        }
        return HTTPError(.badResponse, operation: op, url: url,
                  message: "206 with the wrong Content-Range for bytes=\(range.isEmpty ? "?" : httpRangeSpec(range))",
                  status: 206, cause: "Content-Range: \(value.map(String.init) ?? "missing")",
                  remedy: "a proxy or the server mangles range requests; fetch from the origin server")
    }

    /// An HTTP status other than the one wanted (or a transfer that broke
    /// before any status).
    private func statusError(_ t: CurlTransfer, _ handle: CurlEasy, _ code: CURLcode, _ op: String, _ url: String) -> HTTPError {
        let status = t.status
        if status == 0 || (code != CURLE_OK && (200..<300).contains(status)) {
            return transportError(code, handle, op, url, status: status == 0 ? nil : status)
        }
        let reason = t.reason.isEmpty ? HTTPClient.reasonPhrase(status) : t.reason
        let message = "HTTP \(status)" + (reason.isEmpty ? "" : " \(reason)")
        switch status {
        case 408, 429, 500, 502, 503, 504, 507, 509, 520...599:
            var e = HTTPError(.httpStatus, operation: op, url: url, message: message, status: status,
                              remedy: "the server kept failing; try again later", isTransient: true)
            e.retryAfter = t.retryAfter.flatMap { UInt64(httpDigits: $0) }.map { Duration.seconds(Int64(min($0, 86400))) }
            return e
        case 404, 410:
            return HTTPError(.httpStatus, operation: op, url: url, message: message, status: status, remedy: "check the URL")
        case 401, 403:
            return HTTPError(.httpStatus, operation: op, url: url, message: message, status: status,
                             remedy: "check the credentials in the URL and the server's permissions")
        case 412:
            return HTTPError(.changed, operation: op, url: url, message: "the file changed on the server while being read",
                             status: status, cause: message, remedy: "the image was replaced; start the fill again")
        case 416:
            let total = t.contentRange.flatMap { ContentRange(header: $0) }?.total
            return outOfRange(total: total, status: 416, op, url)
        default:
            return HTTPError(.httpStatus, operation: op, url: url, message: message, status: status)
        }
    }

    private func transportError(_ code: CURLcode, _ handle: CurlEasy, _ op: String, _ url: String, status: Int?) -> HTTPError {
        let detail = handle.errorText
        let cause = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
        func make(_ c: HTTPError.Code, _ message: String, _ remedy: String?, transient: Bool) -> HTTPError {
            HTTPError(c, operation: op, url: url, message: message, status: status, cause: cause,
                      remedy: remedy, isTransient: transient)
        }
        switch code {
        case CURLE_OPERATION_TIMEDOUT:
            return make(.timeout, "timed out or stalled", "check the network path to the server", transient: true)
        case CURLE_COULDNT_CONNECT:
            return make(.transport, "cannot connect", "check that the server is up and the host and port are right", transient: true)
        case CURLE_COULDNT_RESOLVE_HOST:
            return make(.transport, "cannot resolve the host name", "check the host name and DNS", transient: true)
        case CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE, CURLE_GOT_NOTHING, CURLE_HTTP2,
             CURLE_HTTP2_STREAM, CURLE_SSL_CONNECT_ERROR:
            return make(.transport, "connection broken", "check the server and the network", transient: true)
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_INVALIDCERTSTATUS,
             CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            return make(.tls, "the server's TLS certificate did not verify",
                        "use --cacert FILE with the CA that signed it (a private CA); --insecure skips verification, for tests only",
                        transient: false)
        case CURLE_SSL_CACERT_BADFILE, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER, CURLE_SSL_ENGINE_NOTFOUND:
            return make(.tls, "TLS setup failed", "check that --cacert names a readable PEM file", transient: false)
        case CURLE_TOO_MANY_REDIRECTS:
            return make(.badResponse, "too many redirects", "check the URL", transient: false)
        case CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL:
            return make(.invalidArgument, "bad URL", "check the URL", transient: false)
        default:
            return make(.transport, "transfer failed", nil, transient: false)
        }
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 206: "Partial Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 408: "Request Timeout"
        case 410: "Gone"
        case 412: "Precondition Failed"
        case 416: "Range Not Satisfiable"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        default: ""
        }
    }
}
