import NIOConcurrencyHelpers
import Synchronization

/// The configuration in force, replaced as a whole on reload (SIGHUP).
///
/// Readers take a snapshot (``current``) at the start of each unit of work — a batch, a connection —
/// so one unit never sees half of an old configuration and half of a new one.
public final class LiveConfiguration: Sendable {
    private let box: NIOLockedValueBox<AgentConfiguration>
    private let reloads = Atomic<Int>(0)

    public init(_ configuration: AgentConfiguration) {
        box = NIOLockedValueBox(configuration)
    }

    public var current: AgentConfiguration { box.withLockedValue { $0 } }

    /// How many times ``reload(_:)`` ran: a long-lived reader that keeps what it built from ``current``
    /// (a parser) builds it again when this changed, without taking the lock on every unit of work.
    public var generation: Int { reloads.load(ordering: .acquiring) }

    /// What a reload did.
    public struct Reload: Sendable, Equatable {
        /// Keys whose new value is in force now (``ConfigKey/name``; `table` for the `[[table]]` blocks).
        public var applied: [String]
        /// Keys that changed in the file but keep their old value until a restart.
        public var needRestart: [String]
    }

    /// Puts `new` in force, except for the settings that only a restart can change (``ConfigKey/Reload/restart``
    /// in ``ConfigKey/all``): those keep their current values and are reported.
    public func reload(_ new: AgentConfiguration) -> Reload {
        box.withLockedValue { old in
            var effective = new
            var needRestart: [String] = []
            for key in ConfigKey.all where key.reload == .restart && key.differs(new, old) {
                needRestart.append(key.name)
                key.restore(&effective, old)
            }
            let applied = ConfigKey.all.filter { $0.reload == .atOnce && $0.differs(effective, old) }.map(\.name)
            old = effective
            reloads.add(1, ordering: .releasing)
            return Reload(applied: applied, needRestart: needRestart)
        }
    }
}
