// C++ binding tests, translation unit 2: chats (send, stop, cancel from a thread, history,
// export/import, moves). Including smallmind.hpp in two units checks it links without
// duplicate symbols.
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <utility>

#include "check.hpp"

namespace {

const char *const kHi = R"({"messages": [{"role": "user", "content": "Hi"}]})";

}  // namespace

void chat_tests(smallmind::Engine &engine) {
    smallmind::Chat chat = engine.chat(R"({"system_prompt": "Be brief.", "temperature": 0, "max_tokens": 6})");

    std::string streamed;
    std::string response = chat.send(kHi, [&](std::string_view piece) {
        streamed += piece;
        return true;
    });
    CHECK(check::contains(response, "\"role\":\"assistant\""));
    CHECK(!streamed.empty());
    std::string history = chat.history();
    // The system_prompt option is rendered, never recorded in the history.
    CHECK(!check::contains(history, R"("role":"system")"));
    CHECK(check::contains(chat.render(kHi), "Be brief."));
    CHECK(check::contains(history, R"("content":"Hi")") && check::contains(history, R"("role":"user")"));

    // Export, import: the same history, and the same prompt for the next turn.
    std::string exported = chat.export_json();
    CHECK(check::contains(exported, "\"format\":\"smallmind.chat\""));
    smallmind::Chat restored = engine.import_chat(exported);
    CHECK(restored.history() == history);
    const char *next = R"({"messages": [{"role": "user", "content": "And then?"}]})";
    CHECK(restored.render(next) == chat.render(next));

    // Cancel from another thread while the callback holds the first piece.
    chat.reset();
    CHECK(check::contains(chat.history(), "\"messages\":[]"));
    std::atomic<bool> started{false}, cancelled{false};
    int pieces = 0;
    std::thread canceller([&] {
        while (!started.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        chat.cancel();
        cancelled.store(true);
    });
    response = chat.send(R"({"messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 64})",
                         [&](std::string_view) {
                             if (++pieces == 1) {
                                 started.store(true);
                                 while (!cancelled.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                             }
                             return true;
                         });
    canceller.join();
    CHECK(check::contains(response, "\"finish_reason\":\"cancelled\""));
    CHECK(pieces <= 2);
    CHECK(check::contains(chat.history(), "\"messages\":[]"));  // a cancelled turn is not kept

    // Errors and moves.
    CHECK_THROWS_STATUS(chat.send(R"({"messages": [], "max_tokenz": 1})"), SMALLMIND_ERR_INVALID_JSON);
    CHECK_THROWS_STATUS(engine.chat(R"({"context_policy": {"type": "nope"}})"), SMALLMIND_ERR_INVALID_JSON);
    smallmind::Chat moved(std::move(chat));
    CHECK(!chat && moved);
    CHECK_THROWS_STATUS(chat.history(), SMALLMIND_ERR_INVALID_ARGUMENT);
    moved = std::move(restored);
    CHECK(check::contains(moved.history(), R"("content":"Hi")"));
}
