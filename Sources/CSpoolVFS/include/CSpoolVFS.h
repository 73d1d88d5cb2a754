#ifndef DEFINITE_AGENT_CSPOOLVFS_H
#define DEFINITE_AGENT_CSPOOLVFS_H

/// Name of the write-coalescing VFS (see coalescing_vfs.c), for sqlite3_open_v2.
#define CSPOOL_COALESCING_VFS_NAME "definite-agent-coalescing"

/// Registers the write-coalescing VFS over SQLite's default VFS (once; later calls return the first
/// result). Returns SQLITE_OK or SQLite's error code.
int cspool_register_coalescing_vfs(void);

/// Write system calls the coalescing VFS saved so far in this process (for tests and benchmarks).
long long cspool_coalesced_writes(void);

#endif
