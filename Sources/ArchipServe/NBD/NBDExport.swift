/// A named block device as the NBD server offers it: the name clients ask
/// for (the volume's name, for `archip serve`), the device, and how it may be used.
public struct NBDExport: Sendable {
    public let name: String
    public let device: any BlockDevice
    /// Shown by `NBD_OPT_INFO`/`NBD_OPT_GO` when asked (`NBD_INFO_DESCRIPTION`).
    public var description: String?
    /// Serve read-only even if the device could be written (a volume opened
    /// for migration reads, an operator's inspection).
    public var forceReadOnly: Bool

    public init(name: String, device: any BlockDevice, description: String? = nil, readOnly: Bool = false) throws {
        let bytes = name.utf8.count
        guard bytes <= NBDProtocol.maximumStringBytes, !name.utf8.contains(0) else {
            throw ServeError(.invalidArgument, "export name '\(name.prefix(64))…' is \(bytes) bytes",
                             cause: "NBD export names are at most \(NBDProtocol.maximumStringBytes) bytes without NUL")
        }
        if let description, description.utf8.count > NBDProtocol.maximumStringBytes || description.utf8.contains(0) {
            throw ServeError(.invalidArgument, "description of export '\(name)' is too long or contains NUL",
                             cause: "at most \(NBDProtocol.maximumStringBytes) bytes")
        }
        self.name = name
        self.device = device
        self.description = description
        self.forceReadOnly = readOnly
    }

    public var isReadOnly: Bool { forceReadOnly || device.isReadOnly }

    /// The transmission flags a client is given: only what the device can do,
    /// and nothing that writes on a read-only export.
    public var transmissionFlags: NBDProtocol.TransmissionFlags {
        var f: NBDProtocol.TransmissionFlags = [.hasFlags, .sendFlush, .sendFUA]
        let caps = device.capabilities
        if isReadOnly {
            f.insert(.readOnly)
        } else {
            if caps.contains(.trim) { f.insert(.sendTrim) }
            if caps.contains(.writeZeroes) { f.insert(.sendWriteZeroes) }
        }
        if caps.contains(.sharedCache) { f.insert(.canMultiConn) }
        return f
    }

    /// `NBD_INFO_BLOCK_SIZE`: minimum 512 (what QEMU aligns to; 1 if the size
    /// is not a multiple of it, so the last bytes stay reachable), preferred
    /// 4096, maximum the payload cap.
    public var blockSizes: (minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        let minimum: UInt32 = device.size % 512 == 0 ? 512 : 1
        return (minimum, 4096, NBDRequestCheck.maximumPayloadBytes)
    }
}
