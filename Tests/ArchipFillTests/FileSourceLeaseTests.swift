@testable import ArchipFill
import ArchipStore
import Foundation
import Testing

/// A local image is read through a mapping under a read lease: a process that
/// truncates the image while a block is being read from the mapping waits
/// until that block is done, and the rest of the fill fails with a clear
/// error instead of dying of SIGBUS.
@Suite struct FileSourceLease {
    @Test func aTruncationWaitsForTheMappedBlockThenTheFillFailsCleanly() throws {
        let dir = tempDir("lease")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/img.raw"
        let image = makeImage(path, blocks: 3, tail: 0)
        let source = try FileSource(path: path, blockSize: 4 << 20)
        guard source.readsMapped else {
            print("SKIP: no read lease on \(dir) (file system without leases?); the file is read, not mapped")
            return
        }
        var buffer = [UInt8](repeating: 0, count: 4 << 20)
        let truncate = Process()
        // truncate(2) waits for a lease to be given up (coreutils' truncate
        // opens with O_NONBLOCK and would fail with EAGAIN instead).
        truncate.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        truncate.arguments = ["-c", "import os, sys; os.truncate(sys.argv[1], 0)", path]
        try buffer.withUnsafeMutableBytes { buf in
            try source.withBlock(0, buffer: buf) { data in
                try truncate.run()
                Thread.sleep(forTimeInterval: 0.5)
                // The truncation waits for the lease: the mapped block is intact.
                #expect(truncate.isRunning)
                #expect(data.elementsEqual(image[0..<(4 << 20)]))
            }
        }
        // Leaving the block gave the lease up: the truncation goes through.
        let deadline = Date().addingTimeInterval(10)
        while truncate.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        #expect(!truncate.isRunning)
        #expect(truncate.terminationStatus == 0)
        #expect(!source.readsMapped)
        let error = #expect(throws: StoreError.self) {
            try buffer.withUnsafeMutableBytes { buf in try source.withBlock(1, buffer: buf) { _ in } }
        }
        #expect(error?.message.contains("is now 0 bytes") == true, "\(String(describing: error))")
    }
}
