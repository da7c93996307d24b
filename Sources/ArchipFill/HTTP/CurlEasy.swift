import CCurl
import Foundation

/// curl_global_init must run once before any handle exists and is not
/// thread-safe on every libcurl build; a Swift global is initialised exactly
/// once, under a lock, on first use.
private let curlGlobalInit: CURLcode = {
    // Transfers run with CURLOPT_NOSIGNAL (libcurl's own SIGPIPE juggling swaps
    // the process-wide handler per call, which races between threads), so a
    // write to a connection the server reset can raise SIGPIPE and kill the
    // process. Ignore it, unless the program installed a handler of its own.
    var current = sigaction()
    if sigaction(SIGPIPE, nil, &current) == 0, current.__sigaction_handler.sa_handler == nil {
        signal(SIGPIPE, SIG_IGN)
    }
    return curl_global_init(Int(CURL_GLOBAL_ALL))
}()

func ensureCurlInitialised() throws(HTTPError) {
    // libcurl is loaded here, by the first HTTP(S) source, not at start.
    if let why = archip_curl_load() {
        throw HTTPError(.setup, operation: "init", url: "", message: "libcurl is not available", cause: String(cString: why))
    }
    guard curlGlobalInit == CURLE_OK else {
        throw HTTPError(.setup, operation: "init", url: "", message: "curl_global_init failed",
                        cause: String(cString: curl_easy_strerror(curlGlobalInit)))
    }
}

/// One libcurl easy handle. It owns a connection cache, so reusing it for
/// the next request of the same job keeps the TCP/TLS connection alive.
/// Used by one thread at a time (the pool hands it out exclusively).
final class CurlEasy {
    let raw: UnsafeMutableRawPointer
    /// libcurl writes its detailed message here (CURLOPT_ERRORBUFFER).
    let errorBuffer: UnsafeMutablePointer<CChar>

    init?() {
        guard let h = curl_easy_init() else { return nil }
        raw = h
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
    }

    deinit {
        curl_easy_cleanup(raw)
        errorBuffer.deallocate()
    }

    var errorText: String { String(cString: errorBuffer) }
}

/// Idle easy handles, one per job that ran recently. A job takes one for a
/// whole operation (all its attempts) and gives it back, so N concurrent
/// jobs end up with N warm connections and no job waits for another.
final class CurlHandlePool: @unchecked Sendable {
    private var idle: [CurlEasy] = []
    private let lock = NSLock()
    /// Beyond this, returned handles are closed: a burst of parallelism must
    /// not pin connections (and server slots) forever.
    let maxIdle: Int

    init(maxIdle: Int) { self.maxIdle = maxIdle }

    func take() -> CurlEasy? {
        lock.lock()
        let h = idle.popLast()
        lock.unlock()
        return h ?? CurlEasy()
    }

    func give(_ h: CurlEasy) {
        lock.lock()
        defer { lock.unlock() }
        if idle.count < maxIdle { idle.append(h) }
    }

    var idleCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return idle.count
    }
}

/// State of one request while libcurl runs it: where the body goes and the
/// headers of the final response. The callbacks decide, at the first body
/// byte, whether the body is the data asked for; anything else (an error
/// page, a 200 for a ranged request) never reaches the caller's buffer.
final class CurlTransfer {
    enum Sink {
        /// The body of a 206 for `requested` goes here, and must fit.
        case buffer(UnsafeMutableRawBufferPointer)
        /// The body of a 200 is collected, up to `limit` bytes.
        case collect(limit: Int)
    }

    let sink: Sink
    /// The byte range asked for; nil for a whole-file GET.
    let requested: Range<UInt64>?
    /// The file size and strong ETag the caller saw before: a 206 for another
    /// version of the file is refused before its first byte is used.
    let expectedTotal: UInt64?
    let expectedTag: String?

    // The last response's headers; a new status line (redirect, 100) resets them.
    var status = 0
    var reason = ""
    var contentRange: Substring?
    var contentLength: UInt64?
    var entityTag: String?
    var retryAfter: Substring?

    /// Body bytes accepted into the sink.
    var received = 0
    var collected: [UInt8] = []
    /// Set when a callback stopped the transfer on purpose (libcurl then
    /// reports CURLE_WRITE_ERROR); it says why.
    var stopReason: StopReason?
    private var bodyStarted = false
    private var accepting = false
    private var discarded = 0

    enum StopReason {
        case rangeIgnored
        case wrongContentRange(String)
        case changed(String)
        case longerThanRequested
        case tooLarge(limit: Int, announced: UInt64?)
        case errorBodyTooLong
    }

    init(sink: Sink, requested: Range<UInt64>?, expectedTotal: UInt64? = nil, expectedTag: String? = nil) {
        self.sink = sink
        self.requested = requested
        self.expectedTotal = expectedTotal
        self.expectedTag = expectedTag
    }

    func header(_ line: UnsafeRawBufferPointer) {
        // Header lines are short and few: a String per line is fine here.
        var text = Substring(String(decoding: line, as: UTF8.self))
        // "\r\n" is one Character in Swift: test for newlines, not for "\r".
        while let last = text.last, last.isNewline { text = text.dropLast() }
        if text.hasPrefix("HTTP/") {
            status = 0; reason = ""; contentRange = nil; contentLength = nil
            entityTag = nil; retryAfter = nil
            // The decision about the body belongs to the final response, not a redirect's.
            bodyStarted = false; accepting = false; discarded = 0
            let parts = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
            if parts.count >= 2, let code = Int(parts[1]) { status = code }
            if parts.count == 3 { reason = String(parts[2]) }
            return
        }
        guard let colon = text.firstIndex(of: ":") else { return }
        let name = text[..<colon].lowercased()
        let value = text[text.index(after: colon)...].httpTrimmed()
        switch name {
        case "content-range": contentRange = value
        case "content-length": contentLength = UInt64(httpDigits: value)
        case "etag": entityTag = String(value)
        case "retry-after": retryAfter = value
        default: break
        }
    }

    /// Returns the bytes consumed; anything else makes libcurl abort.
    func body(_ chunk: UnsafeRawBufferPointer) -> Int {
        if !bodyStarted {
            bodyStarted = true
            if let reason = decideOnBody() {
                stopReason = reason
                return 0
            }
        }
        guard accepting else {
            // Error pages are read (so the connection stays reusable) and
            // dropped; a huge one is cut, costing only the connection.
            discarded += chunk.count
            if discarded > 64 << 10 { stopReason = .errorBodyTooLong; return 0 }
            return chunk.count
        }
        switch sink {
        case .buffer(let dest):
            guard received + chunk.count <= dest.count else {
                // A range was checked against Content-Range, so overflowing it is a
                // broken server; a whole file simply does not fit.
                stopReason = requested == nil ? .tooLarge(limit: dest.count, announced: nil) : .longerThanRequested
                return 0
            }
            if let base = chunk.baseAddress, chunk.count > 0 {
                (dest.baseAddress! + received).copyMemory(from: base, byteCount: chunk.count)
            }
            received += chunk.count
        case .collect(let limit):
            guard collected.count + chunk.count <= limit else {
                stopReason = .tooLarge(limit: limit, announced: nil)
                return 0
            }
            collected.append(contentsOf: chunk)
            received += chunk.count
        }
        return chunk.count
    }

    /// At the first body byte all headers are in: is this the body we want?
    private func decideOnBody() -> StopReason? {
        if let requested {
            switch status {
            case 206:
                guard let value = contentRange, let cr = ContentRange(header: value), cr.matches(requested) else {
                    return .wrongContentRange(contentRange.map(String.init) ?? "missing")
                }
                if let expectedTotal, let total = cr.total, total != expectedTotal {
                    return .changed("its size is now \(total) bytes, was \(expectedTotal)")
                }
                if let expectedTag, let tag = entityTag, tag != expectedTag {
                    return .changed("its ETag is now \(tag), was \(expectedTag)")
                }
                accepting = true
            case 200:
                // The whole file is coming: stop before it floods the link.
                return .rangeIgnored
            default:
                accepting = false
            }
        } else {
            switch status {
            case 200:
                let limit: Int
                switch sink {
                case .collect(let l): limit = l
                case .buffer(let dest): limit = dest.count
                }
                if let n = contentLength, n > UInt64(limit) { return .tooLarge(limit: limit, announced: n) }
                accepting = true
            default:
                accepting = false
            }
        }
        return nil
    }
}

let curlWriteCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
    data, size, count, context in
    guard let context else { return 0 }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
    return transfer.body(UnsafeRawBufferPointer(start: data, count: size * count))
}

let curlHeaderCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
    data, size, count, context in
    guard let context else { return 0 }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(context).takeUnretainedValue()
    transfer.header(UnsafeRawBufferPointer(start: data, count: size * count))
    return size * count
}
