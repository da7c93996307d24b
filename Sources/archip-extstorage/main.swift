import ArchipRados
import ArchipStore
import ExtStorage
import Foundation

// Ganeti's scripts inherit whatever environment its node daemon had: set
// PATH ourselves and read nothing but Ganeti's own variables.
setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1)
signal(SIGPIPE, SIG_IGN)

let program = (CommandLine.arguments.first.map { ($0 as NSString).lastPathComponent }) ?? "archip-extstorage"

func usage(_ problem: String? = nil) -> Never {
    if let problem { FileHandle.standardError.write(Data("\(program): \(problem)\n".utf8)) }
    FileHandle.standardError.write(Data((Usage.text(program: program) + "\n").utf8))
    exit(2)
}

// `archip-extstorage [--config FILE] ACTION`, or a link named after the action.
var action = Action(rawValue: program)
var configPath = ConfigFile.defaultPath
var args = Array(CommandLine.arguments.dropFirst())
while !args.isEmpty {
    let a = args.removeFirst()
    if a == "-h" || a == "--help" { usage() }
    if a == "--config" {
        guard !args.isEmpty else { usage("--config needs a file") }
        configPath = args.removeFirst()
    } else if a.hasPrefix("--config=") {
        configPath = String(a.dropFirst(9))
    } else if action == nil, let x = Action(rawValue: a) {
        action = x
    } else {
        usage("unexpected argument '\(a)' (Ganeti passes none; the call is described by VOL_* and EXTP_* variables)")
    }
}
guard let action else { usage("no action given") }

let env = GanetiEnvironment(ProcessInfo.processInfo.environment)
let volume = env.variables["VOL_NAME"]
let started = Date()
var log = CallLog(syslog: false)
do {
    let config = try ProviderConfig.load(configPath)
    if config.syslog { log = CallLog(syslog: true) }
    let callLog = log
    let provider = Provider(env: env, config: config, node: DaemonAttachments(config: config),
                            openStore: {
                                let store = try StoreOpener.open(config.storePath, node: config.node, mustExist: true, rados: config.rados)
                                store.leaseSettings = config.leases
                                return store
                            },
                            note: { callLog.note($0) })
    let lines = try provider.run(action)
    if !lines.isEmpty {
        FileHandle.standardOutput.write(Data(lines.map { $0 + "\n" }.joined().utf8))
    }
    log.finished(action.rawValue, volume: volume, started: started, error: nil)
    exit(0)
} catch let e as ExtStorageError {
    log.finished(action.rawValue, volume: volume, started: started, error: e)
    exit(e.exitStatus)
} catch let e as StoreError {
    let x = ExtStorageError(e)
    log.finished(action.rawValue, volume: volume, started: started, error: x)
    exit(x.exitStatus)
} catch {
    log.finished(action.rawValue, volume: volume, started: started, error: error)
    exit(1)
}
