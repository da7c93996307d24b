import Foundation

// The pieces every response type is made of, and how a reply encodes one.

/// An OpenStack link: `{"rel": "self", "href": "..."}`.
struct Link: Encodable, Sendable {
    var rel: String
    var href: String
}

/// A key that is always written: `null` when the value is nil (the synthesized
/// encoding would leave the key out; OpenStack clients expect it present).
@propertyWrapper
struct Nullable<Value: Encodable & Sendable>: Encodable, Sendable {
    var wrappedValue: Value?
    init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        if let v = wrappedValue { try c.encode(v) } else { try c.encodeNil() }
    }
}

/// `{"<key>": value}`: the envelope most responses come in ("volume", "server", ...).
struct Keyed<Value: Encodable & Sendable>: Encodable, Sendable {
    let key: String
    let value: Value

    init(_ key: String, _ value: Value) {
        self.key = key
        self.value = value
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        try c.encode(value, forKey: AnyKey(key))
    }
}

extension CycladesAPI.Reply {
    /// A response type as JSON (ResponseEncoder: keys in order, slashes unescaped).
    static func encoded<T: Encodable>(_ status: Int, _ value: T) throws -> Self {
        Self(status: status, body: try ResponseEncoder.encode(value))
    }
}
