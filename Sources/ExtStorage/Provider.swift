import ArchipFill
import ArchipServe
import ArchipStore
import Foundation

/// The `archipelago` ExtStorage provider: one Ganeti call, from its
/// environment to store and node-daemon operations. Returns the lines for
/// stdout (only `attach` has any).
///
/// Rules Ganeti imposes beyond its man page (see ganeti-extstorage.md and
/// tests/e2e/ganeti/README.md): attach is called around nearly every
/// operation and on a migration's target while the source still writes, so
/// it takes no hold; `EXTP_ORIGIN` arrives on every call and is applied at
/// create only; create may meet its own volume again (recreate-disks);
/// remove is retried, so a missing volume is success; the export snapshot
/// `VOL_NAME.snap` is attached, opened and removed like a volume.
public struct Provider {
    public let env: GanetiEnvironment
    public let config: ProviderConfig
    let openStore: () throws -> VolumeStore
    let node: NodeAttachments
    /// Progress and notes, one line each (the call's log in Ganeti).
    let note: @Sendable (String) -> Void

    /// Metadata keys the provider records with a volume.
    public enum Key {
        public static let uuid = GanetiMetadata.uuid
        public static let cname = GanetiMetadata.cname
        public static let info = GanetiMetadata.info
    }

    public init(env: GanetiEnvironment, config: ProviderConfig, node: NodeAttachments,
                openStore: @escaping () throws -> VolumeStore, note: @escaping @Sendable (String) -> Void) {
        self.env = env
        self.config = config
        self.node = node
        self.openStore = openStore
        self.note = note
    }

    public func run(_ action: Action) throws -> [String] {
        do {
            switch action {
            case .create: try create()
            case .attach: return try attach()
            case .detach: try node.detach(try env.volumeName())
            case .remove: try remove()
            case .grow: try grow()
            case .setinfo: try setInfo()
            case .verify: try verify()
            case .snapshot: try snapshot()
            case .open: try open()
            case .close: try node.close(try env.volumeName())
            }
            return []
        } catch let e as StoreError {
            throw ExtStorageError(e)
        }
    }

    // MARK: actions

    private func create() throws {
        try env.checkParameters()
        let name = try env.volumeName()
        let size = try env.mebibytes("VOL_SIZE")
        let store = try openStore()
        if let existing = try store.summary(name) {
            // recreate-disks calls create on a volume that still exists: the
            // same disk (VOL_UUID) finds its data untouched; anything else is
            // someone else's volume.
            if existing.kind == "volume", let uuid = env.uuid, existing.metadata[Key.uuid] == uuid {
                note("\(name) exists for disk \(uuid) (recreate-disks); its data is left as it is")
                return
            }
            let owner = existing.metadata[Key.uuid].map { " (disk \($0))" } ?? ""
            throw ExtStorageError(.failed, "\(existing.kind) \(name) already exists\(owner); not touching it")
        }
        var metadata: [String: String] = [:]
        if let uuid = env.uuid { metadata[Key.uuid] = uuid }
        if let cname = env.cname { metadata[Key.cname] = cname }
        guard let origin = env.origin else {
            try store.create(name, size: size, metadata: metadata)
            return
        }
        if let originSize = env.originSize, originSize > size.bytes {
            throw ExtStorageError(.badInput, "EXTP_ORIGIN_SIZE \(originSize) bytes is larger than VOL_SIZE (\(size.bytes) bytes)")
        }
        var source = try localOriginChecked(try parseOrigin(origin, store: store), origin: origin)
        let expect = try expectation(for: source, origin: origin)
        let remote = try remoteOpener(for: source, expect: expect)
        if case .snapshot(let snap) = source, !expect.isEmpty {
            // A clone copies nothing, so the filler never sees the bytes: check
            // the snapshot itself (once; later clones compare with its record).
            let started = Date()
            switch try SnapshotContentCheck.check(snap, bytes: env.originSize, expect: expect, store: store, remote: remote) {
            case .recorded: note("\(snap) matches \(expect) (recorded by an earlier check)")
            case .checked(let bytes):
                note(String(format: "%@ matches %@: %llu bytes read in %.1f s", snap.value, expect.description, bytes, Date().timeIntervalSince(started)))
            }
        }
        if case .volume(let live) = source {
            // A clone of a volume needs a frozen layer that holds every write
            // acknowledged so far: a snapshot, taken where the volume is served.
            source = .snapshot(try originSnapshot(of: live, for: name, store: store))
        }
        var request = FillRequest(target: name, source: source)
        request.createSize = size
        request.metadata = metadata
        // A create Ganeti retries after a crash continues the fill it began.
        request.resume = true
        request.blocks = config.pithosBlocks
        request.sha256 = expect.sha256
        request.hashmap = expect.hashmap
        request.remote = remote
        request.options.jobs = config.fillJobs
        request.options.progress = progressNotes()
        let outcome: FillOutcome
        do {
            outcome = try Filler.run(request, store: store)
        } catch let e as StoreError where e.code == .corrupt && !expect.isEmpty {
            // Not the registered image: a retry would fetch the same bytes, so
            // nothing is kept to resume from (the blocks it wrote are gc's).
            if (try? FillStage.abort(store: store, target: name)) == true { note("\(name): dropped the fill's checkpoint") }
            throw e
        }
        switch outcome {
        case .cloned(let from):
            note("\(name): cloned from \(from) (O(1), nothing copied)")
        case .filled(let r):
            let p = r.progress
            note(String(format: "%@: filled from %@: %d blocks in %.1f s (fetched %d, already in the store %d, resumed %d), top hash %@",
                        name.value, origin, p.blocksTotal, p.elapsedSeconds, p.fetched, p.reused, p.resumed, r.topHash.hex))
        }
    }

    private func attach() throws -> [String] {
        let name = try env.volumeName()
        // A missing volume must fail (Ganeti then treats it as removed), and
        // must not start a node daemon just to say so.
        guard try openStore().summary(name) != nil else {
            throw ExtStorageError(.failed, "'\(name)' does not exist in store \(config.storePath)")
        }
        let a = try node.attach(name)
        // Ganeti: the block device on the first line, userspace URIs after it.
        return [a.device, "kvm:" + a.uri]
    }

    private func remove() throws {
        let name = try env.volumeName()
        let store = try openStore()
        guard let existing = try store.summary(name) else {
            // Ganeti retries removes; a fill that never finished leaves only its checkpoint.
            if try FillStage.abort(store: store, target: name) { note("\(name): dropped an unfinished fill") }
            note("\(name) does not exist; nothing to remove")
            return
        }
        if let a = try node.attachment(name) {
            throw ExtStorageError(.failed, "\(name) is attached on this node (\(a.device)); detach it first")
        }
        if let lock = existing.lock, !lock.holders.isEmpty {
            let holders = lock.holders.map(\.description).joined(separator: ", ")
            throw ExtStorageError(.failed, "\(name) is in use (\(lock.mode.rawValue) hold by \(holders)); detach it there first")
        }
        try store.remove(name)
        _ = try? FillStage.abort(store: store, target: name)
        // The snapshot a volume origin was frozen into for this clone goes with
        // it, unless something else was cloned from it since.
        if let from = existing.metadata["clone-of"], from.hasSuffix(".origin-of-\(name)"), let snap = try? VolumeName(from) {
            do {
                try store.remove(snap)
            } catch let e as StoreError where e.code == .hasChildren || e.code == .notFound {
                note("\(snap) stays: \(e.description)")
            }
        }
    }

    private func grow() throws {
        try env.checkParameters()
        let name = try env.volumeName()
        let newSize = try env.mebibytes("VOL_NEW_SIZE")
        if env.variables["VOL_SIZE"] != nil { _ = try env.mebibytes("VOL_SIZE") }
        let store = try openStore()
        guard let existing = try store.summary(name) else {
            throw ExtStorageError(.failed, "'\(name)' does not exist in store \(config.storePath)")
        }
        if existing.size >= newSize.bytes {
            // A retried grow that already happened.
            note("\(name) is already \(ByteCount(existing.size)); nothing to grow")
            return
        }
        if try node.grow(name, to: newSize) { return }
        try store.withVolume(name) { try $0.resize(to: newSize, allowShrink: false) }
    }

    private func setInfo() throws {
        try env.checkParameters()
        let name = try env.volumeName()
        let text = try env.metadata()
        try openStore().setMetadata(name, [Key.info: text])
    }

    private func snapshot() throws {
        try env.checkParameters()
        let name = try env.volumeName()
        let snap = try env.snapshotName()
        if env.variables["VOL_SNAPSHOT_SIZE"] != nil { _ = try env.mebibytes("VOL_SNAPSHOT_SIZE") }
        let store = try openStore()
        guard try store.summary(name) != nil else {
            throw ExtStorageError(.failed, "'\(name)' does not exist in store \(config.storePath)")
        }
        if try node.snapshot(name, as: snap) { return }
        // Held on another node (Ganeti runs this where the instance's primary
        // was, which a failover may have moved): that node's daemon takes it.
        try store.snapshotDelegating(name, as: snap)
    }

    private func open() throws {
        try env.checkParameters()
        let name = try env.volumeName()
        // The daemon's open may break another node's expired hold (it logs
        // that); Ganeti's log gets the line too, from the lease record.
        let store = try? openStore()
        let before = (try? store?.lease(name))??.lastBreak
        try node.open(name, exclusive: try env.openExclusive())
        if let after = (try? store?.lease(name))??.lastBreak, after != before {
            note("\(name.value): \(after.description)")
        }
    }

    /// Checks what a create would use, without changing anything.
    private func verify() throws {
        try env.checkParameters()
        if env.variables["VOL_NAME"] != nil { _ = try env.volumeName() }
        let store = try openStore()
        guard let origin = env.origin else { return }
        let spec = try localOriginChecked(try parseOrigin(origin, store: store), origin: origin)
        _ = try expectation(for: spec, origin: origin)
        switch spec {
        case .snapshot(let n), .volume(let n):
            guard let s = try store.summary(n) else {
                throw ExtStorageError(.badInput, "origin \(origin): '\(n)' does not exist in store \(config.storePath)")
            }
            if case .snapshot = spec, s.kind != "snapshot" {
                throw ExtStorageError(.badInput, "origin \(origin): '\(n)' is a volume; use volume:\(n)")
            }
        case .file:
            break   // localOriginChecked: a readable regular file under [fill] image_dirs
        case .pithos:
            guard config.pithosBlocks != nil else {
                throw ExtStorageError(.badInput, "origin \(origin): pithos origins need 'blocks' in the [fill] section of \(config.path)")
            }
        case .url:
            break   // reachability is the fill's to check: verify must stay fast and side-effect free
        }
    }

    // MARK: helpers

    /// The origin as the filler takes it; `disk:NAME` (what Cyclades sends to
    /// clone a volume) becomes `volume:` the store volume of the Ganeti disk
    /// named NAME (its `VOL_CNAME`, recorded at create).
    private func parseOrigin(_ origin: String, store: VolumeStore) throws -> SourceSpec {
        if Self.isBareName(origin) {
            // Archipelago's spelling, what a stock Synnefo sends: the image's
            // map name, `snf-snap-<id>-<n>` for a snapshot. A snapshot of that
            // name is cloned; a volume is snapshotted first, like volume:NAME.
            guard let n = try? VolumeName(origin) else {
                throw ExtStorageError(.badInput, "EXTP_ORIGIN '\(origin.prefix(80))' is neither a name in the store nor kind:VALUE (snapshot:, volume:, disk:, file:, http(s)://, pithos:)")
            }
            guard let found = try store.summary(n) else {
                throw ExtStorageError(.badInput, "origin \(origin): no snapshot or volume of that name in store \(config.storePath)")
            }
            return found.kind == "snapshot" ? .snapshot(n) : .volume(n)
        }
        if origin.hasPrefix("disk:") {
            let cname = String(origin.dropFirst(5))
            guard !cname.isEmpty else { throw ExtStorageError(.badInput, "EXTP_ORIGIN: 'disk:' needs a Ganeti disk name") }
            let found = try store.volumes(withMetadata: Key.cname, equalTo: cname)
            guard found.count == 1, let only = found.first else {
                throw ExtStorageError(found.isEmpty ? .badInput : .failed,
                                      found.isEmpty ? "origin \(origin): no volume of Ganeti disk '\(cname)' in store \(config.storePath)"
                                                    : "origin \(origin): \(found.count) volumes claim Ganeti disk '\(cname)' (\(found.map(\.value).joined(separator: ", ")))")
            }
            return .volume(only)
        }
        do {
            return try SourceSpec(parsing: origin)
        } catch let e as StoreError {
            throw ExtStorageError(.badInput, "EXTP_ORIGIN: \(e.description)")
        }
    }

    /// A bare name: no `kind:` prefix, not a path.
    static func isBareName(_ origin: String) -> Bool {
        !origin.contains(":") && !origin.hasPrefix("/") && !origin.hasPrefix(".")
    }

    /// `origin_sha256` / `origin_hashmap` for this origin: for images
    /// (file, URL, Pithos) and snapshots; a volume can change, so a checksum
    /// of one is refused. A local hashmap file obeys the same folders as
    /// `file:` origins.
    func expectation(for spec: SourceSpec, origin: String) throws -> ContentExpectation {
        var expect = ContentExpectation(sha256: env.originSHA256, hashmap: env.originHashmap)
        if expect.isEmpty { return expect }
        switch spec {
        case .volume:
            throw ExtStorageError(.badInput, "origin \(origin) is a volume, which can still change: EXTP_ORIGIN_SHA256/EXTP_ORIGIN_HASHMAP apply to images and snapshots")
        case .pithos where expect.hashmap != nil:
            throw ExtStorageError(.badInput, "origin \(origin) is a Pithos hashmap already: pass EXTP_ORIGIN_SHA256 only")
        default:
            break
        }
        if let hm = expect.hashmap, !(hm.hasPrefix("http://") || hm.hasPrefix("https://")) {
            let path = hm.hasPrefix("file:") ? String(hm.dropFirst(5)) : hm
            guard path.hasPrefix("/") else {
                throw ExtStorageError(.badInput, "EXTP_ORIGIN_HASHMAP '\(hm.prefix(80))': a hashmap is an absolute path or an http(s) URL")
            }
            expect.hashmap = try localFile(path, origin: origin, what: "hashmap")
        }
        return expect
    }

    /// The HTTP client, loaded only when the origin or its hashmap is remote.
    private func remoteOpener(for spec: SourceSpec, expect: ContentExpectation) throws -> (any RemoteSourceOpener)? {
        var remote = false
        switch spec {
        case .url, .pithos: remote = true
        default: break
        }
        if let hm = expect.hashmap, hm.hasPrefix("http://") || hm.hasPrefix("https://") { remote = true }
        guard remote else { return nil }
        return try HTTPRemoteOpener(options: HTTPOptions(caCertificatePath: config.caCertificate, insecure: false))
    }

    /// `file:` origins and local `pithos:` hashmaps only from the folders of
    /// `[fill] image_dirs`, and only a readable regular file (or block device)
    /// there: the same check for verify and create, so what verify passes
    /// create can read. The path comes back resolved (symlinks, `..`), and the
    /// fill opens that, not what the parameter said.
    func localOriginChecked(_ spec: SourceSpec, origin: String) throws -> SourceSpec {
        switch spec {
        case .file(let path):
            return .file(try localFile(path, origin: origin, what: "image"))
        case .pithos(let hashmap) where !hashmap.hasPrefix("http://") && !hashmap.hasPrefix("https://"):
            return .pithos(try localFile(hashmap, origin: origin, what: "hashmap"))
        default:
            return spec
        }
    }

    private func localFile(_ path: String, origin: String, what: String) throws -> String {
        let dirs = config.imageDirs
        func refuse(_ why: String) -> ExtStorageError { ExtStorageError(.badInput, "origin \(origin): \(why)") }
        func under(_ p: String, _ dirs: [String]) -> Bool {
            dirs.contains { d in let d = d.hasSuffix("/") ? String(d.dropLast()) : d; return p.hasPrefix(d + "/") }
        }
        guard !dirs.isEmpty else {
            throw refuse("a local \(what) is refused: no [fill] image_dirs in \(config.path) names a folder of images")
        }
        let listed = dirs.joined(separator: ", ")
        // Before touching the file system: outside the folders even as written.
        let lexical = URL(fileURLWithPath: path).standardized.path
        guard path.hasPrefix("/"), under(lexical, dirs) else {
            throw refuse("the \(what) \(path) is not under [fill] image_dirs (\(listed)) of \(config.path)")
        }
        guard let resolved = realpath(path, nil) else {
            throw refuse("cannot read the \(what) \(path): \(String(cString: strerror(errno)))")
        }
        let real = String(cString: resolved)
        free(resolved)
        let realDirs = dirs.map { d -> String in
            guard let r = realpath(d, nil) else { return d }
            defer { free(r) }
            return String(cString: r)
        }
        guard under(real, realDirs) else {
            throw refuse("the \(what) \(path) leads to \(real), which is not under [fill] image_dirs (\(listed)) of \(config.path)")
        }
        var st = stat()
        guard stat(real, &st) == 0 else {
            throw refuse("cannot read the \(what) \(path): \(String(cString: strerror(errno)))")
        }
        let type = st.st_mode & S_IFMT
        guard type == S_IFREG || (type == S_IFBLK && what == "image") else {
            let kind = type == S_IFDIR ? "a folder" : type == S_IFCHR ? "a character device" : "not a regular file"
            throw refuse("the \(what) \(path) is \(kind)\(what == "image" ? " (an image is a regular file or a block device)" : "")")
        }
        guard access(real, R_OK) == 0 else {
            throw refuse("cannot read the \(what) \(path): \(String(cString: strerror(errno)))")
        }
        return real
    }

    /// The snapshot `VOL.origin-of-TARGET` a clone of volume `vol` is made
    /// from: through this node's daemon when `vol` is attached here (so it
    /// holds every write the daemon acknowledged), else through the store,
    /// which refuses while another node holds the volume. A create Ganeti
    /// retries finds the snapshot it took before.
    private func originSnapshot(of vol: VolumeName, for target: VolumeName, store: VolumeStore) throws -> VolumeName {
        let snap = try VolumeName("\(vol).origin-of-\(target)")
        if let s = try store.summary(snap) {
            guard s.kind == "snapshot" else { throw ExtStorageError(.failed, "\(snap) exists and is a volume; not touching it") }
            return snap
        }
        guard let src = try store.summary(vol), src.kind == "volume" else {
            throw ExtStorageError(.badInput, "origin volume:\(vol): no such volume in store \(config.storePath)")
        }
        if try node.snapshot(vol, as: snap) {
            note("\(vol): snapshot \(snap) taken through this node's daemon (every acknowledged write)")
            return snap
        }
        do {
            try store.snapshot(vol, as: snap)
        } catch let e as StoreError where e.code == .locked {
            throw ExtStorageError(.failed, "origin volume:\(vol) is held elsewhere (\(e.description)): clone it on the node that serves it, or once it is detached")
        }
        return snap
    }

    /// One progress line every 10 s: Ganeti keeps the call's output in its log.
    private func progressNotes() -> (@Sendable (FillProgress) -> Void) {
        let last = Locked(Date())
        let note = self.note
        return { p in
            let now = Date()
            guard last.withLock({ l in
                guard now.timeIntervalSince(l) >= 10 else { return false }
                l = now
                return true
            }) else { return }
            note(String(format: "fill: %d/%d blocks, %.0f MiB/s", p.blocksDone, p.blocksTotal, p.bytesPerSecond / 1048576))
        }
    }
}
