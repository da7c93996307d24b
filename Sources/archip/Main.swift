import ArchipStore
import ArgumentParser
import Foundation

/// Entry point: maps every error to one line on stderr and an exit status
/// (1 = the operation failed, 2 = the command line was wrong).
@main
enum Main {
    static func main() {
        do {
            var command = try Archip.parseAsRoot(GlobalOptions.hoisted(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch let e as StoreError {
            fail("\(e)", status: isUsage(e) ? 2 : 1)
        } catch let e as ExitCode {
            // A command that already said everything (e.g. verify's report).
            exit(e.rawValue)
        } catch let e as CLIError {
            fail(e.message, status: e.status)
        } catch {
            let code = Archip.exitCode(for: error)
            if code == .success {
                print(Archip.fullMessage(for: error))
                exit(0)
            }
            guard code == .validationFailure else {
                // An error from the operation itself (e.g. HTTPError from a source).
                fail("\(error)", status: 1)
            }
            let message = Archip.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            fail("\(message) (see 'archip --help')", status: 2)
        }
    }

    static func isUsage(_ e: StoreError) -> Bool {
        [.invalidName, .invalidSize, .invalidArgument].contains(e.code)
    }

    static func fail(_ message: String, status: Int32) -> Never {
        let line = StoreError.bounded(message.replacingOccurrences(of: "\n", with: " "))
        FileHandle.standardError.write(Data("archip: \(line)\n".utf8))
        exit(status)
    }
}

struct CLIError: Error {
    var message: String
    var status: Int32 = 1
}

struct Archip: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archip",
        abstract: "Archipelago-style volume store: thin volumes, O(1) snapshots and clones, content-addressed blocks.",
        discussion: """
        The store is a folder (on a cluster: a shared file system mounted on every node).
        It is found from --store, else $ARCHIP_STORE, else 'path' in the [store] section of
        /etc/archip/archip.conf (or --config / $ARCHIP_CONFIG).

        Sizes take binary units: 512M, 10G, 1T (a bare number is bytes).
        Exit status: 0 success, 1 the operation failed, 2 the command line was wrong.
        """,
        subcommands: [
            Init.self, Create.self, Remove.self, Rename.self, List.self, Info.self, Resize.self,
            Snapshot.self, Clone.self, Flatten.self, Hash.self, Verify.self, Repair.self,
            Lock.self, Unlock.self, GC.self, Import.self, Export.self, Write.self, Read.self, Fill.self,
            Serve.self, Attach.self, Detach.self, Open.self, Close.self, Attached.self,
            SetInfo.self,
        ]
    )
}
