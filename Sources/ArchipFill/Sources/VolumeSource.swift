import ArchipStore

/// A volume or snapshot of the same store, read block by block (for `--copy`).
public final class VolumeSource: BlockSource, @unchecked Sendable {
    public let volume: Volume
    public let name: VolumeName
    public var size: UInt64 { volume.size }
    public var blockSize: Int { volume.blockSize }

    public init(store: VolumeStore, name: VolumeName) throws {
        self.name = name
        volume = try store.open(name, mode: .readOnly)
    }

    public var description: String { "volume:\(name)" }
    public func expectedHash(_ index: Int) -> ContentHash? { nil }

    public func read(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let offset = UInt64(index) * UInt64(blockSize)
        let n = Int(min(UInt64(blockSize), size - offset))
        try volume.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
        return n
    }
}
