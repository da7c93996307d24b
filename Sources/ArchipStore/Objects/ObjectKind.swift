/// What an object of the store is, by where StoreLayout puts it
/// (docs/FORMAT.md). Backends ask the kind, not the path, what an object
/// needs: the layout is decided here once.
public enum ObjectKind: Sendable, Equatable, CaseIterable {
    /// `archip-store`: the marker and format version.
    case marker
    /// `names/<name>`: a volume's or snapshot's record.
    case record
    /// `layers/<layer>/map`.
    case map
    /// `layers/<layer>/log`: a writable layer's flush log.
    case log
    /// `layers/<layer>/b<index>`: a block a layer owns.
    case ownedBlock
    /// `blocks/aa/bb/cc/<sha256>`: a content-addressed block.
    case contentBlock
    /// `locks/<name>`: who holds a volume.
    case lock
    /// Anything else (fill checkpoints, objects of a newer layout).
    case other

    public init(_ name: ObjectName) {
        let parts = name.path.split(separator: "/", omittingEmptySubsequences: false)
        switch parts.first {
        case "archip-store" where parts.count == 1: self = .marker
        case "names" where parts.count >= 2: self = .record
        case "locks" where parts.count >= 2: self = .lock
        case "blocks" where parts.count >= 2: self = .contentBlock
        case "layers" where parts.count >= 3:
            switch parts.last {
            case "map": self = .map
            case "log": self = .log
            case let last? where StoreLayout.ownedIndex(String(last)) != nil: self = .ownedBlock
            default: self = .other
            }
        default: self = .other
        }
    }

    /// Metadata several nodes may write over time (a volume moves), of which
    /// each write must build on the version its writer read: a backend that
    /// can compare versions (RADOS) makes every write of these a
    /// compare-and-swap, so a writer whose view is stale fails instead of
    /// overwriting. Blocks are written only by the holder of their volume's
    /// lock, and content blocks never change.
    public var needsCompareAndSwap: Bool {
        switch self {
        case .record, .map, .log: return true
        case .marker, .ownedBlock, .contentBlock, .lock, .other: return false
        }
    }
}

extension ObjectName {
    public var kind: ObjectKind { ObjectKind(self) }
}
