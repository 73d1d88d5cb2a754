import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Configuration warnings")
struct ConfigurationWarningTests {
    /// Issue 17: over TCP neither the socket's mode nor allow_uids/allow_gids apply, so a listener without a
    /// token lets every local user write.
    @Test func aTCPListenerWithoutATokenIsWarnedAbout() throws {
        var config = AgentConfiguration()
        #expect(ConfigurationWarning.all(in: config).isEmpty)
        config.intake.httpListen = "127.0.0.1:8787"
        let warnings = ConfigurationWarning.all(in: config)
        #expect(warnings.map(\.key) == ["intake.http_listen"])
        #expect(warnings[0].message.contains("every local user") && warnings[0].message.contains("http_token"))
        config.intake.httpAllowRemote = true
        #expect(ConfigurationWarning.all(in: config)[0].message.contains("every host that can reach 127.0.0.1:8787"))
        config.intake.httpToken = "secret"
        #expect(ConfigurationWarning.all(in: config).isEmpty)
    }
}
