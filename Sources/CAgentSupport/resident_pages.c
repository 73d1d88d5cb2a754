#define _GNU_SOURCE
#include "CAgentSupport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* One read-only, private, file-backed mapping that holds no page of its own (nothing copied on write). */
struct clean_mapping {
    unsigned long start, end;
    long rss_kib;
};

long cagent_release_clean_file_pages(void) {
    FILE *smaps = fopen("/proc/self/smaps", "re");
    if (smaps == NULL) return -1;
    struct clean_mapping *found = NULL;
    size_t count = 0, capacity = 0;
    /* The mapping being read: a candidate until one of its fields shows a page of its own. */
    int candidate = 0;
    struct clean_mapping current = {0, 0, 0};
    char *line = NULL;
    size_t length = 0;
    for (;;) {
        ssize_t read = getline(&line, &length, smaps);
        unsigned long start, end, offset, inode;
        char perms[8], device[16];
        int header = read > 0 && sscanf(line, "%lx-%lx %7s %lx %15s %lu", &start, &end, perms, &offset, device, &inode) == 6;
        if (read <= 0 || header) {
            if (candidate) {
                if (count == capacity) {
                    capacity = capacity ? capacity * 2 : 64;
                    struct clean_mapping *grown = realloc(found, capacity * sizeof *found);
                    if (grown == NULL) break;
                    found = grown;
                }
                found[count++] = current;
            }
            if (read <= 0) break;
            /* r-x or r--, private, backed by a file (inode 0: anonymous, the stack, the vDSO). */
            candidate = perms[0] == 'r' && perms[1] == '-' && perms[3] == 'p' && inode != 0;
            current = (struct clean_mapping){start, end, 0};
            continue;
        }
        long kib;
        if (sscanf(line, "Rss: %ld kB", &kib) == 1) current.rss_kib = kib;
        else if ((sscanf(line, "Anonymous: %ld kB", &kib) == 1 || sscanf(line, "Private_Dirty: %ld kB", &kib) == 1
                  || sscanf(line, "Swap: %ld kB", &kib) == 1) && kib != 0)
            candidate = 0;
    }
    free(line);
    fclose(smaps);
    long released = 0;
    for (size_t i = 0; i < count; i++) {
        if (found[i].rss_kib == 0) continue;
        if (madvise((void *)found[i].start, found[i].end - found[i].start, MADV_DONTNEED) == 0) released += found[i].rss_kib;
    }
    free(found);
    return released;
}
