#ifndef DEFINITE_AGENT_CZLIB_H
#define DEFINITE_AGENT_CZLIB_H
#include <zlib.h>

/// deflateInit2 is a macro; Swift needs a function. windowBits 16+15 selects the gzip wrapper.
static inline int czlib_deflate_init_gzip(z_streamp stream, int level) {
    return deflateInit2(stream, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
}
/// inflateInit2 for gzip data only (16 + MAX_WBITS): a zlib stream is not gzip.
static inline int czlib_inflate_init_gzip(z_streamp stream) {
    return inflateInit2(stream, 16 + MAX_WBITS);
}
#endif
