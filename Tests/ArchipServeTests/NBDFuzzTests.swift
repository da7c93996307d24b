import ArchipServe
import ArchipStore
import Foundation
import Testing

/// Random and truncated bytes from hundreds of clients, in the handshake and
/// in transmission, several at a time; afterwards the server must still
/// serve a well-behaved client and hold no connection open.
@Suite struct NBDFuzzTests {
    static let optionMagic: [UInt8] = [0x49, 0x48, 0x41, 0x56, 0x45, 0x4F, 0x50, 0x54]

    func bytes(_ n: Int, _ rng: inout SplitMix64) -> [UInt8] {
        (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    func u32(_ v: UInt32) -> [UInt8] { var b: [UInt8] = []; BigEndian.append(&b, v); return b }

    /// One hostile client in the handshake phase.
    func handshakeAttack(_ path: String, _ rng: inout SplitMix64) throws {
        let c = try NBDTestClient(path: path)
        var message: [UInt8]
        switch Int.random(in: 0..<6, using: &rng) {
        case 0:  // noise instead of client flags
            message = bytes(Int.random(in: 0...300, using: &rng), &rng)
        case 1:  // good flags, then noise
            message = u32(3) + bytes(Int.random(in: 0...300, using: &rng), &rng)
        case 2:  // a real option header with a random code and length, data cut short
            let length = UInt32.random(in: 0...70000, using: &rng)
            message = u32(3) + NBDFuzzTests.optionMagic + u32(UInt32.random(in: 0...12, using: &rng)) + u32(length)
                + bytes(Int.random(in: 0...min(Int(length), 2000), using: &rng), &rng)
        case 3:  // NBD_OPT_GO / INFO with mutated data
            var data = NBDTestClient.infoData(name: "fuzz", requests: [0, 1, 2, 3])
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                data[Int.random(in: 0..<data.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            let code: UInt32 = Bool.random(using: &rng) ? 7 : 6
            message = u32(3) + NBDFuzzTests.optionMagic + u32(code) + u32(UInt32(data.count)) + data
        case 4:  // a valid handshake cut at a random byte
            let full = u32(3) + NBDFuzzTests.optionMagic + u32(7) + u32(14)
                + NBDTestClient.infoData(name: "fuzz", requests: [3])
            message = Array(full.prefix(Int.random(in: 0..<full.count, using: &rng)))
        default:  // NBD_OPT_EXPORT_NAME with a random name
            let name = bytes(Int.random(in: 0...40, using: &rng), &rng)
            message = u32(UInt32.random(in: 0...3, using: &rng)) + NBDFuzzTests.optionMagic + u32(1) + u32(UInt32(name.count)) + name
        }
        if Bool.random(using: &rng) { _ = try c.readGreeting() }
        c.sendIgnoringErrors(message)
        // Sometimes wait for the server's verdict, sometimes just vanish.
        if Int.random(in: 0..<4, using: &rng) == 0 { _ = try c.serverCloses(within: 0.05) }
    }

    /// One hostile client in the transmission phase.
    func transmissionAttack(_ path: String, _ rng: inout SplitMix64) throws {
        let (c, _) = try NBDTestClient.connect(path: path, export: "fuzz")
        var message: [UInt8] = []
        for _ in 0..<Int.random(in: 1...6, using: &rng) {
            switch Int.random(in: 0..<4, using: &rng) {
            case 0:
                message += bytes(Int.random(in: 1...200, using: &rng), &rng)
            case 1:  // plausible request with random fields
                let type = UInt16.random(in: 0...9, using: &rng)
                let length = Bool.random(using: &rng) ? UInt32.random(in: 0...70000, using: &rng) : UInt32.random(in: 0...UInt32.max, using: &rng)
                let offset = Bool.random(using: &rng) ? UInt64.random(in: 0...(1 << 21), using: &rng) : UInt64.random(in: 0...UInt64.max, using: &rng)
                message += NBDRequestHeader(flags: UInt16.random(in: 0...31, using: &rng), type: type,
                                            handle: rng.next(), offset: offset, length: length).encoded()
                if type == 1 { message += bytes(Int.random(in: 0...min(Int(length), 4096), using: &rng), &rng) }
            case 2:  // a valid request with one bit flipped
                var h = NBDRequestHeader(flags: 0, type: 0, handle: 1, offset: 4096, length: 4096).encoded()
                let bit = Int.random(in: 0..<(h.count * 8), using: &rng)
                h[bit / 8] ^= 1 << UInt8(bit % 8)
                message += h
            default:  // a valid write, possibly cut short
                let w = NBDRequestHeader(flags: 0, type: 1, handle: 2, offset: 0, length: 512).encoded() + bytes(512, &rng)
                message += Array(w.prefix(Int.random(in: 1...w.count, using: &rng)))
            }
        }
        c.sendIgnoringErrors(message)
        if Int.random(in: 0..<4, using: &rng) == 0 { _ = try c.serverCloses(within: 0.05) }
    }

    @Test func hostileClientsDoNotHurtTheServer() throws {
        let MiB = 1 << 20
        let device = MemoryBlockDevice(size: 2 * MiB)
        let (server, path, dir) = try startServer([try NBDExport(name: "fuzz", device: device)]) {
            $0.handshakeTimeout = .seconds(2)
        }
        defer { stopChecked(server, dir) }

        let seed = UInt64(Date().timeIntervalSince1970 * 1000)
        print("NBD fuzz seed \(seed) (replay: set it in NBDFuzzTests)")
        let lanes = 4
        let perLane = (handshake: 100, transmission: 60)
        let failures = LockedBox<[String]>([])
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            var rng = SplitMix64(seed: seed &+ UInt64(lane))
            for i in 0..<(perLane.handshake + perLane.transmission) {
                do {
                    if i < perLane.handshake {
                        try handshakeAttack(path, &rng)
                    } else {
                        try transmissionAttack(path, &rng)
                    }
                } catch {
                    failures.mutate { $0.append("lane \(lane) client \(i): \(error)") }
                }
            }
        }
        // Our own side may fail to connect only if the server stopped accepting.
        #expect(failures.get().isEmpty, "\(failures.get().prefix(5))")

        // Every hostile connection ends (silent ones by the handshake deadline).
        #expect(eventually(15) { server.statistics.activeConnections == 0 }, "\(server.statistics)")
        let stats = server.statistics
        #expect(stats.connectionsAccepted >= lanes * (perLane.handshake + perLane.transmission))
        print("NBD fuzz: \(stats)")

        let (c, info) = try NBDTestClient.connect(path: path, export: "fuzz")
        #expect(info.size == UInt64(2 * MiB))
        #expect(try c.write(UInt64(MiB), pattern(42, 65536)) == 0)
        #expect(try c.read(UInt64(MiB), 65536) == (0, pattern(42, 65536)))
        #expect(try c.flush() == 0)
    }
}
