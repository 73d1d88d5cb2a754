import Foundation
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("API key sources")
struct APIKeyTests {
    private func temporaryFile(_ contents: String) throws -> String {
        let path = NSTemporaryDirectory() + "api-key-\(UUID().uuidString)"
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func keyFileComesFirst() throws {
        let path = try temporaryFile("file-secret\n")
        defer { unlink(path) }
        var api = AgentConfiguration.API()
        api.keyFile = path
        let key = try #require(try APIKeySource.load(config: api, environment: ["DEFINITE_API_KEY": "env-secret"]))
        #expect(key.secret == "file-secret")
    }

    @Test func environmentThenCredentialsDirectory() throws {
        let directory = NSTemporaryDirectory() + "creds-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "cred-secret".write(toFile: directory + "/api-key", atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let api = AgentConfiguration.API()
        #expect(
            try APIKeySource.load(config: api, environment: ["DEFINITE_API_KEY": "env-secret", "CREDENTIALS_DIRECTORY": directory])?.secret
                == "env-secret")
        #expect(try APIKeySource.load(config: api, environment: ["CREDENTIALS_DIRECTORY": directory])?.secret == "cred-secret")
        #expect(try APIKeySource.load(config: api, environment: [:]) == nil)
    }

    @Test func keyNeverAppearsInItsDescription() throws {
        let key = APIKey(secret: "sk-very-secret", source: "$DEFINITE_API_KEY")
        #expect(!"\(key)".contains("sk-very-secret"))
        #expect(!String(reflecting: key).contains("sk-very-secret"))
    }

    /// A wrong file named as the key (2 GiB here, sparse) was read whole before its size was checked:
    /// gigabytes of memory and seconds on each start and SIGHUP. It is refused by its size, unread.
    @Test func aKeyFileFarTooLargeIsRefusedWithoutBeingRead() throws {
        let path = try temporaryFile("")
        defer { unlink(path) }
        #expect(truncate(path, 2 << 30) == 0)
        var api = AgentConfiguration.API()
        api.keyFile = path
        do {
            _ = try APIKeySource.load(config: api, environment: [:])
            Issue.record("a 2 GiB key file was accepted")
        } catch {
            #expect(
                error.message
                    == "cannot read the API key file \(path): the file holds 2147483648 bytes, more than the 65536 taken (an API key is at most 4096 bytes: is it the right file?)"
            )
        }
    }

    @Test func unreadableKeyFileIsAnErrorNotAFallback() throws {
        var api = AgentConfiguration.API()
        api.keyFile = "/nonexistent/api-key"
        #expect(throws: ConfigurationError.self) { try APIKeySource.load(config: api, environment: ["DEFINITE_API_KEY": "x"]) }
    }

    /// Issue 17: the key-file error names the configuration file and the line of `key_file`, as every other
    /// configuration error does.
    @Test func aKeyFileErrorNamesTheConfigurationFileAndLine() throws {
        let config = try ConfigurationLoader.parse(
            "[api]\nurl = \"https://x.example/v2/stream\"\n\nkey_file = \"/nonexistent/api-key\"\n", file: "/etc/agent.toml")
        do {
            _ = try APIKeySource.load(config: config.api, environment: [:])
            Issue.record("an unreadable key file was accepted")
        } catch {
            #expect(error.file == "/etc/agent.toml" && error.line == 4 && error.key == "api.key_file")
            #expect(error.description.hasPrefix("/etc/agent.toml:4: api.key_file: cannot read the API key file /nonexistent/api-key"))
        }
        let empty = try temporaryFile("\n")
        defer { unlink(empty) }
        let emptyConfig = try ConfigurationLoader.parse("[api]\nkey_file = \"\(empty)\"\n", file: "agent.toml")
        #expect(
            throws: ConfigurationError(.missingKey, key: "api.key_file", line: 2, file: "agent.toml", "the API key file \(empty) is empty")
        ) {
            try APIKeySource.load(config: emptyConfig.api, environment: [:])
        }
    }

    /// The key goes into a header as it is: a second line became a header of its own (sent to the API and
    /// any proxy), a NUL cut it, a megabyte made every request fail with "Out of memory". Each is refused
    /// at start and at reload, naming the byte and never the key; a trailing line break is only trimmed.
    @Test func aKeyThatIsNotOneTokenOfPrintableASCIIIsRefusedWithoutShowingIt() throws {
        func load(file contents: String) throws(ConfigurationError) -> APIKey? {
            let path = try! temporaryFile(contents)
            defer { unlink(path) }
            var api = AgentConfiguration.API()
            api.keyFile = path
            return try APIKeySource.load(config: api, environment: [:])
        }
        #expect(try load(file: "sk-SECRET-one\n")?.secret == "sk-SECRET-one")
        #expect(try load(file: "  sk-SECRET-one\r\n")?.secret == "sk-SECRET-one")
        for (contents, what) in [
            ("sk-SECRET-two\nX-Injected: yes\n", "a line break at byte 13"),
            ("sk-SECRET-two\r\nsk-SECRET-old", "a line break at byte 13"),
            ("sk-SECRET\u{0}tail", "a NUL byte at byte 9"),
            ("Bearer sk-SECRET", "a space at byte 6"),
            ("sk-SECRÉT", "a byte that is not ASCII at byte 7"),
            (String(repeating: "k", count: 4097), "4097 bytes"),
        ] {
            do {
                _ = try load(file: contents)
                Issue.record("\(what): accepted")
            } catch {
                #expect(error.code == .invalidValue && error.message.contains(what), "\(error.message)")
                #expect(!error.message.contains("SECRET") && !error.message.contains("kkkk"), "the key is never shown")
            }
        }
        #expect(throws: ConfigurationError.self) {
            try APIKeySource.load(config: AgentConfiguration.API(), environment: ["DEFINITE_API_KEY": "sk-one\nX-Injected: 1"])
        }
    }

    /// 0640 root:definite-agent is what OPERATING.md recommends for rotation by reload; the daemon warned
    /// about it at every start ("chmod 600 it", which would lock the service user out).
    @Test func aKeyFileOpenToOthersOrToAGroupTheAgentDoesNotRunAsIsFlagged() throws {
        let path = try temporaryFile("secret")
        defer { unlink(path) }
        var info = stat()
        stat(path, &info)
        let own = info.st_gid
        chmod(path, 0o600)
        #expect(APIKeySource.exposure(path: path, agentGroups: [own]) == nil)
        chmod(path, 0o640)
        #expect(APIKeySource.exposure(path: path, agentGroups: [own]) == nil)
        #expect(APIKeySource.exposure(path: path, agentGroups: nil) == nil)
        #expect(
            APIKeySource.exposure(path: path, agentGroups: [own &+ 1]) == "open to group \(own), which the agent does not run as (mode 640)"
        )
        chmod(path, 0o604)
        #expect(APIKeySource.exposure(path: path, agentGroups: nil) == "open to others (mode 604)")
        #expect(
            APIKeySource.exposureWarning(path: path, agentGroups: [own])
                == "the API key file \(path) is open to others (mode 604); chmod 600 it, or 640 with the group the agent runs as")
        #expect(APIKeySource.processGroups().contains(getegid()))
    }
}
