#ifndef DEFINITE_AGENT_CAGENTSUPPORT_H
#define DEFINITE_AGENT_CAGENTSUPPORT_H

/// Fixes glibc's mmap threshold (disabling its dynamic growth) and caps the number of malloc arenas.
/// Returns 0 where glibc's mallopt is unavailable.
int cagent_tune_malloc(int mmap_threshold, int arena_max);

/// Makes crash signals sent by another process (`kill -ABRT`, systemd's watchdog) end the process.
///
/// The Swift runtime's backtracer handles SIGABRT, SIGSEGV and the other crash signals; for a fault
/// inside the process it prints a backtrace and the process dies, but for a signal sent with kill(2)
/// its handler returns and the process carries on. This chains in front of whatever handler is
/// installed: faults inside the process are reported as before; a SIGABRT from another process (what
/// systemd sends when the watchdog expires) is reported, then ends the process; any other crash signal
/// from another process ends it at once with its default action. Returns how many signals were hooked.
int cagent_install_fatal_signal_handlers(void);

#include "cagent_build_info.h"

#endif
