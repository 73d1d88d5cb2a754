#include "cagent_build_info.h"

#ifndef AGENT_BUILD_COMMIT
#define AGENT_BUILD_COMMIT "unknown"
#endif

#ifndef AGENT_BUILD_DATE
#define AGENT_BUILD_DATE "unknown"
#endif

const char *cagent_build_commit(void) { return AGENT_BUILD_COMMIT; }

const char *cagent_build_date(void) { return AGENT_BUILD_DATE; }
