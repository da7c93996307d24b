import ArchipFill
import ArchipStore

/// HTTP(S) sources for the CLI. (Wired to the libcurl client in ArchipFill.)
enum RemoteSources {
    static func opener(cacert: String?, insecure: Bool) throws -> (any RemoteSourceOpener)? {
        nil
    }
}
