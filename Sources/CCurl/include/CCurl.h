#ifndef DEFINITE_AGENT_CCURL_H
#define DEFINITE_AGENT_CCURL_H
#include <curl/curl.h>

// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call.
// One typed wrapper per argument kind, as swift-corelibs-foundation does.

CURLcode ccurl_easy_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode ccurl_easy_setopt_ptr(CURL *handle, CURLoption option, const void *value);
CURLcode ccurl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
CURLcode ccurl_easy_setopt_write_function(CURL *handle, size_t (*fn)(char *, size_t, size_t, void *));
CURLcode ccurl_easy_setopt_header_function(CURL *handle, size_t (*fn)(char *, size_t, size_t, void *));
CURLcode ccurl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode ccurl_easy_getinfo_double(CURL *handle, CURLINFO info, double *value);
CURLcode ccurl_easy_getinfo_ptr(CURL *handle, CURLINFO info, void **value);

// curl_multi_setopt is variadic too; CURLMsg holds a union: one function reads a finished transfer.
CURLMcode ccurl_multi_setopt_long(CURLM *multi, CURLMoption option, long value);
/// The next finished transfer: returns 1 and sets `easy` and `result`, or 0 when there is none.
int ccurl_multi_next_done(CURLM *multi, CURL **easy, CURLcode *result);

#endif
