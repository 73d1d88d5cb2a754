import NIOCore
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Intake line validation")
struct IntakeLineParserTests {
    static func configuration(defaultTable: String? = "bronze.events") -> AgentConfiguration {
        var config = AgentConfiguration()
        config.intake.defaultTable = defaultTable
        config.tables = [.init(name: "bronze.users", mode: .merge, primaryKey: "id")]
        return config
    }

    struct Outcome {
        var line: [UInt8]
        var parsed: ParsedLine
        var batch: SpoolBatch
        var ack: String? { line.withUnsafeBytes { parsed.ack(in: $0) } }
        var rejection: IntakeRejection? {
            if case .failure(let rejection) = parsed.result { return rejection }
            return nil
        }
        var stored: String { batch.records.map { String(decoding: $0, as: UTF8.self) }.joined() }
    }

    func parse(_ line: String, config: AgentConfiguration = configuration()) -> Outcome {
        parse(Array(line.utf8), config: config)
    }

    func parse(_ line: [UInt8], config: AgentConfiguration = configuration()) -> Outcome {
        var parser = IntakeLineParser(configuration: config)
        var batch = SpoolBatch()
        let parsed = parser.parse(line: line, into: &batch)
        return Outcome(line: line, parsed: parsed, batch: batch)
    }

    // MARK: Plain records

    @Test func plainRecordGoesToTheDefaultTableWithoutItsAck() throws {
        let outcome = parse(#"{"a":1,"ack":"c1-7","b":"x"}"#)
        #expect(outcome.ack == "c1-7")
        #expect(outcome.rejection == nil)
        #expect(outcome.batch.targets == [SpoolTarget(table: "bronze.events", mode: .append)])
        #expect(outcome.stored == "{\"a\":1,\"b\":\"x\"}\n")
    }

    @Test func anAckIdIsKeptAsSentAndDecodedOnRequest() throws {
        let outcome = parse(#"{"a":1,"\u0061ck":"id-\u00e9\"7"}"#)
        #expect(outcome.stored == "{\"a\":1}\n")
        let range = try #require(outcome.parsed.ackRange)
        #expect(String(decoding: outcome.line[range], as: UTF8.self) == #"id-\u00e9\"7"#)
        #expect(outcome.ack == "id-é\"7")
        #expect(parse(#"{"a":1}"#).parsed.ackRange == nil)
    }

    @Test func whitespaceAroundColonsIsDropped() {
        #expect(parse(#"{"a": 1, "b" :"x y" ,"ack": "z"}"#).stored == "{\"a\":1,\"b\":\"x y\"}\n")
        #expect(parse(#"{"config": {"table": "bronze.t"}, "data": [{"a": 1}, {"b" : [1, 2]}]}"#).stored == "{\"a\":1}\n{\"b\":[1,2]}\n")
    }

    @Test func recordsAreStoredCompact() {
        let outcome = parse("{ \"a\" : [1, 2 ,{\"s\": \"keep  spaces\\\" }\"}] ,\"b\":true }")
        #expect(outcome.stored == "{\"a\":[1,2,{\"s\":\"keep  spaces\\\" }\"}],\"b\":true}\n")
    }

    @Test(arguments: [
        (#"{"ack":"1","a":1,"b":{"c":[1,2]},"d":"x,y"}"#, #"{"a":1,"b":{"c":[1,2]},"d":"x,y"}"#),
        (#"{"a":1,"b":2,"ack":"1","c":3,"d":4}"#, #"{"a":1,"b":2,"c":3,"d":4}"#),
        (#"{"a":1,"b":2,"c":3,"ack":"1"}"#, #"{"a":1,"b":2,"c":3}"#),
        (#"{"a":1, "b":2,"c" : 3,"d":4}"#, #"{"a":1,"b":2,"c":3,"d":4}"#),
        (#"{"a":"}","b":",","c":"x\",y"}"#, #"{"a":"}","b":",","c":"x\",y"}"#),
        (#"{"ack":"only"}"#, #"{}"#),
    ])
    func runsOfMembersAreCopiedWithTheirCommas(line: String, stored: String) {
        let outcome = parse(line)
        #expect(outcome.rejection == nil)
        #expect(outcome.stored == stored + "\n")
    }

    @Test func plainRecordWithoutDefaultTableIs422() throws {
        let rejection = try #require(parse(#"{"a":1}"#, config: Self.configuration(defaultTable: nil)).rejection)
        #expect(rejection.status == 422)
        #expect(rejection.message.contains("default_table"))
    }

    // MARK: Request bodies

    @Test func requestBodyWithRowsAndTags() throws {
        let outcome = parse(#"{"ack":"r1","config":{"table":"LAKE.bronze.t","tags":{"src":"app"}},"data":[{"x":1},{"x":2}]}"#)
        #expect(outcome.rejection == nil)
        #expect(outcome.batch.targets == [SpoolTarget(table: "bronze.t", mode: .append)], "one spelling of the table")
        #expect(outcome.batch.tagRuns == [[SpoolBatch.TagRun(record: 0, offset: 0, tags: #"{"src":"app"}"#)]])
        #expect(outcome.batch.counts == [2])
        #expect(outcome.stored == "{\"x\":1}\n{\"x\":2}\n")
    }

    @Test func dataBeforeConfigAndSingleObjectData() {
        let outcome = parse(#"{"data":{"id":5,"v":"a"},"config":{"table":"bronze.users"}}"#)
        #expect(outcome.rejection == nil)
        #expect(outcome.batch.targets == [SpoolTarget(table: "bronze.users", mode: .merge, primaryKey: "id")])
        #expect(outcome.stored == "{\"id\":5,\"v\":\"a\"}\n")
    }

    /// The lake does not tell `bronze.Users` from `bronze.users`: a `[[table]]` entry spelt one way once left
    /// requests spelt another way appending, three rows for one key. Its defaults apply to every spelling;
    /// the queue keeps the name as written.
    @Test func tableDefaultsApplyWhateverTheCaseOfTheName() {
        for table in ["bronze.USERS", "lake.Bronze.Users"] {
            let outcome = parse(#"{"data":{"id":5},"config":{"table":"\#(table)"}}"#)
            #expect(outcome.rejection == nil)
            #expect(
                outcome.batch.targets == [SpoolTarget(table: TableName.canonical(table), mode: .merge, primaryKey: "id")], "\(table)")
        }
    }

    @Test func plainRecordMayHaveAFieldNamedData() {
        let outcome = parse(#"{"data":[1,2],"other":3}"#)
        #expect(outcome.rejection == nil)
        #expect(outcome.stored == "{\"data\":[1,2],\"other\":3}\n")
    }

    @Test(arguments: [
        (#"{"config":{"table":"bronze.t"}}"#, 422),
        (#"{"config":{"table":"bronze.t"},"data":[]}"#, 400),
        (#"{"config":{"table":"bronze.t"},"data":[1]}"#, 400),
        (#"{"config":{"table":"bronze.t"},"data":"x"}"#, 400),
        (#"{"config":{},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":5},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":"events"},"data":{"a":1}}"#, 400),
        (#"{"config":{"table":"a.b.c.d"},"data":{"a":1}}"#, 400),
        (#"{"config":{"table":"bronze.9t"},"data":{"a":1}}"#, 400),
        (#"{"config":{"table":"bronze.t","mode":"upsert"},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":"bronze.t","mode":"merge"},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":"bronze.t","mode":"merge","primary_key":[]},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":"bronze.t","mode":"merge","primary_key":["a","b"]},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":"bronze.t","mode":"merge","primary_key":"a"},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":"bronze.t","tags":[1]},"data":{"a":1}}"#, 422),
        (#"{"config":{"table":"bronze.t","mode":"merge","primary_key":["a"]},"data":{"b":1}}"#, 400),
        (#"{"config":{"table":"bronze.t","mode":"merge","primary_key":["a"]},"data":[{"a":1},{"a":null}]}"#, 400),
        (#"{"config":{"table":"bronze.users"},"data":{"name":"x"}}"#, 400),
    ])
    func requestRulesGiveTheDocumentedStatus(line: String, status: Int) throws {
        let outcome = parse(line)
        let rejection = try #require(outcome.rejection, "accepted: \(line)")
        #expect(rejection.status == status, "\(rejection)")
        #expect(outcome.batch.isEmpty)
    }

    @Test func mergeRowMissingItsKeyNamesTheRow() throws {
        let rejection = try #require(parse(#"{"config":{"table":"bronze.users"},"data":[{"id":1},{"id":2},{"name":"x"}]}"#).rejection)
        #expect(rejection.code == .missingPrimaryKey)
        #expect(rejection.message.hasPrefix("data[2]:"))
    }

    @Test func plainRecordForMergeDefaultTableNeedsItsKey() throws {
        var config = Self.configuration(defaultTable: "bronze.users")
        config.tables = [.init(name: "bronze.users", mode: .merge, primaryKey: "id")]
        #expect(parse(#"{"id":"u1","n":1}"#, config: config).rejection == nil)
        #expect(parse(#"{"n":1}"#, config: config).rejection?.code == .missingPrimaryKey)
        #expect(parse(#"{"id":null}"#, config: config).rejection?.code == .missingPrimaryKey)
    }

    // MARK: Limits

    private func nested(_ depth: Int) -> String {
        // An object of the given depth (a scalar has depth 0, each enclosing object adds 1).
        String(repeating: "{\"a\":", count: depth) + "1" + String(repeating: "}", count: depth)
    }

    @Test func depthTenIsAcceptedAndElevenRefused() throws {
        let ten = "{\"x\":\(nested(9))}"
        let eleven = "{\"x\":\(nested(10))}"
        #expect(parse(ten).rejection == nil)
        let rejection = try #require(parse(eleven).rejection)
        #expect(rejection.status == 400)
        #expect(rejection.code == .tooDeep)
        // The same rule holds for rows inside a request body (the envelope does not count).
        #expect(parse(#"{"config":{"table":"bronze.t"},"data":[\#(ten)]}"#).rejection == nil)
        #expect(parse(#"{"config":{"table":"bronze.t"},"data":[\#(eleven)]}"#).rejection?.code == .tooDeep)
    }

    @Test func tenThousandLevelsAreRefusedWithoutCrashing() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(parse("{\"a\":\(deep)}").rejection?.code == .tooDeep)
        #expect(parse(#"{"config":{"table":"bronze.t"},"data":\#(deep)}"#).rejection != nil)
    }

    @Test func fieldSizeLimitIsOneMegabyte() throws {
        let fits = String(repeating: "x", count: StreamAPILimits.maxFieldBytes - 2)
        let over = String(repeating: "x", count: StreamAPILimits.maxFieldBytes - 1)
        #expect(parse("{\"f\":\"\(fits)\"}").rejection == nil)
        let rejection = try #require(parse("{\"f\":\"\(over)\"}").rejection)
        #expect(rejection.status == 413)
        #expect(rejection.code == .fieldTooLarge)
        #expect(rejection.message.contains("\"f\""))
        #expect(
            parse(#"{"config":{"table":"bronze.t"},"data":[{"a":1},{"f":"\#(over)"}]}"#).rejection?.message.hasPrefix("data[1]:") == true)
    }

    /// `json.dumps({"data": rows, "config": …})`, the order of the project's own example clients: a
    /// request's `data` is rows, each held to the field limit on its own, not one field of 1 MB. Only a
    /// plain record's field named `data` is one field.
    @Test func dataBeforeConfigIsRowsWhateverTheirTotalSize() throws {
        let row = #"{"id":1,"pad":"\#(String(repeating: "p", count: 1000))"}"#
        let rows = "[" + Array(repeating: row, count: 1200).joined(separator: ", ") + "]"
        #expect(rows.utf8.count > StreamAPILimits.maxFieldBytes)
        let dataFirst = parse(#"{"data": \#(rows), "config": {"table": "bronze.t"}}"#)
        #expect(dataFirst.rejection == nil, "\(dataFirst.rejection.map(String.init(describing:)) ?? "")")
        #expect(dataFirst.batch.counts == [1200])
        let plain = try #require(parse(#"{"a":1,"data": \#(rows)}"#).rejection)
        #expect(plain.code == .fieldTooLarge && plain.message.hasPrefix("field \"data\" is "))
        #expect(parse(#"{"a":1,"data":[1,2]}"#).stored == "{\"a\":1,\"data\":[1,2]}\n")
    }

    /// A request line with a second `data` or `config` member stored one and dropped the other without a
    /// word (which one depended on their order), where the API's parser may well keep the other. It is
    /// refused, whatever the order, with its ack id and nothing stored; a plain record may still repeat a
    /// field named `data`, like any other field.
    @Test func aRequestLineWithASecondDataOrConfigIsRefused() throws {
        for line in [
            #"{"config":{"table":"bronze.t"},"data":[{"a":1}],"data":[{"a":2}],"ack":"7"}"#,
            #"{"data":[{"a":1}],"config":{"table":"bronze.t"},"data":{"a":2},"ack":"7"}"#,
            #"{"data":[{"a":1}],"data":[{"a":2}],"config":{"table":"bronze.t"},"ack":"7"}"#,
            #"{"ack":"7","data":{"a":1},"data":{"a":2},"config":{"table":"bronze.t"}}"#,
        ] {
            let outcome = parse(line)
            #expect(outcome.rejection?.code == .invalidJSON, "\(line)")
            #expect(outcome.rejection?.message.contains(#"a second "data" member at byte "#) == true, "\(line)")
            #expect(outcome.ack == "7" && outcome.stored.isEmpty && outcome.batch.counts.allSatisfy { $0 == 0 }, "\(line)")
        }
        let configs = parse(#"{"config":{"table":"bronze.t"},"data":[{"a":1}],"config":{"table":"bronze.u"},"ack":"7"}"#)
        #expect(
            configs.rejection == IntakeRejection(.invalidJSON, #"the request has a second "config" member at byte 48; send each once"#))
        #expect(configs.ack == "7" && configs.stored.isEmpty)
        for line in [
            #"{"config":{"table":"bronze.t"},"config":"bronze.u","data":[{"a":1}]}"#,
            #"{"config":null,"data":[{"a":1}],"config":{"table":"bronze.t"}}"#,
        ] {
            #expect(parse(line).rejection?.message.contains(#"a second "config" member at byte "#) == true, "\(line)")
        }
        #expect(parse(#"{"a":1,"data":1,"data":2}"#).stored == "{\"a\":1,\"data\":1,\"data\":2}\n")
    }

    /// A line with two `"ack"` members was stored and acknowledged with the last id only: a client waiting
    /// for the first never heard of its line. It is refused (the reply carries the last id), nothing stored,
    /// for a plain record and a request alike.
    @Test func aLineWithASecondAckIsRefused() throws {
        let plain = parse(#"{"i":15,"ack":"a","ack":"b"}"#)
        #expect(
            plain.rejection
                == IntakeRejection(
                    .invalidJSON, #"the line has a second "ack" member at byte 18; give each line one (the reply carries the last)"#))
        #expect(plain.ack == "b" && plain.stored.isEmpty && plain.batch.counts.allSatisfy { $0 == 0 })
        let request = parse(#"{"ack":"a","config":{"table":"bronze.t"},"data":[{"a":1},{"a":2}],"ack":"b"}"#)
        #expect(request.rejection?.message.contains(#"a second "ack" member at byte 66"#) == true)
        #expect(request.ack == "b" && request.stored.isEmpty && request.batch.counts.allSatisfy { $0 == 0 })
        #expect(parse(#"{"i":15,"ack":"a"}"#).rejection == nil)
    }

    /// A local Stream API body whose `config` is not an object was a plain record in the default table
    /// (answered 200); and with two `config` or `data` members, which counted depended on their order.
    @Test func aBodyNeedsOneConfigObjectAndOneData() throws {
        func body(_ text: String) -> IntakeRejection? {
            var parser = IntakeLineParser(configuration: Self.configuration())
            var batch = SpoolBatch()
            let parsed = Array(text.utf8).withUnsafeBytes { parser.parse(body: $0, into: &batch) }
            if case .failure(let rejection) = parsed.result { return rejection }
            #expect(batch.targets.map(\.table) == ["bronze.t"])
            return nil
        }
        #expect(body(#"{"data":[{"id":1}],"config":{"table":"bronze.t"}}"#) == nil)
        #expect(
            body(#"{"data":[{"id":1}],"config":"bronze.t"}"#)
                == IntakeRejection(.invalidConfig, #"config must be an object, {"table":"ns.table",…}; found a string at byte 28"#))
        #expect(body(#"{"config":null,"data":[{"id":1}]}"#)?.message.contains("found null at byte 10") == true)
        #expect(
            body(#"{"config":{"table":"bronze.t"},"data":[{"a":1}],"config":{"table":"bronze.u"}}"#)
                == IntakeRejection(.invalidJSON, #"the request has a second "config" member at byte 48; send each once"#))
        #expect(body(#"{"data":[{"a":1}],"config":{"table":"bronze.t"},"data":[]}"#)?.message.contains(#"second "data""#) == true)
        #expect(body(#"{"data":[{"id":1}]}"#)?.code == .invalidConfig)
    }

    /// A row no request of the API's 10 MB could carry was acknowledged, then dead-lettered for good by
    /// delivery (413 even alone). It is refused at once, with the limit; fields are each under 1 MB.
    @Test func aRowNoRequestCouldCarryIsRefusedAtIntake() throws {
        let field = String(repeating: "x", count: 999_000)
        func row(fields: Int) -> String {
            "{" + (0..<fields).map { #""f\#($0)":"\#(field)""# }.joined(separator: ",") + "}"
        }
        let fits = row(fields: 10)
        #expect(fits.utf8.count <= StreamAPILimits.maxRowBytes)
        #expect(parse(fits).rejection == nil)
        let over = row(fields: 11)
        let plain = try #require(parse(over).rejection)
        #expect(plain.code == .rowTooLarge && plain.status == 413)
        #expect(
            plain.message
                == "the row is \(over.utf8.count) bytes as compact JSON; a Stream API request of at most 10000000 bytes can carry at most 9998976 of it"
        )
        let inData = parse(#"{"config":{"table":"bronze.t"},"data":[{"a":1},\#(over)]}"#)
        #expect(inData.rejection?.code == .rowTooLarge && inData.rejection?.message.hasPrefix("data[1]: the row is ") == true)
        #expect(inData.batch.records.allSatisfy { $0.isEmpty }, "all or nothing")
        #expect(Array(over.utf8).withUnsafeBytes { SendLineCheck.problem($0) }?.code == .rowTooLarge, "send checks it too")

        // A JSON body carries the tags beside the rows: a row that fits alone may not fit with them.
        let base = String(fits.dropLast())
        let nearly = base + #","p":""# + String(repeating: "p", count: StreamAPILimits.maxRowBytes - 100 - base.utf8.count - 8) + #""}"#
        #expect(nearly.utf8.count == StreamAPILimits.maxRowBytes - 100)
        func tagged(_ tags: Int) -> String {
            #"{"config":{"table":"bronze.t","tags":{"t":"\#(String(repeating: "x", count: tags))"}},"data":\#(nearly)}"#
        }
        let fitsWithTags = parse(tagged(100 - 8)).rejection
        #expect(fitsWithTags == nil, "100 bytes of tags")
        let refusedWithTags = parse(tagged(100 - 7)).rejection
        let withTags = try #require(refusedWithTags)
        #expect(
            withTags.message
                == "the row is 9998876 bytes as compact JSON; a Stream API request of at most 10000000 bytes can carry at most 9998875 of it beside its 101 bytes of tags"
        )
    }

    /// Tags go with every request of their rows (in the URL, for NDJSON bodies): large ones made each row a
    /// request of its own, or a URL the API's front refuses (414), retried for days.
    @Test func tagsOverTwoKilobytesAreRefused() throws {
        func line(_ tags: Int) -> String {
            #"{"config":{"table":"bronze.t","tags":{"t":"\#(String(repeating: "x", count: tags))"}},"data":[{"a":1}]}"#
        }
        #expect(parse(line(2048 - 8)).rejection == nil)
        let refused = try #require(parse(line(2048 - 7)).rejection)
        #expect(
            refused
                == IntakeRejection(
                    .invalidConfig, "config.tags is 2049 bytes as compact JSON; at most 2048 (they go with every request of the rows)"))
    }

    /// A merge row with its key twice (`{"id":1,…,"id":2}`): the agent took the first, a parser keeping
    /// the last (Python's, and the API's, likely) sees another key, and the write it supersedes is not the
    /// one meant. Refused, in requests, plain records and `send`'s own check.
    @Test func aMergeRowWithItsKeyTwiceIsRefused() throws {
        let request = parse(#"{"config":{"table":"bronze.users"},"data":[{"id":1,"v":"a"},{"id":1,"v":"b","id":2}]}"#)
        #expect(
            request.rejection
                == IntakeRejection(
                    .invalidRow, #"data[1]: primary key "id" appears twice (again at byte 76); a merge row must have it once"#))
        var users = Self.configuration()
        users.intake.defaultTable = "bronze.users"
        #expect(parse(#"{"id":null,"id":3}"#, config: users).rejection?.code == .invalidRow)
        #expect(parse(#"{"id":3,"v":{"id":4}}"#, config: users).rejection == nil, "a nested member of that name is another field")
        #expect(parse(#"{"config":{"table":"bronze.t"},"data":[{"id":1,"id":2}]}"#).rejection == nil, "an append row is stored as written")
        for line in [#"{"id":1,"id":2}"#, #"{"id":null,"x":"é","id":2}"#] {
            #expect(Array(line.utf8).withUnsafeBytes { SendLineCheck.problem($0, mergeKey: "id") }?.code == .invalidRow, "\(line)")
        }
    }

    /// `LAKE.ns.table` and `ns.table` are one table: they were two queues (no merge order between them),
    /// and `[[table]]` defaults did not apply to the `LAKE.` spelling (key-less rows went into a merge
    /// table as appends). Another catalog than LAKE is refused.
    @Test func bothSpellingsOfATableAreOneTarget() throws {
        let lake = parse(#"{"config":{"table":"LAKE.bronze.users"},"data":[{"name":"x"}]}"#)
        #expect(lake.rejection?.code == .missingPrimaryKey, "the [[table]] merge default applies")
        let upserts = parse(#"{"config":{"table":"lake.bronze.users"},"data":[{"id":1}]}"#)
        #expect(upserts.batch.targets == [SpoolTarget(table: "bronze.users", mode: .merge, primaryKey: "id")])
        let other = try #require(parse(#"{"config":{"table":"other.bronze.users"},"data":[{"id":1}]}"#).rejection)
        #expect(other.code == .invalidTable && other.message.hasSuffix(#"the Stream API writes to LAKE only: use "bronze.users""#))
        #expect(TableName.canonical("LAKE.bronze.events") == "bronze.events" && TableName.canonical("bronze.events") == "bronze.events")
    }

    @Test func rowLimitIsFiftyThousand() throws {
        let row = #"{"a":1}"#
        let fits = #"{"config":{"table":"bronze.t"},"data":["# + Array(repeating: row, count: 50_000).joined(separator: ",") + "]}"
        let over = #"{"config":{"table":"bronze.t"},"data":["# + Array(repeating: row, count: 50_001).joined(separator: ",") + "]}"
        #expect(parse(fits).batch.counts == [50_000])
        let rejection = try #require(parse(over).rejection)
        #expect(rejection.status == 413)
        #expect(rejection.code == .tooManyRows)
    }

    // MARK: JSON and UTF-8

    @Test(arguments: [
        "{bad", "{\"a\":1,}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":tru}", "{\"a\":\"\\x\"}", "{\"a\":1} x",
        "{\"a\":\"tab\there\"}", "{\"a\":-}", "{'a':1}", "{\"a\" 1}", "",
    ])
    func invalidJSONIs400(line: String) throws {
        let rejection = try #require(parse(line).rejection, "accepted: \(line)")
        #expect(rejection.status == 400)
    }

    @Test(arguments: [
        [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xFF, 0x22, 0x7D] as [UInt8],  // 0xFF
        [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC0, 0xAF, 0x22, 0x7D],  // overlong '/'
        [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x7D],  // UTF-8 surrogate
        [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xE2, 0x82, 0x22, 0x7D],  // truncated sequence
        [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0x00, 0x22, 0x7D],  // raw NUL
        Array(#"{"a":"\ud800"}"#.utf8),  // unpaired surrogate escape
    ])
    func invalidUTF8Is400(line: [UInt8]) throws {
        let rejection = try #require(parse(line).rejection)
        #expect(rejection.status == 400)
    }

    @Test func validUnicodeAndBigNumbersAreKeptVerbatim() {
        let line = #"{"s":"héllo ✓ 𝄞 \ud834\udd1e \u0000","big":123456789012345678901234567890,"e":1.5e400,"neg":-0.0}"#
        let outcome = parse(line)
        #expect(outcome.rejection == nil)
        #expect(outcome.stored == line + "\n")
    }

    @Test func errorAfterTheAckStillCarriesIt() {
        let outcome = parse(#"{"ack":"a9","config":{"table":"bronze.t"},"data":[{"x":}]}"#)
        #expect(outcome.ack == "a9")
        #expect(outcome.rejection?.status == 400)
    }

    /// Issue 17: a line refused for what it says carries its ack wherever the member stands, also after
    /// the member that was refused (the order Python's `json.dumps` gives a dict built that way).
    @Test(arguments: [
        (#"{"data":{"id":2},"config":{"table":"bronze.t","mode":"merge"},"ack":"b2"}"#, "invalid_config"),
        (#"{"data":{"id":2},"config":{"table":"not a table"},"ack":"b2"}"#, "invalid_table"),
        (#"{"config":{"table":"bronze.t","mode":"upsert"},"data":{"id":2},"ack":"b2"}"#, "invalid_config"),
        (#"{"config":{"table":"bronze.t","mode":"merge","primary_key":["id"]},"data":[{"x":1}],"ack":"b2"}"#, "missing_primary_key"),
        (#"{"config":{"table":"bronze.t"},"data":[1,2],"ack":"b2"}"#, "invalid_row"),
        (#"{"config":{"table":"bronze.t"},"ack2":"x","ack":"b2"}"#, "invalid_config"),
        (#"{"x":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":1}}}}}}}}}}, "s":"}]{[", "ack" : "b2" }"#, "too_deep"),
        (
            #"{"config":{"table":"bronze.t"},"data":{"deep":"# + String(repeating: "[", count: 70) + "1" + String(repeating: "]", count: 70)
                + #"},"n":-1.5e3,"t":true,"ack":"b2"}"#, "too_deep"
        ),
    ])
    func aRefusedLineCarriesItsAckWhereverTheMemberStands(line: String, code: String) throws {
        let outcome = parse(line, config: Self.configuration(defaultTable: nil))
        #expect(outcome.rejection?.code.rawValue == code)
        #expect(outcome.ack == "b2")
        #expect(outcome.batch.totalRecords == 0)
    }

    /// Only a line that is not JSON may lose its ack: there is no telling where its members are.
    @Test(arguments: [
        #"{"config":{"table":"bronze.t"},"data":[{"x":1}] "ack":"b2"}"#,
        #"{"data":{"id":2,},"ack":"b2"}"#,
        #"{"config":{"table":"bronze.t","mode":"merge"},"data":{"id":2},"ack":5}"#,
    ])
    func aLineThatIsNotJSONMayLackItsAck(line: String) throws {
        let outcome = parse(line)
        #expect(outcome.rejection != nil)
        #expect(outcome.ack == nil)
    }

    // MARK: HTTP bodies with the config in query parameters

    func parseArray(_ body: String, query: [String: String] = ["table": "bronze.t"]) -> (
        Result<ParsedLine.Accepted, IntakeRejection>, SpoolBatch
    ) {
        let parser = IntakeLineParser(configuration: Self.configuration())
        var batch = SpoolBatch()
        let result = parser.target(query: query).flatMap { target in
            Array(body.utf8).withUnsafeBytes { parser.parse(array: $0, target: target, into: &batch) }
        }
        return (result, batch)
    }

    /// Issue 17: Fluent Bit's `format json` and Vector's JSON codec post a bare array of rows.
    @Test func aBareArrayOfRowsTakesItsConfigFromTheQuery() throws {
        let (result, batch) = parseArray(
            " [ {\"a\": 1}, {\"a\": 2, \"b\": [1, 2]} ]\n", query: ["table": "bronze.users", "mode": "merge", "primary_key": "a"])
        #expect(try result.get().records == 2)
        #expect(batch.targets == [SpoolTarget(table: "bronze.users", mode: .merge, primaryKey: "a")])
        #expect(String(decoding: batch.records[0], as: UTF8.self) == "{\"a\":1}\n{\"a\":2,\"b\":[1,2]}\n")
    }

    @Test(arguments: [
        ("[]", "invalid_row"),
        ("[1]", "invalid_row"),
        (#"[{"a":1}] trailing"#, "invalid_json"),
        (#"[{"a":1},]"#, "invalid_row"),
        (#"[{"a":1} {"a":2}]"#, "invalid_json"),
        ("[" + Array(repeating: #"{"a":1}"#, count: 50_001).joined(separator: ",") + "]", "too_many_rows"),
        (#"[{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{}}}}}}}}}}}]"#, "too_deep"),
    ])
    func aBareArrayIsHeldToTheSameRules(body: String, code: String) {
        let (result, batch) = parseArray(body)
        guard case .failure(let rejection) = result else {
            Issue.record("accepted \(body.prefix(80))")
            return
        }
        #expect(rejection.code.rawValue == code)
        #expect(batch.totalRecords == 0 && batch.records.allSatisfy(\.isEmpty))
    }

    @Test func aBareArrayNeedsItsTableInTheQuery() {
        let (result, _) = parseArray(#"[{"a":1}]"#, query: [:])
        guard case .failure(let rejection) = result else {
            Issue.record("accepted without a table")
            return
        }
        #expect(rejection.status == 422)
    }

    @Test func aFailedLineLeavesTheBatchAsItWas() {
        var parser = IntakeLineParser(configuration: Self.configuration())
        var batch = SpoolBatch()
        _ = parser.parse(line: Array(#"{"a":1}"#.utf8), into: &batch)
        _ = parser.parse(line: Array(#"{"config":{"table":"bronze.events"},"data":[{"a":2},{"a":3},{"bad":]}"#.utf8), into: &batch)
        _ = parser.parse(line: Array(#"{"a":4}"#.utf8), into: &batch)
        #expect(batch.counts == [2])
        #expect(String(decoding: batch.records[0], as: UTF8.self) == "{\"a\":1}\n{\"a\":4}\n")
    }

    /// Found by the fuzzer: rows appended before a later member failed kept their count, so the batch
    /// claimed records it no longer held (and the spool would have numbered them).
    @Test(arguments: [
        #"{"config":{"table":"bronze.events"},"data":[{"a":2},{"a":3}],"ack":5}"#,
        #"{"config":{"table":"bronze.events"},"data":{"a":2},"extra":tru}"#,
        #"{"config":{"table":"bronze.events"},"data":{"a":2}} trailing"#,
    ])
    func aLineThatFailsAfterItsDataLeavesNoCount(line: String) {
        var parser = IntakeLineParser(configuration: Self.configuration())
        var batch = SpoolBatch()
        _ = parser.parse(line: Array(#"{"a":1}"#.utf8), into: &batch)
        let failed = parser.parse(line: Array(line.utf8), into: &batch)
        guard case .failure = failed.result else {
            Issue.record("accepted \(line)")
            return
        }
        #expect(batch.counts == [1])
        #expect(String(decoding: batch.records[0], as: UTF8.self) == "{\"a\":1}\n")
    }

    @Test func repliesFollowTheProtocol() {
        var buffer = ByteBufferAllocatorForTests.make()
        func write(ack: String?, line: Int, result: Result<Int, IntakeRejection>) {
            guard let ack else { return IntakeReply.write(ack: nil, line: line, result: result, to: &buffer) }
            Array(ack.utf8).withUnsafeBytes { IntakeReply.write(ack: $0, line: line, result: result, to: &buffer) }
        }
        // Ack ids are the bytes between the request's quotes, escapes as sent.
        write(ack: #"x\"1"#, line: 3, result: .success(2))
        write(ack: nil, line: 4, result: .failure(IntakeRejection(.invalidJSON, "bad")))
        write(ack: nil, line: 5, result: .success(1))
        write(ack: "plain-7 é", line: 6, result: .success(50_000))
        write(ack: #"tab\there"#, line: 7, result: .success(1))
        write(ack: #"\u0061b"#, line: 8, result: .failure(IntakeRejection(.invalidRow, "no")))
        #expect(
            buffer.readString(length: buffer.readableBytes) == """
                {"ack":"x\\"1","ok":true,"accepted":2}
                {"ok":false,"line":4,"status":400,"code":"invalid_json","error":"bad"}
                {"ack":"plain-7 é","ok":true,"accepted":50000}
                {"ack":"tab\\there","ok":true,"accepted":1}
                {"ack":"\\u0061b","ok":false,"status":400,"code":"invalid_row","error":"no"}

                """)
    }

    /// Lines as Python's `json.dumps` writes them (`", "`, `": "`) are stored compact. The batch's buffer
    /// grows as an array does, by doubling: it grew by exactly each record, and every such line copied the
    /// whole batch before it (10,000 datagrams of 9 KB took 30 s to take in, 4 kept in memory meanwhile).
    @Test func linesWithWhitespaceGrowTheBatchByDoublingNotRecordByRecord() {
        var parser = IntakeLineParser(configuration: Self.configuration())
        var batch = SpoolBatch()
        var capacities: Set<Int> = []
        for i in 0..<2_000 {
            let line = Array(#"{"i": \#(i), "msg": "some text", "meta": {"a": 1}}"#.utf8)
            guard case .success = parser.parse(line: line, into: &batch).result else {
                Issue.record("line \(i) refused")
                return
            }
            capacities.insert(batch.records[0].capacity)
        }
        #expect(batch.totalRecords == 2_000)
        #expect(String(decoding: batch.records[0].prefix(44), as: UTF8.self) == #"{"i":0,"msg":"some text","meta":{"a":1}}"# + "\n{\"i")
        // Doubling from the first record's size to ~90 KB: a few dozen sizes at most, not one per line.
        #expect(capacities.count < 40, "the batch's buffer was reallocated \(capacities.count) times for 2,000 lines")
    }
}

enum ByteBufferAllocatorForTests {
    static func make() -> ByteBuffer { ByteBufferAllocator().buffer(capacity: 256) }
}
