import NIOConcurrencyHelpers

/// The configuration in force, replaced as a whole on reload (SIGHUP).
///
/// Readers take a snapshot (``current``) at the start of each unit of work — a batch, a connection —
/// so one unit never sees half of an old configuration and half of a new one.
public final class LiveConfiguration: Sendable {
    private let box: NIOLockedValueBox<AgentConfiguration>

    public init(_ configuration: AgentConfiguration) {
        box = NIOLockedValueBox(configuration)
    }

    public var current: AgentConfiguration { box.withLockedValue { $0 } }

    /// What a reload did.
    public struct Reload: Sendable, Equatable {
        /// Keys whose new value is in force now.
        public var applied: [String]
        /// Keys that changed in the file but keep their old value until a restart.
        public var needRestart: [String]
    }

    /// Puts `new` in force, except for the settings that only a restart can change: those keep their
    /// current values and are reported.
    public func reload(_ new: AgentConfiguration) -> Reload {
        box.withLockedValue { old in
            var effective = new
            var needRestart: [String] = []
            func keep<T: Equatable>(_ key: String, _ path: WritableKeyPath<AgentConfiguration, T>) {
                guard new[keyPath: path] != old[keyPath: path] else { return }
                needRestart.append(key)
                effective[keyPath: path] = old[keyPath: path]
            }
            keep("spool.path", \.spool.path)
            keep("spool.max_bytes", \.spool.maxBytes)
            keep("spool.durability", \.spool.durability)
            keep("spool.disk_reserve", \.spool.diskReserve)
            keep("spool.group", \.spool.group)
            keep("intake.socket", \.intake.socket)
            keep("intake.socket_mode", \.intake.socketMode)
            keep("intake.http_socket", \.intake.httpSocket)
            keep("intake.http_listen", \.intake.httpListen)
            keep("intake.http_allow_remote", \.intake.httpAllowRemote)
            keep("intake.datagram_socket", \.intake.datagramSocket)
            keep("batch.max_in_flight", \.batch.maxInFlight)
            keep("service.drain_timeout", \.service.drainTimeout)
            keep("log.level", \.log.level)
            keep("log.format", \.log.format)
            keep("metrics.listen", \.metrics.listen)
            var applied: [String] = []
            func note<T: Equatable>(_ key: String, _ path: KeyPath<AgentConfiguration, T>) {
                if effective[keyPath: path] != old[keyPath: path] { applied.append(key) }
            }
            note("api.url", \.api.url)
            note("api.key_file", \.api.keyFile)
            note("api.timeout", \.api.timeout)
            note("intake.default_table", \.intake.defaultTable)
            note("intake.max_line_bytes", \.intake.maxLineBytes)
            note("intake.allow_uids", \.intake.allowUIDs)
            note("intake.allow_gids", \.intake.allowGIDs)
            note("intake.http_token", \.intake.httpToken)
            note("table", \.tables)
            note("batch", \.batch)
            note("retry", \.retry)
            old = effective
            return Reload(applied: applied, needRestart: needRestart)
        }
    }
}
