import Foundation

// `archip repair`: a content block is named by its hash, so any source that
// holds the same bytes can give it back. Every candidate is checked against
// the hash before anything is written, and written whole and atomically
// (`put`: a temporary, then a rename). An owned block is restored only from
// bytes matching its map's block hash; otherwise it is reported LOST with the
// names and byte ranges that read it, and left as it is.

/// Somewhere a block's bytes may be found again. Candidates are not trusted:
/// the repair checks them.
public protocol RepairSource: Sendable {
    var description: String { get }
    /// Bytes that may be the block with this (Pithos) block hash, nil when the
    /// source has nothing under that hash.
    func candidate(_ hash: ContentHash, blockSize: Int) throws -> [UInt8]?
}

/// A folder of blocks as Pithos' file blocker lays them out (`aa/bb/cc/<hash>`);
/// also the `blocks` folder of another archip store in a folder.
public struct BlockFolderRepairSource: RepairSource {
    public let root: String
    public init(root: String) { self.root = root }
    public var description: String { "block folder \(root)" }

    public func candidate(_ hash: ContentHash, blockSize: Int) throws -> [UInt8]? {
        let path = root + "/" + PithosBlockFolder.relativePath(for: hash)
        guard let fh = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? fh.close() }
        // One byte more than a block: a longer file is refused by the check.
        return [UInt8](try fh.read(upToCount: blockSize + 1) ?? Data())
    }
}

/// Another store (folder or RADOS), through its objects: its content blocks,
/// and the blocks of any name whose map lists the hash is not looked for.
public struct StoreRepairSource: RepairSource {
    public let objects: any ObjectStore
    public init(objects: any ObjectStore) { self.objects = objects }
    public var description: String { "store \(objects.location)" }

    public func candidate(_ hash: ContentHash, blockSize: Int) throws -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: blockSize + 1)
        do {
            let n = try out.withUnsafeMutableBytes { try objects.read(StoreLayout.content(hash), at: 0, into: $0) }
            out.removeSubrange(n...)
            return out
        } catch let e as StoreError where e.code == .notFound {
            return nil
        }
    }
}

/// An image and its Pithos hashmap: block `i` of the image is the block the
/// hashmap names `hashes[i]`. `read(i, buffer)` returns the length read.
public final class HashmapRepairSource: RepairSource, @unchecked Sendable {
    public let description: String
    let blockSize: Int
    let where_: [ContentHash: Int]
    let readBlock: @Sendable (Int, UnsafeMutableRawBufferPointer) throws -> Int

    public init(description: String, hashmap: PithosHashmap,
                read: @escaping @Sendable (Int, UnsafeMutableRawBufferPointer) throws -> Int) throws {
        self.description = description
        blockSize = Int(hashmap.blockSize)
        var m: [ContentHash: Int] = [:]
        for (i, h) in try hashmap.contentHashes.enumerated() where m[h] == nil { m[h] = i }
        where_ = m
        readBlock = read
    }

    /// A raw image file.
    public convenience init(imageFile path: String, hashmap: PithosHashmap) throws {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw StoreError(.notFound, "image \(path): cannot read it")
        }
        let bs = UInt64(hashmap.blockSize)
        try self.init(description: "image \(path)", hashmap: hashmap) { i, buffer in
            guard let fh = FileHandle(forReadingAtPath: path) else { throw StoreError(.notFound, "image \(path): cannot read it") }
            defer { try? fh.close() }
            try fh.seek(toOffset: UInt64(i) * bs)
            let d = try fh.read(upToCount: buffer.count) ?? Data()
            d.copyBytes(to: buffer.bindMemory(to: UInt8.self), count: d.count)
            return d.count
        }
    }

    public func candidate(_ hash: ContentHash, blockSize: Int) throws -> [UInt8]? {
        guard let i = where_[hash] else { return nil }
        // Blocks of another size hash differently: only the hashmap's own size can match.
        guard self.blockSize == blockSize else { return nil }
        var out = [UInt8](repeating: 0, count: blockSize)
        let n = try out.withUnsafeMutableBytes { try readBlock(i, $0) }
        out.removeSubrange(n...)
        return out
    }
}

/// What was done about one damaged or missing object.
public struct RepairAction: Codable, Sendable {
    public enum Result: String, Codable, Sendable {
        /// Checked bytes were written back (or would be, in a dry run).
        case restored
        /// An owned block no source holds: its data is gone.
        case lost
        /// A content block no source holds, a map or a record: left as it is.
        case unrepaired
    }
    public var finding: ScrubFinding
    public var result: Result
    /// The source the bytes came from.
    public var source: String?
    /// Sources that offered bytes with the wrong content, and why they were refused.
    public var refused: [String]
}

public struct RepairReport: Codable, Sendable {
    public var dryRun: Bool
    public var scan: ScrubReport
    public var actions: [RepairAction]
    public var restored: Int { actions.filter { $0.result == .restored }.count }
    public var lost: Int { actions.filter { $0.result == .lost }.count }
    /// True when nothing is left damaged (in a dry run: would be).
    public var ok: Bool { actions.allSatisfy { $0.result == .restored } }
}

extension VolumeStore {
    /// Scans the names' objects as `scrub` does (no checkpoint), then restores
    /// each damaged or missing block from the first source that holds its
    /// content. `dryRun`: checks the sources, writes nothing.
    public func repair(names: [VolumeName]?, sources: [any RepairSource], dryRun: Bool,
                       jobs: Int = ProcessInfo.processInfo.activeProcessorCount,
                       maxRate: UInt64? = nil) throws -> RepairReport {
        var options = ScrubOptions()
        options.names = names
        options.jobs = jobs
        options.maxRate = maxRate
        options.checkpoint = false
        options.recordResults = false
        let scrubber = Scrubber(store: self, options: options)
        let scan = try scrubber.run()

        var actions: [RepairAction] = []
        for f in scan.findings {
            actions.append(try repairOne(f, scrubber: scrubber, sources: sources, dryRun: dryRun))
        }
        if !dryRun {
            var after = scan
            after.endedAt = Date()
            after.findings = actions.filter { $0.result != .restored }.map(\.finding)
            scrubber.recordResults(after)
        }
        return RepairReport(dryRun: dryRun, scan: scan, actions: actions)
    }

    private func repairOne(_ f: ScrubFinding, scrubber: Scrubber, sources: [any RepairSource], dryRun: Bool) throws -> RepairAction {
        var action = RepairAction(finding: f, result: .unrepaired, source: nil, refused: [])
        guard let obj = ObjectName(validating: f.object) else { return action }
        let hash: ContentHash
        let blockSize: Int
        var ownedBlock = false
        switch f.kind {
        case "content":
            guard let h = ContentHash(hex: obj.lastComponent) else { return action }
            let i = scrubber.firstIndex(atOrAfter: obj.path)
            guard i < scrubber.content.count, scrubber.content[i] == h else { return action }
            hash = h
            blockSize = Int(scrubber.contentBlockSize[i])
        case "owned":
            action.result = .lost
            let parts = obj.path.split(separator: "/")
            guard parts.count == 3, let id = LayerID(hex: String(parts[1])), let li = scrubber.layerIndex[id],
                  let b = StoreLayout.ownedIndex(obj.lastComponent) else { return action }
            let map = scrubber.layers[Int(li)]
            guard case .owned(let h)? = map.entry(b) else { return action }
            // A volume held open may be written right now: its blocks are the writer's.
            if scrubber.busy.contains(li) {
                action.refused.append("the volume is held open; close it (or stop its instance) and repair again")
                return action
            }
            hash = h
            blockSize = Int(map.blockSize)
            ownedBlock = true
        default:
            return action
        }

        for source in sources {
            let bytes: [UInt8]?
            do { bytes = try source.candidate(hash, blockSize: blockSize) } catch {
                action.refused.append("\(source.description): \(error)")
                continue
            }
            guard let bytes else { continue }
            guard bytes.count <= blockSize else {
                action.refused.append("\(source.description): \(bytes.count) bytes, more than the block size \(blockSize)")
                continue
            }
            let got = SHA256.blockHash(bytes)
            guard got == hash else {
                action.refused.append("\(source.description): its bytes hash to \(got.hex), not \(hash.hex)")
                continue
            }
            action.source = source.description
            action.result = .restored
            if dryRun { return action }
            if ownedBlock {
                // The block padded to its size, then its page checksums (format 1.1).
                var block = bytes
                block.append(contentsOf: repeatElement(0, count: blockSize - block.count))
                let table = block.withUnsafeBytes { BlockChecks.table($0) }
                try objects.put(obj, block + table, durable: true)
            } else {
                let stored = bytes.withUnsafeBytes { ZeroScan.lengthWithoutTrailingZeros($0) }
                try objects.put(obj, Array(bytes[0..<stored]), durable: true)
            }
            objects.forgetCached(obj)
            verified.forget(obj)
            return action
        }
        return action
    }
}
