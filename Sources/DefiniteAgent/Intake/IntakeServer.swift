import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

/// The Unix stream socket local programs write records to.
///
/// On graceful shutdown it stops accepting, lets every connection answer what it already read (acks or
/// errors), then returns, so the spool writer behind it can commit the last batches and close.
public final class IntakeServer: Service, Sendable {
    private let settings: LiveConfiguration
    private let writer: SpoolWriter
    private let group: any EventLoopGroup
    private let logger: Logger
    private let listening: @Sendable () -> Void

    /// - Parameter listening: called once the socket accepts connections (used for readiness).
    public init(
        settings: LiveConfiguration, writer: SpoolWriter, group: any EventLoopGroup, logger: Logger,
        listening: @escaping @Sendable () -> Void = {}
    ) {
        self.settings = settings
        self.writer = writer
        self.group = group
        self.logger = logger
        self.listening = listening
    }

    public func run() async throws {
        let configuration = settings.current
        let settings = self.settings
        let path = configuration.intake.socket
        // A socket passed by systemd (socket activation) is used as it is; else we bind our own.
        let passed = ListenFDs.take().first { $0.name == "intake" || $0.name == "unknown" || $0.name.hasSuffix(".socket") }
        if passed == nil { try SocketPath.prepare(path) }
        let quiesce = ServerQuiescingHelper(group: group)
        let writer = self.writer
        let logger = self.logger
        let budget = IntakeMemoryBudget()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            // A read burst is at most 4 × 128 KiB, a connection holds at most
            // IntakeConnectionHandler.maxOutstandingBatches bursts, and all of them together at most
            // the IntakeMemoryBudget: memory stays bounded per writer and for any number of writers.
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 131_072))
            .childChannelInitializer { channel in
                // Each connection takes the settings in force when it opens (a reload affects new ones).
                let configuration = settings.current
                let (allowUIDs, allowGIDs) = (configuration.intake.allowUIDs, configuration.intake.allowGIDs)
                return channel.eventLoop.makeCompletedFuture {
                    if !allowUIDs.isEmpty || !allowGIDs.isEmpty {
                        try channel.pipeline.syncOperations.addHandler(
                            PeerCredentialsHandler(allowUIDs: allowUIDs, allowGIDs: allowGIDs, logger: logger))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        IntakeConnectionHandler(configuration: configuration, writer: writer, budget: budget, logger: logger))
                }
            }
        let channel: any Channel
        if let passed {
            guard ListenFDs.isListeningUnixStream(passed.fd) else {
                throw SocketPath.Error(path: path, message: "the socket systemd passed (fd \(passed.fd), \(passed.name)) is not a listening Unix stream socket")
            }
            channel = try await bootstrap.withBoundSocket(passed.fd).get()
            logger.info("intake listening on the socket passed by systemd", metadata: ["fd": "\(passed.fd)", "name": "\(passed.name)"])
        } else {
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).get()
            guard chmod(path, mode_t(configuration.intake.socketMode)) == 0 else {
                let reason = String(cString: strerror(errno))
                try? await channel.close()
                throw SocketPath.Error(path: path, message: "cannot set its mode to \(String(configuration.intake.socketMode, radix: 8)): \(reason)")
            }
            logger.info("intake listening", metadata: ["socket": "\(path)"])
        }
        listening()

        try await withGracefulShutdownHandler {
            try await channel.closeFuture.get()
        } onGracefulShutdown: {
            logger.info("intake stopping: no new connections; answering what was already read")
            quiesce.initiateShutdown(promise: nil)
        }
        // Wait for the connections to answer and close.
        let drained = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        try await drained.futureResult.get()
        // A socket systemd passed stays: it keeps accepting (and queueing) while we restart.
        if passed == nil { unlink(path) }
        logger.info("intake stopped")
    }
}

/// Checks and prepares the filesystem path of a listening Unix socket.
enum SocketPath {
    struct Error: Swift.Error, CustomStringConvertible {
        var path: String
        var message: String
        var description: String { "socket \(path): \(message)" }
    }

    /// Creates the parent directory, and removes a stale socket file left by a crash — but never a file
    /// that is not a socket, nor a socket another process is listening on.
    static func prepare(_ path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw Error(path: path, message: "cannot create its directory \(directory): \(ConfigurationLoader.describe(error))")
            }
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw Error(path: path, message: "a file that is not a socket is in the way; remove it or set [intake] socket elsewhere")
        }
        if isAcceptingConnections(path) {
            throw Error(path: path, message: "another process is listening on it (is definite-agent already running?)")
        }
        unlink(path)
    }

    static func isAcceptingConnections(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withAddress(of: path) { connect(fd, $0, $1) == 0 } ?? false
    }

    /// Calls `body` with `path` as a socket address (for `bind` or `connect`); `nil` when the path does not
    /// fit in `sun_path` (108 bytes with the terminating NUL).
    static func withAddress<Result>(of path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
