#if canImport(Glibc)
    import Glibc
#endif

/// Keeps free space on the spool's filesystem for delivery, so that a full disk drains and recovers by
/// itself.
///
/// Without a reserve, intake could fill the disk to the last byte. Delivery would then send rows but
/// could not record that it did (the WAL cannot grow, nothing can be checkpointed): nothing would leave
/// the spool and intake would never resume. So intake stops (507) while committing more would leave
/// less than the reserve for delivery's bookkeeping and the WAL checkpoint.
///
/// The space a commit costs is not just its bytes: they are first staged in the WAL (space now), then
/// copied into the main file at the checkpoint, where they reuse pages delivery freed (no growth) or
/// extend the file. Deleting rows frees pages inside the file, not on the filesystem, so a drained
/// spool has room for new records even though `df` shows no change; ``admissibleBytes(_:)`` counts both.
///
/// Owned by the ``SpoolWriter`` thread, like the connection it reads.
struct DiskHeadroom {
    /// What the filesystem and the database look like now.
    struct Measurement: Equatable {
        /// Bytes an unprivileged process may still allocate on the spool's filesystem.
        var filesystemFree: Int
        var filesystemSize: Int
        var pageSize: Int
        /// Pages in the database as the last commit left it (WAL included).
        var pageCount: Int
        /// Of those, pages free for reuse.
        var freePages: Int
        /// Size of the main database file: pages beyond it are added when the WAL is checkpointed.
        var mainFileBytes: Int
        var walBytes: Int

        /// Bytes the next checkpoint adds to the main file.
        var pendingGrowth: Int { max(0, pageCount * pageSize - mainFileBytes) }
        var freeInFile: Int { freePages * pageSize }
    }

    let spoolPath: String
    /// `nil`: 5% of the filesystem's size, at most 64 MiB (like journald's `SystemKeepFree=`).
    let configuredReserve: Int?

    static let automaticReserveCap = 64 << 20

    /// The reserve for a filesystem of `size` bytes.
    func reserve(filesystemSize size: Int) -> Int {
        configuredReserve ?? min(Self.automaticReserveCap, size / 20)
    }

    /// Reads the filesystem's and the database's numbers. Cheap: one `statvfs`, two `stat`s and three
    /// pragmas that read the database header.
    func measure(_ db: SQLiteConnection) throws(SQLiteError) -> Measurement {
        var fs = statvfs()
        let haveFS = statvfs(spoolPath, &fs) == 0
        return Measurement(
            filesystemFree: haveFS ? Int(fs.f_bavail) * Int(fs.f_frsize) : Int.max / 4,
            filesystemSize: haveFS ? Int(fs.f_blocks) * Int(fs.f_frsize) : Int.max / 4,
            pageSize: Int(try db.scalar("PRAGMA page_size")),
            pageCount: Int(try db.scalar("PRAGMA page_count")),
            freePages: Int(try db.scalar("PRAGMA freelist_count")),
            mainFileBytes: Self.fileSize(spoolPath),
            walBytes: Self.fileSize(spoolPath + "-wal"))
    }

    /// Bytes intake may stage in the WAL now without leaving delivery less than the reserve.
    ///
    /// Staging `x` bytes in the WAL needs `x` of filesystem space now, plus at the checkpoint whatever
    /// the pages delivery freed inside the file cannot hold. While the freed pages hold it all, intake
    /// may dip into half the reserve (the checkpoint gives the WAL's space back without growing the
    /// file); a commit that grows the file must leave the whole reserve.
    func admissibleStaging(_ m: Measurement) -> Int {
        let reserve = reserve(filesystemSize: m.filesystemSize)
        let available = m.filesystemFree - m.pendingGrowth
        // Reusing freed pages only: x <= freeInFile and available - x >= reserve / 2.
        let reusing = min(m.freeInFile, available - reserve / 2)
        // Growing the file: available - x - (x - freeInFile) >= reserve.
        let growing = (available - reserve + m.freeInFile) / 2
        return max(0, growing > m.freeInFile ? growing : reusing)
    }

    /// WAL bytes a commit of `recordBytes` stages: its overflow pages (each loses 4 bytes to the
    /// link and gains a 24-byte frame header) plus the b-tree pages every commit rewrites (the segment's
    /// leaf, its index, the target's row, the free-list). Small commits cost mostly the latter.
    static func stagingCost(recordBytes: Int, pageSize: Int) -> Int {
        let pages = (recordBytes + pageSize - 5) / (pageSize - 4) + 6
        return pages * (pageSize + 24)
    }

    static func fileSize(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }
}
