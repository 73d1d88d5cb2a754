#ifndef DEFINITE_AGENT_CFUZZERDRIVER_H
#define DEFINITE_AGENT_CFUZZERDRIVER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry point for programs that keep their own `main` (LLVM 13+). Linked only when the
/// fuzzer is built with `-sanitize=fuzzer` (see Tests/Fuzz/run); never called otherwise.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
