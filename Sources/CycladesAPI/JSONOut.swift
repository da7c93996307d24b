import Foundation

/// The bytes of the API's JSON (ResponseEncoder writes through it): the same
/// as JSONSerialization with `.withoutEscapingSlashes` (`"` `\` and control
/// characters escaped, everything else, non-ASCII too, as UTF-8), without its
/// cost on Linux (~0.1 ms per volume of a list).
struct JSONWriter {
    var out: [UInt8] = []

    init(capacity: Int = 256) { out.reserveCapacity(capacity) }

    mutating func writeInt(_ n: Int) {
        if n == 0 { out.append(UInt8(ascii: "0")); return }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var m = n.magnitude, count = 0
        withUnsafeMutableBytes(of: &digits) { buf in
            while m > 0 { buf[19 - count] = UInt8(ascii: "0") + UInt8(m % 10); m /= 10; count += 1 }
            if n < 0 { out.append(UInt8(ascii: "-")) }
            out.append(contentsOf: buf[(20 - count)...])
        }
    }

    mutating func writeString(_ s: String) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { u in
            var start = 0
            for i in 0..<u.count {
                let c = u[i]
                guard c < 0x20 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") else { continue }
                if start < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: u[start..<i])) }
                start = i + 1
                out.append(UInt8(ascii: "\\"))
                switch c {
                case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
                case 0x08: out.append(UInt8(ascii: "b"))
                case 0x0C: out.append(UInt8(ascii: "f"))
                case 0x0A: out.append(UInt8(ascii: "n"))
                case 0x0D: out.append(UInt8(ascii: "r"))
                case 0x09: out.append(UInt8(ascii: "t"))
                default:
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(c >> 4)], hex[Int(c & 15)]])
                }
            }
            if start < u.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: u[start...])) }
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension Date {
    /// OpenStack's timestamp form: 2024-01-02T03:04:05.000000 (as
    /// `String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06d")`, which costs
    /// several microseconds a call on Linux; three per volume in a list).
    var openstack: String {
        let t = timeIntervalSince1970
        var secs = time_t(t.rounded(.down))
        var tm = tm()
        gmtime_r(&secs, &tm)
        let micros = Int((t - t.rounded(.down)) * 1_000_000)
        let year = Int(tm.tm_year) + 1900
        guard (0...9999).contains(year) else {
            return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06d", year, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                          Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), micros)
        }
        return String(unsafeUninitializedCapacity: 26) { b in
            func put(_ at: Int, _ value: Int, _ width: Int) {
                var v = value
                for k in stride(from: at + width - 1, through: at, by: -1) { b[k] = UInt8(ascii: "0") + UInt8(v % 10); v /= 10 }
            }
            put(0, year, 4); b[4] = UInt8(ascii: "-"); put(5, Int(tm.tm_mon) + 1, 2); b[7] = UInt8(ascii: "-"); put(8, Int(tm.tm_mday), 2)
            b[10] = UInt8(ascii: "T"); put(11, Int(tm.tm_hour), 2); b[13] = UInt8(ascii: ":"); put(14, Int(tm.tm_min), 2)
            b[16] = UInt8(ascii: ":"); put(17, Int(tm.tm_sec), 2); b[19] = UInt8(ascii: "."); put(20, micros, 6)
            return 26
        }
    }
}
