#ifndef DEFINITE_AGENT_CFUZZERDRIVER_H
#define DEFINITE_AGENT_CFUZZERDRIVER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry point for programs that keep their own `main` (libclang_rt.fuzzer_no_main, LLVM 13+).
/// Linked only into the fuzzing build (Tests/Fuzz/run); never referenced otherwise.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
