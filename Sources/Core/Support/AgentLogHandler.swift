import FoundationEssentials
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's log: one line per event on stderr, in the `[log] format` operators choose.
///
/// - `logfmt` (the default): `time=… level=… msg="…" key=value …`, the message before the values, values
///   quoted only when they need it (spaces, quotes, `=`, control characters, or empty), keys sorted.
/// - `json`: one object per line, `{"time":…,"level":…,"msg":…,"key":value,…}`, for journald, Loki or
///   Vector; nested metadata stays nested.
///
/// Times are UTC with milliseconds. Each line is written with one `write(2)` under a lock, so lines from
/// different threads never interleave.
public struct AgentLogHandler: LogHandler {
    /// How each line is written.
    public enum Format: String, Sendable, CaseIterable {
        case logfmt
        case json
    }

    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let format: Format
    private let output: LogOutput

    public init(format: Format, level: Logger.Level, output: LogOutput = .standardError) {
        self.format = format
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var values = metadata
        if let provided = metadataProvider?.get() { values.merge(provided) { _, new in new } }
        if let given = event.metadata { values.merge(given) { _, new in new } }
        output.write(Self.line(format: format, time: Date(), level: event.level, message: event.message.description, metadata: values))
    }

    /// One log line, newline included.
    package static func line(format: Format, time: Date, level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        let keys = metadata.keys.sorted()
        switch format {
        case .logfmt:
            var line = "time=\(timestamp(time)) level=\(level.rawValue) msg=\(logfmtValue(message))"
            for key in keys { line += " \(key)=\(logfmtValue(metadata[key]!.description))" }
            return line + "\n"
        case .json:
            var line = "{\"time\":\"\(timestamp(time))\",\"level\":\"\(level.rawValue)\",\"msg\":\(JSONCompactor.quote(message))"
            for key in keys { line += ",\(JSONCompactor.quote(key)):\(json(metadata[key]!))" }
            return line + "}\n"
        }
    }

    /// A logfmt value: as it is when it is one plain word, else quoted with `\` escapes.
    package static func logfmtValue(_ text: String) -> String {
        let plain =
            !text.isEmpty
            && text.unicodeScalars.allSatisfy { scalar in
                scalar.value > 0x20 && scalar.value != 0x7F && !scalar.properties.isWhitespace
                    && scalar != "\"" && scalar != "=" && scalar != "\\"
            }
        return plain ? text : JSONCompactor.quote(text)
    }

    private static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): JSONCompactor.quote(text)
        case .stringConvertible(let convertible): JSONCompactor.quote(convertible.description)
        case .array(let items): "[" + items.map(json).joined(separator: ",") + "]"
        case .dictionary(let members):
            "{" + members.keys.sorted().map { "\(JSONCompactor.quote($0)):\(json(members[$0]!))" }.joined(separator: ",") + "}"
        }
    }

    /// `2026-01-31T12:34:56.789Z`, without a formatter (they are slow and not thread-safe).
    package static func timestamp(_ date: Date) -> String {
        let interval = date.timeIntervalSince1970
        var seconds = time_t(interval.rounded(.down))
        let milliseconds = Int((interval - Double(seconds)) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let millis = milliseconds < 10 ? "00\(milliseconds)" : milliseconds < 100 ? "0\(milliseconds)" : "\(milliseconds)"
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)Z"
    }
}

/// Where log lines go: a file descriptor, each line in one `write(2)` under a lock.
public final class LogOutput: Sendable {
    private let fd: Int32
    private let lock = Mutex(())

    public init(fd: Int32) {
        self.fd = fd
    }

    public static let standardError = LogOutput(fd: STDERR_FILENO)

    package func write(_ line: String) {
        var bytes = Array(line.utf8)
        lock.withLock { _ in
            bytes.withUnsafeMutableBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        return  // nowhere to report a failing log
                    }
                    offset += n
                }
            }
        }
    }
}
