// A tiny assertion harness for the C++ binding tests (shared by both translation units).
#ifndef SMALLMIND_CPP_CHECK_HPP
#define SMALLMIND_CPP_CHECK_HPP

#include <cstdio>
#include <string>

#include "smallmind.hpp"

namespace check {
inline int &passed() { static int n = 0; return n; }
inline int &failed() { static int n = 0; return n; }
inline void record(bool ok, const char *file, int line, const char *what) {
    if (ok) {
        ++passed();
    } else {
        ++failed();
        std::fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what);
    }
}
inline bool contains(const std::string &haystack, const std::string &needle) {
    return haystack.find(needle) != std::string::npos;
}
}  // namespace check

#define CHECK(cond) check::record((cond), __FILE__, __LINE__, #cond)

/// Runs `body`, which must throw smallmind::Error with `expected`.
#define CHECK_THROWS_STATUS(body, expected)                                                \
    do {                                                                                   \
        bool thrown_ = false;                                                              \
        try {                                                                              \
            body;                                                                          \
        } catch (const smallmind::Error &e_) {                                             \
            thrown_ = e_.status() == (expected) && std::string(e_.what()).size() > 0;      \
        }                                                                                  \
        check::record(thrown_, __FILE__, __LINE__, #body " throws " #expected);            \
    } while (0)

// Defined in test_chat.cpp (the second translation unit).
void chat_tests(smallmind::Engine &engine);

#endif
