/// A parsed `Content-Range` header (RFC 9110 §14.4), single range only: the
/// client never asks for several ranges in one request.
struct ContentRange: Equatable {
    /// First and last byte of the part sent; nil in `bytes */N` (416 replies).
    var first: UInt64?
    var last: UInt64?
    /// Size of the whole file; nil when the server sends `*` (unknown).
    var total: UInt64?

    /// `bytes 0-1023/4096`, `bytes 0-1023/*`, `bytes */4096`; nil for anything else.
    init?(header value: Substring) {
        let v = value.httpTrimmed()
        guard v.lowercased().hasPrefix("bytes ") else { return nil }
        let spec = v.dropFirst(6).httpTrimmed()
        guard let slash = spec.firstIndex(of: "/") else { return nil }
        let rangePart = spec[..<slash], totalPart = spec[spec.index(after: slash)...]
        if totalPart == "*" {
            total = nil
        } else {
            guard let t = UInt64(httpDigits: totalPart) else { return nil }
            total = t
        }
        if rangePart == "*" {
            guard total != nil else { return nil }
            first = nil; last = nil
            return
        }
        guard let dash = rangePart.firstIndex(of: "-"),
              let f = UInt64(httpDigits: rangePart[..<dash]),
              let l = UInt64(httpDigits: rangePart[rangePart.index(after: dash)...]),
              f <= l else { return nil }
        if let total, l >= total { return nil }
        first = f; last = l
    }

    init(first: UInt64?, last: UInt64?, total: UInt64?) {
        self.first = first; self.last = last; self.total = total
    }

    /// Whether this is exactly the part `range` asked for.
    func matches(_ range: Range<UInt64>) -> Bool {
        first == range.lowerBound && last.map { $0 + 1 } == range.upperBound
    }
}

extension UInt64 {
    /// Digits only: no sign, no spaces, no `0x` (header values, not Swift literals).
    init?<S: StringProtocol>(httpDigits s: S) {
        guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        self.init(s)
    }
}

extension StringProtocol {
    /// Without the optional white space (spaces, tabs) HTTP allows around values.
    func httpTrimmed() -> Substring {
        let s = Substring(self)
        let isOWS: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let start = s.firstIndex(where: { !isOWS($0) }),
              let end = s.lastIndex(where: { !isOWS($0) }) else { return s[s.endIndex...] }
        return s[start...end]
    }
}

/// `bytes=A-B` for libcurl's CURLOPT_RANGE (without the `bytes=`) and for messages.
func httpRangeSpec(_ r: Range<UInt64>) -> String { "\(r.lowerBound)-\(r.upperBound - 1)" }
