import ArchipStore

/// A failure of one provider call, with the exit status Ganeti sees.
///
/// Ganeti only tells zero from non-zero, but operators running a script by
/// hand (and the tests) tell a wrong call (2: usage, missing or malformed
/// variables, unknown parameters) from an operation that failed (1).
public struct ExtStorageError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable { case usage, badInput, failed }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var exitStatus: Int32 { kind == .failed ? 1 : 2 }
    public var description: String { message }

    /// Store errors about the input (a malformed name or size) are bad input;
    /// the rest are failures.
    public init(_ e: StoreError) {
        switch e.code {
        case .invalidName, .invalidSize, .invalidArgument: self.init(.badInput, e.description)
        default: self.init(.failed, e.description)
        }
    }
}
