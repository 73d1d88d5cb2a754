import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Human-readable sizes and durations")
struct HumanUnitsTests {
    @Test(arguments: [
        ("512", 512), ("64KiB", 65_536), ("8MiB", 8_388_608), ("1GiB", 1_073_741_824), ("10MB", 10_000_000),
        ("1.5GB", 1_500_000_000), ("16 MiB", 16_777_216), ("4kB", 4000), ("100B", 100),
    ])
    func parsesSizes(text: String, bytes: Int) {
        #expect(ByteSize(parsing: text)?.bytes == bytes)
    }

    @Test(arguments: ["", "MiB", "-1MiB", "8 mebibytes", "1e3", "8XiB", "0x10"])
    func rejectsBadSizes(text: String) {
        #expect(ByteSize(parsing: text) == nil)
    }

    @Test(arguments: [
        ("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("2h", 7_200_000), ("7d", 604_800_000), ("1.5s", 1500), ("0s", 0),
    ])
    func parsesDurations(text: String, milliseconds: Int64) {
        #expect(HumanDuration(parsing: text)?.milliseconds == milliseconds)
    }

    @Test(arguments: ["", "30", "s", "-5s", "5 minutes", "1w", "ms"])
    func rejectsBadDurations(text: String) {
        #expect(HumanDuration(parsing: text) == nil)
    }

    @Test func rendersShortestExactForm() {
        #expect(ByteSize.gibibytes(1).description == "1GiB")
        #expect(ByteSize(bytes: 10_000_000).description == "10000000")
        #expect(HumanDuration.seconds(7 * 86_400).description == "7d")
        #expect(HumanDuration(milliseconds: 1500).description == "1500ms")
    }
}
