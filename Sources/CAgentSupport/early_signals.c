#include "CAgentSupport.h"

#include <signal.h>
#include <string.h>

/* Bit (1 << signo) for each operator signal that arrived before the daemon's own handling took it over. */
static volatile sig_atomic_t early_signals = 0;

static void remember(int signo) {
    early_signals |= (1 << signo);
}

int cagent_catch_early_signals(void) {
    static const int signals[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = remember;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    /* A write to a closed pipe or socket is an error to handle, never a reason to die (before the first
       socket, SwiftNIO has not set this yet: a stderr pipe whose reader went away killed the start-up). */
    signal(SIGPIPE, SIG_IGN);
    int hooked = 0;
    for (unsigned i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        if (sigaction(signals[i], &action, NULL) == 0) hooked++;
    }
    return hooked;
}

int cagent_take_early_signal(int signo) {
    int mask = 1 << signo;
    int seen = (early_signals & mask) != 0;
    early_signals &= ~mask;
    return seen;
}
