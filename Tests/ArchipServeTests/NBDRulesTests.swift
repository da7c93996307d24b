import ArchipServe
import ArchipStore
import Foundation
import Testing

/// The two single-place rules of the server core: which requests reach a
/// device, and which errno a failure becomes.
@Suite struct NBDRulesTests {
    typealias Flags = NBDProtocol.TransmissionFlags
    let writable: Flags = [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .canMultiConn]
    let readOnly: Flags = [.hasFlags, .readOnly, .sendFlush, .sendFUA, .canMultiConn]

    func req(_ type: UInt16, flags: UInt16 = 0, _ offset: UInt64, _ length: UInt32) -> NBDRequestHeader {
        NBDRequestHeader(flags: flags, type: type, handle: 7, offset: offset, length: length)
    }

    @Test func protocolConstants() {
        // Spelled out once more against the spec's text ('NBDMAGIC', 'IHAVEOPT').
        #expect(NBDProtocol.initPassword == UInt64(bigEndian: Array("NBDMAGIC".utf8).withUnsafeBytes { $0.load(as: UInt64.self) }))
        #expect(NBDProtocol.optionMagic == UInt64(bigEndian: Array("IHAVEOPT".utf8).withUnsafeBytes { $0.load(as: UInt64.self) }))
        #expect(NBDProtocol.optionReplyMagic == 0x3e889045565a9)
        #expect(NBDProtocol.requestMagic == 0x25609513)
        #expect(NBDProtocol.simpleReplyMagic == 0x67446698)
        #expect(NBDProtocol.OptionReply.errUnknown.rawValue == (1 << 31) + 6)
    }

    @Test func requestCheck() {
        let check = NBDRequestCheck(transmissionFlags: writable, negotiatedSize: 1 << 20)
        let size: UInt64 = 1 << 20
        #expect(check.check(req(0, 0, 4096), currentSize: size) == .accept)
        #expect(check.check(req(0, size - 1, 1), currentSize: size) == .accept)
        #expect(check.check(req(0, size - 1, 2), currentSize: size) == .reject(.invalid))
        #expect(check.check(req(4, size, 1), currentSize: size) == .reject(.invalid))
        #expect(check.check(req(1, size, 1), currentSize: size) == .reject(.noSpace))
        #expect(check.check(req(6, UInt64.max, 1), currentSize: size) == .reject(.noSpace))
        #expect(check.check(req(0, 0, 0), currentSize: size) == .reject(.invalid))
        #expect(check.check(req(3, 0, 0), currentSize: size) == .accept)
        #expect(check.check(req(3, 1, 0), currentSize: size) == .reject(.invalid))
        #expect(check.check(req(2, 0, 0), currentSize: size) == .accept)
        #expect(check.check(req(1, flags: 1, 0, 512), currentSize: size) == .accept)
        #expect(check.check(req(6, flags: 3, 0, 512), currentSize: size) == .accept)
        #expect(check.check(req(1, flags: 2, 0, 512), currentSize: size) == .reject(.invalid))
        #expect(check.check(req(0, flags: 0x8000, 0, 512), currentSize: size) == .reject(.invalid))
        #expect(check.check(req(8, 0, 512), currentSize: size) == .reject(.invalid))
        // A shrunk device: the smaller of the negotiated and the current size counts.
        #expect(check.check(req(0, 4096, 4096), currentSize: 4096) == .reject(.invalid))
        // TRIM and WRITE_ZEROES carry no payload; QEMU sends them up to 2 GiB.
        let big = NBDRequestCheck(transmissionFlags: writable, negotiatedSize: 1 << 40)
        #expect(big.check(req(4, 0, 0x8000_0000), currentSize: 1 << 40) == .accept)
        #expect(big.check(req(6, 0, 0xFFFF_FE00), currentSize: 1 << 40) == .accept)
        // READ and WRITE beyond the cap cannot be answered: disconnect.
        if case .disconnect = big.check(req(0, 0, 32 << 20 | 1), currentSize: 1 << 40) {} else {
            Issue.record("an oversize read must disconnect")
        }
        if case .disconnect = big.check(req(1, 0, 0xFFFF_FFFF), currentSize: 1 << 40) {} else {
            Issue.record("an oversize write must disconnect")
        }
        #expect(big.check(req(1, 0, 32 << 20), currentSize: 1 << 40) == .accept)

        let ro = NBDRequestCheck(transmissionFlags: readOnly, negotiatedSize: size)
        #expect(ro.check(req(1, 0, 512), currentSize: size) == .reject(.notPermitted))
        #expect(ro.check(req(4, 0, 512), currentSize: size) == .reject(.notPermitted))
        #expect(ro.check(req(6, 0, 512), currentSize: size) == .reject(.notPermitted))
        #expect(ro.check(req(1, size, 512), currentSize: size) == .reject(.notPermitted))
        #expect(ro.check(req(0, 0, 512), currentSize: size) == .accept)

        // A device without trim: TRIM is not advertised, so it is refused.
        let noTrim = NBDRequestCheck(transmissionFlags: [.hasFlags, .sendFlush, .sendWriteZeroes], negotiatedSize: size)
        #expect(noTrim.check(req(4, 0, 512), currentSize: size) == .reject(.invalid))
    }

    @Test func errnoMapping() {
        let cases: [(any Error, NBDErrno)] = [
            (StoreError(.readOnly, "x"), .notPermitted),
            (StoreError(.outOfRange, "x"), .invalid),
            (StoreError(.invalidArgument, "x"), .invalid),
            (StoreError(.io, "x"), .io),
            (StoreError(.corrupt, "x"), .io),
            (StoreError(.locked, "x"), .io),
            (StoreError(.notFound, "x"), .io),
            (StoreError(.unsupported, "x"), .notSupported),
            (POSIXError(.ENOSPC), .noSpace),
            (POSIXError(.EDQUOT), .noSpace),
            (POSIXError(.EFBIG), .noSpace),
            (POSIXError(.EROFS), .notPermitted),
            (POSIXError(.EIO), .io),
            (POSIXError(.ENOENT), .io),
            (ServeError(.system, "write", errno: ENOSPC), .noSpace),
            (ServeError(.shuttingDown, "stopping"), .shutdown),
            (ServeError(.protocolViolation, "x"), .io),
            (CocoaError(.fileReadUnknown), .io),
        ]
        for (error, expected) in cases {
            #expect(NBDErrno(mapping: error) == expected, "\(error)")
        }
        #expect(NBDErrno.invalid.rawValue == 22 && NBDErrno.noSpace.rawValue == 28 && NBDErrno.shutdown.rawValue == 108)
    }

    @Test func transmissionFlagsFollowTheDevice() throws {
        let plain = try NBDExport(name: "a", device: MemoryBlockDevice(size: 512, capabilities: []))
        #expect(plain.transmissionFlags == [.hasFlags, .sendFlush, .sendFUA])
        let full = try NBDExport(name: "b", device: MemoryBlockDevice(size: 512))
        #expect(full.transmissionFlags == writable)
        let forced = try NBDExport(name: "c", device: MemoryBlockDevice(size: 512), readOnly: true)
        #expect(forced.transmissionFlags == readOnly)
    }
}
