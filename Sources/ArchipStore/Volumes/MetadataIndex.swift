import Foundation

/// Hints from a metadata value to the volume that carries it, for the keys
/// other systems find volumes by (`ganeti.cname`: the provider resolves a
/// `disk:NAME` origin, Cyclades snapshots a volume by its Ganeti disk).
///
/// Without them a lookup reads every record in the store: 10 000 volumes are
/// 10 000 reads per clone. A hint is one small object,
/// `index/<key>/<value>`, holding the names that claimed the value, one per
/// line. It is only ever a hint: every lookup confirms it against the named
/// record, and anything else (no hint, a stale one, more than one claimant,
/// a damaged one) falls back to reading every record, which stays the
/// definition. So a hint that a crash, an older archip or a rename left wrong
/// costs one slow lookup (which rewrites it), never a wrong answer.
enum MetadataIndex {
    static let prefix = "index/"
    /// The keys that get hints.
    static let keys: Set<String> = [GanetiMetadata.cname]

    static func object(_ key: String, _ value: String) -> ObjectName? {
        // A file name is at most 255 bytes: longer values get no hint (and are found by reading every record).
        guard keys.contains(key), !value.isEmpty, value.utf8.count <= 200 else { return nil }
        // Values are names other systems chose: anything outside a safe set is
        // spelled in hex so it cannot make a path of its own.
        let safe = value.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2d || c == 0x5f || c == 0x2e
        } && value.first != "."
        if safe { return ObjectName("index", key, value) }
        guard value.utf8.count <= 100 else { return nil }
        return ObjectName("index", key, "x-" + Hex.encode(Array(value.utf8)))
    }
}

extension VolumeStore {
    /// The volumes whose record has `key` = `value` in its metadata, sorted:
    /// for finding a volume by what another system calls it. A hinted key
    /// (MetadataIndex) with a single confirmed claimant is answered with one
    /// or two object reads; otherwise every name's record is read (never a
    /// map: `list` loads every map and chain).
    public func volumes(withMetadata key: String, equalTo value: String) throws -> [VolumeName] {
        if let hint = MetadataIndex.object(key, value),
           let names = hintedNames(hint), names.count == 1, let only = names.first,
           let rec = try? recordIfPresent(only), rec.kind == .volume, rec.metadata[key] == value {
            return [only]
        }
        let found = try allRecords().filter { $0.1.kind == .volume && $0.1.metadata[key] == value }.map(\.0)
        if let hint = MetadataIndex.object(key, value) {
            // Repair the hint for the next lookup; best effort, it is only a hint.
            if found.isEmpty { _ = try? objects.remove(hint) } else { try? writeHint(hint, found) }
        }
        return found
    }

    /// Records the hints for a volume just created with `metadata`. A value
    /// another live volume already claims keeps both names, so lookups see
    /// the ambiguity and read every record (the definition) to report it.
    func noteIndexed(_ name: VolumeName, _ metadata: [String: String]) {
        for key in MetadataIndex.keys {
            guard let value = metadata[key], let hint = MetadataIndex.object(key, value) else { continue }
            var names = (hintedNames(hint) ?? []).filter { other in
                other != name && ((try? recordIfPresent(other))?.metadata[key] == value)
            }
            names.append(name)
            try? writeHint(hint, names)
        }
    }

    /// Drops `name` from the hints of a volume being removed.
    func forgetIndexed(_ name: VolumeName, _ metadata: [String: String]) {
        for key in MetadataIndex.keys {
            guard let value = metadata[key], let hint = MetadataIndex.object(key, value),
                  let names = hintedNames(hint), names.contains(name) else { continue }
            let rest = names.filter { $0 != name }
            if rest.isEmpty { _ = try? objects.remove(hint) } else { try? writeHint(hint, rest) }
        }
    }

    private func hintedNames(_ hint: ObjectName) -> [VolumeName]? {
        guard let bytes = try? objects.readAll(hint), bytes.count <= 64 << 10,
              let text = String(bytes: bytes, encoding: .utf8) else { return nil }
        let names = text.split(separator: "\n").compactMap { try? VolumeName(String($0)) }
        return names.isEmpty ? nil : names
    }

    private func writeHint(_ hint: ObjectName, _ names: [VolumeName]) throws {
        let text = names.map(\.value).sorted().joined(separator: "\n") + "\n"
        try objects.put(hint, Array(text.utf8), durable: false)
    }
}
