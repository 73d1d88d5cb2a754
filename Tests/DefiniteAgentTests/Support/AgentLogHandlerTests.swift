import Foundation
import Logging
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Log lines")
struct AgentLogHandlerTests {
    let time = Date(timeIntervalSince1970: 1_767_225_600.042)  // 2026-01-01T00:00:00.042Z

    @Test func logfmtPutsTheMessageFirstAndQuotesOnlyWhatNeedsIt() {
        let line = AgentLogHandler.line(
            format: .logfmt, time: time, level: .info, message: "spool open",
            metadata: [
                "path": "/var/lib/definite-agent/spool.db", "empty": "", "spaced": "a b", "quote": "say \"hi\"", "eq": "a=b",
                "newline": "x\ny", "address": "127.0.0.1:8787", "unicode": "héllo",
            ])
        #expect(
            line
                == #"time=2026-01-01T00:00:00.042Z level=info msg="spool open" address=127.0.0.1:8787 empty="" eq="a=b" newline="x\ny" path=/var/lib/definite-agent/spool.db quote="say \"hi\"" spaced="a b" unicode=héllo"#
                + "\n")
        #expect(
            AgentLogHandler.line(format: .logfmt, time: time, level: .warning, message: "stopped", metadata: [:])
                == "time=2026-01-01T00:00:00.042Z level=warning msg=stopped\n")
    }

    @Test func jsonIsOneObjectPerLineWithNestedMetadataKept() throws {
        let line = AgentLogHandler.line(
            format: .json, time: time, level: .error, message: "a \"quoted\"\nmessage",
            metadata: [
                "n": "3", "list": .array(["a", "b"]), "map": .dictionary(["k": "v"]),
            ])
        #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["time"] as? String == "2026-01-01T00:00:00.042Z")
        #expect(object["level"] as? String == "error" && object["msg"] as? String == "a \"quoted\"\nmessage")
        #expect(
            object["n"] as? String == "3" && object["list"] as? [String] == ["a", "b"] && object["map"] as? [String: String] == ["k": "v"])
    }

    @Test func timestampsAreUTCWithMilliseconds() {
        #expect(AgentLogHandler.timestamp(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(AgentLogHandler.timestamp(Date(timeIntervalSince1970: 1_700_000_000.5)) == "2023-11-14T22:13:20.500Z")
    }

    @Test func theRateLimiterLetsOneLineAnIntervalAndCountsTheRest() {
        let limiter = LogRateLimiter(interval: .seconds(1))
        let start = ContinuousClock.now
        #expect(limiter.admit(now: start) == 0)
        #expect(limiter.admit(now: start + .milliseconds(10)) == nil)
        #expect(limiter.admit(now: start + .milliseconds(900)) == nil)
        #expect(limiter.admit(now: start + .milliseconds(1001)) == 2)
        #expect(limiter.admit(now: start + .milliseconds(1002)) == nil)
        #expect(limiter.admit(now: start + .seconds(5)) == 1)
    }
}
