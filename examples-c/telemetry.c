/* Prints every callback smallmind makes, with its values: the engine's load progress and log
 * lines, then for each of three chat turns request start -> KV cache access -> context policy
 * -> first token -> tokens -> request complete. Turn 2 reuses turn 1's KV cache; turn 3 uses
 * the keep_last_n_turns policy, which drops the older turns (the system message stays).
 *   telemetry MODEL.gguf
 * Build: cc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples-c/telemetry.c \
 *           -Ltarget/release -lsmallmind */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "smallmind.h"

static int32_t on_load_progress(void *user_data, float fraction) {
    (void)user_data;
    printf("on_load_progress      %.2f\n", fraction);
    return 0; /* non-zero would abort the load */
}

static void on_log(void *user_data, int32_t level, const char *message) {
    static const char *const names[] = {"debug", "info", "warning", "error"};
    (void)user_data;
    printf("on_log                [%s] %s\n", level >= 0 && level <= 3 ? names[level] : "?", message);
}

static void on_request_start(void *user_data, const char *session_id, uint32_t message_count) {
    (void)user_data;
    printf("on_request_start      session=%s messages=%u\n", session_id, message_count);
}

static void on_kv_cache_access(void *user_data, const char *session_id, bool hit, uint32_t cached_tokens) {
    (void)user_data;
    printf("on_kv_cache_access    session=%s hit=%s cached_tokens=%u\n", session_id, hit ? "yes" : "no", cached_tokens);
}

static void on_context_policy_applied(void *user_data, const char *session_id, const char *policy,
                                      uint32_t tokens_before, uint32_t tokens_after) {
    (void)user_data;
    printf("on_context_policy_applied session=%s policy=%s tokens_before=%u tokens_after=%u\n", session_id, policy,
           tokens_before, tokens_after);
}

static void on_first_token(void *user_data, const char *session_id, double elapsed_ms) {
    (void)user_data;
    printf("on_first_token        session=%s elapsed_ms=%.1f\n", session_id, elapsed_ms);
}

static int32_t on_token(void *user_data, const char *text, size_t len) {
    int *count = user_data;
    printf("on_token              #%d \"", ++*count);
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\n') {
            fputs("\\n", stdout);
        } else {
            putchar(text[i]);
        }
    }
    printf("\" (%zu bytes)\n", len);
    return 0; /* non-zero would cancel */
}

static void on_request_complete(void *user_data, const char *session_id, const smallmind_usage *u) {
    (void)user_data;
    printf("on_request_complete   session=%s prompt_tokens=%u cached_tokens=%u completion_tokens=%u total_tokens=%u\n"
           "                      time_to_first_token_ms=%.1f prefill_ms=%.1f decode_ms=%.1f\n"
           "                      prefill_tokens_per_second=%.1f decode_tokens_per_second=%.1f\n",
           session_id, u->prompt_tokens, u->cached_tokens, u->completion_tokens, u->total_tokens,
           u->time_to_first_token_ms, u->prefill_ms, u->decode_ms, u->prefill_tokens_per_second,
           u->decode_tokens_per_second);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", argv[1]); /* a path without quotes */
    smallmind_engine_callbacks engine_callbacks = {NULL, on_load_progress, on_log};
    smallmind_engine *engine = NULL;
    if (smallmind_engine_create(options, &engine_callbacks, &engine) != SMALLMIND_OK) {
        fprintf(stderr, "could not load the model: %s\n", smallmind_last_error());
        return 1;
    }
    smallmind_chat *chat = NULL;
    if (smallmind_chat_create(engine,
                              "{\"session_id\": \"demo\", \"system_prompt\": \"You answer in a few words.\", "
                              "\"temperature\": 0, \"max_tokens\": 8}",
                              &chat) != SMALLMIND_OK) {
        fprintf(stderr, "could not create the chat: %s\n", smallmind_last_error());
        smallmind_engine_free(engine);
        return 1;
    }
    const char *requests[3] = {
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a fruit.\"}]}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a color.\"}]}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a tree.\"}], "
        "\"context_policy\": {\"type\": \"keep_last_n_turns\", \"max_turns\": 0}}",
    };
    int tokens = 0;
    smallmind_chat_callbacks callbacks = SMALLMIND_CHAT_CALLBACKS_INIT;
    callbacks.user_data = &tokens;
    callbacks.on_token = on_token;
    callbacks.on_request_start = on_request_start;
    callbacks.on_first_token = on_first_token;
    callbacks.on_context_policy_applied = on_context_policy_applied;
    callbacks.on_kv_cache_access = on_kv_cache_access;
    callbacks.on_request_complete = on_request_complete;
    int failed = 0;
    for (int turn = 0; turn < 3 && !failed; turn++) {
        printf("\n--- turn %d: %s\n", turn + 1, requests[turn]);
        tokens = 0;
        char *response = NULL;
        if (smallmind_chat_send(chat, requests[turn], &callbacks, &response) != SMALLMIND_OK) {
            fprintf(stderr, "send failed: %s\n", smallmind_last_error());
            failed = 1;
            continue;
        }
        printf("response              %s\n", response);
        smallmind_string_free(response);
    }
    smallmind_chat_free(chat);
    smallmind_engine_free(engine);
    return failed;
}
