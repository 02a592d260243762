/* fuzz_onnx.c — libFuzzer target: kf_onnx (see fuzz_entry.h). */
#include "fuzz_entry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) { return kf_onnx(data, n); }
