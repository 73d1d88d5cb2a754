#ifndef DEFINITE_AGENT_CAGENTSUPPORT_H
#define DEFINITE_AGENT_CAGENTSUPPORT_H

/// Fixes glibc's mmap threshold (disabling its dynamic growth) and caps the number of malloc arenas.
/// Returns 0 where glibc's mallopt is unavailable.
int cagent_tune_malloc(int mmap_threshold, int arena_max);

/// Hands the heap's free pages back to the system (glibc's malloc_trim); returns whether any were.
int cagent_trim_heap(void);

/// Names the calling thread (what `top -H` and `/proc/PID/task/*/comm` show); `name` must fit in 15 bytes.
/// Returns 0 on success. (`pthread_setname_np` is a GNU extension Swift's Glibc module does not export.)
int cagent_name_current_thread(const char *name);

/// Makes crash signals sent by another process (`kill -ABRT`, systemd's watchdog) end the process.
///
/// The Swift runtime's backtracer handles SIGABRT, SIGSEGV and the other crash signals; for a fault
/// inside the process it prints a backtrace and the process dies, but for a signal sent with kill(2)
/// its handler returns and the process carries on. This chains in front of whatever handler is
/// installed: faults inside the process are reported as before; a SIGABRT from another process (what
/// systemd sends when the watchdog expires) is reported, then ends the process; any other crash signal
/// from another process ends it at once with its default action. Each writes one line to standard error
/// first (``cagent_describe_crash``): the release binary has no backtracer (and the unit turns it off), so
/// without it a crash would leave nothing in the journal. Returns how many signals were hooked.
int cagent_install_fatal_signal_handlers(void);

/// The line the crash handler writes to standard error for `signo`, into `out` (NUL-terminated, cut to
/// `capacity`); returns its length. `sender` is the process that sent the signal (0: a fault inside this
/// one), `address` where it struck, `offset` that address less the executable's start (0: not in the
/// executable), `thread` the thread's name, `commit` the build's commit.
unsigned long cagent_describe_crash(
    char *out, unsigned long capacity, int signo, long sender, unsigned long address, unsigned long offset,
    const char *thread, const char *commit);

/// Catches SIGTERM, SIGINT, SIGHUP and SIGUSR1 from the start of `run` until the daemon's own handling
/// (a dispatch signal source, which replaces this handler) takes each over, and remembers which came:
/// left to their default action, any of them would end the process during start-up. Returns how many
/// signals were hooked. Also ignores SIGPIPE from then on (a closed pipe is an error to handle).
int cagent_catch_early_signals(void);

/// At exit, flushes standard output and, if anything written to it was lost (a full disk, `> /dev/full`,
/// a closed descriptor), says so on standard error and ends the process with 74 (EX_IOERR): a command whose
/// output went nowhere must not exit 0. For the commands, not the daemon. Returns 0 once registered.
int cagent_check_output_at_exit(void);

/// Forgets standard output's error: the command said it already, the check at exit need not again.
void cagent_output_error_reported(void);

/// Whether `signo` arrived while only ``cagent_catch_early_signals`` was catching it; forgets it.
int cagent_take_early_signal(int signo);

/// For a command that must say what it did before it ends (`send`): catches SIGINT and SIGTERM, remembers
/// them for ``cagent_interrupt_signal`` and makes ``cagent_interrupt_descriptor`` readable (whichever thread
/// the kernel picked to take the signal, a `poll` that includes it returns). A signal inherited as ignored
/// stays ignored. Returns how many signals were hooked (0 also when the descriptor cannot be made).
int cagent_catch_interrupts(void);

/// The first SIGINT or SIGTERM caught by ``cagent_catch_interrupts`` (0: none yet).
int cagent_interrupt_signal(void);

/// How many SIGINTs and SIGTERMs were caught in all (a second one cuts a command's last wait short).
int cagent_interrupt_count(void);

/// A descriptor that becomes readable (for good) when the first SIGINT or SIGTERM comes; -1 before
/// ``cagent_catch_interrupts``.
int cagent_interrupt_descriptor(void);

/// Flushes standard output and error, then ends the process by `signo` with its default action, so that
/// the parent (a shell) sees the command killed by the signal it sent. Returns only if the signal does not
/// end the process.
void cagent_end_by_signal(int signo);

/// Asks the kernel to attach the sender's credentials to every datagram `fd` receives (`SO_PASSCRED`).
/// Returns 0 on success, -1 with errno set.
int cagent_enable_credentials(int fd);

/// `recvmsg` of one datagram into `buffer` (`flags` as for `recv`, e.g. `MSG_DONTWAIT | MSG_TRUNC`), with
/// the uid and gid of the process that sent it (`SCM_CREDENTIALS`, which the kernel fills in and a sender
/// cannot forge beyond its own ids; -1 each when none came, i.e. without ``cagent_enable_credentials``).
/// Returns what `recvmsg` does: the datagram's length (its full length with `MSG_TRUNC`), or -1.
long cagent_recv_with_credentials(int fd, void *buffer, unsigned long capacity, int flags, unsigned int *uid, unsigned int *gid);

/// Unmaps the pages of the process's read-only file mappings (code and constants of the binary and its
/// libraries) that hold nothing of their own (no page copied on write): they stay in the page cache and
/// map again, without reading the disk, at their next use. Start-up touches much code it never runs
/// again, and the kernel maps it in 64 KiB windows. Returns the KiB unmapped, or -1 when
/// /proc/self/smaps cannot be read.
long cagent_release_clean_file_pages(void);

/// Runs Swift concurrency's global executor on `threads` threads of our own (`async-N`) instead of
/// libdispatch's worker threads, whose first start arms a pool monitor that wakes the process every second
/// for good. Call it before anything is enqueued on the global executor. Returns the threads started
/// (0: not installed, a hook was already set or no thread could start).
int cagent_install_global_executor(int threads);

#include "cagent_build_info.h"

#endif
