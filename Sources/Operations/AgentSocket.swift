import Core
import FoundationEssentials
import Glibc

/// A Unix stream connection to the agent's line socket, for the CLI: non-blocking once connected, driven
/// with `poll(2)` so one thread can write requests and read replies as either becomes possible.
final class AgentSocket {
    /// Why the connection could not be made: the `strerror` text, or a path that does not fit.
    struct ConnectError: Error, CustomStringConvertible {
        var description: String
    }

    /// What one receive found.
    enum Received {
        case bytes(Int)
        case wouldBlock
        /// The agent closed the connection (or reset it).
        case closed
    }

    private let fd: Int32
    /// What one `recv` reads into, kept between calls.
    private var chunk = [UInt8](repeating: 0, count: 1 << 16)

    init(path: String) throws(ConnectError) {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConnectError(description: SystemCallError().description) }
        let result = UnixSocketAddress(path)?.withSockAddr { connect(fd, $0, $1) }
        guard result == 0 else {
            let reason =
                result == nil
                ? "the socket path is too long (at most \(UnixSocketAddress.maxPathBytes) bytes)" : SystemCallError().description
            // Every stored property is set: deinit runs and closes the descriptor (closing it here too closed
            // it twice, and the second close could hit a descriptor another thread had opened meanwhile).
            throw ConnectError(description: reason)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// Waits until the socket can be read, or written when `writing`, or `input` (another descriptor) can be
    /// read, or `interrupt` can be read (a signal came: ``CommandInterruption/descriptor``), or `timeout`
    /// passed. Returns whether reading the socket (or learning that the agent closed) and writing it are
    /// possible now.
    func wait(writing: Bool, input: Int32? = nil, interrupt: Int32 = -1, timeout: Duration) -> (readable: Bool, writable: Bool) {
        var entries = [
            pollfd(fd: fd, events: Int16(POLLIN) | (writing ? Int16(POLLOUT) : 0), revents: 0),
            pollfd(fd: input ?? -1, events: Int16(POLLIN), revents: 0),
            pollfd(fd: interrupt, events: Int16(POLLIN), revents: 0),
        ]
        let milliseconds = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let ready = poll(&entries, 3, milliseconds)
        guard ready > 0 else { return (false, false) }
        // A hang-up or an error is learnt by reading: the replies before it are read first.
        let events = entries[0].revents
        let endOrError = events & (Int16(POLLHUP) | Int16(POLLERR)) != 0
        return (events & Int16(POLLIN) != 0 || endOrError, events & Int16(POLLOUT) != 0)
    }

    /// Writes as much of `bytes` as the socket takes now: the count written, 0 when it takes nothing now,
    /// `nil` when the connection is gone.
    func send(_ bytes: ArraySlice<UInt8>) -> Int? {
        bytes.withUnsafeBytes { raw in
            while true {
                let n = Glibc.send(fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL))
                if n >= 0 { return n }
                switch errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: return 0
                default: return nil
                }
            }
        }
    }

    /// Reads what has arrived, appending it to `buffer`.
    func receive(into buffer: inout [UInt8]) -> Received {
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: chunk[0..<n])
                return .bytes(n)
            }
            if n == 0 { return .closed }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .closed
            }
        }
    }
}

/// Reads `\n`-terminated lines from a file descriptor in large reads and hands each out where it lies in
/// the read buffer, without copying it (the final line may lack its newline).
struct LineReader {
    /// What ``next(blocking:_:)`` found.
    enum Next {
        case line
        /// Without blocking: no whole line has arrived yet.
        case wouldBlock
        case end
    }

    let fd: Int32
    private var buffer: [UInt8]
    /// Unread bytes are `buffer[start..<end]`.
    private var start = 0
    private var end = 0
    /// Where the search for the next newline goes on (bytes before it were searched already).
    private var searched = 0
    private var eof = false

    init(fd: Int32, readSize: Int = 1 << 20) {
        self.fd = fd
        buffer = [UInt8](repeating: 0, count: readSize)
    }

    /// Calls `body` with the next line (without its newline; valid only during the call) and returns
    /// `.line`; or returns `.end` at the end of the input, or `.wouldBlock` when the input has no whole line
    /// ready now and `blocking` is false or `interrupt` (``CommandInterruption/descriptor``) became readable
    /// while it waited for one. When `body` returns false the line is left unread: the next call hands it
    /// out again.
    mutating func next(blocking: Bool, interrupt: Int32 = -1, _ body: (UnsafeRawBufferPointer) -> Bool) -> Next {
        while true {
            let found: Int? = buffer.withUnsafeBytes { raw in
                guard searched < end,
                    let hit = memchr(raw.baseAddress! + searched, Int32(UInt8(ascii: "\n")), end - searched)
                else { return nil }
                return raw.baseAddress!.distance(to: UnsafeRawPointer(hit))
            }
            if let newline = found {
                if buffer.withUnsafeBytes({ body(UnsafeRawBufferPointer(rebasing: $0[start..<newline])) }) {
                    start = newline + 1
                    searched = start
                } else {
                    searched = newline
                }
                return .line
            }
            searched = end
            if eof {
                guard start < end else { return .end }
                if buffer.withUnsafeBytes({ body(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }) { start = end }
                return .line
            }
            var entries = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: interrupt, events: Int16(POLLIN), revents: 0)]
            if poll(&entries, 2, blocking ? -1 : 0) <= 0 || entries[0].revents == 0 { return .wouldBlock }
            fill()
        }
    }

    /// Reads more: the unfinished line moves to the front, and the buffer doubles when it alone fills it.
    private mutating func fill() {
        if start > 0 {
            buffer.withUnsafeMutableBytes { raw in
                _ = memmove(raw.baseAddress!, raw.baseAddress! + start, end - start)
            }
            end -= start
            searched -= start
            start = 0
        }
        if end == buffer.count { buffer.append(contentsOf: repeatElement(0, count: buffer.count)) }
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + end, $0.count - end) }
        if n < 0, errno == EINTR { return }
        if n <= 0 {
            eof = true
            return
        }
        end += n
    }
}
