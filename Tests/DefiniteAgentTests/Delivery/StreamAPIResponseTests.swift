import Foundation
import Testing

@testable import Core
@testable import Delivery

/// Reading the API's answers: what they say was written, even when the client cut them short, and what
/// a verdict makes of an answer that does not say.
@Suite("StreamAPIResponse")
struct StreamAPIResponseTests {
    static let documented =
        #"{"success":true,"request_id":"req_abc123def456","stream_id":"st_xyz789ghi012","table":"bronze.customers","accepted":2,"successful_rows":2,"rejected_rows":0,"partitions":["2024-01-15"],"snapshot_id":null,"warnings":[],"errors":[]}"#

    func answer(_ text: String) -> StreamAPIResponse { StreamAPIResponse(body: Array(text.utf8)) }

    @Test func theDocumentedAnswerIsReadWhole() {
        let answer = answer(Self.documented)
        #expect(answer.success == true && answer.requestID == "req_abc123def456")
        #expect(answer.acceptedRows == 2 && answer.successfulRows == 2 && answer.rejectedRows == 0)
        #expect(!answer.isIncomplete && answer.errors.isEmpty)
        #expect(answer.rejected(of: 2) == 0)
    }

    /// An answer with an error per rejected row outgrows the client's 1 MiB cap on 50,000 rows; the counts
    /// come before the errors and are kept.
    @Test func anAnswerCutInItsErrorsKeepsItsCounts() {
        let errors = (0..<30_000).map { "\"row \($0): could not convert string to INTEGER\"" }.joined(separator: ",")
        let whole =
            #"{"success":false,"request_id":"r1","accepted":50000,"successful_rows":20000,"rejected_rows":30000,"warnings":["w"],"errors":["#
            + errors + "]}"
        let cut = Array(whole.utf8.prefix(1 << 20))
        #expect(cut.count < whole.utf8.count)
        let answer = StreamAPIResponse(body: cut)
        #expect(answer.isIncomplete)
        #expect(answer.rejectedRows == 30_000 && answer.successfulRows == 20_000 && answer.requestID == "r1")
        #expect(answer.warnings == ["w"] && answer.errors.isEmpty, "the errors were cut: none is taken")
        let verdict = DeliveryVerdict(status: 200, answer: answer, retryAfter: nil, sentRows: 50_000)
        #expect(verdict == .partlyRejected(count: 30_000, named: nil))
    }

    /// A cut can fall inside a number, which still scans as one: a member counts only once what follows
    /// it shows it whole.
    @Test func aCountCutShortIsNotTaken() {
        let answer = answer(#"{"request_id":"r1","successful_rows":7,"rejected_rows":30"#)
        #expect(answer.isIncomplete && answer.requestID == "r1" && answer.successfulRows == 7)
        #expect(answer.rejectedRows == nil, "30 may be the start of 300")
        #expect(self.answer(#"{"rejected_rows":30 "#).rejectedRows == nil)
        #expect(self.answer(#"{"rejected_rows":30}"#).rejectedRows == 30)
        #expect(self.answer(#"{"rejected_rows":30,"errors":["row 1: x"#).rejectedRows == 30)
    }

    @Test func anAnswerThatSaysNeitherCountDoesNotSayWhatWasWritten() {
        for body in ["<html><body>Welcome to nginx!</body></html>", "", "{}", #"{"ok":true}"#, #"{"success":true,"errors":[]}"#] {
            let answer = answer(body)
            #expect(answer.rejected(of: 10) == nil, "\(body)")
            #expect(DeliveryVerdict(status: 200, answer: answer, retryAfter: nil, sentRows: 10) == .transient(retryAfter: nil), "\(body)")
        }
        #expect(answer("<html>x</html>").errors == ["<html>x</html>"], "a body that is not JSON shows as the error")
    }

    @Test func successfulRowsAloneTellWhatWasRejected() {
        #expect(answer(#"{"successful_rows":7}"#).rejected(of: 10) == 3)
        #expect(answer(#"{"successful_rows":10}"#).rejected(of: 10) == 0)
        #expect(DeliveryVerdict(status: 200, answer: answer(#"{"successful_rows":10}"#), retryAfter: nil, sentRows: 10) == .delivered)
        #expect(answer(#"{"successful_rows":9,"rejected_rows":1}"#).rejected(of: 10) == 1)
    }

    /// Counts that cannot be were taken for "all written": a negative `rejected_rows` (clamped to 0), more
    /// successful rows than were sent, `success: false` with nothing rejected. What such an answer wrote is
    /// unknown, so the rows go again, as for an answer without counts.
    @Test func countsThatCannotBeDoNotSayWhatWasWritten() {
        let cases = [
            (#"{"rejected_rows":-1,"successful_rows":0}"#, "with rejected_rows -1 for 5 rows sent"),
            (#"{"successful_rows":9}"#, "with successful_rows 9 for 5 rows sent"),
            (#"{"rejected_rows":7}"#, "with rejected_rows 7 for 5 rows sent"),
            (#"{"successful_rows":5,"rejected_rows":1}"#, "with rejected_rows 1 and successful_rows 5 for 5 rows sent"),
            (
                #"{"success":false,"accepted":0,"successful_rows":0,"rejected_rows":0,"errors":["boom"]}"#,
                "with rejected_rows 0 and successful_rows 0 for 5 rows sent"
            ),
            (#"{"success":false,"rejected_rows":0,"errors":["boom"]}"#, "with success false and no rows rejected"),
        ]
        for (body, why) in cases {
            let answer = answer(body)
            #expect(answer.unknownWritten(of: 5) == why, "\(body)")
            #expect(DeliveryVerdict(status: 200, answer: answer, retryAfter: nil, sentRows: 5) == .transient(retryAfter: nil), "\(body)")
        }
        #expect(
            DeliveryMachine.describe(status: 200, answer: answer(#"{"successful_rows":9}"#), sentRows: 5)
                == "HTTP 200 with successful_rows 9 for 5 rows sent, so what it wrote is unknown; the rows go again after a backoff")
        #expect(answer(#"{"success":false,"rejected_rows":5,"successful_rows":0}"#).rejected(of: 5) == 5)
    }

    /// A URL or headers too long when an NDJSON body's tags travel in the URL can never pass as they are:
    /// like a 413, the request is split, where a transient failure repeated it until `retry.max_age`. With
    /// the tags in a JSON body the rows are not the cause (a proxy's limit), and the request waits.
    @Test func aURLOrHeadersTooLongAreTooLargeWhenTheTagsGoInTheURL() {
        for status in [413, 414, 431] {
            #expect(DeliveryVerdict(status: status, answer: answer(""), retryAfter: nil, sentRows: 4, tagsInURL: true) == .tooLarge)
        }
        for status in [414, 431] {
            #expect(DeliveryVerdict(status: status, answer: answer(""), retryAfter: nil, sentRows: 4) == .transient(retryAfter: nil))
        }
    }

    @Test func retryAfterIsFiniteAndAtMostAnHour() {
        #expect(DeliveryVerdict.duration(seconds: 1.5) == .milliseconds(1500))
        #expect(DeliveryVerdict.duration(seconds: -3) == .zero)
        #expect(DeliveryVerdict.duration(seconds: 1e300) == .seconds(3600))
        #expect(DeliveryVerdict.duration(seconds: .infinity) == nil)
        #expect(DeliveryVerdict.duration(seconds: .nan) == nil)
        #expect(
            DeliveryVerdict(status: 429, answer: answer("{}"), retryAfter: 1e300, sentRows: 1) == .transient(retryAfter: .seconds(3600)))
        for header in ["inf", "nan", "1e999", "-inf", "infinity"] {
            #expect(HTTPResponse(status: 429, headers: ["retry-after": header], body: []).retryAfter() == nil, "\(header)")
        }
        #expect(HTTPResponse(status: 429, headers: ["retry-after": "120"], body: []).retryAfter() == 120)
    }
}
