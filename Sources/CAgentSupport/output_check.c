#include "CAgentSupport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check_output(void) {
    errno = 0;
    int flushed = fflush(stdout);
    int error = errno;
    if (flushed == 0 && !ferror(stdout)) return;
    if (error != 0) {
        fprintf(stderr, "error: the output could not be written: %s\n", strerror(error));
    } else {
        fprintf(stderr, "error: the output could not be written\n");
    }
    _exit(74);
}

int cagent_check_output_at_exit(void) {
    return atexit(check_output);
}

void cagent_output_error_reported(void) {
    clearerr(stdout);
}
