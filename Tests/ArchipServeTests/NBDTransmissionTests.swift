import ArchipServe
import ArchipStore
import Foundation
import Testing

/// Requests and replies against in-memory devices.
@Suite struct NBDTransmissionTests {
    let MiB = 1 << 20
    let EPERM: UInt32 = 1, EIO: UInt32 = 5, EINVAL: UInt32 = 22, ENOSPC: UInt32 = 28

    @Test func writeReadTrimZeroAndFlush() throws {
        let device = MemoryBlockDevice(size: 4 * MiB)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")

        #expect(try c.write(0, pattern(1, 65536)) == 0)
        #expect(try c.write(UInt64(3 * MiB), pattern(2, MiB)) == 0)
        // Unaligned and tiny: the device is byte-addressed, so it works.
        #expect(try c.write(70001, [9, 8, 7]) == 0)
        var (err, data) = try c.read(0, 65536)
        #expect(err == 0 && data == pattern(1, 65536))
        (err, data) = try c.read(UInt64(3 * MiB), UInt32(MiB))
        #expect(err == 0 && data == pattern(2, MiB))
        (err, data) = try c.read(70000, 5)
        #expect(err == 0 && data == [0, 9, 8, 7, 0])
        #expect(device.contents[(3 * MiB)..<(4 * MiB)].elementsEqual(pattern(2, MiB)))

        #expect(try c.trim(4096, 8192) == 0)
        #expect(try c.writeZeroes(UInt64(3 * MiB + 100), 1000) == 0)
        (err, data) = try c.read(0, 16384)
        #expect(err == 0)
        #expect(data[0..<4096].elementsEqual(pattern(1, 4096)))
        #expect(data[4096..<12288].allSatisfy { $0 == 0 })
        #expect(data[12288...].elementsEqual(pattern(1, 4096, offset: 12288)))
        (err, data) = try c.read(UInt64(3 * MiB), 2000)
        #expect(data[0..<100].elementsEqual(pattern(2, 100)) && data[100..<1100].allSatisfy { $0 == 0 })
        #expect(data[1100...].elementsEqual(pattern(2, 900, offset: 1100)))

        #expect(device.unflushedWrites > 0)
        #expect(try c.flush() == 0)
        #expect(device.unflushedWrites == 0)
        #expect(device.flushCount == 1)
    }

    @Test func fuaFlushesBeforeTheReply() throws {
        let device = MemoryBlockDevice(size: MiB)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")

        #expect(try c.write(0, pattern(3, 4096)) == 0)
        #expect(device.unflushedWrites == 1)
        #expect(device.flushCount == 0)
        // By the time the FUA reply is here, the device has been flushed.
        #expect(try c.write(4096, pattern(4, 4096), fua: true) == 0)
        #expect(device.unflushedWrites == 0)
        #expect(device.flushCount == 1)
        #expect(try c.simple(type: 6, flags: 1 | 2, offset: 0, length: 512) == 0)  // WRITE_ZEROES + FUA + NO_HOLE
        #expect(device.flushCount == 2)
        #expect(try c.simple(type: 4, flags: 1, offset: 512, length: 512) == 0)     // TRIM + FUA
        #expect(device.flushCount == 3 && device.unflushedWrites == 0)
    }

    @Test func outOfRangeRequests() throws {
        let device = MemoryBlockDevice(size: MiB)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")
        let size = UInt64(MiB)

        #expect(try c.read(size - 4096, 8192).0 == EINVAL)
        #expect(try c.read(size, 1).0 == EINVAL)
        #expect(try c.read(UInt64.max - 10, 4096).0 == EINVAL)   // offset + length overflows
        #expect(try c.trim(size - 512, 1024) == EINVAL)
        // Writes past the end: ENOSPC, as the protocol asks.
        #expect(try c.write(size - 100, pattern(5, 200)) == ENOSPC)
        #expect(try c.writeZeroes(size, 512) == ENOSPC)
        // Empty requests are invalid; the device never sees them.
        #expect(try c.read(0, 0).0 == EINVAL)
        #expect(try c.write(0, []) == EINVAL)
        // The refused write's payload was consumed: the stream is still in step.
        #expect(try c.read(size - 512, 512) == (0, [UInt8](repeating: 0, count: 512)))
        #expect(device.contents.allSatisfy { $0 == 0 })
    }

    @Test func badCommandsAndFlags() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: MiB))])
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")

        #expect(try c.simple(type: 5, offset: 0, length: 4096) == EINVAL)      // CACHE, not advertised
        #expect(try c.simple(type: 7, offset: 0, length: 4096) == EINVAL)      // BLOCK_STATUS
        #expect(try c.simple(type: 99, offset: 0, length: 4096) == EINVAL)
        #expect(try c.simple(type: 0, flags: 4, offset: 0, length: 4096) == EINVAL)  // DF without structured replies
        #expect(try c.simple(type: 1, flags: 2, offset: 0, length: 4, payload: [1, 2, 3, 4]) == EINVAL)  // NO_HOLE on WRITE
        #expect(try c.simple(type: 6, flags: 16, offset: 0, length: 4096) == EINVAL) // FAST_ZERO, not advertised
        #expect(try c.simple(type: 3, offset: 4096, length: 0) == EINVAL)      // FLUSH with an offset
        #expect(try c.simple(type: 3, flags: 1) == 0)                          // FUA on FLUSH is allowed
        #expect(try c.read(0, 4096).0 == 0)
        // The counter moves just after the reply is sent: wait for it rather than race it.
        #expect(eventually { server.statistics.requestsCompleted == 9 }, "refused requests are answered and counted too")
    }

    @Test(arguments: [true, false])
    func readOnlyExportRefusesWrites(deviceReadOnly: Bool) throws {
        let original = pattern(6, 65536)
        let device = MemoryBlockDevice(contents: original, readOnly: deviceReadOnly)
        let export = try NBDExport(name: "snap", device: device, readOnly: !deviceReadOnly)
        let (server, path, dir) = try startServer([export])
        defer { stopChecked(server, dir) }
        let (c, info) = try NBDTestClient.connect(path: path, export: "snap")

        #expect(info.flags & 0b10 != 0)          // READ_ONLY
        #expect(info.flags & (1 << 5) == 0)      // no SEND_TRIM
        #expect(info.flags & (1 << 6) == 0)      // no SEND_WRITE_ZEROES
        #expect(try c.write(0, pattern(7, 4096)) == EPERM)
        #expect(try c.write(0, pattern(7, 4096), fua: true) == EPERM)
        #expect(try c.trim(0, 4096) == EPERM)
        #expect(try c.writeZeroes(0, 4096) == EPERM)
        #expect(try c.flush() == 0)
        #expect(try c.read(0, 65536) == (0, original))
        #expect(device.contents == original)
    }

    @Test func deviceErrorsAreMappedOnce() throws {
        let failures: [(String, any Error & Sendable, UInt32)] = [
            ("io", StoreError(.io, "read: /store/x", cause: "Input/output error"), EIO),
            ("corrupt", StoreError(.corrupt, "block 3 is missing its object"), EIO),
            ("readonly", StoreError(.readOnly, "snapshot cannot be written"), EPERM),
            ("nospace", POSIXError(.ENOSPC), ENOSPC),
            ("quota", POSIXError(.EDQUOT), ENOSPC),
        ]
        let exports = try failures.map { try NBDExport(name: $0.0, device: FailingDevice(size: UInt64(MiB), error: $0.1)) }
        let (server, path, dir) = try startServer(exports)
        for (name, _, expected) in failures {
            let (c, _) = try NBDTestClient.connect(path: path, export: name)
            // A failed read sends no data; the next reply follows directly.
            #expect(try c.read(0, 4096) == (expected, []), "read on \(name)")
            #expect(try c.write(0, pattern(1, 4096)) == expected, "write on \(name)")
            #expect(try c.flush() == expected, "flush on \(name)")
            #expect(try c.trim(0, 4096) == expected, "trim on \(name)")
        }
        // These devices cannot flush either, and stop says so.
        #expect(throws: ServeError.self) { try server.stop(gracePeriod: .seconds(5)) }
        withExtendedLifetime(dir) {}
    }

    @Test func severalRequestsInFlightRepliesMatchedByHandle() throws {
        let device = RecordingDevice(MemoryBlockDevice(size: 4 * MiB), writeDelay: 0.05, readDelay: 0.05)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)]) {
            $0.workersPerConnection = 4
        }
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")

        for i in 0..<16 {
            try c.sendRequest(type: 1, handle: UInt64(100 + i), offset: UInt64(i * 65536), length: 65536,
                              payload: pattern(UInt8(i), 65536))
        }
        var seen = Set<UInt64>()
        for _ in 0..<16 {
            let r = try c.readReply()
            #expect(r.error == 0)
            seen.insert(r.handle)
        }
        #expect(seen == Set((0..<16).map { UInt64(100 + $0) }))
        // The writes ran side by side (16 of 50 ms each, 4 workers). Measured
        // as the device saw them, not by the clock: a loaded machine (CI, or
        // the suite's other tests) stretched the wall time past any bound.
        #expect(device.peakConcurrency >= 2)

        var lengths: [UInt64: Int] = [:]
        for i in 0..<16 {
            try c.sendRequest(type: 0, handle: UInt64(200 + i), offset: UInt64(i * 65536), length: 65536)
            lengths[UInt64(200 + i)] = 65536
        }
        for _ in 0..<16 {
            let r = try c.readReply(readLengths: lengths)
            let i = Int(r.handle) - 200
            #expect(r.error == 0 && r.data == pattern(UInt8(i), 65536), "read \(i)")
        }
        #expect(server.statistics.peakRequestsInFlight >= 4)
    }

    @Test func flushWaitsForEveryWriteReceivedBeforeIt() throws {
        let device = RecordingDevice(MemoryBlockDevice(size: MiB), writeDelay: 0.08)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)]) {
            $0.workersPerConnection = 8
        }
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")

        // Four writes and a flush in one burst, before any reply.
        var burst: [UInt8] = []
        for i in 0..<4 {
            burst += NBDRequestHeader(flags: 0, type: 1, handle: UInt64(i + 1), offset: UInt64(i * 4096), length: 4096).encoded()
            burst += pattern(UInt8(i), 4096)
        }
        burst += NBDRequestHeader(flags: 0, type: 3, handle: 99, offset: 0, length: 0).encoded()
        try c.send(burst)
        var order: [UInt64] = []
        for _ in 0..<5 {
            let r = try c.readReply()
            #expect(r.error == 0)
            order.append(r.handle)
        }
        // The flush began only after all four writes had finished on the device ...
        let events = device.events
        let flushAt = try #require(events.firstIndex(of: "flush"))
        #expect(events[..<flushAt].filter { $0.hasPrefix("write") }.count == 4, "events: \(events)")
        // ... and its reply came last.
        #expect(order.last == 99)
        #expect(device.inner.unflushedWrites == 0)
    }

    @Test func disconnectFinishesWhatIsInFlight() throws {
        let device = RecordingDevice(MemoryBlockDevice(size: MiB), writeDelay: 0.05)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")

        var burst: [UInt8] = []
        for i in 0..<8 {
            burst += NBDRequestHeader(flags: 0, type: 1, handle: UInt64(i), offset: UInt64(i * 4096), length: 4096).encoded()
            burst += pattern(UInt8(i + 10), 4096)
        }
        burst += NBDRequestHeader(flags: 0, type: 2, handle: 50, offset: 0, length: 0).encoded()
        try c.send(burst)
        var handles = Set<UInt64>()
        for _ in 0..<8 { handles.insert(try c.readReply().handle) }
        #expect(handles == Set(0..<8))
        #expect(try c.serverCloses())   // and no reply to DISC
        for i in 0..<8 {
            #expect(device.inner.contents[(i * 4096)..<((i + 1) * 4096)].elementsEqual(pattern(UInt8(i + 10), 4096)))
        }
    }

    @Test func malformedRequestsCloseWithoutHarm() throws {
        let device = MemoryBlockDevice(size: 64 * MiB)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        defer { stopChecked(server, dir) }

        // A read beyond the 32 MiB cap.
        var (c, _) = try NBDTestClient.connect(path: path, export: "v")
        try c.sendRequest(type: 0, handle: 1, offset: 0, length: 32 << 20 | 1)
        #expect(try c.serverCloses())
        // A write beyond the cap (its payload cannot be skipped).
        (c, _) = try NBDTestClient.connect(path: path, export: "v")
        try c.sendRequest(type: 1, handle: 1, offset: 0, length: 0xFFFF_FFFF)
        #expect(try c.serverCloses())
        // Bad request magic.
        (c, _) = try NBDTestClient.connect(path: path, export: "v")
        try c.send(NBDRequestHeader(magic: 0x2560_9514, flags: 0, type: 0, handle: 1, offset: 0, length: 512).encoded())
        #expect(try c.serverCloses())
        // A write whose payload never comes in full.
        (c, _) = try NBDTestClient.connect(path: path, export: "v")
        try c.sendRequest(type: 1, handle: 1, offset: 0, length: 65536, payload: pattern(1, 1000))
        c.timeout = 1
        #expect(throws: TestClientError.self) { try c.readReply() }
        #expect(eventually { server.statistics.activeConnections == 1 })
        #expect(eventually { server.statistics.protocolErrors == 3 })

        // A 32 MiB request exactly at the cap is fine.
        let (ok, _) = try NBDTestClient.connect(path: path, export: "v")
        #expect(try ok.write(0, pattern(8, 32 << 20)) == 0)
        #expect(try ok.read(0, 32 << 20) == (0, pattern(8, 32 << 20)))
    }

    @Test func violationEndsTheConnectionEvenIfTheClientStopsReading() throws {
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: MemoryBlockDevice(size: 64 * MiB))])
        defer { stopChecked(server, dir) }
        let (c, _) = try NBDTestClient.connect(path: path, export: "v")
        // 32 MiB of replies queue up behind a socket buffer nobody drains, then garbage.
        var burst: [UInt8] = []
        for i in 0..<32 {
            burst += NBDRequestHeader(flags: 0, type: 0, handle: UInt64(i), offset: UInt64(i * MiB), length: UInt32(MiB)).encoded()
        }
        burst += [UInt8](repeating: 0xEE, count: 28)
        try c.send(burst)
        #expect(eventually(10) { server.statistics.activeConnections == 0 }, "\(server.statistics)")
        #expect(server.statistics.protocolErrors == 1)
        withExtendedLifetime(c) {}
    }

    @Test func connectionsShareTheDevice() throws {
        let device = MemoryBlockDevice(size: MiB)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)])
        defer { stopChecked(server, dir) }
        let (a, infoA) = try NBDTestClient.connect(path: path, export: "v")
        let (b, _) = try NBDTestClient.connect(path: path, export: "v")
        #expect(infoA.flags & (1 << 8) != 0)   // CAN_MULTI_CONN
        #expect(try a.write(8192, pattern(9, 4096)) == 0)
        #expect(try b.read(8192, 4096) == (0, pattern(9, 4096)))
        #expect(try b.flush() == 0)
        #expect(device.unflushedWrites == 0)
    }
}

/// Many clients at once, each on its own part of one export.
@Suite struct NBDConcurrencyTests {
    @Test func manyClientsAtOnce() throws {
        let clients = 16
        let region = 256 << 10
        let device = MemoryBlockDevice(size: clients * region)
        let (server, path, dir) = try startServer([try NBDExport(name: "v", device: device)]) {
            $0.traceRequests = true   // the trace path must not disturb anything either
            $0.logger = ServeLogger(label: "test", level: .debug) { _, _, _, _ in }
        }
        defer { stopChecked(server, dir) }
        let failures = LockedBox<[String]>([])
        DispatchQueue.concurrentPerform(iterations: clients) { i in
            do {
                let (c, _) = try NBDTestClient.connect(path: path, export: "v")
                var rng = SplitMix64(seed: UInt64(i))
                let base = UInt64(i * region)
                var expected = [UInt8](repeating: 0, count: region)
                for round in 0..<40 {
                    let length = Int.random(in: 1...16, using: &rng) * 512
                    let at = Int.random(in: 0...(region - length), using: &rng)
                    let data = pattern(UInt8(truncatingIfNeeded: i * 40 + round), length, offset: at)
                    guard try c.write(base + UInt64(at), data) == 0 else { throw TestClientError("write failed") }
                    expected.replaceSubrange(at..<(at + length), with: data)
                }
                let (err, back) = try c.read(base, UInt32(region))
                if err != 0 || back != expected { throw TestClientError("client \(i) read back other data") }
                try c.disconnect()
            } catch {
                failures.mutate { $0.append("client \(i): \(error)") }
            }
        }
        #expect(failures.get().isEmpty, "\(failures.get())")
        #expect(eventually { server.statistics.activeConnections == 0 })
        #expect(eventually { server.statistics.requestsCompleted == clients * 41 })
    }
}
