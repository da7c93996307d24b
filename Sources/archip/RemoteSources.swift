import ArchipFill
import ArchipStore

/// HTTP(S) sources for the CLI: the libcurl client, with the TLS options given.
enum RemoteSources {
    static func opener(cacert: String?, insecure: Bool) throws -> (any RemoteSourceOpener)? {
        do {
            return try HTTPRemoteOpener(options: HTTPOptions(caCertificatePath: cacert, insecure: insecure))
        } catch {
            throw StoreError(.io, "HTTP client: \(error)")
        }
    }
}
