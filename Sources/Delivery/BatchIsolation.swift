import Core
import Spool

/// The search for the rows the API refuses inside one batch, as pure transitions over the batch's parts.
///
/// A batch starts as one part, sent whole. A part the API refuses as a whole without saying which rows
/// (400, or a merge part answered 200 with rejected rows it does not name) becomes *known refused*, and
/// only its left half is sent (a probe):
/// - the probe is written: the left half leaves, and the right half is known refused (the refused row is there);
/// - the probe is refused: the left half is known refused, the right half is unknown and sent whole later.
///
/// A known-refused part of one row is sent alone before it is dead-lettered: a row is dead-lettered only
/// for an answer about itself (an inference would be wrong where two rows are refused only together, such
/// as two merge keys the API casts to the same value). Rows a 400 names (`row 17: …`) become known-refused
/// parts of one row each, so they too are sent alone first, and the rest of the part is sent again. Isolating `k` refused rows in a batch of
/// `n` so costs at most about `2·k·log2(n)` answered requests, however many transient failures come
/// between them: a transient failure only repeats the request it hit (the ``DeliveryMachine`` decides
/// when), and everything proven good has already left the queue.
///
/// The parts are kept in the spool (``DeliveryLedger/Progress``) after every step, so a restart resumes
/// the search where it stopped.
struct BatchIsolation: Sendable, Equatable {
    typealias Part = DeliveryLedger.Part
    typealias Refusal = DeliveryLedger.Refusal

    /// The batch's rows not yet delivered or dead-lettered, ascending.
    private(set) var live: [Int64]
    /// The unresolved parts, in seq order; together they hold every live row.
    private(set) var parts: [Part]

    /// One request of the search.
    struct Request: Sendable, Equatable {
        var seqs: [Int64]
        /// The left half of a known-refused part, rather than a whole part.
        var isProbe: Bool
    }

    /// Rows to dead-letter, and why.
    struct Rejection: Sendable, Equatable {
        var seqs: [Int64]
        var refusal: Refusal
        /// The rows went with others the API wrote, and it did not say which it rejected.
        var partial: Bool
        /// For a partial rejection: how many of `seqs` the API wrote.
        var writtenUnnamed = 0
    }

    /// What an answer (or a proof) resolved.
    struct Effect: Sendable, Equatable {
        var delivered: [Int64] = []
        var rejected: [Rejection] = []
        var isEmpty: Bool { delivered.isEmpty && rejected.isEmpty }
    }

    /// What to do next.
    enum Next: Sendable, Equatable {
        case send(Request)
        /// Nothing left: the batch is resolved.
        case resolved
    }

    /// - Parameters:
    ///   - parts: as recorded in the spool; empty for a batch never split (one part, whole).
    ///   - live: the batch's rows still in the queue, ascending.
    init(range: Range<Int64>, parts: [Part], live: [Int64]) {
        self.live = live
        self.parts = parts.isEmpty ? [Part(range: range, refusal: nil)] : parts
        // Rows outside every recorded part (cannot happen with a spool this version wrote) are sent as one
        // unknown part rather than forgotten.
        if !parts.isEmpty, live.contains(where: { seq in !parts.contains { $0.range.contains(seq) } }),
            let first = live.first, let last = live.last
        {
            self.parts = [Part(range: first..<(last + 1), refusal: nil)]
        }
        dropEmptyParts()
    }

    /// Whether every row is resolved.
    var isResolved: Bool { parts.isEmpty }

    /// Whether the batch is being searched for refused rows.
    var isIsolating: Bool { parts.count > 1 || parts.contains { $0.refusal != nil } }

    /// The next request: the first part whole, or the left half of it when it is known refused.
    func next() -> Next {
        guard let part = parts.first else { return .resolved }
        let rows = rows(of: part)
        guard part.refusal != nil, rows.count > 1 else { return .send(Request(seqs: Array(live[rows]), isProbe: false)) }
        return .send(Request(seqs: Array(live[rows.lowerBound..<(rows.lowerBound + rows.count / 2)]), isProbe: true))
    }

    /// Applies the answer to `request` (the last one ``next()`` returned). For verdicts that say nothing
    /// about rows (transient, auth, 404) nothing changes and the same request goes again later.
    mutating func resolve(
        _ request: Request, verdict: DeliveryVerdict, status: Int, answer: StreamAPIResponse,
        mode: AgentConfiguration.Mode
    ) -> Effect {
        guard let part = parts.first, let first = request.seqs.first, let last = request.seqs.last else { return Effect() }
        let sent = request.seqs
        let rest = request.isProbe ? (last + 1)..<part.range.upperBound : nil
        let refusal = { (reason: String) in Refusal(status: status, reason: reason, errors: answer.errors, requestID: answer.requestID) }
        var effect = Effect()
        switch verdict {
        case .delivered:
            effect.delivered = sent
            remove(sent)
            // A good probe leaves the refused row in the right half.
            replaceFirstPart(with: rest.map { [Part(range: $0, refusal: part.refusal)] } ?? [])
        case .partlyRejected(let count, let named?):
            let rejected = named.map { sent[$0.index] }
            let messages = named.map(\.message)
            effect.rejected = [
                Rejection(
                    seqs: rejected,
                    refusal: Refusal(
                        status: status,
                        reason: "rejected by the API (\(count) of \(sent.count) rows of the request): \(Self.summary(messages))",
                        errors: messages, requestID: answer.requestID), partial: false)
            ]
            let rejectedSet = Set(rejected)
            effect.delivered = sent.filter { !rejectedSet.contains($0) }
            remove(sent)
            replaceFirstPart(with: rest.map { [Part(range: $0, refusal: nil)] } ?? [])
        case .partlyRejected(let count, nil) where mode == .append:
            // Sending again would write the accepted rows twice: keep them all, marked partial (unless the
            // API rejected every one: then none was written, and they can go again as they are).
            let partial = sent.count > 1 && count < sent.count
            let reason =
                partial
                ? "partially rejected: \(count) of \(sent.count) rows rejected and the others written; the API did not say which (request \(answer.requestID ?? "?")): \(answer.summary)"
                : sent.count > 1
                    ? "rejected by the API (all \(sent.count) rows of the request): \(answer.summary)"
                    : "rejected by the API: \(answer.summary)"
            effect.rejected = [
                Rejection(seqs: sent, refusal: refusal(reason), partial: partial, writtenUnnamed: partial ? sent.count - count : 0)
            ]
            remove(sent)
            replaceFirstPart(with: rest.map { [Part(range: $0, refusal: nil)] } ?? [])
        case .partlyRejected(_, nil), .refused([]):
            // Upserts are idempotent, so a merge part is searched like a refused one.
            let proven = refusal("rejected by the API: \(answer.summary)")
            if sent.count == 1 {
                effect.rejected = [Rejection(seqs: sent, refusal: proven, partial: false)]
                remove(sent)
                replaceFirstPart(with: rest.map { [Part(range: $0, refusal: nil)] } ?? [])
            } else {
                var replacement = [Part(range: first..<(last + 1), refusal: proven)]
                if let rest { replacement.append(Part(range: rest, refusal: nil)) }
                replaceFirstPart(with: replacement)
            }
        case .refused(let named) where sent.count == 1:
            // An answer about this row alone.
            effect.rejected = [
                Rejection(
                    seqs: sent, refusal: refusal("rejected by the API: \(Self.summary(named.map(\.message)))"), partial: false)
            ]
            remove(sent)
            replaceFirstPart(with: rest.map { [Part(range: $0, refusal: nil)] } ?? [])
        case .refused(let named):
            // The API names rows: each is sent alone before it is dead-lettered (the names are not a
            // documented promise, and a row is dead-lettered only for an answer about itself); the rows
            // between them are sent again to confirm.
            var replacement: [Part] = []
            var start = first
            for row in named {
                let seq = sent[row.index]
                if start < seq { replacement.append(Part(range: start..<seq, refusal: nil)) }
                replacement.append(
                    Part(
                        range: seq..<(seq + 1),
                        refusal: Refusal(
                            status: status, reason: "rejected by the API: \(row.message)", errors: [row.message],
                            requestID: answer.requestID)))
                start = seq + 1
            }
            let end = rest?.upperBound ?? (last + 1)
            if start < end { replacement.append(Part(range: start..<end, refusal: nil)) }
            replaceFirstPart(with: replacement)
        case .tooLarge:
            if sent.count == 1 {
                effect.rejected = [
                    Rejection(seqs: sent, refusal: refusal("too large for the API even alone: \(answer.summary)"), partial: false)
                ]
                remove(sent)
                replaceFirstPart(with: rest.map { [Part(range: $0, refusal: nil)] } ?? [])
            } else {
                let middle = sent[sent.count / 2]
                var replacement = [Part(range: first..<middle, refusal: nil), Part(range: middle..<(last + 1), refusal: nil)]
                if let rest { replacement.append(Part(range: rest, refusal: nil)) }
                replaceFirstPart(with: replacement)
            }
        case .invalid:
            effect.rejected = [
                Rejection(seqs: sent, refusal: refusal("the API refused the request as invalid: \(answer.summary)"), partial: false)
            ]
            remove(sent)
            replaceFirstPart(with: rest.map { [Part(range: $0, refusal: nil)] } ?? [])
        case .authRefused, .tableNotFound, .transient:
            break
        }
        return effect
    }

    /// Every live row, leaving as one entry (rows that waited past `retry.max_age`).
    mutating func expire(_ refusal: Refusal) -> Effect {
        defer {
            live = []
            parts = []
        }
        return live.isEmpty ? Effect() : Effect(rejected: [Rejection(seqs: live, refusal: refusal, partial: false)])
    }

    // MARK: Parts

    /// The indexes in ``live`` of the rows of `part`.
    private func rows(of part: Part) -> Range<Int> {
        firstIndex(atLeast: part.range.lowerBound)..<firstIndex(atLeast: part.range.upperBound)
    }

    private func firstIndex(atLeast seq: Int64) -> Int {
        var low = 0
        var high = live.count
        while low < high {
            let middle = (low + high) / 2
            if live[middle] < seq { low = middle + 1 } else { high = middle }
        }
        return low
    }

    private mutating func remove(_ seqs: [Int64]) {
        guard let first = seqs.first else { return }
        // Usually a run of the live rows (a part, or the left half of one): no set needed.
        let start = firstIndex(atLeast: first)
        if start + seqs.count <= live.count, live[start..<(start + seqs.count)].elementsEqual(seqs) {
            live.removeSubrange(start..<(start + seqs.count))
            return
        }
        let gone = Set(seqs)
        live.removeAll { gone.contains($0) }
    }

    private mutating func replaceFirstPart(with replacement: [Part]) {
        parts.replaceSubrange(0..<1, with: replacement)
        dropEmptyParts()
    }

    private mutating func dropEmptyParts() {
        let kept = parts.filter { !rows(of: $0).isEmpty }
        parts = kept
    }

    /// The first messages of a list, for a reason line.
    private static func summary(_ messages: [String]) -> String {
        let text = messages.prefix(3).joined(separator: "; ")
        return messages.count > 3 ? text + " (and \(messages.count - 3) more)" : text
    }
}
