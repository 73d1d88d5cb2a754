import NIOCore
import NIOPosix
import Testing

@testable import Spool

extension SpoolWriter {
    /// Reserves room for `batch` as intake does before it submits (expecting it to fit), submits it, and
    /// waits until it is durable.
    func spoolAndWait(_ batch: SpoolBatch) async throws {
        #expect(capacity.reserve(batch.totalBytes))
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
        submit(batch, promise: promise)
        try await promise.futureResult.get()
    }
}
