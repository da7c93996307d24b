/// Wire constants and message layouts of the NBD protocol, as the server
/// speaks it: fixed newstyle handshake, simple replies only.
///
/// Source: the protocol specification, NetworkBlockDevice/nbd `doc/proto.md`.
/// All integers on the wire are big-endian.
public enum NBDProtocol {
    // MARK: magic numbers

    /// `NBDMAGIC`, first 8 bytes the server sends.
    public static let initPassword: UInt64 = 0x4E42_444D_4147_4943
    /// `IHAVEOPT`: sent by the server after `NBDMAGIC` (newstyle), and by the
    /// client in front of every option.
    public static let optionMagic: UInt64 = 0x4948_4156_454F_5054
    /// In front of every option reply.
    public static let optionReplyMagic: UInt64 = 0x0003_E889_0455_65A9
    public static let requestMagic: UInt32 = 0x2560_9513
    public static let simpleReplyMagic: UInt32 = 0x6744_6698

    // MARK: sizes

    /// Request header: magic 4, flags 2, type 2, handle 8, offset 8, length 4.
    public static let requestHeaderBytes = 28
    /// Simple reply header: magic 4, error 4, handle 8.
    public static let simpleReplyHeaderBytes = 16
    /// Option header: magic 8, option 4, length 4.
    public static let optionHeaderBytes = 16
    /// Padding after the `NBD_OPT_EXPORT_NAME` reply unless NO_ZEROES was negotiated.
    public static let exportNamePaddingBytes = 124
    /// Longest string (export name, message) the protocol allows.
    public static let maximumStringBytes = 4096

    // MARK: handshake flags (16 bits, server) and client flags (32 bits)

    public struct HandshakeFlags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
        public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
    }

    public struct ClientFlags: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
        public static let noZeroes = ClientFlags(rawValue: 1 << 1)
    }

    // MARK: options

    public enum Option: UInt32, Sendable {
        case exportName = 1
        case abort = 2
        case list = 3
        case peekExport = 4
        case startTLS = 5
        case info = 6
        case go = 7
        case structuredReply = 8
        case listMetaContext = 9
        case setMetaContext = 10
        case extendedHeaders = 11
    }

    public enum OptionReply: UInt32, Sendable {
        case ack = 1
        case server = 2
        case info = 3
        case metaContext = 4
        case errUnsupported = 0x8000_0001
        case errPolicy = 0x8000_0002
        case errInvalid = 0x8000_0003
        case errPlatform = 0x8000_0004
        case errTLSRequired = 0x8000_0005
        case errUnknown = 0x8000_0006
        case errShutdown = 0x8000_0007
        case errBlockSizeRequired = 0x8000_0008
        case errTooBig = 0x8000_0009

        public var isError: Bool { rawValue & 0x8000_0000 != 0 }
    }

    /// Information types of `NBD_REP_INFO` (requested in `NBD_OPT_INFO`/`NBD_OPT_GO`).
    public enum Info: UInt16, Sendable {
        case export = 0
        case name = 1
        case description = 2
        case blockSize = 3
    }

    // MARK: transmission

    public struct TransmissionFlags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
        public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
        public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
        public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
        public static let rotational = TransmissionFlags(rawValue: 1 << 4)
        public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
        public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
        public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
        public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
        public static let sendResize = TransmissionFlags(rawValue: 1 << 9)
        public static let sendCache = TransmissionFlags(rawValue: 1 << 10)
        public static let sendFastZero = TransmissionFlags(rawValue: 1 << 11)
    }

    public enum Command: UInt16, Sendable, CustomStringConvertible {
        case read = 0
        case write = 1
        case disconnect = 2
        case flush = 3
        case trim = 4
        case cache = 5
        case writeZeroes = 6
        case blockStatus = 7
        case resize = 8

        /// Commands that change the export's contents: a flush waits for the
        /// ones received before it, and a read-only export refuses them.
        public var modifiesData: Bool { self == .write || self == .trim || self == .writeZeroes }

        public var description: String {
            switch self {
            case .read: return "read"
            case .write: return "write"
            case .disconnect: return "disconnect"
            case .flush: return "flush"
            case .trim: return "trim"
            case .cache: return "cache"
            case .writeZeroes: return "write-zeroes"
            case .blockStatus: return "block-status"
            case .resize: return "resize"
            }
        }
    }

    public struct CommandFlags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let fua = CommandFlags(rawValue: 1 << 0)
        public static let noHole = CommandFlags(rawValue: 1 << 1)
        public static let dontFragment = CommandFlags(rawValue: 1 << 2)
        public static let requestOne = CommandFlags(rawValue: 1 << 3)
        public static let fastZero = CommandFlags(rawValue: 1 << 4)
    }
}

/// One transmission request header as received.
public struct NBDRequestHeader: Sendable, Equatable {
    public var magic: UInt32
    public var flags: UInt16
    public var type: UInt16
    public var handle: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(magic: UInt32 = NBDProtocol.requestMagic, flags: UInt16, type: UInt16, handle: UInt64,
                offset: UInt64, length: UInt32) {
        self.magic = magic
        self.flags = flags
        self.type = type
        self.handle = handle
        self.offset = offset
        self.length = length
    }

    public init(decoding b: UnsafeRawBufferPointer) {
        precondition(b.count >= NBDProtocol.requestHeaderBytes)
        magic = BigEndian.u32(b, 0)
        flags = BigEndian.u16(b, 4)
        type = BigEndian.u16(b, 6)
        handle = BigEndian.u64(b, 8)
        offset = BigEndian.u64(b, 16)
        length = BigEndian.u32(b, 24)
    }

    public var command: NBDProtocol.Command? { NBDProtocol.Command(rawValue: type) }
    public var commandFlags: NBDProtocol.CommandFlags { NBDProtocol.CommandFlags(rawValue: flags) }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(NBDProtocol.requestHeaderBytes)
        BigEndian.append(&out, magic)
        BigEndian.append(&out, flags)
        BigEndian.append(&out, type)
        BigEndian.append(&out, handle)
        BigEndian.append(&out, offset)
        BigEndian.append(&out, length)
        return out
    }
}

/// Network byte order helpers; the NBD wire is big-endian throughout.
public enum BigEndian {
    @inline(__always) public static func u16(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt16 {
        UInt16(b[at]) << 8 | UInt16(b[at + 1])
    }

    @inline(__always) public static func u32(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(b[at + i]) }
        return v
    }

    @inline(__always) public static func u64(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(b[at + i]) }
        return v
    }

    public static func u16(_ a: [UInt8], _ at: Int) -> UInt16 { a.withUnsafeBytes { u16($0, at) } }
    public static func u32(_ a: [UInt8], _ at: Int) -> UInt32 { a.withUnsafeBytes { u32($0, at) } }
    public static func u64(_ a: [UInt8], _ at: Int) -> UInt64 { a.withUnsafeBytes { u64($0, at) } }

    public static func append<T: FixedWidthInteger & UnsignedInteger>(_ out: inout [UInt8], _ v: T) {
        var x = v.bigEndian
        withUnsafeBytes(of: &x) { out.append(contentsOf: $0) }
    }

    @inline(__always) public static func store<T: FixedWidthInteger & UnsignedInteger>(
        _ v: T, into b: UnsafeMutableRawBufferPointer, at: Int
    ) {
        var x = v.bigEndian
        withUnsafeBytes(of: &x) { src in
            UnsafeMutableRawBufferPointer(rebasing: b[at..<(at + src.count)]).copyMemory(from: src)
        }
    }
}
