/// A size in bytes, written by humans as `"512"`, `"64KiB"`, `"8MiB"`, `"1GiB"`, `"10MB"` or `"1.5GB"`.
///
/// Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024; decimal ones (`kB`/`KB`, `MB`, `GB`, `TB`)
/// are powers of 1000, the way the Stream API states its limits ("10 MB").
public struct ByteSize: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var bytes: Int

    public init(bytes: Int) { self.bytes = bytes }

    public static func kibibytes(_ n: Int) -> ByteSize { ByteSize(bytes: n << 10) }
    public static func mebibytes(_ n: Int) -> ByteSize { ByteSize(bytes: n << 20) }
    public static func gibibytes(_ n: Int) -> ByteSize { ByteSize(bytes: n << 30) }

    private static let units: [(suffix: String, factor: Double)] = [
        ("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("TiB", 1_099_511_627_776),
        ("kB", 1e3), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12),
        ("B", 1),
    ]

    /// Why a text is not a size the agent takes.
    public enum ParseFailure: Error, Sendable, Equatable {
        /// Not a number, or a number followed by something other than a unit.
        case notASize
        /// More bytes than 64 bits count.
        case tooLarge

        /// What to tell the user about `text`, after its name.
        public func explanation(_ text: String) -> String {
            switch self {
            case .notASize: "\"\(text)\" is not a size; write e.g. \"64KiB\", \"8MiB\", \"1GiB\" or \"10MB\""
            case .tooLarge: "\"\(text)\" is larger than any size the agent can count (\(Int.max) bytes)"
            }
        }
    }

    /// Parses a human-readable size; returns `nil` when the text is not one (or too large).
    public init?(parsing text: String) {
        guard case .success(let size) = Self.parse(text) else { return nil }
        self = size
    }

    /// Parses a human-readable size, saying why when the text is not one.
    public static func parse(_ text: String) -> Result<ByteSize, ParseFailure> {
        let trimmed = text.trimmingWhitespace()
        var number = Substring(trimmed)
        var factor = 1.0
        for unit in Self.units where trimmed.hasSuffix(unit.suffix) {
            number = trimmed.dropLast(unit.suffix.count)
            factor = unit.factor
            break
        }
        let digits = number.trimmingWhitespace()
        guard !digits.isEmpty, digits.allSatisfy({ $0.isNumber || $0 == "." }),
            let value = Double(digits), value >= 0
        else { return .failure(.notASize) }
        let total = (value * factor).rounded()
        guard total < Double(Int.max) else { return .failure(.tooLarge) }
        return .success(ByteSize(bytes: Int(total)))
    }

    public static func < (lhs: ByteSize, rhs: ByteSize) -> Bool { lhs.bytes < rhs.bytes }

    /// Binary units for rendering, largest first, as powers of two.
    private static let binaryShifts = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)]

    /// The shortest exact rendering, preferring binary units: `8MiB`, `1GiB`, `10000000`.
    public var description: String {
        for (suffix, shift) in Self.binaryShifts where bytes != 0 {
            if bytes % (1 << shift) == 0 { return "\(bytes >> shift)\(suffix)" }
        }
        return "\(bytes)"
    }

    /// A rounded rendering for messages: `"412.5KiB"`, `"3.1GiB"`, `"900B"`.
    public var approximate: String {
        for (suffix, shift) in Self.binaryShifts where bytes >= 1 << shift {
            let tenths = (bytes * 10 + (1 << shift) / 2) >> shift
            return tenths % 10 == 0 ? "\(tenths / 10)\(suffix)" : "\(tenths / 10).\(tenths % 10)\(suffix)"
        }
        return "\(bytes)B"
    }
}

/// A span of time, written by humans as `"250ms"`, `"30s"`, `"5m"`, `"2h"` or `"7d"`.
public struct HumanDuration: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var milliseconds: Int64

    public init(milliseconds: Int64) { self.milliseconds = milliseconds }
    public static func seconds(_ s: Int64) -> HumanDuration { HumanDuration(milliseconds: s * 1000) }

    private static let units: [(suffix: String, ms: Double)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000),
    ]

    /// The longest duration the agent takes anywhere: 100 years (36500d). In nanoseconds it still fits
    /// 64 bits, which clocks, timers and libcurl count in; a longer one stopped the process at parsing.
    public static let maximum = HumanDuration(milliseconds: 36_500 * 86_400_000)

    /// Why a text is not a duration the agent takes.
    public enum ParseFailure: Error, Sendable, Equatable {
        /// Not a number followed by a unit.
        case notADuration
        /// Longer than ``HumanDuration/maximum``.
        case tooLong

        /// What to tell the user about `text`, after its name (`retry.max_age`, `--max-age`).
        public func explanation(_ text: String) -> String {
            switch self {
            case .notADuration: "\"\(text)\" is not a duration; write e.g. \"500ms\", \"30s\", \"5m\", \"2h\" or \"7d\""
            case .tooLong: "\"\(text)\" is longer than the longest duration the agent takes, \(HumanDuration.maximum)"
            }
        }
    }

    /// Parses a human-readable duration; returns `nil` when the text is not one (or too long).
    public init?(parsing text: String) {
        guard case .success(let duration) = Self.parse(text) else { return nil }
        self = duration
    }

    /// Parses a human-readable duration, saying why when the text is not one.
    public static func parse(_ text: String) -> Result<HumanDuration, ParseFailure> {
        let trimmed = text.trimmingWhitespace()
        for unit in Self.units where trimmed.hasSuffix(unit.suffix) {
            let digits = trimmed.dropLast(unit.suffix.count)
            // "5m" must not be read as "5" + "m" of "ms": the loop tries "ms" first.
            guard !digits.isEmpty, digits.allSatisfy({ $0.isNumber || $0 == "." }),
                let value = Double(digits), value >= 0
            else { return .failure(.notADuration) }
            let milliseconds = (value * unit.ms).rounded()
            guard milliseconds <= Double(maximum.milliseconds) else { return .failure(.tooLong) }
            return .success(HumanDuration(milliseconds: Int64(milliseconds)))
        }
        return .failure(.notADuration)
    }

    public var seconds: Double { Double(milliseconds) / 1000 }
    public var duration: Duration { .milliseconds(milliseconds) }

    public static func < (lhs: HumanDuration, rhs: HumanDuration) -> Bool { lhs.milliseconds < rhs.milliseconds }

    public var description: String {
        for (suffix, ms) in [("d", Int64(86_400_000)), ("h", 3_600_000), ("m", 60_000), ("s", 1000)]
        where milliseconds != 0 && milliseconds % ms == 0 {
            return "\(milliseconds / ms)\(suffix)"
        }
        return "\(milliseconds)ms"
    }
}

extension StringProtocol {
    package func trimmingWhitespace() -> String { trimming(where: \.isWhitespace) }

    /// Without the characters at either end for which `isTrimmed` holds.
    package func trimming(where isTrimmed: (Character) -> Bool) -> String {
        guard let first = firstIndex(where: { !isTrimmed($0) }), let last = lastIndex(where: { !isTrimmed($0) }) else { return "" }
        return String(self[first...last])
    }
}
