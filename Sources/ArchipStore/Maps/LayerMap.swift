import Foundation

/// What one layer says about one block.
public enum BlockEntry: Equatable, Sendable {
    /// Zero, hiding whatever the parent holds.
    case zero
    /// A writable object owned by this layer; the hash is its content's block
    /// hash as of the last flush (a checksum that `verify` checks).
    case owned(ContentHash)
    /// An immutable shared object named by its block hash.
    case content(ContentHash)

    var kindByte: UInt8 {
        switch self {
        case .zero: return 1
        case .owned: return 2
        case .content: return 3
        }
    }

    var hash: ContentHash {
        switch self {
        case .zero: return .zero
        case .owned(let h), .content(let h): return h
        }
    }

    init?(kind: UInt8, hash: ContentHash) {
        switch kind {
        case 1: self = .zero
        case 2: self = .owned(hash)
        case 3: self = .content(hash)
        default: return nil
        }
    }
}

/// How a layer came to be; decides what counts as a snapshot's child.
public enum LayerKind: UInt8, Sendable {
    /// A fresh volume.
    case base = 0
    /// The volume's new top after a snapshot froze its previous layer.
    case continuation = 1
    /// A new volume whose parent is a snapshot.
    case clone = 2

    public var name: String {
        switch self {
        case .base: return "base"
        case .continuation: return "continuation"
        case .clone: return "clone"
        }
    }
}

/// One layer's map: header plus the entries this layer holds, sorted by block.
/// Blocks without an entry come from the parent (below `parentBlocks`) or are zero.
///
/// Entries live in three parallel sorted arrays: a 1 TiB fully written map
/// (262 144 entries) loads with no per-entry allocation and looks up in O(log n).
public struct LayerMap: Sendable {
    public var id: LayerID
    public var parent: LayerID
    public var kind: LayerKind
    public var size: UInt64
    public var blockSize: UInt32
    /// How many leading blocks show through from the parent.
    public var parentBlocks: UInt64
    public var epoch: UInt64
    /// Bumped on every rewrite of the map object; a log names the generation it extends.
    public var generation: UInt64
    public var createdAt: UInt64

    private(set) var indices: [UInt32] = []
    private(set) var kinds: [UInt8] = []
    private(set) var hashes: [ContentHash] = []

    public static let defaultBlockSize: UInt32 = 4 << 20
    public static let minimumBlockSize: UInt32 = 64 << 10
    public static let maximumBlockSize: UInt32 = 64 << 20

    public init(id: LayerID, parent: LayerID, kind: LayerKind, size: UInt64, blockSize: UInt32,
                parentBlocks: UInt64, epoch: UInt64, generation: UInt64 = 1,
                createdAt: UInt64 = UInt64(time(nil))) {
        self.id = id
        self.parent = parent
        self.kind = kind
        self.size = size
        self.blockSize = blockSize
        self.parentBlocks = parentBlocks
        self.epoch = epoch
        self.generation = generation
        self.createdAt = createdAt
    }

    public var blockCount: UInt64 { (size + UInt64(blockSize) - 1) / UInt64(blockSize) }
    public var entryCount: Int { indices.count }
    public var hasParent: Bool { !parent.isNone }

    /// Number of blocks holding data (owned or content) in this layer.
    public var dataBlockCount: Int { kinds.reduce(0) { $0 + ($1 == 1 ? 0 : 1) } }

    private func position(_ index: UInt32) -> (found: Bool, at: Int) {
        var lo = 0, hi = indices.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            let v = indices[mid]
            if v == index { return (true, mid) }
            if v < index { lo = mid + 1 } else { hi = mid }
        }
        return (false, lo)
    }

    public func entry(_ index: UInt32) -> BlockEntry? {
        let p = position(index)
        guard p.found else { return nil }
        return BlockEntry(kind: kinds[p.at], hash: hashes[p.at])
    }

    /// Calls `body` for each entry in block order.
    public func forEachEntry(_ body: (UInt32, BlockEntry) throws -> Void) rethrows {
        for i in 0..<indices.count {
            try body(indices[i], BlockEntry(kind: kinds[i], hash: hashes[i])!)
        }
    }

    /// Sets or clears entries. Sorted merge: O(n + k log k), however many change.
    public mutating func apply(_ updates: [UInt32: BlockEntry?]) {
        if updates.isEmpty { return }
        if updates.count == 1, let (k, v) = updates.first {
            let p = position(k)
            switch (p.found, v) {
            case (true, .some(let e)):
                kinds[p.at] = e.kindByte; hashes[p.at] = e.hash
            case (true, .none):
                indices.remove(at: p.at); kinds.remove(at: p.at); hashes.remove(at: p.at)
            case (false, .some(let e)):
                indices.insert(k, at: p.at); kinds.insert(e.kindByte, at: p.at); hashes.insert(e.hash, at: p.at)
            case (false, .none):
                break
            }
            return
        }
        let keys = updates.keys.sorted()
        var ni = [UInt32](), nk = [UInt8](), nh = [ContentHash]()
        ni.reserveCapacity(indices.count + keys.count)
        nk.reserveCapacity(indices.count + keys.count)
        nh.reserveCapacity(indices.count + keys.count)
        var a = 0, b = 0
        while a < indices.count || b < keys.count {
            if b >= keys.count || (a < indices.count && indices[a] < keys[b]) {
                ni.append(indices[a]); nk.append(kinds[a]); nh.append(hashes[a]); a += 1
                continue
            }
            let k = keys[b]
            if a < indices.count && indices[a] == k { a += 1 }
            if let e = updates[k] ?? nil {
                ni.append(k); nk.append(e.kindByte); nh.append(e.hash)
            }
            b += 1
        }
        indices = ni; kinds = nk; hashes = nh
    }

    /// Drops every entry at or beyond `blockCount`; returns the dropped ones.
    mutating func truncate(toBlocks blockCount: UInt64) -> [(UInt32, BlockEntry)] {
        let cut = indices.firstIndex { UInt64($0) >= blockCount } ?? indices.count
        var dropped: [(UInt32, BlockEntry)] = []
        for i in cut..<indices.count { dropped.append((indices[i], BlockEntry(kind: kinds[i], hash: hashes[i])!)) }
        indices.removeSubrange(cut...); kinds.removeSubrange(cut...); hashes.removeSubrange(cut...)
        return dropped
    }

    mutating func removeAllEntries(where predicate: (BlockEntry) -> Bool) {
        var ni = [UInt32](), nk = [UInt8](), nh = [ContentHash]()
        for i in 0..<indices.count where !predicate(BlockEntry(kind: kinds[i], hash: hashes[i])!) {
            ni.append(indices[i]); nk.append(kinds[i]); nh.append(hashes[i])
        }
        indices = ni; kinds = nk; hashes = nh
    }

    /// Bulk load from already sorted, checked arrays (the decoder).
    mutating func setEntries(indices: [UInt32], kinds: [UInt8], hashes: [ContentHash]) {
        self.indices = indices
        self.kinds = kinds
        self.hashes = hashes
    }
}

extension LayerMap {
    static func checkBlockSize(_ bs: UInt32) throws {
        guard bs >= minimumBlockSize, bs <= maximumBlockSize, bs & (bs - 1) == 0 else {
            throw StoreError(.invalidSize, "invalid block size \(bs): must be a power of two from \(ByteCount(UInt64(minimumBlockSize))) to \(ByteCount(UInt64(maximumBlockSize)))")
        }
    }
}
