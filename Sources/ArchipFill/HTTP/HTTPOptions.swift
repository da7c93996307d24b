/// How an `HTTPClient` talks to servers. The defaults suit images on a
/// remote server over a WAN; tests shorten the delays.
public struct HTTPOptions: Sendable {
    /// PEM file of CA certificates to trust instead of the system store
    /// (`--cacert`), for images on servers with a private CA.
    public var caCertificatePath: String?
    /// Skip TLS certificate and host name verification (`--insecure`).
    /// For tests only: an attacker could then serve any bytes.
    public var insecure: Bool
    /// Longest wait for the TCP and TLS handshakes.
    public var connectTimeout: Duration
    /// A transfer slower than `lowSpeedLimit` bytes per second for
    /// `lowSpeedTime` counts as stalled: it is dropped and retried. There is
    /// no total timeout, so large blocks on slow but working links still finish.
    public var lowSpeedLimit: Int
    public var lowSpeedTime: Duration
    /// Retries after the first attempt, for transient failures only (5xx,
    /// 408, 429, timeouts, resets, refused connections, truncated bodies).
    public var maxRetries: Int
    /// Backoff before retry n is about `retryBaseDelay * 2^(n-1)`, jittered,
    /// never more than `retryMaxDelay` (which also caps a server's Retry-After).
    public var retryBaseDelay: Duration
    public var retryMaxDelay: Duration
    public var userAgent: String
    /// Images often sit behind a redirect (mirrors, object-store links).
    public var maxRedirects: Int
    /// libcurl's receive buffer per connection: larger means fewer callbacks
    /// and syscalls per block.
    public var receiveBufferSize: Int

    public init(caCertificatePath: String? = nil,
                insecure: Bool = false,
                connectTimeout: Duration = .seconds(15),
                lowSpeedLimit: Int = 1024,
                lowSpeedTime: Duration = .seconds(30),
                maxRetries: Int = 6,
                retryBaseDelay: Duration = .milliseconds(200),
                retryMaxDelay: Duration = .seconds(30),
                userAgent: String = "archip/1",
                maxRedirects: Int = 5,
                receiveBufferSize: Int = 256 << 10) {
        self.caCertificatePath = caCertificatePath
        self.insecure = insecure
        self.connectTimeout = connectTimeout
        self.lowSpeedLimit = lowSpeedLimit
        self.lowSpeedTime = lowSpeedTime
        self.maxRetries = maxRetries
        self.retryBaseDelay = retryBaseDelay
        self.retryMaxDelay = retryMaxDelay
        self.userAgent = userAgent
        self.maxRedirects = maxRedirects
        self.receiveBufferSize = receiveBufferSize
    }
}

extension Duration {
    var secondsDouble: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }

    var wholeMilliseconds: Int {
        let (s, atto) = components
        return Int(s) * 1000 + Int(atto / 1_000_000_000_000_000)
    }
}
