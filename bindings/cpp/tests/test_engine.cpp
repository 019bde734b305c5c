// C++ binding tests, translation unit 1: the engine, errors, completion and callbacks.
// Token ids are llama.cpp's (tests/oracle/llamacpp-greedy.json, SmolLM2-135M-Instruct case "a").
//   test_cpp MODEL.gguf
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"

namespace {

struct Boom : std::runtime_error {
    Boom() : std::runtime_error("boom from the callback") {}
};

void engine_tests(smallmind::Engine &engine) {
    CHECK(smallmind::version() == smallmind_version());
    CHECK(check::contains(engine.info(), "\"architecture\":\"llama\""));

    // "The capital of France is" -> llama.cpp's ids.
    std::string tokens = engine.tokenize(
        R"({"text": "The capital of France is", "parse_special": true})");
    CHECK(check::contains(tokens, "\"ids\":[504,3575,282,4649,314]"));
    CHECK(check::contains(engine.detokenize(R"({"ids": [504,3575,282,4649,314]})"),
                          "\"text\":\"The capital of France is\""));

    // Greedy continuation: llama.cpp's first four tokens, " Paris.\n\n", streamed piece by piece.
    std::string streamed;
    std::string response = engine.complete(
        R"({"prompt_ids": [504,3575,282,4649,314], "max_tokens": 4, "temperature": 0})",
        [&](std::string_view piece) {
            streamed += piece;
            return true;
        });
    CHECK(check::contains(response, "\"token_ids\":[7042,30,198,198]"));
    CHECK(streamed == " Paris.\n\n");

    // Returning false stops after that piece.
    int pieces = 0;
    response = engine.complete(R"({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})",
                               [&](std::string_view) { return ++pieces < 2; });
    CHECK(pieces == 2);
    CHECK(check::contains(response, "\"finish_reason\":\"cancelled\""));

    // An exception in the callback stops generation and comes out of complete() unchanged.
    int calls = 0;
    bool caught = false;
    try {
        engine.complete(R"({"prompt": "Once upon a time", "max_tokens": 8})", [&](std::string_view) -> bool {
            ++calls;
            throw Boom();
        });
    } catch (const Boom &) {
        caught = true;
    }
    CHECK(caught);
    CHECK(calls == 1);

    // Errors carry the status and the library's message.
    CHECK_THROWS_STATUS(engine.tokenize(R"({"txt": "x"})"), SMALLMIND_ERR_INVALID_JSON);
    CHECK_THROWS_STATUS(engine.complete("not json"), SMALLMIND_ERR_INVALID_JSON);
    CHECK_THROWS_STATUS(smallmind::Engine(R"({"model_path": "/nonexistent/model.gguf"})"),
                        SMALLMIND_ERR_IO);
    try {
        smallmind::Engine missing(R"({"model_path": "/nonexistent/model.gguf"})");
        CHECK(false);
    } catch (const smallmind::Error &e) {
        CHECK(check::contains(e.what(), "/nonexistent/model.gguf"));
    }
}

void move_tests(std::string options) {
    smallmind::Engine a(options);
    smallmind::Engine b(std::move(a));
    CHECK(!a && b);
    CHECK_THROWS_STATUS(a.info(), SMALLMIND_ERR_INVALID_ARGUMENT);  // moved-from: empty
    smallmind::Engine c(options);
    c = std::move(b);  // frees c's own engine, takes b's
    CHECK(!b && c);
    CHECK(check::contains(c.info(), "\"architecture\""));
    std::vector<smallmind::Engine> engines;
    engines.push_back(std::move(c));
    CHECK(check::contains(engines.back().info(), "\"architecture\""));
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    std::string options = std::string(R"({"threads": 2, "context_length": 1024, "model_path": ")") +
                          argv[1] + "\"}";
    try {
        smallmind::Engine engine(options);
        engine_tests(engine);
        chat_tests(engine);
        move_tests(options);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "FAIL: uncaught %s\n", e.what());
        return 1;
    }
    std::printf("cpp bindings: %d passed, %d failed\n", check::passed(), check::failed());
    return check::failed() == 0 ? 0 : 1;
}
