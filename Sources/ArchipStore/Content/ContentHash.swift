import CCrypto

/// A SHA-256 digest. As a block address it is the Pithos block hash: SHA-256 of
/// the block's bytes with trailing zero bytes stripped (see docs/FORMAT.md).
public struct ContentHash: Hashable, Sendable, CustomStringConvertible, Comparable {
    // Four words, not [UInt8]: maps hold hundreds of thousands of these.
    public var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    public init(w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64) {
        self.w0 = w0; self.w1 = w1; self.w2 = w2; self.w3 = w3
    }

    public static let zero = ContentHash(w0: 0, w1: 0, w2: 0, w3: 0)

    public init(bytes p: UnsafeRawBufferPointer) {
        precondition(p.count == 32)
        w0 = p.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        w1 = p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        w2 = p.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        w3 = p.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
    }

    public init?(hex: String) {
        guard hex.utf8.count == 64, let bytes = Hex.decode(hex) else { return nil }
        self = bytes.withUnsafeBytes { ContentHash(bytes: $0) }
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        out.withUnsafeMutableBytes { p in
            p.storeBytes(of: w0, toByteOffset: 0, as: UInt64.self)
            p.storeBytes(of: w1, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: w2, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: w3, toByteOffset: 24, as: UInt64.self)
        }
        return out
    }

    public var hex: String { Hex.encode(bytes) }
    public var description: String { hex }

    public static func < (a: ContentHash, b: ContentHash) -> Bool { a.hex < b.hex }

    /// SHA-256 of the empty string: the Pithos hash of an all-zero block.
    public static let ofEmpty = SHA256.digest(UnsafeRawBufferPointer(start: nil, count: 0))
}

/// SHA-256 through OpenSSL's libcrypto (uses SHA-NI where the CPU has it).
public enum SHA256 {
    public static func digest(_ data: UnsafeRawBufferPointer) -> ContentHash {
        var md = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        let ok = md.withUnsafeMutableBufferPointer { out in
            EVP_Digest(data.baseAddress, data.count, out.baseAddress, &len, EVP_sha256(), nil)
        }
        if ok != 1 || len != 32 { fatalError("EVP_Digest(sha256) failed") }
        return md.withUnsafeBytes { ContentHash(bytes: $0) }
    }

    public static func digest(_ bytes: [UInt8]) -> ContentHash {
        bytes.withUnsafeBytes { digest($0) }
    }

    /// Pithos block hash: trailing zero bytes do not count.
    public static func blockHash(_ data: UnsafeRawBufferPointer) -> ContentHash {
        let n = ZeroScan.lengthWithoutTrailingZeros(data)
        return digest(UnsafeRawBufferPointer(rebasing: data[0..<n]))
    }

    public static func blockHash(_ bytes: [UInt8]) -> ContentHash {
        bytes.withUnsafeBytes { blockHash($0) }
    }
}

enum ZeroScan {
    /// Length of `data` once trailing zero bytes are removed; 0 for an all-zero buffer.
    static func lengthWithoutTrailingZeros(_ data: UnsafeRawBufferPointer) -> Int {
        var end = data.count
        guard end > 0, let base = data.baseAddress else { return 0 }
        // Word-sized steps from the end; data is mostly either full or all zero.
        while end >= 8 && base.loadUnaligned(fromByteOffset: end - 8, as: UInt64.self) == 0 {
            end -= 8
        }
        while end > 0 && base.load(fromByteOffset: end - 1, as: UInt8.self) == 0 {
            end -= 1
        }
        return end
    }

    static func isZero(_ data: UnsafeRawBufferPointer) -> Bool {
        lengthWithoutTrailingZeros(data) == 0
    }
}

/// Incremental SHA-256, for a whole-image digest fed block by block in order.
///
/// The calls are made outside `precondition`: this module is built with
/// `-Ounchecked` in release, which drops preconditions and what they evaluate
/// (it once dropped the init and every update: each digest came out zero).
public final class SHA256Stream: @unchecked Sendable {
    private let ctx: OpaquePointer

    public init() {
        guard let ctx = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new failed: out of memory") }
        self.ctx = ctx
        let ok = EVP_DigestInit_ex(ctx, EVP_sha256(), nil)
        if ok != 1 { fatalError("EVP_DigestInit_ex(sha256) failed") }
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func update(_ data: UnsafeRawBufferPointer) {
        if data.isEmpty { return }
        let ok = EVP_DigestUpdate(ctx, data.baseAddress, data.count)
        if ok != 1 { fatalError("EVP_DigestUpdate(sha256) failed") }
    }

    /// The digest. Call once.
    public func finish() -> ContentHash {
        var md = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        let ok = EVP_DigestFinal_ex(ctx, &md, &len)
        if ok != 1 || len != 32 { fatalError("EVP_DigestFinal_ex(sha256) failed") }
        return md.withUnsafeBytes { ContentHash(bytes: $0) }
    }
}
