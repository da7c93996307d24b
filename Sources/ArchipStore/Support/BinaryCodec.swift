/// Little-endian writer for the on-disk formats (docs/FORMAT.md).
struct BinaryWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    mutating func hash(_ h: ContentHash) {
        // Words are stored in memory order: the digest's own byte order.
        withUnsafeBytes(of: h.w0) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: h.w1) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: h.w2) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: h.w3) { bytes.append(contentsOf: $0) }
    }
    mutating func string(_ s: String) {
        let u = Array(s.utf8)
        u32(UInt32(u.count))
        bytes.append(contentsOf: u)
    }
}

/// Bounds-checked little-endian reader; every short read is a `.corrupt` error
/// naming the object, never a crash or a silent zero.
struct BinaryReader {
    let bytes: [UInt8]
    var offset: Int
    /// Reads stop here (a frame's body ends before its checksum).
    var end: Int
    let what: String

    init(_ bytes: [UInt8], offset: Int = 0, end: Int? = nil, what: String) {
        self.bytes = bytes
        self.offset = offset
        self.end = end ?? bytes.count
        self.what = what
    }

    var remaining: Int { end - offset }

    private mutating func take(_ n: Int) throws -> Int {
        guard n >= 0, remaining >= n else {
            throw StoreError(.corrupt, "\(what): truncated (needed \(n) bytes at offset \(offset), \(remaining) left)")
        }
        defer { offset += n }
        return offset
    }

    mutating func u8() throws -> UInt8 { bytes[try take(1)] }
    mutating func u16() throws -> UInt16 {
        let o = try take(2)
        return bytes.withUnsafeBytes { UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    }
    mutating func u32() throws -> UInt32 {
        let o = try take(4)
        return bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    }
    mutating func u64() throws -> UInt64 {
        let o = try take(8)
        return bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
    }
    mutating func raw(_ n: Int) throws -> [UInt8] {
        let o = try take(n)
        return Array(bytes[o..<(o + n)])
    }
    mutating func hash() throws -> ContentHash {
        let o = try take(32)
        return bytes.withUnsafeBytes { ContentHash(bytes: UnsafeRawBufferPointer(rebasing: $0[o..<(o + 32)])) }
    }
    mutating func string(max: Int = 1 << 20) throws -> String {
        let n = Int(try u32())
        guard n <= max else { throw StoreError(.corrupt, "\(what): string of \(n) bytes is too long") }
        let b = try raw(n)
        guard let s = String(validating: b, as: UTF8.self) else {
            throw StoreError(.corrupt, "\(what): string is not UTF-8")
        }
        return s
    }
}

/// The checksummed frame around every binary object: magic, version, body
/// length, body, SHA-256 of everything before it. A torn or flipped byte is
/// detected here, before any field is believed.
enum Frame {
    static let headerSize = 8 + 4 + 8
    static let trailerSize = 32

    static func seal(magic: [UInt8], version: UInt32, body: [UInt8]) -> [UInt8] {
        precondition(magic.count == 8)
        var w = BinaryWriter(capacity: body.count + headerSize + trailerSize)
        w.raw(magic)
        w.u32(version)
        w.u64(UInt64(body.count))
        w.raw(body)
        let sum = w.bytes.withUnsafeBytes { SHA256.digest($0) }
        w.raw(sum.bytes)
        return w.bytes
    }

    /// Checks the frame and returns (version, body range start, body length).
    static func open(_ bytes: [UInt8], magic: [UInt8], what: String) throws -> (version: UInt32, body: BinaryReader) {
        guard bytes.count >= headerSize + trailerSize else {
            throw StoreError(.corrupt, "\(what): truncated (\(bytes.count) bytes)")
        }
        guard Array(bytes[0..<8]) == magic else {
            throw StoreError(.corrupt, "\(what): bad magic (not a \(String(decoding: magic, as: UTF8.self)) object)")
        }
        var r = BinaryReader(bytes, offset: 8, what: what)
        let version = try r.u32()
        let length = try r.u64()
        guard length == UInt64(bytes.count - headerSize - trailerSize) else {
            throw StoreError(.corrupt, "\(what): truncated or padded (header says \(length) body bytes, object has \(bytes.count - headerSize - trailerSize))")
        }
        let end = bytes.count - trailerSize
        r.end = end
        let expected = bytes.withUnsafeBytes { SHA256.digest(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
        let stored = bytes.withUnsafeBytes { ContentHash(bytes: UnsafeRawBufferPointer(rebasing: $0[end..<(end + 32)])) }
        guard expected == stored else {
            throw StoreError(.corrupt, "\(what): checksum mismatch (the object is damaged)")
        }
        return (version, r)
    }
}
