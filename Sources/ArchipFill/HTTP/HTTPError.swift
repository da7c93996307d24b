/// The one error type of the HTTP(S) sources: what was asked of which URL,
/// what the server or the network answered, how many attempts were made, and
/// what the operator can do about it.
///
/// `description` is one line for `archip: <description>`, e.g.
/// `get bytes=0-4194303 https://img.example/deb.raw: HTTP 503 Service Unavailable (7 attempts); the server kept failing, try again later`.
/// URLs are always shown with the password and secret query values redacted.
public struct HTTPError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// A URL, range or buffer the caller got wrong; nothing was sent.
        case invalidArgument
        /// The server answered with a status that is not what was asked for (404, 403, 5xx, ...).
        case httpStatus
        /// The connection failed: refused, reset, truncated, name not resolved.
        case transport
        /// Connecting took too long, or the transfer stalled below the low-speed limit.
        case timeout
        /// TLS failed: the certificate did not verify, or the CA file is unusable.
        case tls
        /// The server ignores Range (answers 200 with the whole file).
        case rangeNotSupported
        /// The server broke the protocol: wrong Content-Range, more bytes than asked, missing size.
        case badResponse
        /// The range asked for ends past the end of the file (416, or a 206 cut short at the end).
        case outOfRange
        /// The file changed on the server while it was being read (size, ETag).
        case changed
        /// A whole-file download was larger than its limit.
        case tooLarge
        /// libcurl could not be set up (init failed, option unsupported by this libcurl).
        case setup
    }

    public var code: Code
    /// What was attempted: `size`, `get bytes=A-B`, `get`.
    public var operation: String
    /// The URL with credentials redacted.
    public var url: String
    /// The last HTTP status received, if any.
    public var status: Int?
    /// libcurl's error (or the server's reason phrase / the detail that was wrong).
    public var cause: String?
    /// Requests made for this operation, the failing one included.
    public var attempts: Int
    public var message: String
    /// What to do about it, for the operator.
    public var remedy: String?
    /// Whether trying again could help; set where the error is classified.
    public var isTransient: Bool
    /// The server's Retry-After, honoured (up to the backoff cap) before the next attempt.
    var retryAfter: Duration?
    public var file: String
    public var line: Int

    public init(_ code: Code, operation: String, url: String, message: String,
                status: Int? = nil, cause: String? = nil, attempts: Int = 1,
                remedy: String? = nil, isTransient: Bool = false,
                file: String = #fileID, line: Int = #line) {
        self.code = code
        self.operation = operation
        self.url = redactURL(url)
        self.message = message
        self.status = status
        self.cause = cause
        self.attempts = attempts
        self.remedy = remedy
        self.isTransient = isTransient
        self.file = file
        self.line = line
    }

    public var description: String {
        var s = "\(operation) \(url): \(message)"
        if let cause, !cause.isEmpty { s += ": \(cause)" }
        s += attempts == 1 ? " (1 attempt)" : " (\(attempts) attempts)"
        if let remedy { s += "; \(remedy)" }
        return s
    }
}

/// Query parameters whose values are credentials in common image URLs
/// (S3/Swift pre-signed links, token-authenticated mirrors).
private let secretQueryKeys = ["signature", "sig", "token", "password", "passwd", "secret", "key",
                               "credential", "auth", "x-amz-security-token", "temp_url_sig"]

/// `scheme://user:password@host/p?token=x` -> `scheme://user:***@host/p?token=***`.
/// Errors and logs travel to tickets and chat; credentials must not.
public func redactURL(_ url: String) -> String {
    guard let schemeEnd = url.range(of: "://") else { return url }
    let afterScheme = url[schemeEnd.upperBound...]
    let authorityEnd = afterScheme.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? afterScheme.endIndex
    var authority = String(afterScheme[..<authorityEnd])
    if let at = authority.lastIndex(of: "@") {
        let userinfo = authority[..<at]
        if let colon = userinfo.firstIndex(of: ":") {
            authority = String(userinfo[..<colon]) + ":***" + String(authority[at...])
        }
    }
    var rest = String(afterScheme[authorityEnd...])
    if let q = rest.firstIndex(of: "?") {
        let fragmentStart = rest[q...].firstIndex(of: "#") ?? rest.endIndex
        let query = rest[rest.index(after: q)..<fragmentStart]
        let redacted = query.split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            guard let eq = pair.firstIndex(of: "=") else { return String(pair) }
            let key = pair[..<eq].lowercased()
            let secret = secretQueryKeys.contains { key == $0 || key.hasSuffix("-" + $0) || key.hasSuffix("_" + $0) || key.hasSuffix("." + $0) }
            return secret ? String(pair[...eq]) + "***" : String(pair)
        }.joined(separator: "&")
        rest = String(rest[..<q]) + "?" + redacted + String(rest[fragmentStart...])
    }
    return String(url[..<schemeEnd.upperBound]) + authority + rest
}
