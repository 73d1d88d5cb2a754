#ifndef DEFINITE_AGENT_CLIBDEFLATE_H
#define DEFINITE_AGENT_CLIBDEFLATE_H
// libdeflate (Debian: libdeflate-dev): whole-buffer DEFLATE, gzip and zlib, faster than zlib at the same
// level with output as small or smaller. The agent compresses request bodies with it.
#include <libdeflate.h>
#endif
