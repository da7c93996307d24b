import Foundation

/// A size in bytes. Sizes are a type so that MiB from Ganeti, GiB from Cyclades
/// and bytes on disk never meet as bare integers.
public struct ByteCount: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    public var bytes: UInt64

    public init(_ bytes: UInt64) { self.bytes = bytes }
    public static func kibibytes(_ n: UInt64) -> ByteCount { ByteCount(n << 10) }
    public static func mebibytes(_ n: UInt64) -> ByteCount { ByteCount(n << 20) }
    public static func gibibytes(_ n: UInt64) -> ByteCount { ByteCount(n << 30) }
    public static func tebibytes(_ n: UInt64) -> ByteCount { ByteCount(n << 40) }

    public static let sector = ByteCount(512)
    /// Largest volume the map format supports in practice (2^50 = 1 PiB).
    public static let maximumVolumeSize = ByteCount(1 << 50)

    public static func < (a: ByteCount, b: ByteCount) -> Bool { a.bytes < b.bytes }

    public var description: String { ByteCount.format(bytes) }

    /// Human form: exact binary unit when it divides evenly, else bytes.
    public static func format(_ bytes: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 50, "P"), (1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
        for (scale, suffix) in units where bytes >= scale && bytes % scale == 0 {
            return "\(bytes / scale)\(suffix)"
        }
        return "\(bytes)"
    }

    /// Parses `10G`, `512M`, `1T`, `4096`, `10GiB`, `1.5G` is refused (no fractions).
    /// Suffixes are binary (K = 1024). A bare number is bytes.
    public init(parsing text: String) throws {
        let t = text.trimmingCharacters(in: .whitespaces)
        guard !t.isEmpty else { throw StoreError(.invalidSize, "invalid size '': empty") }
        var digits = Substring(t)
        var unitPart = ""
        while let last = digits.last, !last.isNumber {
            unitPart = String(last) + unitPart
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw StoreError(.invalidSize, "invalid size '\(text)': expected a whole number with an optional unit K, M, G, T or P (e.g. 10G)")
        }
        let shift: UInt64
        switch unitPart.uppercased() {
        case "", "B": shift = 0
        case "K", "KB", "KIB": shift = 10
        case "M", "MB", "MIB": shift = 20
        case "G", "GB", "GIB": shift = 30
        case "T", "TB", "TIB": shift = 40
        case "P", "PB", "PIB": shift = 50
        default:
            throw StoreError(.invalidSize, "invalid size '\(text)': unknown unit '\(unitPart)' (use K, M, G, T or P)")
        }
        guard let n = UInt64(digits) else {
            throw StoreError(.invalidSize, "invalid size '\(text)': too large")
        }
        let (value, overflow) = n.multipliedReportingOverflow(by: UInt64(1) << shift)
        guard !overflow else { throw StoreError(.invalidSize, "invalid size '\(text)': too large") }
        self.bytes = value
    }

    /// Checks that this is usable as a volume size.
    public func validatedVolumeSize(_ original: String? = nil) throws -> ByteCount {
        let shown = original ?? description
        guard bytes > 0 else { throw StoreError(.invalidSize, "invalid size '\(shown)': must be greater than zero") }
        guard bytes % ByteCount.sector.bytes == 0 else {
            throw StoreError(.invalidSize, "invalid size '\(shown)': must be a multiple of 512 bytes")
        }
        guard self <= ByteCount.maximumVolumeSize else {
            throw StoreError(.invalidSize, "invalid size '\(shown)': larger than the maximum volume size \(ByteCount.maximumVolumeSize)")
        }
        return self
    }
}
