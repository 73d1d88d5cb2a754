import CAgentSupport
import Core
import FoundationEssentials
import Glibc
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import Spool
import Synchronization

/// Datagram intake: `[intake] datagram_socket` (`SOCK_DGRAM`), one request per datagram in the line
/// protocol's format, never answered, for programs that must never block on the agent.
///
/// With `[intake] allow_uids` / `allow_gids` set, only datagrams whose sender the kernel names
/// (`SCM_CREDENTIALS`) as one of those uids or gids are taken; the others are rejected (`peer_not_allowed`).
///
/// Every datagram is counted: received, rejected (invalid, with its reason in the metrics) or dropped
/// (valid, but the spool was full or the commit failed). The totals are kept in the spool, so `status`
/// shows them whether or not the daemon runs. A datagram that is neither rejected nor dropped is spooled.
///
/// A dedicated thread (`datagram`, a ``DatagramReceiver``) sleeps in `poll` until a datagram comes, reads
/// what is queued with `recv` (senders are usually unnamed sockets, which a plain `recv` takes as they are)
/// and hands each burst to the spool writer as one batch. Stopped, the thread finishes its burst and waits
/// for its batches' commits; then the last counts are written and the socket closed.
package struct DatagramIntakeServer: DaemonPart {
    let part: DaemonPartKind
    let address: ListenerAddress
    let settings: LiveConfiguration
    let writer: SpoolWriter
    let environment: ListenerEnvironment

    package func start() async throws -> any RunningPart {
        let socket = try await address.makeSocket(kind: .datagram, backlog: 0, part: part, environment: environment)
        var bufferSize: Int32 = 4 << 20
        setsockopt(socket.fd, SOL_SOCKET, SO_RCVBUF, &bufferSize, socklen_t(MemoryLayout<Int32>.size))
        // Each datagram comes with its sender's uid and gid, for allow_uids / allow_gids (now or after a reload).
        if cagent_enable_credentials(socket.fd) != 0 {
            environment.logger.warning(
                "the datagram socket cannot learn its senders' credentials; with [intake] allow_uids / allow_gids set every datagram is refused",
                metadata: ["error": "\(SystemCallError())"])
        }
        let receiver = DatagramReceiver(
            fd: socket.fd, settings: settings, writer: writer, eventLoop: environment.eventLoops.next(),
            logger: environment.logger)
        receiver.start()
        environment.logger.info("listening", metadata: ["part": "\(part)", "on": "\(socket.location)"])
        return Running(socket: socket, receiver: receiver, part: part, logger: environment.logger)
    }

    private struct Running: RunningPart {
        /// How long a stop waits for the receiving thread: it ends within a commit once told to.
        static let stopBound = Duration.seconds(2)

        let socket: ListeningSocket
        let receiver: DatagramReceiver
        let part: DaemonPartKind
        let logger: Logger

        func run(drainDeadline: DrainDeadline) async throws {
            let stop = CompletionSignal()
            await withTaskCancellationOrGracefulShutdownHandler {
                // The receiving thread writes the counts down itself (see DatagramReceiver); nothing here
                // runs until the stop.
                _ = await stop.wait()
            } onCancelOrGracefulShutdown: {
                stop.signal()
            }
            receiver.stop()
            // The thread ends at once, once its last batches committed; it owns the socket until then.
            // Stopping at once too, it is waited for (briefly, whatever the cancellation): its batches'
            // promises complete on an event loop, and the loops shut down once the parts returned; a
            // thread still submitting then leaked a promise (a crash in debug builds).
            let receiver = receiver
            let ended = await Task.detached { await receiver.ended.wait(until: .now + Self.stopBound) }.value
            if ended {
                close(socket.fd)
                // Stopping at once too (a second SIGTERM): the last counts are one small commit, and the
                // totals in the spool must add up for good (received = spooled + rejected + dropped). Waited
                // for within the bound, in case the writer is stuck.
                let persisted = CompletionSignal()
                receiver.writeDownCounters { persisted.signal() }
                _ = await Task.detached { await persisted.wait(until: .now + Self.stopBound) }.value
            }
            socket.removeOwnedPath()
            logger.info("stopped", metadata: ["part": "\(part)"])
        }
    }

    package init(
        part: DaemonPartKind, address: ListenerAddress, settings: LiveConfiguration, writer: SpoolWriter, environment: ListenerEnvironment
    ) {
        self.part = part
        self.address = address
        self.settings = settings
        self.writer = writer
        self.environment = environment
    }
}

/// The datagram socket's reading thread: bursts of datagrams become batches for the spool writer. While
/// ``maxBatchesInFlight`` batches await their commit it stops reading: the kernel queue fills and blocking
/// senders wait.
///
/// A burst's counts go into the spool's totals in the commit of its records, so the two always agree
/// (even when a second SIGTERM stops the daemon at once). The counts of bursts with nothing to commit (all
/// rejected or dropped) are added at most once a second, and within a second of the last datagram:
/// waiting for datagrams with counts not yet written, it wakes when they are due; with none, it
/// sleeps until a datagram comes or ``stop()`` (a pipe it polls beside the socket), so an idle daemon with
/// a datagram socket does not wake.
///
/// Each burst is parsed with the configuration in force when it starts: a reload (SIGHUP) that changes
/// `[intake] default_table` or the `[[table]]` blocks applies from the next burst on, as it does to the
/// next line-protocol connection.
///
/// - Note: Thread confinement: `fd`, `parser` and `lastPersisted` are used only by the thread
///   (`@unchecked Sendable`); `stopping`, `counters` and `inFlight` are shared and synchronised. The stop
///   pipe is made in `init` and closed in `deinit`, once: the thread holds the receiver while it runs, so
///   neither end is closed under it.
final class DatagramReceiver: @unchecked Sendable {
    /// Longest datagram taken; a longer one is rejected (`line_too_long`).
    static let maxDatagramBytes = 1 << 20
    static let maxBatchesInFlight = 4
    static let maxRequestsPerBatch = 4096
    /// A burst also ends once its batch holds this many bytes of records: 4,096 datagrams of up to 1 MiB
    /// each must not gather gigabytes in memory before a commit.
    static let maxBatchBytes = 4 << 20

    let counters = DatagramCounters()
    /// Happens when the thread has returned (after its last batches committed).
    let ended = CompletionSignal()
    private let fd: Int32
    private let settings: LiveConfiguration
    /// Built from ``settings`` as of ``parserGeneration``, as are the senders allowed (`nil`: anyone).
    private var parser: IntakeLineParser
    private var allowed: PeerAllowList?
    private var parserGeneration: Int
    private let writer: SpoolWriter
    private let eventLoop: any EventLoop
    private let stopping = Atomic<Bool>(false)
    /// Written to by ``stop()``; the thread polls its reading end beside the socket. (Not private: the
    /// tests check that it is closed with the receiver.)
    let stopPipe: (read: Int32, write: Int32)
    private let inFlight = InFlightLimit(DatagramReceiver.maxBatchesInFlight)
    private let logger: Logger

    init(fd: Int32, settings: LiveConfiguration, writer: SpoolWriter, eventLoop: any EventLoop, logger: Logger) {
        self.fd = fd
        self.logger = logger
        self.settings = settings
        parserGeneration = settings.generation
        let configuration = settings.current
        parser = IntakeLineParser(configuration: configuration)
        allowed = PeerAllowList(configuration.intake)
        self.writer = writer
        self.eventLoop = eventLoop
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { fatalError("cannot make the datagram thread's stop pipe: \(SystemCallError())") }
        for end in ends {  // (Glibc's module has no pipe2)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
        }
        stopPipe = (ends[0], ends[1])
    }

    deinit {
        close(stopPipe.read)
        close(stopPipe.write)
    }

    func start() {
        NamedThread.start("datagram") { [self] in
            receive()
            ended.signal()
        }
    }

    /// Asks the thread to finish: it does at once, once its last batches committed.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        var byte: UInt8 = 1
        _ = write(stopPipe.write, &byte, 1)
    }

    /// Adds what was counted since the last call to the spool's running totals (on the writer's thread);
    /// `done` is called once committed (at once when there is nothing to add, or when the writer has
    /// stopped).
    func writeDownCounters(then done: @escaping @Sendable () -> Void = {}) {
        let delta = counters.take()
        guard delta.received > 0 || delta.dropped > 0 else { return done() }
        writer.addToCounters(
            [("datagrams_received", delta.received), ("datagrams_rejected", delta.rejected), ("datagrams_dropped", delta.dropped)],
            completion: done)
    }

    /// Waits until a datagram is there (`true`) or ``stop()`` was called (`false`). Counts not yet written
    /// are written once a second has passed since the last time: until then it waits at most that long,
    /// with none it waits without a timeout.
    private func waitForDatagram() -> Bool {
        var ready = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0)]
        while !stopping.load(ordering: .relaxed) {
            var timeout: Int32 = -1
            if counters.hasPending {
                let now = ContinuousClock.now
                let due = lastPersisted + Self.counterInterval
                if now >= due {
                    writeDownCounters()
                    lastPersisted = now
                } else {
                    timeout = Self.milliseconds(roundingUp: due - now)
                }
            }
            let count = poll(&ready, 2, timeout)
            if count > 0 { return ready[1].revents == 0 && ready[0].revents & Int16(POLLNVAL) == 0 }
            if count < 0, errno != EINTR {
                logger.error("the datagram socket cannot be polled; datagram intake stops", metadata: ["error": "\(SystemCallError())"])
                return false
            }
        }
        return false
    }

    /// How often, at most, the counts are written to the spool.
    static let counterInterval = Duration.seconds(1)

    /// When the counts were last written (the thread's own).
    private var lastPersisted = ContinuousClock.now - DatagramReceiver.counterInterval

    private static func milliseconds(roundingUp duration: Duration) -> Int32 {
        let (seconds, attoseconds) = duration.components
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: max(1, milliseconds))
    }

    private func receive() {
        var buffer = [UInt8](repeating: 0, count: Self.maxDatagramBytes)
        while waitForDatagram() {
            if settings.generation != parserGeneration {
                parserGeneration = settings.generation
                let configuration = settings.current
                parser = IntakeLineParser(configuration: configuration)
                allowed = PeerAllowList(configuration.intake)
            }
            var batch = SpoolBatch()
            var requests = 0
            // A burst ends after so many datagrams, refused and dropped ones included: a flood of bad ones
            // must not keep the thread from submitting the good ones, writing its counts or seeing a stop.
            var batchBytes = 0
            // This burst's counts: they go into the spool's totals in the same commit as its records.
            var burst = DatagramCounts()
            while burst.received < Self.maxRequestsPerBatch, batchBytes < Self.maxBatchBytes, !stopping.load(ordering: .relaxed) {
                var uid: UInt32 = .max
                var gid: UInt32 = .max
                let n = buffer.withUnsafeMutableBytes {
                    cagent_recv_with_credentials(fd, $0.baseAddress, UInt($0.count), Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC), &uid, &gid)
                }
                if n < 0 { break }  // none left (EAGAIN) or interrupted: submit what we have
                burst.received += 1
                if let allowed, !allowed.admits(uid: uid, gid: gid) {
                    burst.rejected += 1
                    AgentMetrics.rejected(.peerNotAllowed).increment()
                    if let heldBack = peerRefusalLog.admit() {
                        logger.warning(
                            "refused a datagram from a sender that is not allowed by [intake] allow_uids/allow_gids",
                            metadata: [
                                "uid": "\(uid == .max ? "unknown" : "\(uid)")", "gid": "\(gid == .max ? "unknown" : "\(gid)")",
                                "similar_datagrams_not_logged": "\(heldBack)",
                            ])
                    }
                    continue
                }
                guard n <= buffer.count else {
                    burst.rejected += 1
                    AgentMetrics.rejected(.lineTooLong).increment()
                    logRefusal(IntakeRejection(.lineTooLong, "the datagram is \(n) bytes; at most \(Self.maxDatagramBytes) are taken"))
                    continue
                }
                var length = n
                if length > 0, buffer[length - 1] == UInt8(ascii: "\n") { length -= 1 }
                let parsed = buffer.withUnsafeBytes { parser.parse(line: UnsafeRawBufferPointer(rebasing: $0[0..<length]), into: &batch) }
                switch parsed.result {
                case .success(let accepted) where batch.admit(accepted, into: writer.capacity):
                    requests += 1
                    batchBytes += accepted.bytes
                case .success:
                    burst.dropped += 1
                    AgentMetrics.rejected(.spoolFull).increment()
                    logRefusal(IntakeRejection(.spoolFull, "the spool is full ([spool] max_bytes); the datagram was dropped"))
                case .failure(let rejection):
                    burst.rejected += 1
                    AgentMetrics.rejected(rejection.code).increment()
                    logRefusal(rejection)
                }
            }
            burst.countInMetrics()
            guard requests > 0 else {
                // Nothing to commit: the counts wait for the next write of the totals.
                counters.add(burst)
                continue
            }
            batch.counters = burst.spoolCounters
            inFlight.acquire()
            let promise = eventLoop.makePromise(of: Void.self)
            let (counters, inFlight, records, submitted, counted) = (self.counters, self.inFlight, batch.totalRecords, requests, burst)
            promise.futureResult.whenComplete { [weak self] result in
                switch result {
                case .success: AgentMetrics.recordsSpooled.increment(by: Int64(records))
                case .failure:
                    // Neither the records nor the burst's counts were committed: the records were dropped.
                    var failed = counted
                    failed.dropped += submitted
                    DatagramCounts(dropped: submitted).countInMetrics()
                    counters.add(failed)
                    // The thread may be asleep by now, its counts written: these are written at once.
                    self?.writeDownCounters()
                }
                inFlight.release()
            }
            writer.submit(batch, promise: promise)
        }
        // Let the last batches commit before the counters are written for good.
        inFlight.waitUntilEmpty()
    }

    /// At most one debug line a second about refused datagrams: they are never answered, so the log is
    /// where an operator can see why.
    private let refusalLog = LogRateLimiter(interval: .seconds(1))
    /// At most one warning a second about senders allow_uids / allow_gids do not allow.
    private let peerRefusalLog = LogRateLimiter(interval: .seconds(1))

    private func logRefusal(_ rejection: IntakeRejection) {
        guard logger.logLevel <= .debug, let heldBack = refusalLog.admit() else { return }
        logger.debug(
            "refused a datagram",
            metadata: [
                "status": "\(rejection.status)", "code": "\(rejection.code)", "error": "\(rejection.message)",
                "similar_datagrams_not_logged": "\(heldBack)",
            ])
    }
}

/// Batches awaiting their commit, at most `limit` at a time. The receiving thread blocks in ``acquire()``
/// (its own thread: that wait is the back-pressure on senders); commits ``release()`` from any thread.
final class InFlightLimit: @unchecked Sendable {
    private let limit: Int
    private let condition = ConditionLock()
    private var count = 0

    init(_ limit: Int) {
        self.limit = limit
    }

    func acquire() {
        condition.lock()
        while count >= limit { condition.wait() }
        count += 1
        condition.unlock()
    }

    func release() {
        condition.lock()
        count -= 1
        condition.broadcast()
        condition.unlock()
    }

    func waitUntilEmpty() {
        condition.lock()
        while count > 0 { condition.wait() }
        condition.unlock()
    }
}

/// Datagrams counted together: in one burst, or waiting to be added to the spool's totals.
struct DatagramCounts: Sendable, Equatable {
    var received = 0
    var rejected = 0
    var dropped = 0

    /// The spool's `counters` rows these add to.
    var spoolCounters: [String: Int] {
        ["datagrams_received": received, "datagrams_rejected": rejected, "datagrams_dropped": dropped]
    }

    /// Adds these to the process's metrics (at once, whether or not the spool's totals have them yet).
    func countInMetrics() {
        if received > 0 { AgentMetrics.datagramsReceived.increment(by: Int64(received)) }
        if rejected > 0 { AgentMetrics.datagramsRejected.increment(by: Int64(rejected)) }
        if dropped > 0 { AgentMetrics.datagramsDropped.increment(by: Int64(dropped)) }
    }
}

/// Datagram counts not yet added to the spool's totals: those of bursts with nothing to commit, and of
/// batches whose commit failed (a committed batch carries its burst's counts itself).
final class DatagramCounters: Sendable {
    private let received = Atomic<Int>(0)
    private let rejected = Atomic<Int>(0)
    private let dropped = Atomic<Int>(0)

    func add(_ counts: DatagramCounts) {
        if counts.received > 0 { received.add(counts.received, ordering: .relaxed) }
        if counts.rejected > 0 { rejected.add(counts.rejected, ordering: .relaxed) }
        if counts.dropped > 0 { dropped.add(counts.dropped, ordering: .relaxed) }
    }

    /// Whether anything was counted since the last ``take()``.
    var hasPending: Bool {
        received.load(ordering: .relaxed) > 0 || dropped.load(ordering: .relaxed) > 0
    }

    func take() -> (received: Int, rejected: Int, dropped: Int) {
        (received.exchange(0, ordering: .relaxed), rejected.exchange(0, ordering: .relaxed), dropped.exchange(0, ordering: .relaxed))
    }
}
