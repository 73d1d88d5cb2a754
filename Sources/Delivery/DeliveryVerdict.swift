/// What one answer of the Stream API means for the rows sent with it, by the reference's status codes.
///
/// Pure: built from the status, the answer's fields and `Retry-After`; what to do about it is the
/// ``DeliveryMachine``'s decision.
enum DeliveryVerdict: Sendable, Equatable {
    /// 2xx and nothing rejected: every row was written.
    case delivered
    /// 2xx with `rejected_rows > 0`: the others were written. `named` lists the rejected rows when the
    /// answer's errors name exactly as many rows as it rejected (`row 17: …`); `nil` when they do not.
    case partlyRejected(count: Int, named: [RowError]?)
    /// 400: nothing was written. `named` lists the rows the errors blame, if any (possibly not all of them).
    case refused(named: [RowError])
    /// 413 (or, when the tags travel in the URL, 414 and 431: a URL or headers too long): the request is too
    /// large; its halves may not be.
    case tooLarge
    /// 422: the request is invalid as a request (e.g. merge without a key); sending it again cannot help.
    case invalid
    /// 401 or 403: the API key is missing, wrong or revoked. Every table waits.
    case authRefused
    /// 404: the namespace or table does not exist (yet). This table waits.
    case tableNotFound
    /// 429, 5xx, any other status, no answer at all, or a 2xx whose answer does not say how many rows it
    /// wrote (not a Stream API answer: a proxy's page, a wrong `[api] url`): may succeed later. A resend
    /// risks a duplicate, where taking such an answer for "all written" could lose every row.
    case transient(retryAfter: Duration?)

    /// One row an answer's errors blame: its index in the request's `data` and the API's message.
    struct RowError: Sendable, Equatable {
        var index: Int
        var message: String
    }

    /// Classifies an answer to a request of `sentRows` rows, whose tags went in the URL when `tagsInURL`.
    init(status: Int, answer: StreamAPIResponse, retryAfter: Double?, sentRows: Int, tagsInURL: Bool = false) {
        switch status {
        case 200..<300:
            guard let rejected = answer.rejected(of: sentRows) else {
                self = .transient(retryAfter: nil)
                return
            }
            guard rejected > 0 else {
                self = .delivered
                return
            }
            let named = Self.rowErrors(answer.errors, rows: sentRows)
            self = .partlyRejected(count: rejected, named: named.count == rejected ? named : nil)
        case 400:
            self = .refused(named: Self.rowErrors(answer.errors, rows: sentRows))
        case 413:
            self = .tooLarge
        case 414 where tagsInURL, 431 where tagsInURL:
            // Fewer rows carry fewer tag runs; otherwise (a proxy's limit on a header of ours) the rows are not
            // the cause, and the request waits as for any other failure.
            self = .tooLarge
        case 422:
            self = .invalid
        case 401, 403:
            self = .authRefused
        case 404:
            self = .tableNotFound
        default:
            self = .transient(retryAfter: retryAfter.flatMap(Self.duration(seconds:)))
        }
    }

    /// `Retry-After` as a duration: whole milliseconds, rounded up, at most ``maximumRetryAfter``; none
    /// for a value that is not a finite number of seconds (the exponential backoff applies instead).
    static func duration(seconds: Double) -> Duration? {
        guard seconds.isFinite else { return nil }
        let limit = Double(maximumRetryAfter.components.seconds)
        return .milliseconds(Int64((min(max(0, seconds), limit) * 1000).rounded(.up)))
    }

    /// The longest wait a `Retry-After` gets: an hour. A longer one (a day, a year, a garbled date) would
    /// hold the batch, and its table's next batches, past any sense, and past `retry.max_age`, which is
    /// looked at when the batch is next taken: after an hour it is asked again, and waits again if told to.
    static let maximumRetryAfter = Duration.seconds(3600)

    /// The rows named by errors of the form `row <index>: <reason>` (the API's index into `data`), in
    /// order. The reference does not promise such names, so they are taken only when every one is a row
    /// of the request, named once: an index out of range or repeated means the numbering is not what is
    /// assumed here (1-based, say), and then no name is trusted. A wrong name would record a rejected row
    /// as written and dead-letter a written one.
    static func rowErrors(_ errors: [String], rows: Int) -> [RowError] {
        var seen = Set<Int>()
        var named: [RowError] = []
        for message in errors {
            guard message.hasPrefix("row "), let colon = message.firstIndex(of: ":"),
                let index = Int(message[message.index(message.startIndex, offsetBy: 4)..<colon])
            else { continue }
            guard index >= 0, index < rows, seen.insert(index).inserted else { return [] }
            named.append(RowError(index: index, message: message))
        }
        return named.sorted { $0.index < $1.index }
    }
}
