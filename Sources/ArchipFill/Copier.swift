import ArchipStore
import Foundation

public struct FillOptions: Sendable {
    /// Blocks in flight (each holds one block of memory).
    public var jobs: Int
    /// The whole image's SHA-256, if the source promises one: nothing is
    /// committed unless the digest matches.
    public var sha256: ContentHash?
    /// How often verified blocks are made durable and checkpointed.
    public var checkpointInterval: TimeInterval
    public var progress: (@Sendable (FillProgress) -> Void)?

    public init(jobs: Int = ProcessInfo.processInfo.activeProcessorCount + 2, sha256: ContentHash? = nil,
                checkpointInterval: TimeInterval = 2, progress: (@Sendable (FillProgress) -> Void)? = nil) {
        self.jobs = max(1, jobs)
        self.sha256 = sha256
        self.checkpointInterval = checkpointInterval
        self.progress = progress
    }
}

/// Where a fill stands; also the JSON line of `--progress=json`.
public struct FillProgress: Codable, Sendable {
    public var blocksDone: Int
    public var blocksTotal: Int
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    /// Blocks read from the source by this run.
    public var fetched: Int
    /// Blocks the store already held (never fetched).
    public var reused: Int
    /// Blocks a resumed fill had verified before.
    public var resumed: Int
    public var elapsedSeconds: Double
    public var bytesPerSecond: Double

    enum CodingKeys: String, CodingKey {
        case blocksDone = "blocks_done", blocksTotal = "blocks_total", bytesDone = "bytes_done",
             bytesTotal = "bytes_total", fetched, reused, resumed, elapsedSeconds = "elapsed_s",
             bytesPerSecond = "rate_bytes_per_s"
    }
}

public struct FillResult: Sendable {
    public var progress: FillProgress
    /// New content objects written (the rest were deduplicated or zero).
    public var written: Int
    public var hashmap: PithosHashmap
    public var topHash: ContentHash
    public var sha256: ContentHash?
}

/// The pipeline: fetch/read → hash (all cores) → verify → store, with a fixed
/// number of blocks in flight. Verified blocks are checkpointed as it goes, so
/// a failed or killed fill resumes without fetching them again.
public enum Copier {
    /// A failed fill is over: its checkpoint stays for a resume, and its
    /// hold on the name (the fill lock) is given back (`FillStage.end`).
    public static func fill(from source: any BlockSource, into stage: FillStage, options: FillOptions) throws -> FillResult {
        do {
            return try copy(from: source, into: stage, options: options)
        } catch {
            stage.end()
            throw error
        }
    }

    private static func copy(from source: any BlockSource, into stage: FillStage, options: FillOptions) throws -> FillResult {
        guard source.blockSize == stage.blockSize else {
            throw StoreError(.invalidArgument, "\(source.description) is cut in \(ByteCount(UInt64(source.blockSize))) blocks, the volume in \(ByteCount(UInt64(stage.blockSize)))")
        }
        let total = stage.blockCount
        let bs = stage.blockSize
        let resumedCount = stage.done.count
        let digest = options.sha256 == nil ? nil : OrderedDigest()
        let counters = Locked((next: 0, done: resumedCount, bytes: UInt64(0), fetched: 0, reused: 0))
        let checkpointLock = NSLock()
        let lastCheckpoint = Locked(Date())
        let started = Date()

        @Sendable func snapshot() -> FillProgress {
            let c = counters.withLock { $0 }
            let elapsed = Date().timeIntervalSince(started)
            let doneBytes = min(stage.imageSize, UInt64(c.done) * UInt64(bs))
            return FillProgress(blocksDone: c.done, blocksTotal: total, bytesDone: doneBytes, bytesTotal: stage.imageSize,
                                fetched: c.fetched, reused: c.reused, resumed: resumedCount, elapsedSeconds: elapsed,
                                bytesPerSecond: elapsed > 0 ? Double(c.bytes) / elapsed : 0)
        }

        do {
            try FillWorkers.run(blocks: total, workers: options.jobs, bufferSize: bs) { index, buf in
                do {
                    try copyBlock(index, source: source, stage: stage, buffer: buf, digest: digest, counters: counters)
                } catch {
                    digest?.fail()   // release blocks waiting for their turn in the digest
                    throw error
                }
                if Date().timeIntervalSince(lastCheckpoint.withLock { $0 }) > options.checkpointInterval,
                   checkpointLock.try() {
                    defer { checkpointLock.unlock() }
                    try stage.checkpoint()
                    lastCheckpoint.withLock { $0 = Date() }
                }
                options.progress?(snapshot())
            }
        } catch {
            // Keep what was verified, so --resume starts from there.
            try? stage.checkpoint()
            throw error
        }
        let final = snapshot()
        options.progress?(final)
        var whole: ContentHash? = nil
        if let expected = options.sha256, let digest {
            let got = digest.finish()
            whole = got
            guard got == expected else {
                try stage.checkpoint()
                throw StoreError(.corrupt, "\(source.description): the image's SHA-256 is \(got.hex), expected \(expected.hex); nothing was committed")
            }
        }
        try stage.checkpoint()
        let map = try stage.hashmap()
        return FillResult(progress: final, written: stage.writtenBlocks, hashmap: map,
                          topHash: PithosHashmap.topHash(try map.contentHashes), sha256: whole)
    }

    private static func copyBlock(_ index: Int, source: any BlockSource, stage: FillStage,
                                  buffer: UnsafeMutableRawBufferPointer, digest: OrderedDigest?,
                                  counters: Locked<(next: Int, done: Int, bytes: UInt64, fetched: Int, reused: Int)>) throws {
        if stage.isDone(index) {
            // Verified by the run we resume: never fetched again; only read
            // back from the store when a whole-image digest needs its bytes.
            if let digest {
                let n = try stage.readStored(index, into: buffer)
                digest.add(index, UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
            return
        }
        if let expected = source.expectedHash(index), try stage.hasContent(expected) {
            try stage.recordExisting(index, expected)
            if let digest {
                let n = try stage.readStored(index, into: buffer)
                digest.add(index, UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
            counters.withLock { $0.done += 1; $0.reused += 1 }
            return
        }
        let expectedLength = Int(min(UInt64(stage.blockSize), stage.imageSize - UInt64(index) * UInt64(stage.blockSize)))
        try source.withBlock(index, buffer: buffer) { data in
            let n = data.count
            guard n == expectedLength else {
                throw StoreError(.io, "\(source.description): block \(index) has \(n) bytes, expected \(expectedLength)")
            }
            let hash = SHA256.blockHash(data)
            if let expected = source.expectedHash(index), expected != hash {
                throw StoreError(.corrupt, "block \(index) of \(source.description): expected hash \(expected.hex), received \(hash.hex); the fill stopped and nothing was committed")
            }
            digest?.add(index, data)
            try stage.storeBlock(index, data, hash: hash)
            counters.withLock { $0.done += 1; $0.fetched += 1; $0.bytes += UInt64(n) }
        }
    }
}

/// SHA-256 over blocks that finish out of order: each waits for its turn.
/// With `jobs` workers at most `jobs` blocks wait, so memory stays bounded.
final class OrderedDigest: @unchecked Sendable {
    private let stream = SHA256Stream()
    private let cond = NSCondition()
    private var next = 0
    private var failed = false

    func add(_ index: Int, _ data: UnsafeRawBufferPointer) {
        cond.lock()
        defer { cond.unlock() }
        while next != index && !failed { cond.wait() }
        if failed { return }
        stream.update(data)
        next += 1
        cond.broadcast()
    }

    func fail() {
        cond.lock()
        failed = true
        cond.broadcast()
        cond.unlock()
    }

    func finish() -> ContentHash { stream.finish() }
}

/// Runs `body` for every block index on exactly `workers` threads (a thread
/// blocked on the network or the disk must not hold up the others, so not
/// Dispatch's one-thread-per-core), each with its own page-aligned buffer
/// (the store can then write it with O_DIRECT). Indices are handed out in
/// order; the first error stops the hand-out (blocks in flight finish) and is
/// rethrown.
enum FillWorkers {
    static func run(blocks: Int, workers: Int, bufferSize: Int,
                    _ body: @escaping @Sendable (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        let next = Locked(0)
        let failure = Locked<Error?>(nil)
        let count = max(1, min(workers, blocks))
        let page = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))
        @Sendable func work() {
            guard let raw = try? allocateAligned(bufferSize, alignment: page) else {
                failure.withLock { if $0 == nil { $0 = StoreError(.io, "cannot allocate a \(bufferSize)-byte block buffer") } }
                return
            }
            defer { raw.deallocate() }
            let buffer = UnsafeMutableRawBufferPointer(start: raw, count: bufferSize)
            while failure.withLock({ $0 == nil }) {
                let index = next.withLock { n -> Int in defer { n += 1 }; return n }
                if index >= blocks { break }
                do {
                    try body(index, buffer)
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        let group = DispatchGroup()
        for _ in 1..<count {
            group.enter()
            let t = Thread {
                work()
                group.leave()
            }
            t.stackSize = 1 << 20
            t.start()
        }
        work()
        group.wait()
        if let e = failure.withLock({ $0 }) { throw e }
    }

    private static func allocateAligned(_ size: Int, alignment: Int) throws -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, alignment, max(size, 1)) == 0, let p else { throw StoreError(.io, "posix_memalign failed") }
        return p
    }
}
