#ifndef DEFINITE_AGENT_CSQLITE_SHIM_H
#define DEFINITE_AGENT_CSQLITE_SHIM_H
#include <sqlite3.h>

/// SQLITE_TRANSIENT is a macro casting -1 to a function pointer, which Swift cannot import.
/// Bind with SQLITE_STATIC only when the bytes outlive the statement step.
static inline sqlite3_destructor_type csqlite_transient(void) { return SQLITE_TRANSIENT; }
static inline sqlite3_destructor_type csqlite_static(void) { return SQLITE_STATIC; }
#endif
