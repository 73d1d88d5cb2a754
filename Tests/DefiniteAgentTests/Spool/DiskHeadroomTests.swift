import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Disk headroom")
struct DiskHeadroomTests {
    let page = 4096
    let headroom = DiskHeadroom(spoolPath: "/unused", configuredReserve: nil)

    func measurement(free: Int, size: Int = 8 << 20, pages: Int = 1000, freePages: Int = 0, mainPages: Int? = nil)
        -> DiskHeadroom.Measurement
    {
        DiskHeadroom.Measurement(
            filesystemFree: free, filesystemSize: size, pageSize: page, pageCount: pages,
            freePages: freePages, mainFileBytes: (mainPages ?? pages) * page, walBytes: 0)
    }

    @Test func automaticReserveIsFivePercentCappedAt64MiB() {
        #expect(headroom.reserve(filesystemSize: 8 << 20) == (8 << 20) / 20)
        #expect(headroom.reserve(filesystemSize: 100 << 30) == 64 << 20)
        #expect(DiskHeadroom(spoolPath: "/x", configuredReserve: 1 << 20).reserve(filesystemSize: 100 << 30) == 1 << 20)
    }

    @Test func aRoomyDiskAdmitsAlmostAllOfItsFreeSpace() {
        let admissible = headroom.admissibleStaging(measurement(free: 1 << 30, size: 100 << 30))
        // Half of (free - reserve): staging in the WAL and growing the file at the checkpoint both cost.
        #expect(admissible == ((1 << 30) - (64 << 20)) / 2)
    }

    @Test func intakeStopsAtTheReserve() {
        let reserve = headroom.reserve(filesystemSize: 8 << 20)
        #expect(headroom.admissibleStaging(measurement(free: reserve)) == 0)
        #expect(headroom.admissibleStaging(measurement(free: reserve + 64 * page)) > 0)
    }

    @Test func pagesTheNextCheckpointAddsCountAsUsed() {
        let reserve = headroom.reserve(filesystemSize: 8 << 20)
        let free = reserve + 100 * page
        let withoutGrowth = headroom.admissibleStaging(measurement(free: free))
        let withGrowth = headroom.admissibleStaging(measurement(free: free, pages: 1100, mainPages: 1000))
        #expect(withoutGrowth > 0)
        #expect(withGrowth == 0)
    }

    /// The full-disk recovery case: delivery freed pages inside the file but the filesystem shows no change.
    @Test func pagesDeliveryFreedLetIntakeResumeWithoutNewDiskSpace() {
        let reserve = headroom.reserve(filesystemSize: 8 << 20)
        #expect(headroom.admissibleStaging(measurement(free: reserve, freePages: 0)) == 0)
        let resumed = headroom.admissibleStaging(measurement(free: reserve, freePages: 500))
        #expect(resumed > 0)
        // Staged in the WAL within half the reserve, never more than the freed pages hold.
        #expect(resumed <= reserve / 2)
        #expect(resumed <= 500 * page)
    }

    @Test func smallCommitsCostTheBTreePagesTheyRewrite() {
        let oneRecord = DiskHeadroom.stagingCost(recordBytes: 230, pageSize: page)
        #expect(oneRecord >= 4 * page)
        let megabyte = DiskHeadroom.stagingCost(recordBytes: 1 << 20, pageSize: page)
        #expect(megabyte > 1 << 20)
        #expect(megabyte < (1 << 20) * 11 / 10)
    }

    @Test func approximateSizesRoundToTenths() {
        #expect(ByteSize(bytes: 900).approximate == "900B")
        #expect(ByteSize(bytes: 419_430).approximate == "409.6KiB")
        #expect(ByteSize.mebibytes(64).approximate == "64MiB")
    }
}
