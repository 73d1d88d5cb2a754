#define _GNU_SOURCE
#include "CAgentSupport.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

/* Async-signal-safe: only sigaction, waitpid, nanosleep, raise and the previous handler are called. */
static void on_fatal_signal(int signo, siginfo_t *info, void *context) {
    int slot = slot_of(signo);
    int external = info != NULL && (info->si_code == SI_USER || info->si_code == SI_TKILL || info->si_code == SI_QUEUE)
        && info->si_pid != getpid();
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
