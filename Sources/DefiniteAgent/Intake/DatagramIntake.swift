import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Datagram intake: `[intake] datagram_socket` (`SOCK_DGRAM`), one request per datagram in the line
/// protocol's format, never answered, for programs that must never block on the agent.
///
/// Every datagram is counted: received, rejected (invalid, with its reason in the metrics) or dropped
/// (valid, but the spool was full or the commit failed). The totals are kept in the spool, so `status`
/// shows them whether or not the daemon runs. A datagram that is neither rejected nor dropped is spooled.
///
/// A dedicated thread reads the socket with blocking `recv` (senders are usually unnamed sockets, which
/// a plain `recv` takes as they are) and hands each burst to the spool writer as one batch. While four
/// batches await their commit it stops reading: the kernel queue fills and blocking senders wait.
final class DatagramIntakeServer: Service, Sendable {
    private let path: String
    private let settings: LiveConfiguration
    private let writer: SpoolWriter
    private let group: any EventLoopGroup
    private let logger: Logger
    let counters = DatagramCounters()
    private let stopping = Atomic<Bool>(false)

    /// Longest datagram taken; a longer one is rejected (`line_too_long`).
    static let maxDatagramBytes = 1 << 20

    init(path: String, settings: LiveConfiguration, writer: SpoolWriter, group: any EventLoopGroup, logger: Logger) {
        self.path = path
        self.settings = settings
        self.writer = writer
        self.group = group
        self.logger = logger
    }

    func run() async throws {
        try SocketPath.prepare(path)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketPath.Error(path: path, message: "cannot create a datagram socket: \(String(cString: strerror(errno)))") }
        let bound = SocketPath.withAddress(of: path) { bind(fd, $0, $1) }
        guard bound == 0 else {
            let reason = bound == nil ? "the path is too long for a socket address" : String(cString: strerror(errno))
            close(fd)
            throw SocketPath.Error(path: path, message: "cannot bind: \(reason)")
        }
        chmod(path, mode_t(settings.current.intake.socketMode))
        var bufferSize: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufferSize, socklen_t(MemoryLayout<Int32>.size))
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        logger.info("datagram intake listening", metadata: ["socket": "\(path)"])

        let finished = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            receive(fd: fd)
            finished.signal()
        }
        thread.name = "datagram-intake"
        thread.start()
        while !stopping.load(ordering: .relaxed) {
            try? await Task.sleep(for: .seconds(1))
            if Task.isShuttingDownGracefully || Task.isCancelled { stopping.store(true, ordering: .relaxed) }
            persistCounters()
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread {
                finished.wait()
                continuation.resume()
            }.start()
        }
        close(fd)
        persistCounters()
        unlink(path)
    }

    /// The receiving loop: bursts of datagrams become batches for the spool writer.
    private func receive(fd: Int32) {
        var parser = IntakeLineParser(configuration: settings.current)
        var buffer = [UInt8](repeating: 0, count: Self.maxDatagramBytes)
        let slots = DispatchSemaphore(value: 4)
        while !stopping.load(ordering: .relaxed) {
            var batch = IntakeBatch()
            var requests = 0
            var flags: Int32 = 0
            while requests < 4096 {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, flags | Int32(MSG_TRUNC)) }
                if n < 0 { break }  // timeout (EAGAIN) or interrupted: submit what we have
                flags = Int32(MSG_DONTWAIT)
                counters.add(received: 1)
                guard n <= buffer.count else {
                    counters.add(rejected: 1)
                    AgentMetrics.rejected(.lineTooLong).increment()
                    logRefusal(IntakeRejection(status: 413, code: .lineTooLong, message: "the datagram is \(n) bytes; at most \(Self.maxDatagramBytes) are taken"))
                    continue
                }
                var length = n
                if length > 0, buffer[length - 1] == UInt8(ascii: "\n") { length -= 1 }
                let parsed = buffer.withUnsafeBytes { parser.parse(line: UnsafeRawBufferPointer(rebasing: $0[0..<length]), into: &batch) }
                switch parsed.result {
                case .success(let accepted) where writer.capacity.reserve(accepted.bytes):
                    requests += 1
                case .success(let accepted):
                    batch.records[accepted.targetIndex].removeLast(accepted.bytes)
                    batch.counts[accepted.targetIndex] -= accepted.records
                    counters.add(dropped: 1)
                    AgentMetrics.rejected(.spoolFull).increment()
                    logRefusal(IntakeRejection(status: 507, code: .spoolFull, message: "the spool is full ([spool] max_bytes); the datagram was dropped"))
                case .failure(let rejection):
                    counters.add(rejected: 1)
                    AgentMetrics.rejected(rejection.code).increment()
                    logRefusal(rejection)
                }
            }
            guard requests > 0 else { continue }
            slots.wait()
            let promise = group.next().makePromise(of: Void.self)
            let (counters, records, submitted) = (self.counters, batch.totalRecords, requests)
            promise.futureResult.whenComplete { result in
                switch result {
                case .success: AgentMetrics.recordsSpooled.increment(by: Int64(records))
                case .failure: counters.add(dropped: submitted)
                }
                slots.signal()
            }
            writer.submit(batch, promise: promise)
        }
        // Let the last batches commit before the counters are written for good. The slots are handed back
        // after: libdispatch traps on a semaphore released below its initial value.
        for _ in 0..<4 { slots.wait() }
        for _ in 0..<4 { slots.signal() }
    }

    /// At most one debug line a second about refused datagrams: they are never answered, so the log is
    /// where an operator can see why.
    private let refusalLog = LogRateLimiter(interval: .seconds(1))

    private func logRefusal(_ rejection: IntakeRejection) {
        guard logger.logLevel <= .debug, let heldBack = refusalLog.admit() else { return }
        logger.debug("refused a datagram", metadata: [
            "status": "\(rejection.status)", "code": "\(rejection.code)", "error": "\(rejection.message)",
            "similar_datagrams_not_logged": "\(heldBack)",
        ])
    }

    /// Adds what was counted since the last call to the spool's running totals.
    private func persistCounters() {
        let delta = counters.take()
        guard delta.received > 0 else { return }
        let done = DispatchSemaphore(value: 0)
        writer.perform({ db in
            let add = try db.prepared("INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value")
            for (name, value) in [("datagrams_received", delta.received), ("datagrams_rejected", delta.rejected), ("datagrams_dropped", delta.dropped)] {
                add.bind(1, name)
                add.bind(2, value)
                try add.step()
                add.reset()
            }
        }, completion: { _ in done.signal() })
        done.wait()
    }
}

/// Datagram counts not yet added to the spool's totals.
final class DatagramCounters: Sendable {
    private let received = Atomic<Int>(0)
    private let rejected = Atomic<Int>(0)
    private let dropped = Atomic<Int>(0)

    func add(received r: Int = 0, rejected j: Int = 0, dropped d: Int = 0) {
        if r > 0 {
            received.add(r, ordering: .relaxed)
            AgentMetrics.datagramsReceived.increment(by: Int64(r))
        }
        if j > 0 {
            rejected.add(j, ordering: .relaxed)
            AgentMetrics.datagramsRejected.increment(by: Int64(j))
        }
        if d > 0 {
            dropped.add(d, ordering: .relaxed)
            AgentMetrics.datagramsDropped.increment(by: Int64(d))
        }
    }

    func take() -> (received: Int, rejected: Int, dropped: Int) {
        (received.exchange(0, ordering: .relaxed), rejected.exchange(0, ordering: .relaxed), dropped.exchange(0, ordering: .relaxed))
    }
}

