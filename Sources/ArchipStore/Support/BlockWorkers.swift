import Foundation

/// Runs `body` for every block index on `workers` threads, each with its own
/// block-sized buffer, handing out indices in order. Stops at the first error
/// (in-flight blocks finish) and rethrows it.
public enum BlockWorkers {
    public static func run(blocks: Int, workers: Int, bufferSize: Int,
                           _ body: @Sendable (Int, UnsafeMutableRawBufferPointer) throws -> Void) throws {
        let next = Locked(0)
        let failure = Locked<Error?>(nil)
        DispatchQueue.concurrentPerform(iterations: max(1, min(workers, blocks))) { _ in
            var buffer = [UInt8](repeating: 0, count: bufferSize)
            while failure.withLock({ $0 == nil }) {
                let index = next.withLock { n -> Int in defer { n += 1 }; return n }
                if index >= blocks { break }
                do {
                    try buffer.withUnsafeMutableBytes { try body(index, $0) }
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        if let e = failure.withLock({ $0 }) { throw e }
    }

    /// Default parallelism for block copies: one more than the cores, so a
    /// thread waiting on I/O does not leave a core idle.
    public static func defaultWorkers(_ jobs: Int) -> Int {
        jobs > 0 ? jobs : ProcessInfo.processInfo.activeProcessorCount + 1
    }
}
