import ArchipServe
import ArchipStore
import Foundation
import Testing

/// Option haggling, driven byte by byte by the test client.
@Suite struct NBDHandshakeTests {
    let MiB = 1 << 20

    @Test func greetingGoAndTransmissionFlags() throws {
        let device = MemoryBlockDevice(size: 8 * MiB)
        let (server, path, dir) = try startServer([try NBDExport(name: "vol1", device: device)])
        defer { stopChecked(server, dir) }

        let c = try NBDTestClient(path: path)
        #expect(try c.readGreeting() == 0b11)  // FIXED_NEWSTYLE | NO_ZEROES
        try c.sendClientFlags(3)
        let info = try c.infoOrGo("vol1", requests: [3], go: true).get()
        #expect(info.size == UInt64(8 * MiB))
        // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN; not READ_ONLY.
        #expect(info.flags == 0b1_0110_1101)
        let bs = try #require(info.blockSizes)
        #expect(bs.0 == 512 && bs.1 == 4096 && bs.2 == 32 * UInt32(MiB))
        // In transmission now: a request is answered.
        let (err, data) = try c.read(0, 4096)
        #expect(err == 0 && data == [UInt8](repeating: 0, count: 4096))
    }

    @Test func infoThenGoAndOptionalInfoItems() throws {
        let device = MemoryBlockDevice(size: 1 * MiB + 1)  // not a multiple of 512
        let export = try NBDExport(name: "odd", device: device, description: "a test export")
        let (server, path, dir) = try startServer([export])
        defer { stopChecked(server, dir) }

        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(1)
        let info = try c.infoOrGo("odd", requests: [1, 2, 3], go: false).get()
        #expect(info.size == UInt64(MiB + 1))
        #expect(info.name == "odd")
        #expect(info.description == "a test export")
        // The last byte must stay reachable: minimum block size drops to 1.
        #expect(info.blockSizes?.0 == 1)
        // INFO does not enter transmission: more options are fine.
        let go = try c.infoOrGo("odd", requests: [], go: true).get()
        #expect(go.size == info.size && go.flags == info.flags)
        let (err, _) = try c.read(UInt64(MiB), 1)
        #expect(err == 0)
    }

    @Test func listNamesEveryExport() throws {
        let exports = try ["a", "pool/vol-1", "c"].map { try NBDExport(name: $0, device: MemoryBlockDevice(size: 4096)) }
        let (server, path, dir) = try startServer(exports)
        defer { stopChecked(server, dir) }

        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        try c.sendOption(3)
        var names: [String] = []
        while true {
            let r = try c.readOptionReply()
            #expect(r.option == 3)
            if r.type == 1 { break }
            try #require(r.type == 2)
            let n = Int(BigEndian.u32(r.data, 0))
            names.append(String(decoding: r.data[4..<(4 + n)], as: UTF8.self))
        }
        #expect(names == ["a", "pool/vol-1", "c"])

        // LIST with data is malformed: NBD_REP_ERR_INVALID, and the session goes on.
        try c.sendOption(3, [1, 2, 3])
        let bad = try c.readOptionReply()
        #expect(bad.type == 0x8000_0003)
        #expect(try c.infoOrGo("c", go: true).get().size == 4096)
    }

    @Test func unsupportedOptionsAreRefusedNotFatal() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 65536))])
        defer { stopChecked(server, dir) }

        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        for (code, data) in [(UInt32(8), [UInt8]()), (5, []), (10, [0, 0, 0, 0]), (999, [UInt8](repeating: 7, count: 100)),
                             (0xFFFF_FFFF, [])] {
            try c.sendOption(code, data)
            let r = try c.readOptionReply()
            #expect(r.option == code)
            #expect(r.type == 0x8000_0001, "option \(code) should be NBD_REP_ERR_UNSUP")
        }
        #expect(try c.infoOrGo("v", go: true).get().size == 65536)
    }

    @Test func unknownExportAndDefaultExport() throws {
        let a = try NBDExport(name: "a", device: MemoryBlockDevice(size: 4096))
        let b = try NBDExport(name: "b", device: MemoryBlockDevice(size: 8192))

        do {
            let (server, path, dir) = try startServer([a, b])
            defer { stopChecked(server, dir) }
            let c = try NBDTestClient(path: path)
            _ = try c.readGreeting()
            try c.sendClientFlags(3)
            guard case .failure(let e) = try c.infoOrGo("nope", go: true) else {
                Issue.record("GO to an unknown export succeeded")
                return
            }
            #expect(e.description.contains("0x80000006"))
            #expect(e.description.contains("'nope'"))
            // No default export: the empty name is unknown too.
            guard case .failure = try c.infoOrGo("", go: true) else {
                Issue.record("GO to the empty name succeeded without a default export")
                return
            }
            #expect(try c.infoOrGo("b", go: true).get().size == 8192)
        }
        do {
            let (server, path, dir) = try startServer([a, b], defaultExport: "b")
            defer { stopChecked(server, dir) }
            let (_, info) = try NBDTestClient.connect(path: path, export: "")
            #expect(info.size == 8192)
        }
    }

    @Test(arguments: [true, false])
    func exportNameWithAndWithoutZeroes(noZeroes: Bool) throws {
        let device = MemoryBlockDevice(contents: pattern(1, 4096))
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        defer { stopChecked(server, dir) }

        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(noZeroes ? 3 : 1)
        try c.sendOption(1, Array("v".utf8))
        let reply = try c.receive(noZeroes ? 10 : 134)
        #expect(BigEndian.u64(reply, 0) == 4096)
        #expect(BigEndian.u16(reply, 8) & 1 == 1)
        if !noZeroes { #expect(reply[10...].allSatisfy { $0 == 0 }) }
        // Exactly that many bytes: the next thing on the wire is our read's reply.
        let (err, data) = try c.read(0, 4096)
        #expect(err == 0 && data == pattern(1, 4096))
    }

    @Test func exportNameForUnknownExportCloses() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))])
        defer { stopChecked(server, dir) }
        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        try c.sendOption(1, Array("missing".utf8))
        #expect(try c.serverCloses())
    }

    @Test func abortIsAcknowledgedThenClosed() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))])
        defer { stopChecked(server, dir) }
        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        try c.sendOption(2)
        let r = try c.readOptionReply()
        #expect(r.option == 2 && r.type == 1)
        #expect(try c.serverCloses())
    }

    @Test func malformedInfoIsRefusedWithInvalid() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))])
        defer { stopChecked(server, dir) }
        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        let cases: [[UInt8]] = [
            [0, 0, 0],                                   // shorter than 6
            [0, 0, 0, 9, 118, 0, 0],                     // name length beyond the data
            [0, 0, 0, 1, 118, 0, 2, 0, 3],               // 2 info requests announced, 1 sent
        ]
        for data in cases {
            try c.sendOption(7, data)
            let r = try c.readOptionReply()
            #expect(r.type == 0x8000_0003, "GO with \(data) should be NBD_REP_ERR_INVALID")
        }
        #expect(try c.infoOrGo("v", go: true).get().size == 4096)
    }

    @Test func protocolViolationsCloseTheConnection() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))]) {
            $0.maxOptions = 8
        }
        defer { stopChecked(server, dir) }

        // Unknown client flag bit.
        var c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(0x8000_0003)
        #expect(try c.serverCloses())

        // Wrong option magic.
        c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        try c.send([UInt8](repeating: 0x41, count: 16))
        #expect(try c.serverCloses())

        // An option longer than the server accepts.
        c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        var h: [UInt8] = []
        BigEndian.append(&h, UInt64(0x4948_4156_454F_5054))
        BigEndian.append(&h, UInt32(7))
        BigEndian.append(&h, UInt32(1 << 30))
        try c.send(h)
        #expect(try c.serverCloses())

        // Haggling forever.
        c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        try c.sendClientFlags(3)
        var closed = false
        for _ in 0..<20 {
            c.sendIgnoringErrors([0x49, 0x48, 0x41, 0x56, 0x45, 0x4F, 0x50, 0x54, 0, 0, 0, 99, 0, 0, 0, 0])
            if try c.serverCloses(within: 0.2) { closed = true; break }
        }
        #expect(closed)
        #expect(eventually { server.statistics.protocolErrors == 4 })
    }

    @Test func silentClientTimesOut() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 4096))]) {
            $0.handshakeTimeout = .milliseconds(300)
        }
        defer { stopChecked(server, dir) }
        let c = try NBDTestClient(path: path)
        _ = try c.readGreeting()
        let start = Date()
        #expect(try c.serverCloses(within: 5))
        #expect(Date().timeIntervalSince(start) < 4)
        #expect(eventually { server.statistics.activeConnections == 0 })
    }
}
