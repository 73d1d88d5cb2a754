// A VFS over SQLite's default one that coalesces consecutive writes to the WAL and to the database file
// into one write system call (up to 120 KiB), until the file is synced.
//
// SQLite writes each WAL frame with two write calls (its 24-byte header, then the page), and a checkpoint
// writes each page with one: a commit of 1 MiB of records in 4 KiB pages is ~512 pwrite calls, most of the
// writer thread's kernel time. Here writes that continue the previous one gather in a buffer (120 KiB per
// file) and reach the file in one call when the buffer is full or before any other operation on the file:
// sync, read, truncate, size, lock, file control, shared memory, close. The bytes and their order on disk
// are what SQLite wrote; only the number of system calls changes.
//
// Why that keeps SQLite's guarantees: other connections learn of new WAL frames only through the
// wal-index, which the writer updates after the commit's frames are written *and synced*; a checkpoint
// publishes its progress only after syncing the database file. So every byte another connection (or
// process) may read has been flushed by the sync before it, and a crash can only lose bytes of a commit
// that had not returned. This holds only when every commit syncs the WAL: connections use this VFS only
// with `PRAGMA synchronous = FULL` (durability "full"). A write error shows at the flush, i.e. from
// the sync (or read, …) that follows, which fails the commit as the write itself would have.
#include "CSpoolVFS.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>

/// The default VFS writes at most 0x1ffff bytes per call (it masks larger counts), so one flush must stay
/// below 128 KiB.
enum { BUFFER_BYTES = 120 * 1024 };

typedef struct CoalescingFile {
    sqlite3_file base;
    /// The default VFS's file, allocated right after this struct.
    sqlite3_file *real;
    /// Whether writes are gathered: the main database and its WAL (not journals or temporary files).
    int coalesce;
    /// Gathered bytes, for file offset `offset` onwards; allocated at the first gathered write.
    unsigned char *buffer;
    int used;
    sqlite3_int64 offset;
} CoalescingFile;

static _Atomic long long saved_writes;

static sqlite3_vfs *real_vfs(sqlite3_vfs *vfs) { return (sqlite3_vfs *)vfs->pAppData; }

/// Writes the gathered bytes. They are let go only once written: after a failed write (a full disk) they
/// stay and are written again at the next flush, so every sync fails until they are on disk, as the
/// writes themselves would have made it fail. SQLite ignores the result of some calls that flush (the hint
/// that a checkpoint copied its pages, `SQLITE_FCNTL_CKPT_DONE`; a shared-memory barrier): bytes dropped
/// there let the checkpoint's sync succeed over pages never written, and a disk filled by another program
/// left a corrupt spool (found by a black-box probe, about one run in ten).
static int flush(CoalescingFile *file) {
    if (file->used == 0) return SQLITE_OK;
    int rc = file->real->pMethods->xWrite(file->real, file->buffer, file->used, file->offset);
    if (rc == SQLITE_OK) file->used = 0;
    return rc;
}

#define FLUSH_OR_RETURN(file)                  \
    do {                                       \
        int flushed = flush(file);             \
        if (flushed != SQLITE_OK) return flushed; \
    } while (0)

static int file_close(sqlite3_file *handle) {
    CoalescingFile *file = (CoalescingFile *)handle;
    int flushed = flush(file);
    int closed = file->real->pMethods->xClose(file->real);
    sqlite3_free(file->buffer);
    file->buffer = NULL;
    return flushed != SQLITE_OK ? flushed : closed;
}

static int file_read(sqlite3_file *handle, void *data, int amount, sqlite3_int64 offset) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xRead(file->real, data, amount, offset);
}

static int file_write(sqlite3_file *handle, const void *data, int amount, sqlite3_int64 offset) {
    CoalescingFile *file = (CoalescingFile *)handle;
    if (!file->coalesce) return file->real->pMethods->xWrite(file->real, data, amount, offset);
    if (file->used > 0 && offset == file->offset + file->used && amount <= BUFFER_BYTES - file->used) {
        memcpy(file->buffer + file->used, data, (size_t)amount);
        file->used += amount;
        atomic_fetch_add_explicit(&saved_writes, 1, memory_order_relaxed);
        return SQLITE_OK;
    }
    FLUSH_OR_RETURN(file);
    if (amount > BUFFER_BYTES / 2) return file->real->pMethods->xWrite(file->real, data, amount, offset);
    if (file->buffer == NULL) {
        file->buffer = sqlite3_malloc(BUFFER_BYTES);
        if (file->buffer == NULL) return file->real->pMethods->xWrite(file->real, data, amount, offset);
    }
    memcpy(file->buffer, data, (size_t)amount);
    file->used = amount;
    file->offset = offset;
    return SQLITE_OK;
}

static int file_truncate(sqlite3_file *handle, sqlite3_int64 size) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xTruncate(file->real, size);
}

static int file_sync(sqlite3_file *handle, int flags) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xSync(file->real, flags);
}

static int file_size(sqlite3_file *handle, sqlite3_int64 *size) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xFileSize(file->real, size);
}

static int file_lock(sqlite3_file *handle, int level) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xLock(file->real, level);
}

static int file_unlock(sqlite3_file *handle, int level) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xUnlock(file->real, level);
}

static int file_check_reserved_lock(sqlite3_file *handle, int *reserved) {
    CoalescingFile *file = (CoalescingFile *)handle;
    return file->real->pMethods->xCheckReservedLock(file->real, reserved);
}

static int file_control(sqlite3_file *handle, int op, void *argument) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xFileControl(file->real, op, argument);
}

static int file_sector_size(sqlite3_file *handle) {
    CoalescingFile *file = (CoalescingFile *)handle;
    return file->real->pMethods->xSectorSize(file->real);
}

static int file_device_characteristics(sqlite3_file *handle) {
    CoalescingFile *file = (CoalescingFile *)handle;
    return file->real->pMethods->xDeviceCharacteristics(file->real);
}

static int file_shm_map(sqlite3_file *handle, int region, int size, int extend, void volatile **memory) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xShmMap(file->real, region, size, extend, memory);
}

static int file_shm_lock(sqlite3_file *handle, int offset, int count, int flags) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xShmLock(file->real, offset, count, flags);
}

static void file_shm_barrier(sqlite3_file *handle) {
    CoalescingFile *file = (CoalescingFile *)handle;
    // Nothing should be pending here (commits and checkpoints sync first); bytes that fail to be written
    // stay gathered, and the failure shows at the next operation on the file (a sync), as SQLite's own
    // deferred errors do.
    (void)flush(file);
    file->real->pMethods->xShmBarrier(file->real);
}

static int file_shm_unmap(sqlite3_file *handle, int delete_flag) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xShmUnmap(file->real, delete_flag);
}

static int file_fetch(sqlite3_file *handle, sqlite3_int64 offset, int amount, void **pointer) {
    CoalescingFile *file = (CoalescingFile *)handle;
    FLUSH_OR_RETURN(file);
    return file->real->pMethods->xFetch(file->real, offset, amount, pointer);
}

static int file_unfetch(sqlite3_file *handle, sqlite3_int64 offset, void *pointer) {
    CoalescingFile *file = (CoalescingFile *)handle;
    return file->real->pMethods->xUnfetch(file->real, offset, pointer);
}

#define METHODS(version)                                                                          \
    {                                                                                             \
        version, file_close, file_read, file_write, file_truncate, file_sync, file_size, file_lock, \
            file_unlock, file_check_reserved_lock, file_control, file_sector_size,                \
            file_device_characteristics, file_shm_map, file_shm_lock, file_shm_barrier,           \
            file_shm_unmap, file_fetch, file_unfetch                                              \
    }

/// The same methods at each version the default VFS may give a file (1: no shared memory, 2: no mmap).
static const sqlite3_io_methods methods_by_version[3] = {METHODS(1), METHODS(2), METHODS(3)};

static int vfs_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *handle, int flags, int *out_flags) {
    CoalescingFile *file = (CoalescingFile *)handle;
    memset(file, 0, sizeof(*file));
    file->real = (sqlite3_file *)&file[1];
    int rc = real_vfs(vfs)->xOpen(real_vfs(vfs), name, file->real, flags, out_flags);
    if (file->real->pMethods == NULL) return rc;  // nothing to close
    if (rc != SQLITE_OK) {
        file->real->pMethods->xClose(file->real);
        return rc;
    }
    int version = file->real->pMethods->iVersion;
    file->base.pMethods = &methods_by_version[(version < 1 ? 1 : version > 3 ? 3 : version) - 1];
    file->coalesce = (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)) != 0;
    return SQLITE_OK;
}

static int vfs_delete(sqlite3_vfs *vfs, const char *name, int sync_dir) {
    return real_vfs(vfs)->xDelete(real_vfs(vfs), name, sync_dir);
}
static int vfs_access(sqlite3_vfs *vfs, const char *name, int flags, int *result) {
    return real_vfs(vfs)->xAccess(real_vfs(vfs), name, flags, result);
}
static int vfs_full_pathname(sqlite3_vfs *vfs, const char *name, int size, char *out) {
    return real_vfs(vfs)->xFullPathname(real_vfs(vfs), name, size, out);
}
static void *vfs_dl_open(sqlite3_vfs *vfs, const char *name) { return real_vfs(vfs)->xDlOpen(real_vfs(vfs), name); }
static void vfs_dl_error(sqlite3_vfs *vfs, int size, char *message) { real_vfs(vfs)->xDlError(real_vfs(vfs), size, message); }
static void (*vfs_dl_sym(sqlite3_vfs *vfs, void *library, const char *symbol))(void) {
    return real_vfs(vfs)->xDlSym(real_vfs(vfs), library, symbol);
}
static void vfs_dl_close(sqlite3_vfs *vfs, void *library) { real_vfs(vfs)->xDlClose(real_vfs(vfs), library); }
static int vfs_randomness(sqlite3_vfs *vfs, int size, char *out) { return real_vfs(vfs)->xRandomness(real_vfs(vfs), size, out); }
static int vfs_sleep(sqlite3_vfs *vfs, int microseconds) { return real_vfs(vfs)->xSleep(real_vfs(vfs), microseconds); }
static int vfs_current_time(sqlite3_vfs *vfs, double *now) { return real_vfs(vfs)->xCurrentTime(real_vfs(vfs), now); }
static int vfs_get_last_error(sqlite3_vfs *vfs, int size, char *message) {
    return real_vfs(vfs)->xGetLastError(real_vfs(vfs), size, message);
}
static int vfs_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *now) {
    return real_vfs(vfs)->xCurrentTimeInt64(real_vfs(vfs), now);
}

static sqlite3_vfs coalescing_vfs;
static pthread_once_t registration_once = PTHREAD_ONCE_INIT;
static int registration_result = SQLITE_ERROR;

static void register_once(void) {
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    if (real == NULL || real->iVersion < 2) return;
    coalescing_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(CoalescingFile) + real->szOsFile,
        .mxPathname = real->mxPathname,
        .zName = CSPOOL_COALESCING_VFS_NAME,
        .pAppData = real,
        .xOpen = vfs_open,
        .xDelete = vfs_delete,
        .xAccess = vfs_access,
        .xFullPathname = vfs_full_pathname,
        .xDlOpen = vfs_dl_open,
        .xDlError = vfs_dl_error,
        .xDlSym = vfs_dl_sym,
        .xDlClose = vfs_dl_close,
        .xRandomness = vfs_randomness,
        .xSleep = vfs_sleep,
        .xCurrentTime = vfs_current_time,
        .xGetLastError = vfs_get_last_error,
        .xCurrentTimeInt64 = vfs_current_time_int64,
    };
    registration_result = sqlite3_vfs_register(&coalescing_vfs, 0);
}

int cspool_register_coalescing_vfs(void) {
    pthread_once(&registration_once, register_once);
    return registration_result;
}

long long cspool_coalesced_writes(void) { return atomic_load_explicit(&saved_writes, memory_order_relaxed); }
