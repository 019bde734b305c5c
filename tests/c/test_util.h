/* A tiny assertion harness for the C API tests: counts checks, prints failures, and ends
 * with the line "N passed, M failed". */
#ifndef SMALLMIND_TEST_UTIL_H
#define SMALLMIND_TEST_UTIL_H

#include <stdio.h>
#include <string.h>

static int tests_passed = 0;
static int tests_failed = 0;

#define CHECK(cond, what)                                                        \
    do {                                                                         \
        if (cond) {                                                              \
            tests_passed++;                                                      \
        } else {                                                                 \
            tests_failed++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s (%s)\n", __FILE__, __LINE__, what, #cond); \
            const char *err_ = smallmind_last_error();                           \
            if (err_) fprintf(stderr, "     last error: %s\n", err_);           \
        }                                                                        \
    } while (0)

#define CHECK_STATUS(call, expected)                                             \
    do {                                                                         \
        smallmind_status st_ = (call);                                           \
        if (st_ == (expected)) {                                                 \
            tests_passed++;                                                      \
        } else {                                                                 \
            tests_failed++;                                                      \
            const char *err_ = smallmind_last_error();                           \
            fprintf(stderr, "FAIL %s:%d: %s returned %d, expected %d (%s)\n", __FILE__, \
                    __LINE__, #call, (int)st_, (int)(expected), err_ ? err_ : "no message"); \
        }                                                                        \
    } while (0)

static int contains(const char *haystack, const char *needle) {
    return haystack != NULL && needle != NULL && strstr(haystack, needle) != NULL;
}

static int finish_tests(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, tests_passed, tests_failed);
    return tests_failed == 0 ? 0 : 1;
}

#endif
