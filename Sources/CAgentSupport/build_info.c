#include "cagent_build_info.h"

#ifndef AGENT_BUILD_COMMIT
#define AGENT_BUILD_COMMIT "unknown"
#endif

const char *cagent_build_commit(void) { return AGENT_BUILD_COMMIT; }
