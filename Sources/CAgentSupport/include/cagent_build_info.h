#ifndef DEFINITE_AGENT_CAGENT_BUILD_INFO_H
#define DEFINITE_AGENT_CAGENT_BUILD_INFO_H

/// The commit the binary was built from: `-Xcc -DAGENT_BUILD_COMMIT='"abc1234"'` at build time (`make build`
/// passes `git describe --always --dirty`), else "unknown".
const char *cagent_build_commit(void);

/// The day the binary was built (UTC, "YYYY-MM-DD"): `-Xcc -DAGENT_BUILD_DATE='"2026-01-31"'` at build time
/// (`make build` passes it, from SOURCE_DATE_EPOCH when set), else "unknown".
const char *cagent_build_date(void);

#endif
