import FoundationEssentials
import Glibc

/// What delivery is doing with one target, as the spool records it for `status`, `STATUS=` and metrics.
///
/// The spool keeps the state's ``Kind`` (its raw value is the text operators read in `status`) and, for a
/// state that ends by itself, when it ends. `idle` and `delivering` are never stored: a target without a
/// stored state is idle when nothing is pending and delivering otherwise.
public enum TargetState: Sendable, Equatable {
    case idle
    case delivering
    /// A transient failure (429, 5xx, timeout, no connection): the target waits, then the same rows go again.
    case backingOff(until: Date)
    /// The API refused rows of a batch (400, or a merge batch partly rejected): the batch is being split to
    /// find them while the rows proven good are delivered.
    case isolating
    /// The API answered 404 for the table: this target waits; the others keep flowing.
    case heldTableNotFound(until: Date)
    /// Isolating bad rows, the API refused row after row alone for the same reason (a schema change, a
    /// column the rows no longer fit): rather than dead-letter the whole table a row at a time, this
    /// target waits, then tries the next row; the others keep flowing.
    case heldRefusingRows(until: Date)
    /// No API key, or the API refused it: every target waits (`until` is the next try, if any).
    case authFailing(until: Date?)

    /// The state's name, as stored in the spool and shown by `status`.
    public enum Kind: String, Sendable, CaseIterable {
        case idle
        case delivering
        case backingOff = "backing off"
        case isolating = "isolating bad rows"
        case heldTableNotFound = "held: table not found"
        case heldRefusingRows = "held: the API refuses every row"
        case authFailing = "auth failing"
    }

    public var kind: Kind {
        switch self {
        case .idle: .idle
        case .delivering: .delivering
        case .backingOff: .backingOff
        case .isolating: .isolating
        case .heldTableNotFound: .heldTableNotFound
        case .heldRefusingRows: .heldRefusingRows
        case .authFailing: .authFailing
        }
    }

    /// When the state ends by itself (the next attempt), if it does.
    public var until: Date? {
        switch self {
        case .backingOff(let until), .heldTableNotFound(let until), .heldRefusingRows(let until): until
        case .authFailing(let until): until
        case .idle, .delivering, .isolating: nil
        }
    }

    /// Whether this state means the target's rows are not moving (for health checks and `STATUS=`).
    public var isHeld: Bool {
        switch self {
        case .heldTableNotFound, .heldRefusingRows, .authFailing: true
        case .idle, .delivering, .backingOff, .isolating: false
        }
    }

    /// The state recorded in the spool (`targets.state`, `targets.state_until`); `nil` (idle or delivering,
    /// by what is pending) when nothing or an unknown name is stored.
    public init?(stored name: String?, until: Double?) {
        guard let name, let kind = Kind(rawValue: name) else {
            return nil
        }
        let date = until.map { Date(timeIntervalSince1970: $0) }
        switch kind {
        case .idle: self = .idle
        case .delivering: self = .delivering
        case .backingOff: self = .backingOff(until: date ?? .distantPast)
        case .isolating: self = .isolating
        case .heldTableNotFound: self = .heldTableNotFound(until: date ?? .distantPast)
        case .heldRefusingRows: self = .heldRefusingRows(until: date ?? .distantPast)
        case .authFailing: self = .authFailing(until: date)
        }
    }
}
