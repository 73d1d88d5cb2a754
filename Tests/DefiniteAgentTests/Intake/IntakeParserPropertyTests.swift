import PropertyBased
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// Property-based tests of the intake parser and validator: whatever the bytes, it never crashes, a
/// line is all or nothing, valid documents are accepted and stored compactly, and what it stores is
/// itself valid.
@Suite("Intake parser properties")
struct IntakeParserPropertyTests {
    static let configuration: AgentConfiguration = {
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        return config
    }()

    func parse(_ bytes: [UInt8]) -> (ParsedLine, SpoolBatch) {
        var parser = IntakeLineParser(configuration: Self.configuration)
        var batch = SpoolBatch()
        let parsed = parser.parse(line: bytes, into: &batch)
        return (parsed, batch)
    }

    /// What the agent stores must parse again to exactly itself (valid, compact, stable).
    func expectStoredIsValid(_ batch: SpoolBatch) {
        for records in batch.records {
            for record in records.split(separator: UInt8(ascii: "\n")) {
                let (again, batchAgain) = parse(Array(record))
                guard case .success = again.result else {
                    Issue.record("stored record does not parse again: \(String(decoding: record, as: UTF8.self))")
                    return
                }
                #expect(batchAgain.records.first.map { Array($0.dropLast()) } == Array(record))
            }
        }
    }

    @Test func arbitraryBytesNeverCrashAndAreAllOrNothing() async {
        await propertyCheck(count: 3000, input: Gen<UInt8>.value().array(of: 0...400)) { bytes in
            let (parsed, batch) = parse(bytes)
            switch parsed.result {
            case .failure(let rejection):
                #expect(batch.isEmpty)
                #expect([400, 413, 422].contains(rejection.status))
                #expect(!rejection.message.isEmpty)
            case .success:
                expectStoredIsValid(batch)
            }
        }
    }

    @Test func validDocumentsAreAcceptedAndStoredCompactly() async {
        await propertyCheck(count: 1500, input: Gen<UInt64>.value()) { seed in
            var random = SplitMix64(seed: seed)
            let document = JSONDocument.object(depth: Int.random(in: 1...10, using: &random), using: &random)
            let spaced = document.render(spaced: true, using: &random)
            let compact = document.render(spaced: false, using: &random)
            let (parsed, batch) = parse(Array(spaced.utf8))
            guard case .success(let accepted) = parsed.result else {
                Issue.record("refused a valid document: \(parsed.result)\n\(spaced)")
                return
            }
            #expect(accepted.records == 1)
            #expect(String(decoding: batch.records[0], as: UTF8.self) == compact + "\n")
        }
    }

    @Test func depthAboveTenIsAlwaysRefusedAndAtMostTenAlwaysAccepted() async {
        await propertyCheck(count: 500, input: Gen<UInt64>.value(), Gen.int(in: 1...14)) { seed, depth in
            var random = SplitMix64(seed: seed)
            let text = JSONDocument.object(exactDepth: depth, using: &random).render(spaced: false, using: &random)
            let (parsed, _) = parse(Array(text.utf8))
            switch parsed.result {
            case .success: #expect(depth <= StreamAPILimits.maxDepth, "accepted depth \(depth): \(text)")
            case .failure(let rejection):
                #expect(depth > StreamAPILimits.maxDepth, "refused depth \(depth): \(rejection)")
                #expect(rejection.code == .tooDeep)
            }
        }
    }

    @Test func mutatedDocumentsNeverCrashAndWhatIsAcceptedIsValid() async {
        await propertyCheck(count: 3000, input: Gen<UInt64>.value()) { seed in
            var random = SplitMix64(seed: seed)
            let document = JSONDocument.object(depth: Int.random(in: 1...12, using: &random), using: &random)
            var bytes = Array(document.render(spaced: Bool.random(using: &random), using: &random).utf8)
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                guard !bytes.isEmpty else { break }
                let at = Int.random(in: 0..<bytes.count, using: &random)
                switch Int.random(in: 0..<4, using: &random) {
                case 0: bytes[at] = UInt8.random(in: 0...255, using: &random)
                case 1: bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...8, using: &random)))
                case 2:
                    bytes.insert(
                        contentsOf: (0..<Int.random(in: 1...4, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) },
                        at: at)
                default: bytes.removeSubrange(at...)
                }
            }
            let (parsed, batch) = parse(bytes)
            if case .success = parsed.result { expectStoredIsValid(batch) } else { #expect(batch.isEmpty) }
        }
    }
}

/// Random JSON documents as token trees, rendered with or without insignificant whitespace. Strings
/// keep their escapes as written, exactly as the agent stores them.
indirect enum JSONDocument {
    case object([(String, JSONDocument)])
    case array([JSONDocument])
    case scalar(String)

    static let keys = ["a", "id", "name", "ts", "nested", "k\\u00e9y", "emoji✓", "q\\\"uote", "_x9", "𝄞"]
    static let strings = [
        "\"\"", "\"plain\"", "\"caf\\u00e9\"", "\"line\\nbreak\"", "\"tab\\tand \\\\ slash \\/\"", "\"✓ ok\"",
        "\"𝄞 clef\"", "\"\\ud834\\udd1e\"", "\"spaces  inside  \"", "\"{not json}\"",
    ]
    static let numbers = ["0", "-0", "1", "-17", "3.25", "-0.5e-3", "1E10", "12345678901234567890123", "6.02e23", "9007199254740993"]

    static func scalar<G: RandomNumberGenerator>(using random: inout G) -> JSONDocument {
        switch Int.random(in: 0..<4, using: &random) {
        case 0: return .scalar(strings.randomElement(using: &random)!)
        case 1: return .scalar(numbers.randomElement(using: &random)!)
        case 2: return .scalar(["true", "false"].randomElement(using: &random)!)
        default: return .scalar("null")
        }
    }

    /// An object of at most `depth` levels (the object itself is level 1).
    static func object<G: RandomNumberGenerator>(depth: Int, using random: inout G) -> JSONDocument {
        .object(
            (0..<Int.random(in: 0...4, using: &random)).map { _ in
                (keys.randomElement(using: &random)!, value(depth: depth - 1, using: &random))
            })
    }

    static func value<G: RandomNumberGenerator>(depth: Int, using random: inout G) -> JSONDocument {
        guard depth > 0, Int.random(in: 0..<3, using: &random) == 0 else { return scalar(using: &random) }
        if Bool.random(using: &random) { return object(depth: depth, using: &random) }
        return .array((0..<Int.random(in: 0...3, using: &random)).map { _ in value(depth: depth - 1, using: &random) })
    }

    /// An object whose nesting is exactly `depth`.
    static func object<G: RandomNumberGenerator>(exactDepth depth: Int, using random: inout G) -> JSONDocument {
        var inner: JSONDocument = scalar(using: &random)
        for _ in 1..<depth { inner = Bool.random(using: &random) ? .array([inner]) : .object([("n", inner)]) }
        return .object([("deep", inner), ("x", scalar(using: &random))])
    }

    func render<G: RandomNumberGenerator>(spaced: Bool, using random: inout G) -> String {
        func gap() -> String { spaced ? [" ", "", "\t", "  "].randomElement(using: &random)! : "" }
        switch self {
        case .scalar(let text): return text
        case .array(let items):
            return "[" + gap() + items.map { $0.render(spaced: spaced, using: &random) }.joined(separator: gap() + "," + gap()) + gap()
                + "]"
        case .object(let members):
            return "{" + gap()
                + members.map { "\"\($0.0)\"" + gap() + ":" + gap() + $0.1.render(spaced: spaced, using: &random) }
                .joined(separator: gap() + "," + gap()) + gap() + "}"
        }
    }
}
