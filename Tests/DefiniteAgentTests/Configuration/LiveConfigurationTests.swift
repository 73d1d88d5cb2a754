import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Configuration reload")
struct LiveConfigurationTests {
    @Test func liveSettingsApplyAndRestartOnlySettingsKeepTheirOldValues() {
        var old = AgentConfiguration()
        old.intake.socket = "/run/a.sock"
        let live = LiveConfiguration(old)
        var new = old
        new.batch.linger = .seconds(5)
        new.batch.concurrency = 3
        new.batch.maxInFlight = 8
        new.retry.max = .seconds(10)
        new.tables = [.init(name: "bronze.u", mode: .merge, primaryKey: "id")]
        new.intake.socket = "/run/b.sock"
        new.spool.path = "/var/lib/other.db"
        let outcome = live.reload(new)
        #expect(outcome.applied == ["table", "batch.linger", "batch.concurrency", "retry.max"])
        #expect(outcome.needRestart == ["spool.path", "intake.socket", "batch.max_in_flight"])
        #expect(live.current.batch.linger == .seconds(5) && live.current.batch.concurrency == 3)
        #expect(live.current.batch.maxInFlight == AgentConfiguration().batch.maxInFlight)
        #expect(live.current.tables.count == 1)
        #expect(live.current.intake.socket == "/run/a.sock")
        #expect(live.current.spool.path == old.spool.path)
    }

    @Test func reloadingTheSameConfigurationChangesNothing() {
        let live = LiveConfiguration(AgentConfiguration())
        #expect(live.reload(AgentConfiguration()) == .init(applied: [], needRestart: []))
    }
}
