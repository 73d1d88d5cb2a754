#ifndef DEFINITE_AGENT_CAGENTSUPPORT_H
#define DEFINITE_AGENT_CAGENTSUPPORT_H

/// Fixes glibc's mmap threshold (disabling its dynamic growth) and caps the number of malloc arenas.
/// Returns 0 where glibc's mallopt is unavailable.
int cagent_tune_malloc(int mmap_threshold, int arena_max);

#endif
