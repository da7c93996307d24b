/// The scripts Ganeti runs (`ganeti-extstorage-interface(7)`): the first seven
/// are required, `snapshot`, `open` and `close` optional.
public enum Action: String, CaseIterable, Sendable {
    case create, attach, detach, remove, grow, setinfo, verify, snapshot, open, close

    /// What each script reads, for the usage text and the man page.
    public var summary: String {
        switch self {
        case .create: return "create VOL_NAME of VOL_SIZE MiB, thin; cloned or filled from EXTP_ORIGIN if given"
        case .attach: return "print the block device, then kvm:<NBD URI>; idempotent, takes no hold"
        case .detach: return "flush, remove the node's devices, release its hold; idempotent"
        case .remove: return "remove VOL_NAME (refused while attached or held); a missing volume is success"
        case .grow: return "grow VOL_NAME from VOL_SIZE to VOL_NEW_SIZE MiB, also while attached"
        case .setinfo: return "store VOL_METADATA with the volume"
        case .verify: return "check the EXTP_* parameters, the origin and the store"
        case .snapshot: return "O(1) snapshot VOL_SNAPSHOT_NAME of VOL_NAME, also while attached"
        case .open: return "take the hold: exclusive, or shared when VOL_OPEN_EXCLUSIVE=False (live migration)"
        case .close: return "release the hold (flushed); the device stays until detach"
        }
    }
}
