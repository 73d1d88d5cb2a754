import Foundation
import Testing

@testable import DefiniteAgent

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
        #expect(try APIKeySource.load(config: api, environment: ["DEFINITE_API_KEY": "env-secret", "CREDENTIALS_DIRECTORY": directory])?.secret == "env-secret")
        #expect(try APIKeySource.load(config: api, environment: ["CREDENTIALS_DIRECTORY": directory])?.secret == "cred-secret")
        #expect(try APIKeySource.load(config: api, environment: [:]) == nil)
    }

    @Test func keyNeverAppearsInItsDescription() throws {
        let key = APIKey(secret: "sk-very-secret", source: "$DEFINITE_API_KEY")
        #expect(!"\(key)".contains("sk-very-secret"))
        #expect(!String(reflecting: key).contains("sk-very-secret"))
    }

    @Test func unreadableKeyFileIsAnErrorNotAFallback() throws {
        var api = AgentConfiguration.API()
        api.keyFile = "/nonexistent/api-key"
        #expect(throws: ConfigurationError.self) { try APIKeySource.load(config: api, environment: ["DEFINITE_API_KEY": "x"]) }
    }

    @Test func groupReadableKeyFileIsFlagged() throws {
        let path = try temporaryFile("secret")
        defer { unlink(path) }
        chmod(path, 0o600)
        #expect(!APIKeySource.isExposed(path: path))
        chmod(path, 0o640)
        #expect(APIKeySource.isExposed(path: path))
    }
}
