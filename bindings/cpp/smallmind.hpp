// smallmind.hpp: header-only C++17 RAII wrapper over the smallmind C API (smallmind.h).
//
//     smallmind::Engine engine(R"({"model_path": "model.gguf"})");
//     smallmind::Chat chat = engine.chat(R"({"system_prompt": "Be brief."})");
//     std::string response = chat.send(R"({"messages": [{"role": "user", "content": "Hi"}]})");
//
// Requests and responses are the C API's JSON documents, passed through unchanged, so fields the
// library gains need no change here. Every failure throws smallmind::Error (its status() is the
// C status, what() the library's message). Handles are move-only; a moved-from handle is empty
// and calls on it throw Error(SMALLMIND_ERR_INVALID_ARGUMENT). An exception thrown by a token
// callback stops generation and is rethrown from the call that ran it; it never unwinds through
// the library's frames.
#ifndef SMALLMIND_HPP
#define SMALLMIND_HPP

#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "smallmind.h"

namespace smallmind {

/// A failed smallmind call: `status()` is the C status code, `what()` the library's message.
class Error : public std::runtime_error {
public:
    Error(smallmind_status status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    smallmind_status status() const noexcept { return status_; }

private:
    smallmind_status status_;
};

/// Receives each generated piece (whole UTF-8 characters); return false to stop the reply.
using TokenCallback = std::function<bool(std::string_view)>;

namespace detail {

inline void check(smallmind_status status) {
    if (status != SMALLMIND_OK) {
        const char *message = smallmind_last_error();  // this thread's, read at once
        throw Error(status, message != nullptr ? message : "smallmind call failed");
    }
}

/// Takes ownership of a string the library returned.
inline std::string take(char *s) {
    std::unique_ptr<char, void (*)(char *)> owned(s, smallmind_string_free);
    return s != nullptr ? std::string(s) : std::string();
}

/// The per-call state behind the C token callback: the user's function and the exception it
/// threw, if any (kept here and rethrown on the caller once the C call has returned).
struct TokenSink {
    const TokenCallback *on_token;
    std::exception_ptr error;
};

inline int32_t on_token_trampoline(void *user_data, const char *text, size_t len) noexcept {
    auto *sink = static_cast<TokenSink *>(user_data);
    if (sink->error) {
        return 1;
    }
    try {
        return (*sink->on_token)(std::string_view(text, len)) ? 0 : 1;
    } catch (...) {
        sink->error = std::current_exception();
        return 1;
    }
}

/// Runs `call(callbacks_or_null, &out)` and returns the response, rethrowing a callback's
/// exception before a status error (the exception is why the call stopped).
template <typename Call>
std::string with_token_callback(const TokenCallback &on_token, Call call) {
    TokenSink sink{&on_token, nullptr};
    smallmind_chat_callbacks callbacks{};
    const smallmind_chat_callbacks *cb = nullptr;
    if (on_token) {
        callbacks.user_data = &sink;
        callbacks.on_token = on_token_trampoline;
        cb = &callbacks;
    }
    char *out = nullptr;
    smallmind_status status = call(cb, &out);
    std::string response = take(out);
    if (sink.error) {
        std::rethrow_exception(sink.error);
    }
    check(status);
    return response;
}

}  // namespace detail

/// The library version ("0.1.0").
inline std::string version() { return smallmind_version(); }

class Engine;

/// A conversation with its history and its own KV cache. One call at a time; cancel() may be
/// called from any thread.
class Chat {
public:
    Chat(Chat &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Chat &operator=(Chat &&other) noexcept {
        if (this != &other) {
            smallmind_chat_free(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    Chat(const Chat &) = delete;
    Chat &operator=(const Chat &) = delete;
    ~Chat() { smallmind_chat_free(handle_); }

    /// Sends a request ({"messages": [...], sampling fields, ...}) and returns the response JSON.
    std::string send(const std::string &request_json, const TokenCallback &on_token = {}) {
        return detail::with_token_callback(on_token, [&](const smallmind_chat_callbacks *cb, char **out) {
            return smallmind_chat_send(handle_, request_json.c_str(), cb, out);
        });
    }

    /// Stops the running send (if any) within one token. Any thread.
    void cancel() { detail::check(smallmind_chat_cancel(handle_)); }

    /// Forgets the history and the KV cache.
    void reset() { detail::check(smallmind_chat_reset(handle_)); }

    /// {"session_id", "messages": [...]}.
    std::string history() const {
        char *out = nullptr;
        detail::check(smallmind_chat_history(handle_, &out));
        return detail::take(out);
    }

    /// The session as a versioned JSON envelope (Engine::import_chat restores it).
    std::string export_json() const {
        char *out = nullptr;
        detail::check(smallmind_chat_export(handle_, &out));
        return detail::take(out);
    }

    /// The prompt a send with this request would give the model, without generating.
    std::string render(const std::string &request_json) const {
        char *out = nullptr;
        detail::check(smallmind_chat_render(handle_, request_json.c_str(), &out));
        return detail::take(out);
    }

    smallmind_chat *get() const noexcept { return handle_; }
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    friend class Engine;
    explicit Chat(smallmind_chat *handle) noexcept : handle_(handle) {}
    smallmind_chat *handle_;
};

/// A loaded model, shared by any number of threads and chats (which keep it alive).
class Engine {
public:
    /// Loads a model: {"model_path" (required), "threads", "context_length", ...}.
    explicit Engine(const std::string &options_json) : handle_(nullptr) {
        detail::check(smallmind_engine_create(options_json.c_str(), nullptr, &handle_));
    }
    Engine(Engine &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Engine &operator=(Engine &&other) noexcept {
        if (this != &other) {
            smallmind_engine_free(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;
    ~Engine() { smallmind_engine_free(handle_); }

    /// Model facts as JSON.
    std::string info() const {
        char *out = nullptr;
        detail::check(smallmind_engine_info(handle_, &out));
        return detail::take(out);
    }

    /// {"text", "add_special", "parse_special"} -> {"ids", "pieces"}.
    std::string tokenize(const std::string &request_json) const {
        char *out = nullptr;
        detail::check(smallmind_engine_tokenize(handle_, request_json.c_str(), &out));
        return detail::take(out);
    }

    /// {"ids"} -> {"text"}.
    std::string detokenize(const std::string &request_json) const {
        char *out = nullptr;
        detail::check(smallmind_engine_detokenize(handle_, request_json.c_str(), &out));
        return detail::take(out);
    }

    /// Raw completion: {"prompt" | "prompt_ids", sampling fields, ...} -> the response JSON.
    std::string complete(const std::string &request_json, const TokenCallback &on_token = {}) {
        return detail::with_token_callback(on_token, [&](const smallmind_chat_callbacks *cb, char **out) {
            return smallmind_engine_complete(handle_, request_json.c_str(), cb, out);
        });
    }

    /// A new chat with these options ({"session_id", "system_prompt", "context_policy", ...}).
    Chat chat(const std::string &options_json = "{}") {
        smallmind_chat *out = nullptr;
        detail::check(smallmind_chat_create(handle_, options_json.c_str(), &out));
        return Chat(out);
    }

    /// Restores a chat from Chat::export_json().
    Chat import_chat(const std::string &json) {
        smallmind_chat *out = nullptr;
        detail::check(smallmind_chat_import(handle_, json.c_str(), &out));
        return Chat(out);
    }

    smallmind_engine *get() const noexcept { return handle_; }
    explicit operator bool() const noexcept { return handle_ != nullptr; }

private:
    smallmind_engine *handle_;
};

}  // namespace smallmind

#endif  // SMALLMIND_HPP
