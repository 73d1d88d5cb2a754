import Core
import Spool

/// The outcome of one intake line: how many records it added, or why it was refused, and where its ack
/// id lies in the line.
public struct ParsedLine: Sendable {
    /// Where the line's `"ack"` value lies in the line: the bytes between its quotes exactly as sent
    /// (escapes included, already validated as a JSON string), or `nil` when the line has none. Set even
    /// when the line was refused, if the ack was read before the error. Replies echo these bytes as they
    /// are, so an ack id is never decoded and re-encoded on its way back.
    public var ackRange: Range<Int>?
    public var result: Result<Accepted, IntakeRejection>

    /// Where an accepted line's records went in the batch.
    public struct Accepted: Sendable, Equatable {
        public var targetIndex: Int
        public var records: Int
        public var bytes: Int
    }

    /// The ack id as text (escapes decoded); `line` is the line this outcome came from.
    public func ack(in line: UnsafeRawBufferPointer) -> String? {
        ackRange.map { JSONScanner(line).decode(.init(start: $0.lowerBound, end: $0.upperBound, hasEscapes: true)) }
    }
}

/// Parses intake lines into an ``SpoolBatch``, validating them as the Stream API would.
///
/// A line is either a Stream API request body (a top-level object with a `config` object; `data` holds
/// one row or an array of rows) or a single record for `[intake] default_table`. In both forms a top-level
/// `"ack"` member asks for an acknowledgement and is removed before the record is stored.
///
/// Each line is all-or-nothing: on any error the batch is left exactly as it was.
/// One parser serves one connection: it caches the last `config` it resolved, since a writer usually
/// repeats the same one on every line.
public struct IntakeLineParser {
    private let configuration: AgentConfiguration
    /// The target of plain records, resolved once.
    private let defaultTarget: Result<SpoolTarget, IntakeRejection>
    /// The default target's merge key (empty when it appends): looked for in every plain record.
    private let defaultPrimaryKey: String
    private var cachedConfigBytes: [UInt8] = []
    private var cachedTarget: Result<SpoolTarget, IntakeRejection>?
    /// Top-level member spans of the line being parsed, reused between lines.
    private var members: [MemberSpan] = []

    private struct MemberSpan {
        var start: Int
        var end: Int
        var whitespace: Int
    }

    public init(configuration: AgentConfiguration) {
        self.configuration = configuration
        if let table = configuration.intake.defaultTable {
            defaultTarget = Result { () throws(IntakeRejection) in
                try Self.target(table: table, mode: nil, primaryKey: nil, tags: "", configuration: configuration)
            }
        } else {
            defaultTarget = .failure(
                IntakeRejection(
                    .invalidConfig,
                    "the line has no \"config\" object and [intake] default_table is not set; send {\"data\":…,\"config\":{\"table\":\"ns.table\"}}"
                ))
        }
        defaultPrimaryKey = (try? defaultTarget.get())?.primaryKey ?? ""
    }

    /// Parses one line (without its newline) and appends its records to `batch` when it is valid.
    public mutating func parse(line: UnsafeRawBufferPointer, into batch: inout SpoolBatch) -> ParsedLine {
        var ack: Range<Int>?
        var appended: (index: Int, length: Int, count: Int)?
        do {
            let accepted = try parse(line, into: &batch, ack: &ack, appended: &appended)
            return ParsedLine(ackRange: ack, result: .success(accepted))
        } catch {
            // All or nothing: rows appended before a later member failed (`"ack": 5` after the data) go,
            // and so does their count.
            if let appended {
                batch.records[appended.index].removeSubrange(appended.length...)
                batch.counts[appended.index] = appended.count
            }
            if ack == nil, Self.isRefusedForWhatItSays(error) { ack = Self.ackRange(afterRefusalOf: line) }
            return ParsedLine(ackRange: ack, result: .failure(error))
        }
    }

    /// Whether `rejection` refuses what a well-formed line says (its config, rows, sizes, depth) rather than
    /// the line not being JSON: such a line is answered with its ack id wherever the `"ack"` member stands.
    private static func isRefusedForWhatItSays(_ rejection: IntakeRejection) -> Bool {
        rejection.code != .invalidJSON && rejection.code != .invalidUTF8
    }

    /// The `"ack"` of a line refused before its `"ack"` member was reached (`{"data":…,"config":{bad},
    /// "ack":"7"}`, the order Python's `json.dumps` gives a dict built that way): the line's top-level
    /// members are skipped by their outline, without the limits that refused it. `nil` when there is none,
    /// or when the line turns out not to be JSON before one is found.
    static func ackRange(afterRefusalOf line: UnsafeRawBufferPointer) -> Range<Int>? {
        var scanner = JSONScanner(line)
        var found: Range<Int>?
        do {
            try scanner.beginObject()
            while let name = try scanner.nextMember() {
                if scanner.string(name, is: "ack"), scanner.peek() == UInt8(ascii: "\"") {
                    let value = try scanner.scanString()
                    found = value.start..<value.end
                } else {
                    try scanner.skipValueOutline()
                }
            }
        } catch {
            // Not JSON past this point: an ack found before it is still a valid JSON string.
        }
        return found
    }

    public mutating func parse(line: [UInt8], into batch: inout SpoolBatch) -> ParsedLine {
        line.withUnsafeBytes { parse(line: $0, into: &batch) }
    }

    /// Parses a Stream API JSON request body (`{"data":…,"config":{…}}`), which must carry its `config`:
    /// over HTTP there is no default table.
    ///
    /// A `config` that is not an object, or a second `config` or `data`, is refused: a line of the line
    /// protocol would be a plain record then, and JSON parsers disagree on which of two members counts.
    public mutating func parse(body: UnsafeRawBufferPointer, into batch: inout SpoolBatch) -> ParsedLine {
        var scanner = JSONScanner(body)
        var configs = 0
        var datas = 0
        do {
            try scanner.beginObject()
            while let name = try scanner.nextMember() {
                if scanner.string(name, is: "config") {
                    configs += 1
                    guard scanner.peek() == UInt8(ascii: "{") else {
                        return ParsedLine(
                            ackRange: nil,
                            result: .failure(
                                IntakeRejection(
                                    .invalidConfig,
                                    "config must be an object, {\"table\":\"ns.table\",…}; found \(Self.kindOfValue(startingWith: scanner.peek())) at byte \(scanner.position)"
                                )))
                    }
                } else if scanner.string(name, is: "data") {
                    datas += 1
                }
                guard configs <= 1, datas <= 1 else {
                    return ParsedLine(
                        ackRange: nil, result: .failure(Self.repeatedEnvelopeMember(configs > 1 ? "config" : "data", at: name.start - 1)))
                }
                try scanner.skipValue(depth: 1, maxDepth: 64)
            }
        } catch {
            return ParsedLine(ackRange: nil, result: .failure(Self.rejection(for: error, row: nil)))
        }
        guard configs == 1 else {
            return ParsedLine(
                ackRange: nil,
                result: .failure(
                    IntakeRejection(
                        .invalidConfig, "config.table is required: the body must be {\"data\":…,\"config\":{\"table\":\"ns.table\"}}")))
        }
        return parse(line: body, into: &batch)
    }

    /// What a JSON value starting with `byte` is, for messages.
    private static func kindOfValue(startingWith byte: UInt8?) -> String {
        switch byte {
        case UInt8(ascii: "\""): "a string"
        case UInt8(ascii: "["): "an array"
        case UInt8(ascii: "n"): "null"
        case UInt8(ascii: "t"), UInt8(ascii: "f"): "a boolean"
        default: "a number"
        }
    }

    /// Parses an NDJSON body: one row per line, all for `target` (whose config came with the request's
    /// query parameters). Empty lines are skipped. All rows or none.
    public func parse(ndjson body: UnsafeRawBufferPointer, target: SpoolTarget, into batch: inout SpoolBatch) -> Result<
        ParsedLine.Accepted, IntakeRejection
    > {
        let index = batch.index(for: target)
        let before = batch.records[index].count
        var rows = 0
        var start = 0
        var lineNumber = 0
        var failure: IntakeRejection?
        while start < body.count, failure == nil {
            let end = body[start...].firstIndex(of: UInt8(ascii: "\n")) ?? body.count
            var line = UnsafeRawBufferPointer(rebasing: body[start..<end])
            if line.last == UInt8(ascii: "\r") { line = UnsafeRawBufferPointer(rebasing: line.dropLast()) }
            start = end + 1
            lineNumber += 1
            guard line.contains(where: { $0 != 0x20 && $0 != 0x09 }) else { continue }
            guard rows < StreamAPILimits.maxRowsPerRequest else {
                failure = IntakeRejection(
                    .tooManyRows, "the request has more than \(StreamAPILimits.maxRowsPerRequest) rows (the Stream API's limit per request)"
                )
                break
            }
            var scanner = JSONScanner(line)
            do throws(IntakeRejection) {
                try appendRow(&scanner, row: rows, target: target, to: &batch.records[index])
                scanner.skipWhitespace()
                guard scanner.isAtEnd else { throw Self.rejection(for: scanner.unexpected("end of line after the row"), row: rows) }
            } catch {
                // Blank lines are not rows: say which line of the body it is, beside its place in `data`.
                failure = IntakeRejection(error.code, "line \(lineNumber) of the body, " + error.message)
            }
            rows += 1
        }
        if failure == nil, rows == 0 { failure = IntakeRejection(.invalidRow, "the NDJSON body holds no rows") }
        if let failure {
            batch.records[index].removeSubrange(before...)
            return .failure(failure)
        }
        batch.counts[index] += rows
        return .success(.init(targetIndex: index, records: rows, bytes: batch.records[index].count - before))
    }

    /// Parses a bare JSON array of rows (`[{…},{…}]`), all for `target` (whose config came with the
    /// request's query parameters): what Fluent Bit's `out_http` sends with `format json`, and Vector's
    /// `http` sink with its JSON codec. The same rules and limits as `data` in a request body; all rows or none.
    public func parse(array body: UnsafeRawBufferPointer, target: SpoolTarget, into batch: inout SpoolBatch) -> Result<
        ParsedLine.Accepted, IntakeRejection
    > {
        let index = batch.index(for: target)
        let before = (batch.records[index].count, batch.counts[index])
        var scanner = JSONScanner(body)
        do throws(IntakeRejection) {
            let accepted = try appendRows(&scanner, target: target, index: index, into: &batch)
            scanner.skipWhitespace()
            guard scanner.isAtEnd else { throw Self.rejection(for: scanner.unexpected("the end of the body after the array"), row: nil) }
            return .success(accepted)
        } catch {
            batch.records[index].removeSubrange(before.0...)
            batch.counts[index] = before.1
            return .failure(error)
        }
    }

    /// The target a request's query parameters name (`table`, `mode`, `primary_key`, `tags`): the config of
    /// an NDJSON body or of a bare JSON array.
    public func target(query: [String: String]) -> Result<SpoolTarget, IntakeRejection> {
        Result { () throws(IntakeRejection) in
            guard let table = query["table"], !table.isEmpty else {
                throw IntakeRejection(
                    .invalidConfig, "the table query parameter is required for an NDJSON body or a JSON array (?table=ns.table)")
            }
            var mode: AgentConfiguration.Mode?
            if let text = query["mode"] {
                guard let parsed = AgentConfiguration.Mode(rawValue: text) else {
                    throw IntakeRejection(.invalidConfig, "mode \"\(text)\" is not \"append\" or \"merge\"")
                }
                mode = parsed
            }
            var tags = ""
            if let text = query["tags"], !text.isEmpty {
                let value = Array(text.utf8).withUnsafeBytes { try? JSONValue.parse($0) }
                guard case .object(let members)? = value else {
                    let shown = text.count > 80 ? text.prefix(80) + "…" : Substring(text)
                    throw IntakeRejection(.invalidConfig, "the tags query parameter must be a JSON object; it reads \(shown)")
                }
                if !members.isEmpty { tags = JSONCompactor.render(.object(members)) }
            }
            let key = query["primary_key"].map { $0.split(separator: ",").map(String.init) }
            if let key, key.count != 1 {
                throw IntakeRejection(.invalidConfig, "primary_key must name exactly one column (composite keys are not supported)")
            }
            return try Self.target(table: table, mode: mode, primaryKey: key?.first, tags: tags, configuration: configuration)
        }
    }

    private mutating func parse(
        _ line: UnsafeRawBufferPointer, into batch: inout SpoolBatch, ack: inout Range<Int>?,
        appended: inout (index: Int, length: Int, count: Int)?
    ) throws(IntakeRejection) -> ParsedLine.Accepted {
        var s = JSONScanner(line)
        var rowsTarget: SpoolTarget?
        var rowsAccepted: ParsedLine.Accepted?
        var deferredData: Range<Int>?
        /// The compact size of `deferredData`, checked against the field limit only if the line is a plain
        /// record: a request's `data` is rows, each held to the limit on its own.
        var deferredDataBytes = 0
        var plainKeyPresent = false
        var plainKeySeen = false
        /// Where a second `"data"` or `"config"` member starts: a plain record may repeat a field, a request
        /// may not. It is refused at the end of the line, once its `"ack"` is known wherever it stands.
        var secondData: Int?
        var secondConfig: Int?
        /// Where a second `"ack"` member starts: the reply could answer only one of the two ids.
        var secondAck: Int?
        var configSeen = false
        let plainKey = defaultPrimaryKey
        members.removeAll(keepingCapacity: true)

        do {
            s.skipWhitespace()
            guard s.peek() == UInt8(ascii: "{") else {
                if s.isAtEnd { throw IntakeRejection(.invalidJSON, "empty line: expected a JSON object") }
                try s.skipValue(depth: 1, maxDepth: 64)
                throw IntakeRejection(.invalidRow, "each line must be a JSON object")
            }
            try s.beginObject()
            while let name = try s.nextMember() {
                let memberStart = name.start - 1
                let whitespaceBefore = s.whitespaceAtMemberName
                let whitespaceAtValue = s.whitespace
                let valueStart = s.position
                if s.string(name, is: "ack") {
                    guard s.peek() == UInt8(ascii: "\"") else {
                        throw IntakeRejection(.invalidJSON, "\"ack\" must be a string")
                    }
                    let value = try s.scanString()
                    if ack != nil { secondAck = secondAck ?? memberStart }
                    ack = value.start..<value.end
                    continue
                }
                let isConfig = s.string(name, is: "config")
                if isConfig {
                    // JSON parsers disagree on which of two members counts: the rows would go to one table here
                    // and to another by the API's reading, and the local Stream API refuses it too.
                    if configSeen { secondConfig = secondConfig ?? memberStart }
                    configSeen = true
                }
                if isConfig, s.peek() == UInt8(ascii: "{"), rowsTarget == nil {
                    try s.skipValue(depth: 1, maxDepth: 32)
                    rowsTarget = try resolveConfig(UnsafeRawBufferPointer(rebasing: line[valueStart..<s.position]))
                    continue
                }
                if s.string(name, is: "data") {
                    if rowsAccepted != nil || deferredData != nil { secondData = secondData ?? memberStart }
                    if let target = rowsTarget, rowsAccepted == nil, secondData == nil {
                        // The config came first (the usual order): validate and append the rows in this pass.
                        let index = batch.index(for: target)
                        appended = (index, batch.records[index].count, batch.counts[index])
                        rowsAccepted = try appendRows(&s, target: target, index: index, into: &batch)
                        continue
                    }
                    // Whether this is a request's data or a record's field is known only at the end.
                    try s.skipValue(depth: 0, maxDepth: 64)
                    deferredData = valueStart..<s.position
                    deferredDataBytes = s.position - valueStart - (s.whitespace - whitespaceAtValue)
                    members.append(MemberSpan(start: memberStart, end: s.position, whitespace: s.whitespace - whitespaceBefore))
                    continue
                } else {
                    if !plainKey.isEmpty, s.string(name, equals: plainKey) {
                        guard !plainKeySeen else { throw Self.repeatedKey(plainKey, at: name.start - 1, row: nil) }
                        plainKeySeen = true
                        plainKeyPresent = s.peek() != UInt8(ascii: "n")
                    }
                    try s.skipValue(depth: 2, maxDepth: StreamAPILimits.maxDepth)
                }
                members.append(MemberSpan(start: memberStart, end: s.position, whitespace: s.whitespace - whitespaceBefore))
                try Self.checkFieldSize(
                    name: name, scanner: s, valueBytes: s.position - valueStart - (s.whitespace - whitespaceAtValue), row: nil)
            }
            s.skipWhitespace()
            guard s.isAtEnd else { throw s.unexpected("end of line after the JSON object") }
            if let secondAck { throw Self.repeatedAck(at: secondAck) }

            if let target = rowsTarget {
                if let secondConfig { throw Self.repeatedEnvelopeMember("config", at: secondConfig) }
                if let secondData { throw Self.repeatedEnvelopeMember("data", at: secondData) }
                if let rowsAccepted { return rowsAccepted }
                guard let deferredData else {
                    throw IntakeRejection(.invalidConfig, "the request has a config but no \"data\" (an object or an array of objects)")
                }
                var rows = JSONScanner(line)
                rows.position = deferredData.lowerBound
                let index = batch.index(for: target)
                appended = (index, batch.records[index].count, batch.counts[index])
                return try appendRows(&rows, target: target, index: index, into: &batch)
            }
            if let deferredData {
                // A plain record with a field named "data": hold it to the record rules.
                var field = JSONScanner(line)
                field.position = deferredData.lowerBound
                try field.skipValue(depth: 2, maxDepth: StreamAPILimits.maxDepth)
                if deferredDataBytes > StreamAPILimits.maxFieldBytes {
                    throw Self.fieldTooLarge("data", bytes: deferredDataBytes, row: nil)
                }
            }
        } catch {
            throw Self.rejection(forThrown: error, row: nil)
        }

        let target = try defaultTarget.get()
        if target.mode == .merge, !plainKeyPresent { throw Self.missingKey(target.primaryKey, row: nil) }
        let index = batch.index(for: target)
        let before = batch.records[index].count
        appended = (index, before, batch.counts[index])
        batch.records[index].append(UInt8(ascii: "{"))
        var i = 0
        while i < members.count {
            // Members the line holds back to back (`"a":1,"b":2`, no whitespace) are copied as one run
            // with their commas: a compact record without "ack" is one copy, not one per member.
            var run = members[i]
            while run.whitespace == 0, i + 1 < members.count, members[i + 1].whitespace == 0,
                members[i + 1].start == run.end + 1, line[run.end] == UInt8(ascii: ",")
            {
                run.end = members[i + 1].end
                i += 1
            }
            if run.start != members[0].start { batch.records[index].append(UInt8(ascii: ",")) }
            JSONCompactor.append(line, run.start..<run.end, whitespace: run.whitespace, to: &batch.records[index])
            i += 1
        }
        batch.records[index].append(UInt8(ascii: "}"))
        try Self.checkRowSize(batch.records[index].count - before, tagBytes: target.tags.utf8.count, row: nil)
        batch.records[index].append(UInt8(ascii: "\n"))
        batch.counts[index] += 1
        return .init(targetIndex: index, records: 1, bytes: batch.records[index].count - before)
    }

    // MARK: Request bodies

    /// Validates `data` (one row object or an array of them) at the scanner's position and appends every
    /// row to `batch.records[index]`. On error the caller truncates what was appended.
    private func appendRows(
        _ s: inout JSONScanner, target: SpoolTarget, index: Int, into batch: inout SpoolBatch
    ) throws(IntakeRejection) -> ParsedLine.Accepted {
        let before = batch.records[index].count
        var rows = 0
        do {
            s.skipWhitespace()
            switch s.peek() {
            case UInt8(ascii: "{"):
                try appendRow(&s, row: nil, target: target, to: &batch.records[index])
                rows = 1
            case UInt8(ascii: "["):
                s.position += 1
                s.skipWhitespace()
                if s.peek() == UInt8(ascii: "]") {
                    throw IntakeRejection(.invalidRow, "\"data\" holds no rows")
                }
                while true {
                    guard rows < StreamAPILimits.maxRowsPerRequest else {
                        throw IntakeRejection(
                            .tooManyRows,
                            "the request has more than \(StreamAPILimits.maxRowsPerRequest) rows (the Stream API's limit per request)")
                    }
                    try appendRow(&s, row: rows, target: target, to: &batch.records[index])
                    rows += 1
                    s.skipWhitespace()
                    guard let byte = s.peek() else { throw s.unexpected("',' or ']'") }
                    s.position += 1
                    if byte == UInt8(ascii: "]") { break }
                    guard byte == UInt8(ascii: ",") else {
                        s.position -= 1
                        throw s.unexpected("',' or ']'")
                    }
                }
            default:
                throw IntakeRejection(.invalidRow, "\"data\" must be an object or an array of objects")
            }
        } catch {
            throw Self.rejection(forThrown: error, row: nil)
        }
        batch.counts[index] += rows
        return .init(targetIndex: index, records: rows, bytes: batch.records[index].count - before)
    }

    /// Validates one row (an object) and appends it compacted, with its newline.
    private func appendRow(_ s: inout JSONScanner, row: Int?, target: SpoolTarget, to output: inout [UInt8]) throws(IntakeRejection) {
        let label = row ?? 0
        do {
            s.skipWhitespace()
            guard s.peek() == UInt8(ascii: "{") else {
                throw IntakeRejection(.invalidRow, "data[\(label)] is not an object")
            }
            let start = s.position
            let whitespaceBefore = s.whitespace
            var keyPresent = target.mode != .merge
            var keySeen = false
            try s.beginObject()
            while let name = try s.nextMember() {
                if target.mode == .merge, s.string(name, equals: target.primaryKey) {
                    // JSON parsers disagree on which of two members counts: the key would not be one value.
                    guard !keySeen else { throw Self.repeatedKey(target.primaryKey, at: name.start - 1, row: label) }
                    keySeen = true
                    keyPresent = s.peek() != UInt8(ascii: "n")
                }
                let valueStart = s.position
                let whitespaceAtValue = s.whitespace
                try s.skipValue(depth: 2, maxDepth: StreamAPILimits.maxDepth)
                try Self.checkFieldSize(
                    name: name, scanner: s, valueBytes: s.position - valueStart - (s.whitespace - whitespaceAtValue), row: label)
            }
            guard keyPresent else { throw Self.missingKey(target.primaryKey, row: label) }
            try Self.checkRowSize(s.position - start - (s.whitespace - whitespaceBefore), tagBytes: target.tags.utf8.count, row: row)
            JSONCompactor.append(s.bytes, start..<s.position, whitespace: s.whitespace - whitespaceBefore, to: &output)
            output.append(UInt8(ascii: "\n"))
        } catch {
            throw Self.rejection(forThrown: error, row: label)
        }
    }

    // MARK: Targets

    private mutating func resolveConfig(_ bytes: UnsafeRawBufferPointer) throws(IntakeRejection) -> SpoolTarget {
        if let cached = cachedTarget, cachedConfigBytes.elementsEqual(bytes) { return try cached.get() }
        let result: Result<SpoolTarget, IntakeRejection>
        do {
            result = .success(try Self.resolve(config: try JSONValue.parse(bytes), configuration: configuration))
        } catch {
            result = .failure(Self.rejection(forThrown: error, row: nil))
        }
        cachedConfigBytes = Array(bytes)
        cachedTarget = result
        return try result.get()
    }

    static func resolve(config: JSONValue, configuration: AgentConfiguration) throws(IntakeRejection) -> SpoolTarget {
        guard case .string(let table)? = config["table"] else {
            throw IntakeRejection(.invalidConfig, "config.table is required: a string such as \"bronze.events\"")
        }
        var mode: AgentConfiguration.Mode?
        switch config["mode"] {
        case nil, .null?: break
        case .string(let text)?:
            guard let parsed = AgentConfiguration.Mode(rawValue: text) else {
                throw IntakeRejection(.invalidConfig, "config.mode \"\(text)\" is not \"append\" or \"merge\"")
            }
            mode = parsed
        default:
            throw IntakeRejection(.invalidConfig, "config.mode must be \"append\" or \"merge\"")
        }
        var primaryKey: String?
        switch config["primary_key"] {
        case nil, .null?: break
        case .array(let columns)?:
            guard columns.count == 1, case .string(let column) = columns[0], !column.isEmpty else {
                throw IntakeRejection(.invalidConfig, "config.primary_key must list exactly one column (composite keys are not supported)")
            }
            primaryKey = column
        default:
            throw IntakeRejection(.invalidConfig, "config.primary_key must be a list of exactly one column name, e.g. [\"id\"]")
        }
        var tags = ""
        switch config["tags"] {
        case nil, .null?: break
        case .object(let members)?:
            if !members.isEmpty { tags = JSONCompactor.render(.object(members)) }
        default:
            throw IntakeRejection(.invalidConfig, "config.tags must be an object")
        }
        return try target(table: table, mode: mode, primaryKey: primaryKey, tags: tags, configuration: configuration)
    }

    /// The most a request's tags may take as compact JSON. They travel with every request their rows go in
    /// (in the URL, for NDJSON bodies), and a batch carries at most a few KiB of them
    /// (`RequestBody.tagBudget`): larger ones made each of their rows a request of its own, or a URL the
    /// API's front refuses. Trace ids and labels take far less.
    static let maxTagBytes = 2048

    /// Combines what a request says with the `[[table]]` defaults for its table.
    static func target(
        table: String, mode: AgentConfiguration.Mode?, primaryKey: String?, tags: String, configuration: AgentConfiguration
    ) throws(IntakeRejection) -> SpoolTarget {
        if let problem = TableName.problem(with: table) {
            throw IntakeRejection(.invalidTable, problem)
        }
        let table = TableName.canonical(table)
        guard tags.utf8.count <= maxTagBytes else {
            throw IntakeRejection(
                .invalidConfig,
                "config.tags is \(tags.utf8.count) bytes as compact JSON; at most \(maxTagBytes) (they go with every request of the rows)")
        }
        let defaults = configuration.tableDefaults(for: table)
        let mode = mode ?? defaults?.mode ?? .append
        var key = primaryKey
        if mode == .merge, key == nil, defaults?.mode == .merge { key = defaults?.primaryKey }
        if mode == .merge, key == nil {
            throw IntakeRejection(.invalidConfig, "mode \"merge\" requires primary_key with exactly one column (table \(table))")
        }
        return SpoolTarget(table: table, mode: mode, primaryKey: key ?? "", tags: tags)
    }

    // MARK: Errors

    private static func checkFieldSize(name: JSONScanner.StringSpan, scanner: JSONScanner, valueBytes: Int, row: Int?)
        throws(IntakeRejection)
    {
        guard valueBytes > StreamAPILimits.maxFieldBytes else { return }
        throw fieldTooLarge(scanner.decode(name), bytes: valueBytes, row: row)
    }

    /// A row of `bytes` (compact JSON) that no request could carry, with `tagBytes` of tags (its target's:
    /// a JSON body carries them beside the rows, and the envelope's allowance leaves them out).
    package static func checkRowSize(_ bytes: Int, tagBytes: Int = 0, row: Int?) throws(IntakeRejection) {
        let limit = StreamAPILimits.maxRowBytes - tagBytes
        guard bytes > limit else { return }
        throw IntakeRejection(
            .rowTooLarge,
            "\(prefix(row))the row is \(bytes) bytes as compact JSON; a Stream API request of at most \(StreamAPILimits.maxBodyBytes) bytes can carry at most \(limit) of it\(tagBytes > 0 ? " beside its \(tagBytes) bytes of tags" : "")"
        )
    }

    /// A field of `bytes` (compact JSON) over the Stream API's limit.
    package static func fieldTooLarge(_ name: String, bytes: Int, row: Int?) -> IntakeRejection {
        IntakeRejection(
            .fieldTooLarge,
            "\(prefix(row))field \"\(name)\" is \(bytes) bytes; the Stream API allows at most \(StreamAPILimits.maxFieldBytes) per field")
    }

    /// A merge row whose primary key member comes again at `offset`.
    package static func repeatedKey(_ key: String, at offset: Int, row: Int?) -> IntakeRejection {
        IntakeRejection(
            .invalidRow, "\(prefix(row))primary key \"\(key)\" appears twice (again at byte \(offset)); a merge row must have it once")
    }

    /// A request with a second `config` or `data` member (starting at `offset`).
    private static func repeatedEnvelopeMember(_ name: String, at offset: Int) -> IntakeRejection {
        IntakeRejection(.invalidJSON, "the request has a second \"\(name)\" member at byte \(offset); send each once")
    }

    /// A line with two `"ack"` members is answered once, with the last (the one JSON parsers keep), so a
    /// client waiting for the other would never hear of its line: refused, and nothing stored.
    private static func repeatedAck(at offset: Int) -> IntakeRejection {
        IntakeRejection(
            .invalidJSON, "the line has a second \"ack\" member at byte \(offset); give each line one (the reply carries the last)")
    }

    private static func missingKey(_ key: String, row: Int?) -> IntakeRejection {
        IntakeRejection(.missingPrimaryKey, "\(prefix(row))primary key \"\(key)\" is missing or null; merge needs it in every row")
    }

    private static func prefix(_ row: Int?) -> String { row.map { "data[\($0)]: " } ?? "" }

    /// What a parsing step threw, as the answer: a scanner error becomes its rejection, a rejection stays as
    /// it is; nothing else can be thrown there.
    private static func rejection(forThrown error: any Error, row: Int?) -> IntakeRejection {
        switch error {
        case let error as JSONScanError: rejection(for: error, row: row)
        case let error as IntakeRejection: error
        default: preconditionFailure("unexpected error \(error)")
        }
    }

    package static func rejection(for error: JSONScanError, row: Int?) -> IntakeRejection {
        let prefix = prefix(row)
        switch error.kind {
        case .syntax: return IntakeRejection(.invalidJSON, "\(prefix)invalid JSON at byte \(error.offset): \(error.reason)")
        case .invalidUTF8: return IntakeRejection(.invalidUTF8, "\(prefix)\(error.reason) at byte \(error.offset)")
        case .tooDeep:
            return IntakeRejection(
                .tooDeep, "\(prefix)nesting deeper than \(StreamAPILimits.maxDepth) levels at byte \(error.offset) (the Stream API's limit)"
            )
        }
    }
}
