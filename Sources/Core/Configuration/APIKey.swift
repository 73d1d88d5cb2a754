import FoundationEssentials
import Glibc

/// The Stream API key. Its `description` is redacted, so it cannot leak through logs or string interpolation.
public struct APIKey: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The secret itself; read it only to build the `Authorization` header.
    public let secret: String
    /// Where it came from, safe to show (a path or variable name, never the value).
    public let source: String

    public var description: String { "<redacted, from \(source)>" }
    public var debugDescription: String { description }
}

/// Finds the API key: `[api] key_file`, else `$DEFINITE_API_KEY`, else the systemd credential
/// `$CREDENTIALS_DIRECTORY/api-key`.
public enum APIKeySource {
    /// The key, or `nil` when none of the sources has one. A configured `key_file` that cannot be read is an
    /// error rather than a fallback, so a typo in the path is noticed.
    public static func load(
        config: AgentConfiguration.API,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigurationError) -> APIKey? {
        if let path = config.keyFile {
            return try read(path: path, key: "api.key_file", location: config.keyFileLocation)
        }
        if let value = environment["DEFINITE_API_KEY"], !value.trimmingWhitespace().isEmpty {
            let secret = value.trimmingWhitespace()
            try check(secret, source: "$DEFINITE_API_KEY", key: nil, location: nil)
            return APIKey(secret: secret, source: "$DEFINITE_API_KEY")
        }
        if let directory = environment["CREDENTIALS_DIRECTORY"] {
            let path = directory + "/api-key"
            if FileManager.default.fileExists(atPath: path) {
                return try read(path: path, key: nil, location: nil)
            }
        }
        return nil
    }

    /// Who else may read the key file at `path` (a warning at start and from `config check`): others, or a
    /// group the agent does not run as; `nil` when neither. A group it runs as is the documented way to
    /// share the file (0640 root:definite-agent, for rotation by reload), so it is not flagged.
    /// `agentGroups`: the groups the agent runs as, `nil` when not known (a command run by the operator, who
    /// may be root): then only others are flagged.
    public static func exposure(path: String, agentGroups: Set<gid_t>?) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let mode = String(info.st_mode & 0o777, radix: 8)
        if info.st_mode & 0o007 != 0 { return "open to others (mode \(mode))" }
        if info.st_mode & 0o070 != 0, let agentGroups, !agentGroups.contains(info.st_gid) {
            return "open to group \(info.st_gid), which the agent does not run as (mode \(mode))"
        }
        return nil
    }

    /// The warning for a key file ``exposure(path:agentGroups:)`` finds open: what to do about it.
    public static func exposureWarning(path: String, agentGroups: Set<gid_t>?) -> String? {
        exposure(path: path, agentGroups: agentGroups).map {
            "the API key file \(path) is \($0); chmod 600 it, or 640 with the group the agent runs as"
        }
    }

    /// The groups this process runs as: its effective group and its supplementary groups.
    public static func processGroups() -> Set<gid_t> {
        var groups = [gid_t](repeating: 0, count: Int(max(getgroups(0, nil), 0)))
        let count = groups.isEmpty ? 0 : getgroups(Int32(groups.count), &groups)
        return Set(groups.prefix(Int(max(count, 0)))).union([getegid()])
    }

    private static func read(path: String, key: String?, location: ConfigurationLocation?) throws(ConfigurationError) -> APIKey {
        let contents: [UInt8]
        do {
            contents = try FileSystem.contents(of: path, maxBytes: Self.maxKeyFileBytes)
        } catch {
            let hint = error.code == EFBIG ? " (an API key is at most \(maxKeyBytes) bytes: is it the right file?)" : ""
            throw ConfigurationError(
                .unusablePath, key: key, line: location?.line, file: location?.file,
                "cannot read the API key file \(path): \(error)\(hint)")
        }
        let secret = String(decoding: contents, as: UTF8.self).trimmingWhitespace()
        guard !secret.isEmpty else {
            throw ConfigurationError(.missingKey, key: key, line: location?.line, file: location?.file, "the API key file \(path) is empty")
        }
        try check(secret, source: "the API key file \(path)", key: key, location: location)
        return APIKey(secret: secret, source: path)
    }

    /// The most an API key may take: far more than any token, far less than a header libcurl refuses.
    public static let maxKeyBytes = 4096
    /// The largest key file read at all (the key, and room for whitespace around it).
    static let maxKeyFileBytes = 64 << 10

    /// A key goes into the `Authorization` header as it is: a line break in it would send what follows as
    /// headers of its own (a second key of a file kept during a rotation, to the API and any proxy), a NUL
    /// would cut it, and a megabyte made every request fail with "Out of memory". It must be one token of
    /// printable ASCII. The error names the byte, never the key.
    static func check(_ secret: String, source: String, key: String?, location: ConfigurationLocation?) throws(ConfigurationError) {
        let bytes = secret.utf8
        guard bytes.count <= maxKeyBytes else {
            throw ConfigurationError(
                .invalidValue, key: key, line: location?.line, file: location?.file,
                "\(source) holds \(bytes.count) bytes; an API key is at most \(maxKeyBytes) (is it the right file?)")
        }
        if let (offset, byte) = bytes.enumerated().first(where: { $0.element < 0x21 || $0.element > 0x7E }) {
            let what =
                switch byte {
                case 0x0A, 0x0D: "a line break"
                case 0x20, 0x09: "a space"
                case 0x00: "a NUL byte"
                case 0x80...: "a byte that is not ASCII"
                default: "a control character"
                }
            throw ConfigurationError(
                .invalidValue, key: key, line: location?.line, file: location?.file,
                "\(source) holds \(what) at byte \(offset) of the key; an API key is one line of printable ASCII without spaces (one key per file)"
            )
        }
    }
}
