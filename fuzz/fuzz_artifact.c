/* fuzz_artifact.c — libFuzzer target: kf_artifact (see fuzz_entry.h). */
#include "fuzz_entry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) { return kf_artifact(data, n); }
