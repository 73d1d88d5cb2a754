import FoundationEssentials
import Glibc

/// Intake refused, for want of room or because the spool file is no longer there: what operators see in
/// the log, in `status`, in the `definite_agent_intake_refusing{reason}` gauge and from `GET /readyz`.
public struct IntakeRefusal: Sendable, Equatable {
    /// Which limit was reached.
    public enum Reason: String, Sendable, CaseIterable {
        /// `[spool] max_bytes`: the records held (pending plus dead letters).
        case maxBytes = "max_bytes"
        /// `[spool] disk_reserve`: the free space kept on the spool's filesystem for delivery.
        case diskReserve = "disk_reserve"
        /// The spool file was removed or replaced while the daemon ran: every record is refused until a
        /// restart opens the spool at the path again (it never ends by itself).
        case spoolFileGone = "spool_file_gone"
    }

    public var reason: Reason
    /// Since when (the first request refused).
    public var since: Date
    /// The figures, e.g. "1.0 GiB held, [spool] max_bytes = 1 GiB"; for ``Reason/spoolFileGone``, what
    /// happened to the file.
    public var detail: String

    public init(reason: Reason, since: Date, detail: String) {
        self.reason = reason
        self.since = since
        self.detail = detail
    }

    /// Whether room can end it without a restart (the spool's writer looks for room while it lasts).
    public var endsWithRoom: Bool { reason != .spoolFileGone }

    /// "spool full (…)", as `status` shows it after "intake refused: ".
    public var summary: String {
        switch reason {
        case .maxBytes: "spool full (\(detail))"
        case .diskReserve: "disk full (\(detail))"
        case .spoolFileGone: detail
        }
    }
}
