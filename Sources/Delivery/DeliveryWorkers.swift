import Core
import FoundationEssentials
import Glibc
import Spool

/// The blocking work delivery hands off its loop: spool reads (each thread owns its own read connection)
/// and building request bodies (gzip). Threads `delivery-1` … `delivery-N` take jobs in order.
final class DeliveryWorkers: @unchecked Sendable {
    typealias Job = @Sendable (SpoolReader) -> Void

    private let condition = ConditionLock()
    private var jobs: [Job] = []
    private var stopping = false

    /// Readers opened, not yet handed to their threads.
    private var readers: [SpoolReader]

    /// Opens one spool reader per thread (so the spool must exist); ``start()`` starts the threads.
    init(count: Int, spoolPath: String) throws(SpoolError) {
        var readers: [SpoolReader] = []
        for _ in 0..<max(1, count) { readers.append(try SpoolReader(path: spoolPath)) }
        self.readers = readers
    }

    /// Starts the threads, each with its own reader.
    func start() {
        condition.lock()
        let readers = self.readers
        self.readers = []
        condition.unlock()
        for (index, reader) in readers.enumerated() {
            let owned = UncheckedBox(reader)
            NamedThread.start("delivery-\(index + 1)") { [self] in work(owned.value) }
        }
    }

    /// Runs `job` on the next free thread, with that thread's spool reader.
    func submit(_ job: @escaping Job) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// The threads end once the jobs queued so far are done.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    private func work(_ reader: SpoolReader) {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job(reader)
        }
    }
}

/// Hands a value confined to one thread over to that thread.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
