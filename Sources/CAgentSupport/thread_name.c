#define _GNU_SOURCE
#include "CAgentSupport.h"

#include <pthread.h>

int cagent_name_current_thread(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}
