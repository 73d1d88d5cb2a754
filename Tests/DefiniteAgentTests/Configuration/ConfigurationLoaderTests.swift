import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Configuration loading")
struct ConfigurationLoaderTests {
    @Test func emptyFileGivesDocumentedDefaults() throws {
        let config = try ConfigurationLoader.parse("")
        #expect(config.api.url == "https://api.definite.app/v2/stream")
        #expect(config.api.timeout == .seconds(30))
        #expect(config.spool.path == "/var/lib/definite-agent/spool.db")
        #expect(config.spool.maxBytes == .gibibytes(1))
        #expect(config.spool.durability == .full)
        #expect(config.spool.diskReserve == nil)
        #expect(config.intake.socket == "/run/definite-agent/agent.sock")
        #expect(config.intake.socketMode == 0o660)
        #expect(config.intake.defaultTable == nil)
        #expect(config.intake.maxLineBytes == .mebibytes(16))
        #expect(config.batch.maxRows == 50_000)
        #expect(config.batch.maxBytes == .mebibytes(4))
        #expect(config.batch.linger == .seconds(1))
        #expect(config.batch.compression == .gzip)
        #expect(config.retry.initial == HumanDuration(milliseconds: 500))
        #expect(config.retry.max == .seconds(60))
        #expect(config.retry.maxAge == .seconds(7 * 86_400))
    }

    @Test func readsEveryKey() throws {
        let config = try ConfigurationLoader.parse(
            """
            [api]
            url = "http://127.0.0.1:8765/v2/stream"
            key_file = "/etc/definite-agent/api-key"
            timeout = "5s"
            [spool]
            path = "/tmp/x/spool.db"
            max_bytes = "2GiB"
            durability = "normal"
            [intake]
            socket = "/tmp/x/agent.sock"
            socket_mode = "0600"
            default_table = "bronze.events"
            max_line_bytes = "1MiB"
            [[table]]
            name = "bronze.users"
            mode = "merge"
            primary_key = ["id"]
            [[table]]
            name = "bronze.events"
            [batch]
            max_rows = 1000
            max_bytes = "4MiB"
            linger = "250ms"
            compression = "none"
            gzip_level = 9
            format = "ndjson"
            concurrency = 4
            max_in_flight = 16
            [retry]
            initial = "1s"
            max = "2m"
            max_age = "1d"
            [log]
            level = "debug"
            """)
        #expect(config.api.keyFile == "/etc/definite-agent/api-key")
        #expect(config.spool.durability == .normal)
        #expect(config.intake.socketMode == 0o600)
        #expect(
            config.tables == [
                .init(name: "bronze.users", mode: .merge, primaryKey: "id"),
                .init(name: "bronze.events", mode: .append, primaryKey: nil),
            ])
        #expect(config.batch.format == .ndjson)
        #expect(config.batch.gzipLevel == 9)
        #expect(config.batch.concurrency == 4 && config.batch.maxInFlight == 16)
        #expect(config.retry.max == .seconds(120))
        #expect(config.log.level == .debug)
    }

    @Test func shippedExampleIsValid() throws {
        let path = #filePath.components(separatedBy: "/Tests/")[0] + "/etc/definite-agent/agent.toml"
        _ = try ConfigurationLoader.load(path: path)
    }

    private func loadError(_ text: String) -> ConfigurationError? {
        do {
            _ = try ConfigurationLoader.parse(text, file: "agent.toml")
            return nil
        } catch {
            return error
        }
    }

    @Test func unknownKeyIsNamedWithItsLine() throws {
        let error = try #require(loadError("[spool]\npath = \"/tmp/s.db\"\npth = \"x\"\n"))
        #expect(error.code == .unknownKey)
        #expect(error.key == "spool.pth")
        #expect(error.line == 3)
        #expect(error.description.hasPrefix("agent.toml:3: spool.pth: unknown key"))
    }

    @Test func unknownSectionIsAnError() throws {
        let error = try #require(loadError("[spooll]\npath = \"x\"\n"))
        #expect(error.code == .unknownKey)
        #expect(error.key == "spooll")
        #expect(error.line == 1)
    }

    @Test func diskReserveIsASizeOrAuto() throws {
        #expect(try ConfigurationLoader.parse("[spool]\ndisk_reserve = \"256MiB\"").spool.diskReserve == .mebibytes(256))
        #expect(try ConfigurationLoader.parse("[spool]\ndisk_reserve = \"auto\"").spool.diskReserve == nil)
    }

    @Test func syntaxErrorGivesTheLine() throws {
        let error = try #require(loadError("[api]\nurl = \"unterminated\n"))
        #expect(error.code == .syntax)
        #expect(error.line == 2)
    }

    @Test(arguments: [
        ("[api]\ntimeout = \"30\"", "api.timeout", ConfigurationError.Code.invalidValue),
        ("[api]\ntimeout = 30", "api.timeout", .wrongType),
        ("[api]\nurl = \"ftp://x\"", "api.url", .invalidValue),
        ("[spool]\nmax_bytes = \"lots\"", "spool.max_bytes", .invalidValue),
        ("[spool]\ndurability = \"paranoid\"", "spool.durability", .invalidValue),
        ("[spool]\ndisk_reserve = \"most\"", "spool.disk_reserve", .invalidValue),
        ("[intake]\nsocket_mode = \"rw\"", "intake.socket_mode", .invalidValue),
        ("[intake]\ndefault_table = \"events\"", "intake.default_table", .invalidValue),
        ("[intake]\nsocket = \"/\(String(repeating: "s", count: 120))\"", "intake.socket", .invalidValue),
        ("[[table]]\nname = \"bronze.u\"\nmode = \"merge\"", "table.mode", .invalidValue),
        ("[[table]]\nname = \"bronze.u\"\nmode = \"merge\"\nprimary_key = [\"a\", \"b\"]", "table.primary_key", .invalidValue),
        ("[[table]]\nname = \"bronze.u\"\nprimary_key = [\"a\"]", "table.primary_key", .invalidValue),
        ("[[table]]\nmode = \"append\"", "table.name", .invalidValue),
        ("[batch]\nmax_rows = 50001", "batch.max_rows", .invalidValue),
        ("[batch]\nmax_bytes = \"11MB\"", "batch.max_bytes", .invalidValue),
        ("[batch]\ngzip_level = 0", "batch.gzip_level", .invalidValue),
        ("[batch]\ncompression = \"zstd\"", "batch.compression", .invalidValue),
        ("[retry]\ninitial = \"10s\"\nmax = \"1s\"", "retry.max", .invalidValue),
        ("[log]\nlevel = \"loud\"", "log.level", .invalidValue),
        ("[intake]\nhttp_listen = \"0.0.0.0:8787\"", "intake.http_listen", .invalidValue),
        ("[intake]\nhttp_listen = \"8787\"", "intake.http_listen", .invalidValue),
        ("[intake]\nhttp_allow_remote = \"yes\"", "intake.http_allow_remote", .wrongType),
        ("[metrics]\nlisten = \"nowhere\"", "metrics.listen", .invalidValue),
        ("[service]\ndrain_timeout = \"soon\"", "service.drain_timeout", .invalidValue),
        ("[intake]\nallow_uids = [\"root\"]", "intake.allow_uids", .wrongType),
        ("[intake]\nsocket = \"/run/a.sock\"\nhttp_socket = \"/run/a.sock\"", "intake.http_socket", .invalidValue),
        ("[intake]\nhttp_socket = \"/run/a.sock\"\ndatagram_socket = \"/run/a.sock\"", "intake.datagram_socket", .invalidValue),
        ("[[table]]\nname = \"bronze.u\"\n[[table]]\nname = \"LAKE.bronze.u\"", "table.name", .invalidValue),
        ("[[table]]\nname = \"bronze.Users\"\n[[table]]\nname = \"bronze.users\"", "table.name", .invalidValue),
    ])
    func badValuesNameTheirKey(text: String, key: String, code: ConfigurationError.Code) throws {
        let error = try #require(loadError(text))
        #expect(error.key == key)
        #expect(error.code == code)
        #expect(ConfigurationError.exitCode == 78)
    }

    @Test func httpListenIsLoopbackUnlessRemoteIsAllowed() throws {
        #expect(try ConfigurationLoader.parse("[intake]\nhttp_listen = \"127.0.0.1:8787\"").intake.httpListen == "127.0.0.1:8787")
        #expect(try ConfigurationLoader.parse("[intake]\nhttp_listen = \"[::1]:8787\"").intake.httpListen == "[::1]:8787")
        let remote = try ConfigurationLoader.parse("[intake]\nhttp_listen = \"0.0.0.0:8787\"\nhttp_allow_remote = true")
        #expect(remote.intake.httpAllowRemote)
    }

    @Test func lineOfABadValueIsReported() throws {
        let error = try #require(loadError("# comment\n[batch]\nlinger = \"soon\"\n"))
        #expect(error.line == 3)
        #expect(error.message.contains("\"soon\" is not a duration"))
    }

    /// Relative paths named another file for each directory a command ran from: `status` or `send` run
    /// elsewhere with the same `--config` found no spool or no socket.
    @Test(arguments: [
        ("[spool]\npath = \"spool.db\"", "spool.path"), ("[intake]\nsocket = \"agent.sock\"", "intake.socket"),
        ("[intake]\nhttp_socket = \"run/http.sock\"", "intake.http_socket"),
        ("[intake]\ndatagram_socket = \"./dgram.sock\"", "intake.datagram_socket"), ("[api]\nkey_file = \"api-key\"", "api.key_file"),
    ])
    func aRelativePathIsRefused(text: String, key: String) throws {
        let error = try #require(loadError(text + "\n"))
        #expect(error.key == key && error.line == 2, "\(error)")
        #expect(error.message.contains("is not an absolute path"), "\(error)")
    }

    /// `config check` passed a metrics address another listener of the daemon has; `run` then failed with
    /// "in use", or "is definite-agent already running?", about its own listener.
    @Test(arguments: [
        ("http_socket = \"/run/a/http.sock\"", "\"/run/a/http.sock\"", "intake.http_socket"),
        ("datagram_socket = \"/run/a/d.sock\"", "\"/run/a/d.sock\"", "intake.datagram_socket"),
        ("socket = \"/run/a/agent.sock\"", "\"/run/a/agent.sock\"", "intake.socket"),
        ("http_listen = \"127.0.0.1:8787\"", "\"127.0.0.1:8787\"", "intake.http_listen"),
        ("http_listen = \"127.0.0.1:8787\"\nhttp_allow_remote = true", "\"0.0.0.0:8787\"", "intake.http_listen"),
        ("http_listen = \"localhost:8787\"", "\"127.0.0.1:8787\"", "intake.http_listen"),
        ("http_listen = \"127.0.0.1:8787\"", "\"LOCALHOST:8787\"", "intake.http_listen"),
        ("http_socket = \"/run/a/http.sock\"", "\"/run/a/./http.sock\"", "intake.http_socket"),
        ("socket = \"/run/a/agent.sock\"", "\"/run//a/agent.sock\"", "intake.socket"),
    ])
    func theMetricsEndpointCannotShareAnotherListenersAddress(intake: String, metrics: String, other: String) throws {
        let error = try #require(loadError("[intake]\n\(intake)\n[metrics]\nlisten = \(metrics)\n"))
        #expect(error.key == "metrics.listen" && error.message.contains("is also \(other)"), "\(error)")
        #expect(loadError("[intake]\nhttp_listen = \"127.0.0.1:8787\"\n[metrics]\nlisten = \"127.0.0.1:9464\"\n") == nil)
        // Other addresses on the same port bind apart.
        for other in ["127.0.0.2:8787", "[::1]:8787"] {
            #expect(loadError("[intake]\nhttp_listen = \"127.0.0.1:8787\"\n[metrics]\nlisten = \"\(other)\"\n") == nil, "\(other)")
        }
    }

    /// A size past 64 bits was "not a size", as if misspelt.
    @Test func aSizeTooLargeIsSaidSo() throws {
        let error = try #require(loadError("[spool]\nmax_bytes = \"99999999999TB\"\n"))
        #expect(error.message.contains("\"99999999999TB\" is larger than any size the agent can count"), "\(error)")
        #expect(ByteSize.parse("8 MiB") == .success(.mebibytes(8)) && ByteSize.parse("8 MiBs") == .failure(.notASize))
    }

    @Test func anEmptyDatagramSocketIsOffLikeAnEmptyHTTPSocket() throws {
        let config = try ConfigurationLoader.parse("[intake]\ndatagram_socket = \"\"\nhttp_socket = \"\"\n")
        #expect(config.intake.datagramSocket == nil && config.intake.httpSocket.isEmpty)
    }

    /// A duration past 2^63 ms stopped the process (SIGILL) in `config check` and at start, which systemd
    /// restarted until its start limit; up to 100 years is taken, and it still fits clocks in nanoseconds.
    @Test func aDurationTooLongIsRefusedNamingTheLongestTaken() throws {
        for key in ["[retry]\nmax_age", "[api]\ntimeout", "[service]\ndrain_timeout"] {
            let error = try #require(loadError("\(key) = \"106751991168d\"\n"), "\(key)")
            #expect(error.message.contains("\"106751991168d\" is longer than the longest duration the agent takes, 36500d"), "\(error)")
        }
        #expect(HumanDuration(parsing: "36500d") == .maximum)
        #expect(HumanDuration.parse("36500.5d") == .failure(.tooLong))
        #expect(HumanDuration.parse("1e400d") == .failure(.notADuration))
    }
}
