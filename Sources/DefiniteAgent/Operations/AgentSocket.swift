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

    init(path: String) throws(ConnectError) {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConnectError(description: String(cString: strerror(errno))) }
        let result = SocketPath.withAddress(of: path) { connect(fd, $0, $1) }
        guard result == 0 else {
            let reason = result == nil ? "the socket path is too long (at most 107 bytes)" : String(cString: strerror(errno))
            Glibc.close(fd)
            throw ConnectError(description: reason)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { Glibc.close(fd) }

    /// Waits until the socket can be read, or written when `writing`, or `timeout` passed. Returns whether
    /// reading (or learning that the agent closed) and writing are possible now.
    func wait(writing: Bool, timeout: Duration) -> (readable: Bool, writable: Bool) {
        var entry = pollfd(fd: fd, events: Int16(POLLIN) | (writing ? Int16(POLLOUT) : 0), revents: 0)
        let milliseconds = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let ready = poll(&entry, 1, milliseconds)
        guard ready > 0 else { return (false, false) }
        // A hang-up or an error is learnt by reading: the replies before it are read first.
        let endOrError = entry.revents & (Int16(POLLHUP) | Int16(POLLERR)) != 0
        return (entry.revents & Int16(POLLIN) != 0 || endOrError, entry.revents & Int16(POLLOUT) != 0)
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
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
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

/// Reads `\n`-terminated lines from a file descriptor (the final line may lack its newline).
struct LineReader {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false

    init(fd: Int32) { self.fd = fd }

    mutating func next() -> [UInt8]? {
        var searchFrom = start
        while true {
            if let newline = buffer[searchFrom...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[start..<newline])
                start = newline + 1
                return line
            }
            if eof {
                guard start < buffer.count else { return nil }
                let line = Array(buffer[start...])
                start = buffer.count
                return line
            }
            if start > 0 {
                buffer.removeFirst(start)
                start = 0
            }
            searchFrom = buffer.count
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 {
                eof = true
                continue
            }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}
