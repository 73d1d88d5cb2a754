import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Daemon parts and their order")
struct DaemonPartKindTests {
    func configuration(http: String = "", httpListen: String? = nil, datagram: String? = nil, metrics: String? = nil) -> AgentConfiguration
    {
        var configuration = AgentConfiguration()
        configuration.intake.socket = "/run/a.sock"
        configuration.intake.httpSocket = http
        configuration.intake.httpListen = httpListen
        configuration.intake.datagramSocket = datagram
        configuration.metrics.listen = metrics
        return configuration
    }

    @Test func theLineSocketAloneComesAfterTheSpoolAndDeliveryAndBeforeSignalsAndTheNotifier() {
        #expect(
            DaemonPartKind.startOrder(configuration()) == [
                .writer, .checkpointer, .delivery, .lineSocket("/run/a.sock"), .operatorSignals, .intakeState, .notifier,
            ])
    }

    @Test func everyListenerStartsAfterDeliveryAndBeforeTheNotifierInAFixedOrder() {
        let order = DaemonPartKind.startOrder(
            configuration(
                http: "/run/h.sock", httpListen: "127.0.0.1:8787", datagram: "/run/d.sock", metrics: "127.0.0.1:9464"))
        #expect(
            order == [
                .writer, .checkpointer, .delivery, .lineSocket("/run/a.sock"), .httpSocket("/run/h.sock"), .httpAddress("127.0.0.1:8787"),
                .datagramSocket("/run/d.sock"), .metrics("127.0.0.1:9464"), .operatorSignals, .intakeState, .notifier,
            ])
    }

    @Test(arguments: [
        (DaemonPartKind.lineSocket("/run/a.sock"), "intake socket /run/a.sock"),
        (.httpSocket("/run/h.sock"), "local Stream API socket /run/h.sock"),
        (.httpAddress("127.0.0.1:8787"), "local Stream API address 127.0.0.1:8787"),
        (.datagramSocket("/run/d.sock"), "datagram socket /run/d.sock"),
        (.metrics("/run/m.sock"), "metrics endpoint /run/m.sock"),
    ])
    func aListenerIsNamedAsTheConfigurationNamesIt(kind: DaemonPartKind, name: String) {
        #expect(kind.description == name)
    }
}
