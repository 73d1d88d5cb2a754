import Core
import Logging
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// Keeps a listening socket from spinning when the process has no file descriptor left.
///
/// With every descriptor taken (connections held open by clients, up to the open-files limit), `accept`
/// fails with EMFILE and leaves the connection in the backlog: the socket stays readable, NIO tries again
/// at once, and one core spins until descriptors come back. (NIO's `AcceptBackoffHandler` cannot help:
/// after a failed accept the channel still has a read pending, so it stays registered for reading and the
/// loop wakes at once; tried, it spun as before.) This handler keeps one descriptor in reserve; on EMFILE
/// or ENFILE it frees it, accepts and closes the waiting connections (those clients see the connection
/// close, as from a server that is full), and takes it again: the backlog empties and the socket stops
/// waking the loop. Should another thread take the freed descriptor first, the backlog waits for the next
/// failure, when the reserve is taken again if a descriptor is free. Said in the log at most once a minute.
final class DescriptorReserve: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let listeningSocket: Int32
    private let part: String
    private let logger: Logger
    private var reserve: Int32
    private var closedSinceLog = 0
    private let closingLog = LogRateLimiter(interval: .seconds(60))

    init(listeningSocket: Int32, part: String, logger: Logger) {
        self.listeningSocket = listeningSocket
        self.part = part
        self.logger = logger
        reserve = Self.takeReserve()
    }

    deinit {
        if reserve >= 0 { Glibc.close(reserve) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, error.errnoCode == EMFILE || error.errnoCode == ENFILE else {
            context.fireErrorCaught(error)
            return
        }
        if reserve < 0 { reserve = Self.takeReserve() }
        if reserve >= 0 {
            Glibc.close(reserve)
            reserve = -1
        }
        // Each accepted connection is closed at once, so the one free descriptor serves them all.
        var closed = 0
        while closed < 1024 {
            // The listening socket is non-blocking (NIO's): an empty backlog ends the loop with EAGAIN.
            let connection = accept(listeningSocket, nil, nil)
            guard connection >= 0 else { break }
            Glibc.close(connection)
            closed += 1
        }
        reserve = Self.takeReserve()
        closedSinceLog += closed
        guard closingLog.admit() != nil else { return }
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        logger.warning(
            "no file descriptor left (open files limit \(limit.rlim_cur)): new connections are closed at once until some close; \(closedSinceLog) closed since the last such line. Clients holding connections open?",
            metadata: ["part": "\(part)"])
        closedSinceLog = 0
    }

    private static func takeReserve() -> Int32 {
        open("/dev/null", O_RDONLY | O_CLOEXEC)
    }
}
