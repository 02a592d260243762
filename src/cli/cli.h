/*
 * cli.h — what the `kiln` command's parts share: the one-line error report, option
 * matching, shape strings, byte and time formatting. The commands themselves are
 * cli_trace (trace.c), cli_run (run.c) and cli_inspect (main.c).
 */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include "kiln.h"

#include <stddef.h>
#include <stdint.h>

/* Exit statuses: 0 success, 1 failure, 2 bad command line. */
#define CLI_FAIL  1
#define CLI_USAGE 2

/* Prints "kiln: error: <message>" as exactly one line on stderr; returns CLI_FAIL. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same for a bad command line (adds a pointer to `kiln CMD --help`); returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A failed library call: "kiln: error: KILN_ERR_X: <kiln_last_error() or what>". */
int cli_lib_error(kiln_status s, const char *what);

/* Option matching for argv[*i]. A flag matches only itself. A valued option matches
 * "NAME VALUE" (consuming the next argument) or "NAME=VALUE".
 * Returns 1 and sets *val on a match, 0 if argv[*i] is not this option, and -1 (after
 * printing the usage error) when the value is missing. */
int cli_flag(const char *arg, const char *name);
int cli_option(int argc, char **argv, int *i, const char *name, const char **val,
               const char *cmd);

/* Parses "1x3x224x224" (',' also separates): 1..KILN_MAX_DIMS positive dimensions whose
 * product fits in int64. On error returns 0 with a reason in err. */
int cli_parse_dims(const char *s, int *ndim, int64_t *shape, char *err, size_t errn);
/* "f32 1x3x224x224" (a dynamic dimension prints as '?', a 0-d shape as "scalar"). */
const char *cli_spec_str(const kiln_tensor *t, char *buf, size_t n);
const char *cli_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);
/* "12.3 KiB" */
const char *cli_bytes_str(uint64_t b, char *buf, size_t n);
/* Milliseconds on a monotonic clock. */
double cli_now_ms(void);

int cli_trace(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_load_bench(int argc, char **argv);

#endif
