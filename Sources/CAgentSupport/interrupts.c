#define _GNU_SOURCE
#include "CAgentSupport.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The first SIGINT or SIGTERM that came (0: none yet), and how many came in all. */
static volatile sig_atomic_t first_interrupt = 0;
static volatile sig_atomic_t interrupts = 0;
/* A byte is written to [1] for each signal: any thread may take the signal, so the thread that waits
   (in poll) learns of it by [0] becoming readable rather than by an interrupted system call. */
static int interrupt_pipe[2] = { -1, -1 };

static void note_interrupt(int signo) {
    int saved = errno;
    if (first_interrupt == 0) first_interrupt = signo;
    interrupts = interrupts + 1;
    if (interrupt_pipe[1] >= 0) (void)!write(interrupt_pipe[1], "!", 1);
    errno = saved;
}

int cagent_catch_interrupts(void) {
    static const int signals[] = { SIGINT, SIGTERM };
    if (interrupt_pipe[0] < 0 && pipe2(interrupt_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return 0;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = note_interrupt;
    /* No SA_RESTART: a blocking read, poll or sleep returns EINTR, and the command looks at what came. */
    action.sa_flags = 0;
    sigemptyset(&action.sa_mask);
    for (unsigned i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) sigaddset(&action.sa_mask, signals[i]);
    int hooked = 0;
    for (unsigned i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        struct sigaction previous;
        if (sigaction(signals[i], NULL, &previous) != 0) continue;
        /* A signal the parent set to be ignored (`nohup`, a background job of a non-interactive shell) stays so. */
        if (previous.sa_handler == SIG_IGN) continue;
        if (sigaction(signals[i], &action, NULL) == 0) hooked++;
    }
    return hooked;
}

int cagent_interrupt_signal(void) { return first_interrupt; }

int cagent_interrupt_count(void) { return interrupts; }

int cagent_interrupt_descriptor(void) { return interrupt_pipe[0]; }

void cagent_end_by_signal(int signo) {
    fflush(stdout);
    fflush(stderr);
    signal(signo, SIG_DFL);
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, signo);
    sigprocmask(SIG_UNBLOCK, &only, NULL);
    raise(signo);
}
