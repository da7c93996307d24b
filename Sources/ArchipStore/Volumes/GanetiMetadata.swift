/// Metadata keys the Ganeti provider records with a volume at create, and the
/// control plane reads back to find a Ganeti disk's volume: one definition for
/// the writer (ExtStorage) and the readers (Cyclades, snf-manage, the API).
/// The store itself gives them no meaning.
public enum GanetiMetadata {
    /// The disk's name (`VOL_CNAME`, e.g. `snf-vol-42`).
    public static let cname = "ganeti.cname"
    /// The disk's UUID (`VOL_UUID`): recreate-disks finds its own volume by it.
    public static let uuid = "ganeti.uuid"
    /// What `setinfo` stores (`VOL_METADATA`).
    public static let info = "ganeti.info"
}
