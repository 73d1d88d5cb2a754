import Core
import Logging
import NIOCore
import NIOPosix

/// Where a listener listens: a socket systemd passed, a Unix socket path, or a TCP address.
package enum ListenerAddress: Sendable, Equatable {
    case passed(PassedSocket)
    case path(String, mode: UInt32)
    case tcp(host: String, port: Int)

    /// `"/path/to.sock"` (an absolute path) or `"host:port"`, as `[metrics] listen` takes it.
    package init(listen: String, mode: UInt32) throws(ConfigurationError) {
        if listen.hasPrefix("/") {
            self = .path(listen, mode: mode)
        } else if let (host, port) = HostPort.parse(listen) {
            self = .tcp(host: host, port: port)
        } else {
            throw ConfigurationError(.invalidValue, "\"\(listen)\" is neither host:port nor an absolute socket path")
        }
    }

    /// Makes the listener's socket (see ``ListeningSocket``) on the blocking pool: preparing a path and
    /// resolving a host are file and network calls, kept off the event loops and the cooperative pool.
    func makeSocket(kind: SocketKind, backlog: Int32, part: DaemonPartKind, environment: ListenerEnvironment) async throws
        -> ListeningSocket
    {
        let (name, passedSockets) = (part.description, environment.passedSockets)
        return try await environment.blocking.runIfActive {
            switch self {
            case .passed(let passed):
                try ListeningSocket.passed(passed, kind: kind, part: name)
            case .path(let path, let mode):
                try ListeningSocket.unix(path: path, kind: kind, mode: mode, backlog: backlog, part: name, passedSockets: passedSockets)
            case .tcp(let host, let port):
                try ListeningSocket.tcp(host: host, port: port, backlog: backlog, part: name)
            }
        }
    }
}

/// What every listener needs besides its address.
package struct ListenerEnvironment: Sendable {
    /// The sockets systemd passed: a path one of them holds is named as such when it turns out taken.
    let passedSockets: PassedSockets
    /// The event loops that serve the connections.
    let eventLoops: any EventLoopGroup
    /// Where file, name-resolution and SQLite work goes.
    let blocking: NIOThreadPool
    /// Signalled when the daemon's stop begins: every listener stops accepting then, at once, and drains
    /// its connections to the shared deadline (rather than each in its turn of the stop, which left the
    /// last ones accepting, and acknowledging, until the first had drained).
    let stopAccepting: CompletionSignal
    let logger: Logger

    package init(
        passedSockets: PassedSockets, eventLoops: any EventLoopGroup, blocking: NIOThreadPool,
        stopAccepting: CompletionSignal = CompletionSignal(), logger: Logger
    ) {
        self.passedSockets = passedSockets
        self.eventLoops = eventLoops
        self.blocking = blocking
        self.stopAccepting = stopAccepting
        self.logger = logger
    }
}

/// What a stream listener does with the connections it accepts: the line protocol, the local Stream API,
/// the metrics endpoint.
package protocol ConnectionPipeline: Sendable {
    /// How many connections may wait to be accepted.
    var backlog: Int32 { get }
    /// Sets the accepted connections' options and handlers on `bootstrap` (not its server channel
    /// initializer, which ``ServedListener`` owns).
    func configure(_ bootstrap: ServerBootstrap) -> ServerBootstrap
}

/// A stream listener as a part of the daemon: at its turn its socket is made (or taken from systemd) and
/// handed to NIO with `pipeline`'s connection handling; it then serves until stopped (see
/// ``ServedListener``). A socket that cannot be made fails the start with the part's name and the reason.
package struct StreamListener<Pipeline: ConnectionPipeline>: DaemonPart {
    let part: DaemonPartKind
    let address: ListenerAddress
    let pipeline: Pipeline
    let environment: ListenerEnvironment

    package func start() async throws -> any RunningPart {
        let socket = try await address.makeSocket(kind: .stream, backlog: pipeline.backlog, part: part, environment: environment)
        let group = environment.eventLoops
        let served = try await ServedListener(
            socket, backlog: pipeline.backlog, bootstrap: pipeline.configure(ServerBootstrap(group: group)), group: group,
            logger: environment.logger)
        environment.logger.info("listening", metadata: ["part": "\(part)", "on": "\(socket.location)"])
        return Running(served: served, part: part, stopAccepting: environment.stopAccepting, logger: environment.logger)
    }

    private struct Running: RunningPart {
        let served: ServedListener
        let part: DaemonPartKind
        let stopAccepting: CompletionSignal
        let logger: Logger

        func run(drainDeadline: DrainDeadline) async throws {
            await served.serve(drainDeadline: drainDeadline, stopAccepting: stopAccepting, logger: logger)
            logger.info("stopped", metadata: ["part": "\(part)"])
        }
    }

    package init(part: DaemonPartKind, address: ListenerAddress, pipeline: Pipeline, environment: ListenerEnvironment) {
        self.part = part
        self.address = address
        self.pipeline = pipeline
        self.environment = environment
    }
}
