/// A refused or failed request, with what to act on. `kind` maps once to a
/// CLI exit status and (issue 8) an OpenStack fault (badRequest 400,
/// itemNotFound 404, overLimit 413, buildInProgress 409, notImplemented 501).
public struct CycladesError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: String, Sendable {
        case badRequest, itemNotFound, overLimit, conflict, notImplemented, backend, unauthorized
    }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    public static func notFound(_ what: String, _ id: CustomStringConvertible) -> CycladesError {
        CycladesError(.itemNotFound, "\(what) \(id) does not exist")
    }
}
