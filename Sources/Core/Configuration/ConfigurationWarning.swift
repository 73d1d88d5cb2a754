/// A configuration the agent runs with, but that an operator should know is risky: logged at start and
/// printed by `config check`, from this one list.
public struct ConfigurationWarning: Sendable, Equatable, CustomStringConvertible {
    /// The key concerned, as `section.key`.
    public var key: String
    public var message: String

    public var description: String { "\(key): \(message)" }

    /// What is risky in `configuration`, in the order of its keys.
    public static func all(in configuration: AgentConfiguration) -> [ConfigurationWarning] {
        var warnings: [ConfigurationWarning] = []
        let intake = configuration.intake
        if let listen = intake.httpListen, intake.httpToken == nil {
            let who = intake.httpAllowRemote ? "every host that can reach \(listen)" : "every local user"
            warnings.append(
                ConfigurationWarning(
                    key: ConfigKey.intakeHTTPListen.name,
                    message: """
                        the local Stream API on TCP \(listen) has no http_token: \(who) can write records (over TCP neither \
                        socket_mode nor allow_uids/allow_gids apply). Set [intake] http_token to require Authorization: Bearer
                        """))
        }
        return warnings
    }
}
