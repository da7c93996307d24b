import ArchipRados
import ArchipStore
import Foundation

/// `archip-torture hold --store S --volume V --node N --lease SECONDS
/// --skew SECONDS --byte B --length BYTES --out FILE`: holds V exclusively
/// with that lease and, every 100 ms, writes `length` bytes of B at offset 0
/// and flushes. After each acknowledged flush it appends `ok N` to FILE;
/// when a write is refused it appends `refused CODE: MESSAGE` and exits 3.
/// The fencing tests pause it (SIGSTOP) in its sleep, which follows each `ok`.
struct Holder {
    var store = ""
    var volume = ""
    var node = "holder"
    var lease = 2.0
    var skew = 0.5
    var byte: UInt8 = 0x58
    var length = 65536
    var out = ""

    init(_ args: [String]) throws {
        var options = OptionReader(args)
        while let o = options.next() {
            switch o {
            case "--store": store = try options.value(for: o)
            case "--volume": volume = try options.value(for: o)
            case "--node": node = try options.value(for: o)
            case "--lease": lease = Double(try options.value(for: o)) ?? lease
            case "--skew": skew = Double(try options.value(for: o)) ?? skew
            case "--byte": byte = UInt8(try options.value(for: o)) ?? byte
            case "--length": length = Int(try options.value(for: o)) ?? length
            case "--out": out = try options.value(for: o)
            default: throw TortureError("unknown option \(o)")
            }
        }
        guard !store.isEmpty, !volume.isEmpty, !out.isEmpty else { throw TortureError("hold needs --store, --volume and --out") }
    }

    func run() throws {
        let s = try StoreOpener.open(store, node: node, mustExist: true)
        s.leaseSettings = LeaseSettings(lease: lease, clockSkew: skew)
        guard let fh = FileHandle(forWritingAtPath: out) else { throw TortureError("cannot open \(out)") }
        func say(_ line: String) {
            fh.seekToEndOfFile()
            fh.write(Data((line + "\n").utf8))
        }
        s.leaseLog = { say("log \($0)") }
        let v = try s.open(try VolumeName(volume), mode: .exclusive)
        say("epoch \(v.epoch ?? 0)")
        let data = [UInt8](repeating: byte, count: length)
        var n = 0
        while true {
            do {
                try v.write(at: 0, data)
                try v.flush()
            } catch let e as StoreError {
                say("refused \(e.code.rawValue): \(e.description)")
                exit(3)
            }
            n += 1
            say("ok \(n)")
            usleep(100_000)
        }
    }
}
