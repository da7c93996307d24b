/// A volume or snapshot name, checked before it touches a path or object name.
///
/// Accepted: Ganeti's `UUID.ext.diskN` and `UUID.ext.diskN.snap`, Cyclades'
/// `snf-vol-N`, and plain names of `[A-Za-z0-9._-]`, 1 to 128 characters, that
/// start with a letter or digit and contain no `..`.
public struct VolumeName: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    public let value: String
    public static let maximumLength = 128

    public init(_ text: String) throws {
        guard !text.isEmpty else { throw StoreError(.invalidName, "invalid name '': empty") }
        guard text.utf8.count <= VolumeName.maximumLength else {
            throw StoreError(.invalidName, "invalid name '\(VolumeName.shown(text))': longer than \(VolumeName.maximumLength) characters")
        }
        for byte in text.utf8 {
            let ok = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) ||
                (byte >= 0x61 && byte <= 0x7A) || byte == 0x2E || byte == 0x5F || byte == 0x2D
            guard ok else {
                throw StoreError(.invalidName, "invalid name '\(VolumeName.shown(text))': only letters, digits, '.', '_' and '-' are allowed")
            }
        }
        let first = text.utf8.first!
        guard first != 0x2E, first != 0x2D, first != 0x5F else {
            throw StoreError(.invalidName, "invalid name '\(VolumeName.shown(text))': must start with a letter or digit")
        }
        guard !text.contains("..") else {
            throw StoreError(.invalidName, "invalid name '\(VolumeName.shown(text))': must not contain '..'")
        }
        value = text
    }

    /// Escapes control characters so an error line stays one line.
    static func shown(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(140) {
            if scalar.value < 0x20 || scalar.value == 0x7F { out += "\\x" + String(scalar.value, radix: 16) }
            else { out.unicodeScalars.append(scalar) }
        }
        return out
    }

    public var description: String { value }
    public static func < (a: VolumeName, b: VolumeName) -> Bool { a.value < b.value }

    public init(from decoder: Decoder) throws {
        try self.init(try decoder.singleValueContainer().decode(String.self))
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value)
    }
}

/// Identity of one map layer (a volume's writable top, or a frozen snapshot layer).
public struct LayerID: Hashable, Sendable, CustomStringConvertible {
    public let raw: [UInt8]   // 16 bytes

    public init(raw: [UInt8]) {
        precondition(raw.count == 16)
        self.raw = raw
    }

    public static func random() -> LayerID {
        var g = SystemRandomNumberGenerator()
        return LayerID(raw: (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) })
    }

    public static let none = LayerID(raw: [UInt8](repeating: 0, count: 16))
    public var isNone: Bool { raw.allSatisfy { $0 == 0 } }

    public var hex: String { Hex.encode(raw) }
    public var description: String { hex }

    public init?(hex: String) {
        guard hex.utf8.count == 32, let bytes = Hex.decode(hex) else { return nil }
        self.init(raw: bytes)
    }
}

enum Hex {
    static let digits = Array("0123456789abcdef".utf8)

    static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = nibble(u[i]), let l = nibble(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
}
