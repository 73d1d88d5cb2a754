import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Version")
struct VersionTests {
    @Test func versionLineStartsWithTheVersionAloneThenCommitAndBuildDate() {
        // scripts/package-deb and scripts/build-image take the version from before the first space.
        #expect(AgentVersion.description == "\(AgentVersion.current) (commit \(AgentVersion.commit), built \(AgentVersion.buildDate))")
        #expect(!AgentVersion.current.contains(" "))
    }

    @Test func aBuildWithoutMakeSaysWhatItDoesNotKnow() {
        // `swift build` without make's -D flags (as these tests are built): "unknown", never an empty field.
        #expect(!AgentVersion.commit.isEmpty && !AgentVersion.buildDate.isEmpty)
    }

    @Test func theCommandLinePrintsTheVersionLine() {
        #expect(DefiniteAgentCommand.configuration.version == AgentVersion.description)
    }
}
