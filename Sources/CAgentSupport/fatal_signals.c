#define _GNU_SOURCE
#include "CAgentSupport.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

/* Where the linker put the executable's code (its first byte, and the end of its text). */
extern const char __executable_start[];
extern const char etext[];

/* The crash signals the Swift runtime's backtracer handles. */
static const int fatal_signals[] = { SIGQUIT, SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGSEGV, SIGTRAP };
#define FATAL_SIGNAL_COUNT (sizeof(fatal_signals) / sizeof(fatal_signals[0]))
static struct sigaction previous_actions[FATAL_SIGNAL_COUNT];

static int slot_of(int signo) {
    for (unsigned i = 0; i < FATAL_SIGNAL_COUNT; i++) {
        if (fatal_signals[i] == signo) return (int)i;
    }
    return -1;
}

/* Ends the process the way `signo` asks. The signal is blocked while a handler runs, so it is delivered,
   with the default action, as soon as the handler returns. */
static void die_with(int signo) {
    struct sigaction fallback;
    memset(&fallback, 0, sizeof(fallback));
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(signo, &fallback, NULL);
    raise(signo);
}

/* A bounded writer of text into a buffer, async-signal-safe (no locale, no allocation). */
typedef struct {
    char *out;
    size_t capacity;
    size_t used;
} Line;

static void put(Line *line, const char *text) {
    while (*text != '\0' && line->used + 1 < line->capacity) line->out[line->used++] = *text++;
    if (line->capacity > 0) line->out[line->used] = '\0';
}

static void put_number(Line *line, unsigned long value, unsigned base) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = "0123456789abcdef"[value % base];
        value /= base;
    } while (value != 0 && count < (int)sizeof(digits));
    char text[28];
    int at = 0;
    if (base == 16) {
        text[at++] = '0';
        text[at++] = 'x';
    }
    while (count > 0) text[at++] = digits[--count];
    text[at] = '\0';
    put(line, text);
}

static const char *signal_name(int signo) {
    switch (signo) {
    case SIGQUIT: return "SIGQUIT";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGTRAP: return "SIGTRAP";
    default: return "a crash signal";
    }
}

/* What a signal raised inside the process usually means. */
static const char *fault_cause(int signo) {
    switch (signo) {
    case SIGBUS: return " (a bad memory access: a file mapped into memory shrank, or the disk failed)";
    case SIGFPE: return " (an arithmetic fault)";
    case SIGILL: return " (a failed runtime check: an overflow, a forced unwrap of nil, an index out of range)";
    case SIGSEGV: return " (a bad memory access)";
    case SIGTRAP: return " (a failed runtime check)";
    case SIGABRT: return " (an abort: a failed check in a library)";
    default: return "";
    }
}

unsigned long cagent_describe_crash(
    char *out, unsigned long capacity, int signo, long sender, unsigned long address, unsigned long offset,
    const char *thread, const char *commit) {
    Line line = { out, capacity, 0 };
    if (capacity > 0) out[0] = '\0';
    if (sender > 0) {
        put(&line, "definite-agent: ended by ");
        put(&line, signal_name(signo));
        put(&line, " from process ");
        put_number(&line, (unsigned long)sender, 10);
        if (signo == SIGABRT) put(&line, " (systemd sends it when the watchdog expires; or kill -ABRT)");
        put(&line, "\n");
        return line.used;
    }
    put(&line, "definite-agent crashed: ");
    put(&line, signal_name(signo));
    put(&line, fault_cause(signo));
    put(&line, " in thread \"");
    put(&line, thread);
    put(&line, "\" at ");
    put_number(&line, address, 16);
    if (offset != 0) {
        put(&line, ", offset ");
        put_number(&line, offset, 16);
        put(&line, " in the executable (commit ");
        put(&line, commit);
        put(&line, "; `addr2line -f -C -e <its unstripped binary> ");
        put_number(&line, offset, 16);
        put(&line, "` names the function)");
    } else {
        put(&line, ", outside the executable (a library; commit ");
        put(&line, commit);
        put(&line, ")");
    }
    put(&line, ". Please report this line and the log before it.\n");
    return line.used;
}

/* The address the signal interrupted, from the context the kernel passed; 0 where unknown. */
static unsigned long interrupted_address(void *context) {
    if (context == NULL) return 0;
    const ucontext_t *state = (const ucontext_t *)context;
#if defined(__x86_64__)
    return (unsigned long)state->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (unsigned long)state->uc_mcontext.pc;
#else
    (void)state;
    return 0;
#endif
}

/* One line on standard error (the journal, under systemd, where the runtime's backtracer is off): which
   signal, from whom or where. Async-signal-safe: prctl, getpid and write only. */
static void report(int signo, siginfo_t *info, void *context, int external) {
    char thread[17] = "?";
    if (prctl(PR_GET_NAME, thread, 0, 0, 0) != 0) strcpy(thread, "?");
    thread[16] = '\0';
    unsigned long address = interrupted_address(context);
    unsigned long start = (unsigned long)__executable_start, end = (unsigned long)etext;
    unsigned long offset = address >= start && address < end ? address - start : 0;
    long sender = external && info != NULL && info->si_pid > 0 ? (long)info->si_pid : 0;
    char text[512];
    size_t length = cagent_describe_crash(text, sizeof(text), signo, sender, address, offset, thread, cagent_build_commit());
    size_t written = 0;
    while (written < length) {
        ssize_t n = write(STDERR_FILENO, text + written, length - written);
        if (n <= 0 && errno != EINTR) break;
        if (n > 0) written += (size_t)n;
    }
}

/* Async-signal-safe: only sigaction, waitpid, nanosleep, raise, write, prctl and the previous handler are
   called. */
static void on_fatal_signal(int signo, siginfo_t *info, void *context) {
    int slot = slot_of(signo);
    int external = info != NULL && (info->si_code == SI_USER || info->si_code == SI_TKILL || info->si_code == SI_QUEUE)
        && info->si_pid != getpid();
    report(signo, info, context, external);
    if (external && signo != SIGABRT) {
        /* Sent from outside, and not the watchdog's signal: no report, just the default action (the
           backtracer's report of a signal like SIGSEGV sent with kill(2) gets cut short, and its helper
           lingers with our sockets). */
        die_with(signo);
        return;
    }
    if (slot >= 0) {
        struct sigaction *previous = &previous_actions[slot];
        if (previous->sa_flags & SA_SIGINFO) {
            if (previous->sa_sigaction != NULL) previous->sa_sigaction(signo, info, context);
        } else if (previous->sa_handler != SIG_DFL && previous->sa_handler != SIG_IGN) {
            previous->sa_handler(signo);
        } else {
            external = 1; /* nothing to chain to: behave as the default action */
        }
    }
    if (external) {
        /* SIGABRT from outside (systemd's watchdog): the previous handler (the backtracer) printed where
           every thread was and returned, as it does for a signal another process sent.
           Its helper process (swift-backtrace) may still be writing the report, and it holds copies of
           our descriptors, listening sockets included: let it finish (up to 10 s) so that the report is
           whole and a restarted daemon can bind its sockets. The daemon has no other children. */
        struct timespec pause = { 0, 20 * 1000 * 1000 };
        for (int waited = 0; waited < 500; waited++) {
            pid_t child = waitpid(-1, NULL, WNOHANG | __WALL);
            if (child < 0 && errno != EINTR) break; /* no children left */
            if (child == 0) nanosleep(&pause, NULL);
        }
        die_with(signo);
    }
}

int cagent_install_fatal_signal_handlers(void) {
    int installed = 0;
    for (unsigned i = 0; i < FATAL_SIGNAL_COUNT; i++) {
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        if (sigaction(fatal_signals[i], NULL, &previous_actions[i]) != 0) continue;
        if (!(previous_actions[i].sa_flags & SA_SIGINFO) &&
            (previous_actions[i].sa_handler == SIG_IGN)) continue; /* respect an inherited SIG_IGN */
        action.sa_sigaction = on_fatal_signal;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK | (previous_actions[i].sa_flags & SA_RESTART);
        sigemptyset(&action.sa_mask);
        if (sigaction(fatal_signals[i], &action, NULL) == 0) installed++;
    }
    return installed;
}
