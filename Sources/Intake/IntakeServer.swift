import Core
import Logging
import NIOCore
import NIOPosix
import Spool

/// The line protocol's connections on the intake socket (`[intake] socket`), where local programs write
/// records: peers checked against `allow_uids`/`allow_gids`, then one ``IntakeConnectionHandler`` each.
///
/// Stopped gracefully, every connection answers what it already read (acks or errors) and closes, so the
/// spool writer behind it can commit the last batches before it closes.
package struct IntakeServer: ConnectionPipeline {
    let settings: LiveConfiguration
    let writer: SpoolWriter
    let logger: Logger
    /// Shared by every connection of the socket (see ``IntakeMemoryBudget``).
    let budget = IntakeMemoryBudget()
    /// Shared by every connection of every listener (see ``UnfinishedInputBudget``).
    let unfinishedInput: UnfinishedInputBudget

    package var backlog: Int32 { 1024 }

    package func configure(_ bootstrap: ServerBootstrap) -> ServerBootstrap {
        let (settings, writer, logger, budget, unfinishedInput) = (settings, writer, logger, budget, unfinishedInput)
        return
            bootstrap
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            // A read burst is at most 4 × 128 KiB, a connection holds at most
            // IntakeConnectionHandler.maxOutstandingBatches bursts, and all of them together at most
            // the IntakeMemoryBudget: memory stays bounded per writer and for any number of writers.
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 131_072))
            .childChannelInitializer { channel in
                // Each connection takes the settings in force when it opens (a reload affects new ones),
                // but for who may write, which it checks again after a reload.
                let configuration = settings.current
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PeerCredentialsHandler(settings: settings, logger: logger))
                    try channel.pipeline.syncOperations.addHandler(
                        IntakeConnectionHandler(
                            configuration: configuration, writer: writer, budget: budget, unfinishedInput: unfinishedInput,
                            logger: logger))
                }
            }
    }

    package init(
        settings: LiveConfiguration, writer: SpoolWriter, unfinishedInput: UnfinishedInputBudget = UnfinishedInputBudget(), logger: Logger
    ) {
        self.settings = settings
        self.writer = writer
        self.unfinishedInput = unfinishedInput
        self.logger = logger
    }
}
