#include "CAgentSupport.h"

// <features.h> defines __GLIBC__; without a libc header first the test below was always false and the
// tuning silently did nothing.
#include <features.h>

#if defined(__GLIBC__)
#include <malloc.h>
int cagent_tune_malloc(int mmap_threshold, int arena_max) {
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) && mallopt(M_ARENA_MAX, arena_max);
}
int cagent_trim_heap(void) {
    return malloc_trim(0);
}
#else
int cagent_trim_heap(void) {
    return 0;
}
int cagent_tune_malloc(int mmap_threshold, int arena_max) {
    (void)mmap_threshold;
    (void)arena_max;
    return 0;
}
#endif
