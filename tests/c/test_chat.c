/* C API tests of the chat calls against the real default model:
 *   test_chat MODEL.gguf NOT_A_GGUF_FILE ORACLE_IDS ORACLE_USER ORACLE_REPLY
 * ORACLE_IDS, ORACLE_USER and ORACLE_REPLY are llama.cpp's chat case "c" (the prompt ids its
 * run of the model's own template gave, the user message, the greedy reply), passed in by
 * tests/c_api.rs from tests/oracle/llamacpp-greedy.json.
 *
 * Covers: bad input (every status, a message naming what to fix, no crash), the oracle chat
 * case, the order and values of every telemetry callback, a 20-turn conversation with and
 * without the KV cache, two chats on two threads, BUSY, cancellation, history/export/import. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"
#include "test_util.h"

/* ---------------------------------------------------------------- small JSON helpers */

/* The number after "key": in json, or NAN when the key is missing. Keys in smallmind's
 * responses are unique enough for this (e.g. "prompt_tokens": vs "prompt_tokens_details":). */
static double json_number(const char *json, const char *key) {
    char needle[128];
    snprintf(needle, sizeof needle, "\"%s\":", key);
    const char *at = json ? strstr(json, needle) : NULL;
    if (at == NULL) return NAN;
    return strtod(at + strlen(needle), NULL);
}

/* Copies the still-escaped JSON string value after "key": into out ("" when missing).
 * Two escaped values are equal exactly when the strings are. */
static void json_raw_string(const char *json, const char *key, char *out, size_t size) {
    char needle[128];
    snprintf(needle, sizeof needle, "\"%s\":\"", key);
    out[0] = 0;
    const char *at = json ? strstr(json, needle) : NULL;
    if (at == NULL) return;
    at += strlen(needle);
    size_t n = 0;
    while (*at && *at != '"' && n + 2 < size) {
        if (*at == '\\') out[n++] = *at++;
        out[n++] = *at++;
    }
    out[n] = 0;
}

/* Undoes the escapes serde_json writes (\" \\ \/ \b \f \n \r \t and \u00XX for control
 * characters; it writes other characters as raw UTF-8). */
static void json_unescape(const char *in, char *out, size_t size) {
    size_t n = 0;
    while (*in && n + 1 < size) {
        if (*in != '\\') {
            out[n++] = *in++;
            continue;
        }
        in++;
        switch (*in) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'u': {
            char hex[5] = {0};
            for (int i = 0; i < 4 && in[1 + i]; i++) hex[i] = in[1 + i];
            out[n++] = (char)strtol(hex, NULL, 16);
            in += 4;
            break;
        }
        default: out[n++] = *in; break; /* \" \\ \/ */
        }
        if (*in) in++;
    }
    out[n] = 0;
}

/* Appends text to out as a JSON string literal, quotes included. */
static void json_quote(const char *text, char *out, size_t size) {
    size_t n = strlen(out);
    if (n + 2 >= size) return;
    out[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)text; *p && n + 8 < size; p++) {
        if (*p == '"' || *p == '\\') {
            out[n++] = '\\';
            out[n++] = (char)*p;
        } else if (*p == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else if (*p < 0x20) {
            n += (size_t)snprintf(out + n, size - n, "\\u%04x", *p);
        } else {
            out[n++] = (char)*p;
        }
    }
    out[n++] = '"';
    out[n] = 0;
}

/* A request with one user message. */
static void user_request(const char *content, const char *extra_fields, char *out, size_t size) {
    snprintf(out, size, "{\"messages\": [{\"role\": \"user\", \"content\": ");
    json_quote(content, out, size);
    size_t n = strlen(out);
    snprintf(out + n, size - n, "}]%s%s}", extra_fields[0] ? ", " : "", extra_fields);
}

/* Sends and returns the response (free with smallmind_string_free), or NULL after a failed check. */
static char *send_ok(smallmind_chat *chat, const char *request, const smallmind_chat_callbacks *cb) {
    char *response = NULL;
    smallmind_status status = smallmind_chat_send(chat, request, cb, &response);
    CHECK_STATUS(status, SMALLMIND_OK);
    if (status != SMALLMIND_OK) fprintf(stderr, "     request: %s\n", request);
    return status == SMALLMIND_OK ? response : NULL;
}

static int history_length(smallmind_chat *chat) {
    char *json = NULL;
    if (smallmind_chat_history(chat, &json) != SMALLMIND_OK) return -1;
    int count = 0;
    for (const char *p = json; (p = strstr(p, "\"role\":")) != NULL; p++) count++;
    smallmind_string_free(json);
    return count;
}

static smallmind_chat *new_chat(smallmind_engine *engine, const char *options) {
    smallmind_chat *chat = NULL;
    CHECK_STATUS(smallmind_chat_create(engine, options, &chat), SMALLMIND_OK);
    return chat;
}

/* ---------------------------------------------------------------- bad input */

#define SENTINEL ((void *)0x1)

static void expect_send_error(smallmind_chat *chat, const char *request, smallmind_status expected,
                              const char *message_part) {
    char *response = SENTINEL;
    smallmind_status status = smallmind_chat_send(chat, request, NULL, &response);
    CHECK(status == expected, request);
    if (status != expected) fprintf(stderr, "     got status %d, expected %d\n", (int)status, (int)expected);
    CHECK(contains(smallmind_last_error(), message_part), message_part);
    if (!contains(smallmind_last_error(), message_part)) {
        const char *err = smallmind_last_error();
        fprintf(stderr, "     message was: %s\n", err ? err : "(none)");
    }
    CHECK(response == SENTINEL, "the output is untouched on failure");
}

static void test_null_handles_and_pointers(smallmind_engine *engine) {
    smallmind_chat *chat = SENTINEL;
    char *json = SENTINEL;
    CHECK_STATUS(smallmind_chat_create(NULL, NULL, &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "engine is NULL"), "names the NULL engine");
    CHECK(chat == SENTINEL, "output untouched");
    CHECK_STATUS(smallmind_chat_create(engine, NULL, NULL), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "out is NULL"), "names the NULL output");
    CHECK_STATUS(smallmind_chat_send(NULL, "{}", NULL, &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "chat is NULL"), "names the NULL chat");
    CHECK_STATUS(smallmind_chat_cancel(NULL), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_reset(NULL), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_history(NULL, &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_export(NULL, &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_render(NULL, "{}", &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_import(NULL, "{}", &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "engine is NULL"), "import names the NULL engine");
    CHECK(json == SENTINEL && chat == SENTINEL, "outputs untouched");
    smallmind_chat_free(NULL); /* a no-op */

    chat = new_chat(engine, NULL);
    if (chat == NULL) return;
    CHECK_STATUS(smallmind_chat_send(chat, NULL, NULL, &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "request_json is NULL"), "names the NULL request");
    CHECK_STATUS(smallmind_chat_send(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", NULL, NULL),
                 SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "out_response_json is NULL"), "names the NULL output");
    CHECK_STATUS(smallmind_chat_history(chat, NULL), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_export(chat, NULL), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_render(chat, NULL, &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_import(engine, NULL, &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "json is NULL"), "names the NULL export text");
    CHECK(json == SENTINEL, "outputs untouched");
    CHECK_STATUS(smallmind_chat_cancel(chat), SMALLMIND_OK); /* nothing running: harmless */
    CHECK(smallmind_last_error() == NULL, "no error after a success");
    smallmind_chat_free(chat);
}

static void test_bad_requests(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine, NULL);
    if (chat == NULL) return;
    /* Syntax, types and names: SMALLMIND_ERR_INVALID_JSON with the path of the bad value. */
    expect_send_error(chat, "{\"messages\": [", SMALLMIND_ERR_INVALID_JSON, "EOF while parsing");
    expect_send_error(chat, "{\"messages\": []} extra", SMALLMIND_ERR_INVALID_JSON, "trailing characters");
    expect_send_error(chat, "{}", SMALLMIND_ERR_INVALID_JSON, "missing field `messages`");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", SMALLMIND_ERR_INVALID_JSON,
                      "messages[0].role: unknown variant `robot`, expected one of `system`, `user`, `assistant`, `tool`");
    expect_send_error(chat, "{\"messages\": [{\"content\": \"hi\"}]}", SMALLMIND_ERR_INVALID_JSON, "missing field `role`");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", SMALLMIND_ERR_INVALID_JSON,
                      "messages[0].content: invalid type: integer `5`, expected a string");
    expect_send_error(chat, "{\"messages\": {\"role\": \"user\"}}", SMALLMIND_ERR_INVALID_JSON,
                      "messages: invalid type: map, expected a sequence");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": \"ten\"}",
                      SMALLMIND_ERR_INVALID_JSON, "max_tokens must be an integer, not the string \"ten\"");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temprature\": 0}",
                      SMALLMIND_ERR_INVALID_JSON, "unknown field `temprature`");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\", \"nmae\": \"x\"}]}",
                      SMALLMIND_ERR_INVALID_JSON, "messages[0].nmae: unknown field `nmae`");
    expect_send_error(chat,
                      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"context_policy\": {\"type\": "
                      "\"keep_all\", \"max_turns\": 3}}",
                      SMALLMIND_ERR_INVALID_JSON, "unknown field `max_turns`");
    expect_send_error(chat,
                      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"context_policy\": {\"type\": "
                      "\"keep_some\"}}",
                      SMALLMIND_ERR_INVALID_JSON, "it must be {\"type\": \"keep_all\"}");
    /* Values out of range: SMALLMIND_ERR_INVALID_ARGUMENT naming the field. */
    const char invalid_utf8[] = {'{', '"', 'm', 'e', 's', 's', 'a', 'g', 'e', 's', '"', ':', '[', '{', '"', 'r', 'o',
                                 'l', 'e', '"', ':', '"', 'u', 's', 'e', 'r', '"', ',', '"', 'c', 'o', 'n', 't', 'e',
                                 'n', 't', '"', ':', '"', (char)0xc3, (char)0x28, '"', '}', ']', '}', 0};
    expect_send_error(chat, invalid_utf8, SMALLMIND_ERR_INVALID_ARGUMENT,
                      "request_json is not valid UTF-8 (invalid byte at offset 39)");
    expect_send_error(chat, "{\"messages\": []}", SMALLMIND_ERR_INVALID_ARGUMENT,
                      "messages is empty: send at least one message");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": -5}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "max_tokens is -5; it must be a positive number of tokens");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 0}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "max_tokens is 0");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": -1}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "temperature");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_k\": -1}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "top_k is -1");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"history\": \"merge\"}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "history is 'merge'; use \"append\" or \"replace\"");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stop\": [\"\"]}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "stop contains an empty string");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stop_token_ids\": [49152]}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "stop_token_ids contains 49152");
    expect_send_error(chat,
                      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"context_policy\": {\"type\": "
                      "\"sliding_window\", \"window_tokens\": 0}}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "window_tokens (max_tokens) must be at least 1");
    /* Tool fields that cannot be used are refused, never ignored. */
    expect_send_error(chat,
                      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": [{\"type\": \"function\", "
                      "\"function\": {\"name\": \"now\", \"parameters\": {\"type\": \"dict\"}}}]}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "is not a JSON Schema");
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tool_choice\": \"required\"}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "the request has no tools");
    /* A schema that cannot be enforced is refused before any token is generated. */
    expect_send_error(chat,
                      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"response_format\": {\"type\": "
                      "\"json_schema\", \"json_schema\": {\"name\": \"r\", \"schema\": {\"$ref\": \"https://example.com/s\"}}}}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "response_format: the JSON schema cannot be enforced");
    expect_send_error(chat,
                      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"retrieved_context\": [{\"id\": "
                      "\"1\"}]}",
                      SMALLMIND_ERR_INVALID_ARGUMENT, "retrieved_context[0] has no \"content\"");
    /* The context holds 8192 tokens: a reply that cannot fit is refused before any work. */
    expect_send_error(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 9000}",
                      SMALLMIND_ERR_CONTEXT_OVERFLOW, "max_tokens 9000 reserves the whole context (8192 tokens, set by context_length)");
    CHECK(history_length(chat) == 0, "failed sends leave no history");

    /* What the refusals above allow, checked without generating. */
    char *json = NULL;
    CHECK_STATUS(smallmind_chat_render(chat,
                                       "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"response_format\": "
                                       "{\"type\": \"text\"}, \"tools\": [], \"tool_choice\": \"none\"}",
                                       &json),
                 SMALLMIND_OK);
    smallmind_string_free(json);
    json = SENTINEL;
    CHECK_STATUS(smallmind_chat_render(chat, "{\"messages\": []}", (char **)&json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(json == SENTINEL, "render's output untouched on failure");
    smallmind_chat_free(chat);

    /* Chat options are as strict as requests. */
    chat = SENTINEL;
    CHECK_STATUS(smallmind_chat_create(engine, "{\"kv_cache\": \"yes\"}", &chat), SMALLMIND_ERR_INVALID_JSON);
    CHECK(contains(smallmind_last_error(), "kv_cache: invalid type"), "names the option");
    CHECK_STATUS(smallmind_chat_create(engine, "{\"sesion_id\": \"a\"}", &chat), SMALLMIND_ERR_INVALID_JSON);
    CHECK(contains(smallmind_last_error(), "unknown field `sesion_id`"), "names the typo");
    CHECK_STATUS(smallmind_chat_create(engine, "{\"max_kv_tokens\": 100000}", &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "max_kv_tokens is 100000, but the engine's context holds 8192"),
          "names both sizes");
    CHECK_STATUS(smallmind_chat_create(engine, "{\"max_tokens\": -1}", &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_create(engine, "{\"top_p\": 2}", &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "top_p"), "names the option out of range");
    CHECK_STATUS(smallmind_chat_create(engine, "[1, 2]", &chat), SMALLMIND_ERR_INVALID_JSON);
    CHECK(chat == SENTINEL, "output untouched");
    CHECK_STATUS(smallmind_chat_import(engine, "not json", &chat), SMALLMIND_ERR_INVALID_JSON);
    CHECK_STATUS(smallmind_chat_import(engine, "{\"format\": \"smallmind.chat\", \"version\": 99}", &chat),
                 SMALLMIND_ERR_INVALID_JSON);
    CHECK(contains(smallmind_last_error(), "exported by a newer smallmind (format version 99)"), "says it is newer");
    CHECK_STATUS(smallmind_chat_import(engine, "{\"history\": []}", &chat), SMALLMIND_ERR_INVALID_JSON);
    CHECK(contains(smallmind_last_error(), "not a smallmind session export"), "says what it expected");
    CHECK(chat == SENTINEL, "output untouched");
}

static void test_bad_model_files(const char *not_gguf_path) {
    smallmind_engine *engine = SENTINEL;
    CHECK_STATUS(smallmind_engine_create("{\"model_path\": \"/no/such/dir/model.gguf\"}", NULL, &engine), SMALLMIND_ERR_IO);
    CHECK(contains(smallmind_last_error(), "model file '/no/such/dir/model.gguf' does not exist"), "names the file");
    char options[1024];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", not_gguf_path);
    CHECK_STATUS(smallmind_engine_create(options, NULL, &engine), SMALLMIND_ERR_MODEL_LOAD);
    CHECK(contains(smallmind_last_error(), "GGUF"), "says the file is not GGUF");
    CHECK(engine == SENTINEL, "output untouched");
}

/* ---------------------------------------------------------------- the oracle's chat case */

static void test_oracle_chat_case(smallmind_engine *engine, const char *oracle_ids, const char *user,
                                  const char *reply) {
    smallmind_chat *chat = new_chat(engine, NULL);
    if (chat == NULL) return;
    char request[1024];
    user_request(user, "\"temperature\": 0, \"max_tokens\": 64", request, sizeof request);

    char *rendered = NULL;
    CHECK_STATUS(smallmind_chat_render(chat, request, &rendered), SMALLMIND_OK);
    char expected_ids[4096];
    snprintf(expected_ids, sizeof expected_ids, "\"prompt_token_ids\":[%s]", oracle_ids);
    CHECK(contains(rendered, expected_ids), "the model's own template gives llama.cpp's 37 prompt ids");
    if (!contains(rendered, expected_ids)) fprintf(stderr, "     rendered: %s\n     expected: %s\n", rendered, expected_ids);
    CHECK(contains(rendered, "\"prompt\":\"<|im_start|>system\\nYou are a helpful AI assistant named SmolLM"),
          "the template's default system prompt is rendered");
    smallmind_string_free(rendered);
    CHECK(history_length(chat) == 0, "rendering records nothing");

    char *response = send_ok(chat, request, NULL);
    char expected_content[1024];
    snprintf(expected_content, sizeof expected_content, "\"content\":\"%s\"", reply);
    CHECK(contains(response, expected_content), "the greedy reply equals llama.cpp's");
    if (!contains(response, expected_content)) fprintf(stderr, "     response: %s\n", response);
    CHECK(contains(response, "\"finish_reason\":\"stop\""), "the reply ends at the end-of-turn token");
    CHECK(json_number(response, "prompt_tokens") == 37, "37 prompt tokens were evaluated");
    CHECK(json_number(response, "cached_tokens") == 0, "nothing cached on a first turn");
    smallmind_string_free(response);
    smallmind_chat_free(chat);
}

/* ---------------------------------------------------------------- telemetry */

enum { MAX_EVENTS = 256 };

struct telemetry {
    char order[MAX_EVENTS]; /* S start, K kv access, P policy, F first token, T token, C complete */
    int n;
    char session_id[64];
    uint32_t message_count;
    bool hit;
    uint32_t cached_tokens;
    char policy[32];
    uint32_t tokens_before, tokens_after;
    double first_token_ms;
    smallmind_usage usage;
    char text[4096];
    size_t text_len;
    bool session_ids_agree;
    bool pieces_are_utf8;
};

static void record(struct telemetry *t, char event, const char *session_id) {
    if (t->n + 1 < MAX_EVENTS) t->order[t->n++] = event;
    t->order[t->n] = 0;
    if (session_id != NULL && strcmp(session_id, t->session_id) != 0) t->session_ids_agree = false;
}

/* True when the len bytes at s are whole, valid UTF-8 characters. */
static bool is_whole_utf8(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        size_t n = *p < 0x80 ? 1 : (*p >> 5) == 0x6 ? 2 : (*p >> 4) == 0xe ? 3 : (*p >> 3) == 0x1e ? 4 : 0;
        if (n == 0 || (size_t)(end - p) < n) return false;
        for (size_t i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) return false;
        }
        p += n;
    }
    return true;
}

static int32_t telemetry_token(void *ud, const char *text, size_t len) {
    struct telemetry *t = ud;
    record(t, 'T', NULL);
    if (!is_whole_utf8(text, len)) t->pieces_are_utf8 = false;
    if (t->text_len + len < sizeof t->text) {
        memcpy(t->text + t->text_len, text, len);
        t->text_len += len;
        t->text[t->text_len] = 0;
    }
    if (text[len] != 0) t->session_ids_agree = false; /* pieces are also NUL-terminated */
    return 0;
}

static void telemetry_start(void *ud, const char *session_id, uint32_t message_count) {
    struct telemetry *t = ud;
    record(t, 'S', session_id);
    t->message_count = message_count;
}

static void telemetry_first_token(void *ud, const char *session_id, double elapsed_ms) {
    struct telemetry *t = ud;
    record(t, 'F', session_id);
    t->first_token_ms = elapsed_ms;
}

static void telemetry_policy(void *ud, const char *session_id, const char *policy, uint32_t before, uint32_t after) {
    struct telemetry *t = ud;
    record(t, 'P', session_id);
    snprintf(t->policy, sizeof t->policy, "%s", policy);
    t->tokens_before = before;
    t->tokens_after = after;
}

static void telemetry_kv(void *ud, const char *session_id, bool hit, uint32_t cached_tokens) {
    struct telemetry *t = ud;
    record(t, 'K', session_id);
    t->hit = hit;
    t->cached_tokens = cached_tokens;
}

static void telemetry_complete(void *ud, const char *session_id, const smallmind_usage *usage) {
    struct telemetry *t = ud;
    record(t, 'C', session_id);
    t->usage = *usage;
}

static smallmind_chat_callbacks telemetry_callbacks(struct telemetry *t, const char *session_id) {
    memset(t, 0, sizeof *t);
    snprintf(t->session_id, sizeof t->session_id, "%s", session_id);
    t->session_ids_agree = true;
    t->pieces_are_utf8 = true;
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = t;
    cb.on_token = telemetry_token;
    cb.on_request_start = telemetry_start;
    cb.on_first_token = telemetry_first_token;
    cb.on_context_policy_applied = telemetry_policy;
    cb.on_kv_cache_access = telemetry_kv;
    cb.on_request_complete = telemetry_complete;
    return cb;
}

/* True when order is exactly "SKPF", one or more "T", then "C". */
static bool order_is_complete(const char *order) {
    if (strncmp(order, "SKPF", 4) != 0) return false;
    size_t tokens = strspn(order + 4, "T");
    return tokens >= 1 && strcmp(order + 4 + tokens, "C") == 0;
}

/* Checks one request's telemetry against its response. */
static void check_telemetry(const struct telemetry *t, const char *response, uint32_t message_count) {
    CHECK(order_is_complete(t->order), "start, kv access, policy, first token, tokens, complete: once each, in order");
    if (!order_is_complete(t->order)) fprintf(stderr, "     order was %s\n", t->order);
    CHECK(t->session_ids_agree, "every callback names the chat's session and pieces are NUL-terminated");
    CHECK(t->pieces_are_utf8, "every on_token piece is whole UTF-8");
    CHECK(t->message_count == message_count, "on_request_start counts the request's messages");
    const double prompt = json_number(response, "prompt_tokens");
    const double cached = json_number(response, "cached_tokens");
    CHECK(t->cached_tokens == cached && t->hit == (cached > 0), "on_kv_cache_access agrees with usage");
    char policy[32];
    json_raw_string(response, "policy", policy, sizeof policy);
    CHECK(strcmp(t->policy, policy) == 0, "on_context_policy_applied names the response's policy");
    CHECK(t->tokens_before == json_number(response, "tokens_before") &&
              t->tokens_after == json_number(response, "tokens_after") && t->tokens_after == prompt,
          "policy sizes agree with the response's context and usage");
    CHECK(t->first_token_ms == json_number(response, "time_to_first_token_ms") && t->first_token_ms > 0,
          "on_first_token's elapsed time is usage.time_to_first_token_ms");
    const smallmind_usage *u = &t->usage;
    CHECK(u->prompt_tokens == prompt && u->cached_tokens == cached &&
              u->completion_tokens == json_number(response, "completion_tokens") &&
              u->total_tokens == json_number(response, "total_tokens") && u->total_tokens == prompt + u->completion_tokens,
          "on_request_complete's counts are the response's usage");
    CHECK(u->time_to_first_token_ms == json_number(response, "time_to_first_token_ms") &&
              u->prefill_ms == json_number(response, "prefill_ms") && u->decode_ms == json_number(response, "decode_ms") &&
              u->prefill_tokens_per_second == json_number(response, "prefill_tokens_per_second") &&
              u->decode_tokens_per_second == json_number(response, "decode_tokens_per_second"),
          "on_request_complete's times are the response's usage");
    CHECK(u->prefill_ms > 0 && u->time_to_first_token_ms >= u->prefill_ms, "the first token comes after the prefill");
    CHECK(fabs(u->prefill_tokens_per_second - (u->prompt_tokens - u->cached_tokens) * 1000.0 / u->prefill_ms) < 1e-6,
          "the prefill rate is the prefilled tokens over the measured prefill time");
    char content[4096], unescaped[4096];
    json_raw_string(response, "content", content, sizeof content);
    json_unescape(content, unescaped, sizeof unescaped);
    CHECK(strcmp(unescaped, t->text) == 0, "the streamed pieces make up the reply");
}

struct log_lines {
    int count;
    bool saw_loaded;
};

static void on_log(void *ud, int32_t level, const char *message) {
    struct log_lines *l = ud;
    l->count++;
    if (level == 1 && contains(message, "loaded llama")) l->saw_loaded = true;
}

static int32_t on_progress(void *ud, float fraction) {
    (void)ud;
    (void)fraction;
    return 0;
}

static smallmind_engine *load_engine(const char *model_path) {
    char options[1024];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", model_path);
    struct log_lines log = {0, false};
    smallmind_engine_callbacks cb = {&log, on_progress, on_log};
    smallmind_engine *engine = NULL;
    CHECK_STATUS(smallmind_engine_create(options, &cb, &engine), SMALLMIND_OK);
    CHECK(log.count >= 2 && log.saw_loaded, "the log sink hears the load");
    return engine;
}

static void test_telemetry_and_history(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine, "{\"session_id\": \"telemetry-test\", \"system_prompt\": \"Answer in a few words.\", "
                                            "\"temperature\": 0, \"max_tokens\": 6}");
    if (chat == NULL) return;
    struct telemetry t;
    smallmind_chat_callbacks cb = telemetry_callbacks(&t, "telemetry-test");

    char *response = send_ok(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a fruit.\"}]}", &cb);
    check_telemetry(&t, response, 1);
    CHECK(!t.hit && t.cached_tokens == 0, "the first turn finds nothing cached");
    CHECK(strcmp(t.policy, "keep_all") == 0 && t.tokens_before == t.tokens_after, "keep_all keeps everything");
    CHECK(contains(response, "\"session_id\":\"telemetry-test\""), "the response names the session");
    smallmind_string_free(response);

    cb = telemetry_callbacks(&t, "telemetry-test");
    response = send_ok(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a color.\"}]}", &cb);
    check_telemetry(&t, response, 1);
    CHECK(t.hit && t.cached_tokens > 0, "the second turn reuses the first turn's cache");
    smallmind_string_free(response);

    /* keep_last_n_turns 0 keeps only the new turn: it drops turns 1 and 2 (4 messages) and pins
     * the system message. */
    cb = telemetry_callbacks(&t, "telemetry-test");
    response = send_ok(chat,
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a tree.\"}], \"context_policy\": "
                       "{\"type\": \"keep_last_n_turns\", \"max_turns\": 0}}",
                       &cb);
    check_telemetry(&t, response, 1);
    CHECK(strcmp(t.policy, "keep_last_n_turns") == 0 && t.tokens_before > t.tokens_after, "the policy dropped tokens");
    CHECK(contains(response, "\"dropped_messages\":4"), "the context object counts the dropped messages");
    CHECK(contains(response, "left out 4 older message(s)"), "a warning says that messages were left out");
    CHECK(t.hit, "the pinned system message is still reused from the cache");
    smallmind_string_free(response);
    CHECK(history_length(chat) == 6,
          "the history keeps every message (3 turns; the system_prompt option is rendered, not recorded): policies "
          "only shape the prompt");

    /* No callbacks: a NULL pointer, and a struct whose fields are all NULL. */
    response = send_ok(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a bird.\"}], \"max_tokens\": 2}", NULL);
    smallmind_string_free(response);
    smallmind_chat_callbacks empty;
    memset(&empty, 0, sizeof empty);
    response = send_ok(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a fish.\"}], \"max_tokens\": 2}", &empty);
    smallmind_string_free(response);
    CHECK(history_length(chat) == 10, "both sends were recorded");

    /* Export and import: the restored chat has the same history and renders the same prompt. */
    char *exported = NULL, *history = NULL, *imported_history = NULL, *rendered = NULL, *imported_rendered = NULL;
    CHECK_STATUS(smallmind_chat_export(chat, &exported), SMALLMIND_OK);
    CHECK(contains(exported, "\"format\":\"smallmind.chat\",\"version\":2,\"session_id\":\"telemetry-test\""),
          "the export is a versioned envelope");
    smallmind_chat *restored = NULL;
    CHECK_STATUS(smallmind_chat_import(engine, exported, &restored), SMALLMIND_OK);
    const char *next = "{\"messages\": [{\"role\": \"user\", \"content\": \"Name a city.\"}]}";
    if (restored != NULL) {
        CHECK_STATUS(smallmind_chat_history(chat, &history), SMALLMIND_OK);
        CHECK_STATUS(smallmind_chat_history(restored, &imported_history), SMALLMIND_OK);
        CHECK(history && imported_history && strcmp(history, imported_history) == 0, "the imported history is the same");
        CHECK_STATUS(smallmind_chat_render(chat, next, &rendered), SMALLMIND_OK);
        CHECK_STATUS(smallmind_chat_render(restored, next, &imported_rendered), SMALLMIND_OK);
        CHECK(rendered && imported_rendered && strcmp(rendered, imported_rendered) == 0,
              "the imported chat gives the model the same prompt (system prompt and options kept)");
        smallmind_chat_free(restored);
    }
    smallmind_string_free(exported);
    smallmind_string_free(history);
    smallmind_string_free(imported_history);
    smallmind_string_free(rendered);
    smallmind_string_free(imported_rendered);

    CHECK_STATUS(smallmind_chat_reset(chat), SMALLMIND_OK);
    CHECK(history_length(chat) == 0, "reset forgets the history");
    smallmind_chat_free(chat);
}

static void test_streamed_pieces_are_whole_utf8(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine, "{\"session_id\": \"utf8-test\", \"temperature\": 0, \"max_tokens\": 12}");
    if (chat == NULL) return;
    struct telemetry t;
    smallmind_chat_callbacks cb = telemetry_callbacks(&t, "utf8-test");
    char *response = send_ok(
        chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Write the Japanese word for thank you, in Japanese script.\"}]}",
        &cb);
    check_telemetry(&t, response, 1);
    bool non_ascii = false;
    for (const char *p = t.text; *p; p++) non_ascii = non_ascii || (unsigned char)*p >= 0x80;
    CHECK(non_ascii, "the reply has multi-byte characters (so the UTF-8 check above means something)");
    smallmind_string_free(response);
    smallmind_chat_free(chat);
}

/* ---------------------------------------------------------------- 20 turns, with and without the KV cache */

static const char *const questions[20] = {
    "Name a fruit.",   "Name a color.",   "Name an animal.", "Name a planet.", "Name a river.",
    "Name a tree.",    "Name a metal.",   "Name a bird.",    "Name a city.",   "Name a sport.",
    "Name a flower.",  "Name a country.", "Name a fish.",    "Name a tool.",   "Name a month.",
    "Name an insect.", "Name a drink.",   "Name a game.",    "Name a shape.",  "Name a gem.",
};

struct turn_figures {
    double prompt, cached, ttft;
};

static struct turn_figures figures_of(const char *response) {
    struct turn_figures f = {json_number(response, "prompt_tokens"), json_number(response, "cached_tokens"),
                             json_number(response, "time_to_first_token_ms")};
    return f;
}

/* A history-"replace" request carrying the chat's whole history plus one more user message. */
static char *replace_request_from_history(smallmind_chat *chat, const char *question) {
    char *history = NULL;
    if (smallmind_chat_history(chat, &history) != SMALLMIND_OK) return NULL;
    const char *messages = strstr(history, "\"messages\":[");
    const char *last_bracket = strrchr(history, ']');
    size_t size = strlen(history) + 512;
    char *request = malloc(size);
    if (messages == NULL || last_bracket == NULL || request == NULL) {
        smallmind_string_free(history);
        free(request);
        return NULL;
    }
    messages += strlen("\"messages\":[");
    int n = snprintf(request, size, "{\"history\": \"replace\", \"temperature\": 0, \"max_tokens\": 4, \"messages\": [%.*s",
                     (int)(last_bracket - messages), messages);
    snprintf(request + n, size - (size_t)n, ", {\"role\": \"user\", \"content\": \"%s\"}]}", question);
    smallmind_string_free(history);
    return request;
}

/* The same 20-turn conversation is held REPLICAS times side by side, turn by turn: the replicas
 * must agree token for token, and the printed time to first token is each turn's fastest sample
 * (load on a shared machine only ever adds time). No check asserts a time: the cache's effect is
 * checked in prefilled tokens, which load cannot change. */
enum { REPLICAS = 3 };

static void test_twenty_turns_reuse_the_cache(smallmind_engine *engine) {
    smallmind_chat *cached_chats[REPLICAS];
    for (int r = 0; r < REPLICAS; r++) cached_chats[r] = new_chat(engine, NULL);
    smallmind_chat *uncached_chat = new_chat(engine, "{\"kv_cache\": false}");
    for (int r = 0; r < REPLICAS; r++) {
        if (cached_chats[r] == NULL) return;
    }
    if (uncached_chat == NULL) return;
    char request[512];
    struct turn_figures with_cache[20][REPLICAS];
    char *replace_request = NULL;
    for (int turn = 0; turn < 20; turn++) {
        if (turn == 19) replace_request = replace_request_from_history(cached_chats[0], questions[turn]);
        user_request(questions[turn], "\"temperature\": 0, \"max_tokens\": 4", request, sizeof request);
        for (int r = 0; r < REPLICAS; r++) {
            char *response = send_ok(cached_chats[r], request, NULL);
            if (response == NULL) return;
            with_cache[turn][r] = figures_of(response);
            smallmind_string_free(response);
            if (turn > 0) CHECK(with_cache[turn][r].cached > 0, "every later turn reuses the cache");
            CHECK(with_cache[turn][r].prompt == with_cache[turn][0].prompt && with_cache[turn][r].cached == with_cache[turn][0].cached,
                  "the replicas hold the same conversation");
        }
    }
    double first_ttft = with_cache[0][0].ttft, last_ttft = with_cache[19][0].ttft;
    for (int r = 1; r < REPLICAS; r++) {
        first_ttft = fmin(first_ttft, with_cache[0][r].ttft);
        last_ttft = fmin(last_ttft, with_cache[19][r].ttft);
    }
    const struct turn_figures first = with_cache[0][0], last = with_cache[19][0];
    printf("20 turns with the KV cache: turn 1 prompt %.0f tokens (%.0f cached), TTFT %.1f ms; "
           "turn 20 prompt %.0f tokens (%.0f cached, %.1f%%), TTFT %.1f ms (%.2fx turn 1); TTFT samples (ms):",
           first.prompt, first.cached, first_ttft, last.prompt, last.cached, 100.0 * last.cached / last.prompt, last_ttft,
           last_ttft / first_ttft);
    for (int r = 0; r < REPLICAS; r++) printf(" %.1f/%.1f", with_cache[0][r].ttft, with_cache[19][r].ttft);
    printf("\n");
    CHECK(first.cached == 0, "turn 1 has nothing cached");
    CHECK(last.cached >= 0.9 * last.prompt, "turn 20 reuses at least 90% of its prompt from the cache");
    CHECK(last.prompt - last.cached <= 2 * (first.prompt - first.cached),
          "turn 20 prefills at most twice the tokens turn 1 did");

    /* Without the cache: three turns prefill everything, and turn 20's conversation (the same
     * prompt, given whole with history "replace") costs far more than turn 1. */
    struct turn_figures without_cache[3];
    for (int turn = 0; turn < 3; turn++) {
        user_request(questions[turn], "\"temperature\": 0, \"max_tokens\": 4", request, sizeof request);
        char *response = send_ok(uncached_chat, request, NULL);
        if (response == NULL) return;
        without_cache[turn] = figures_of(response);
        smallmind_string_free(response);
        CHECK(without_cache[turn].cached == 0, "kv_cache false: cached_tokens stays 0");
        if (turn > 0) CHECK(without_cache[turn].prompt > without_cache[turn - 1].prompt, "each turn prefills more");
    }
    CHECK(without_cache[0].prompt == first.prompt, "turn 1 is the same prompt with or without the cache");
    char *response = replace_request ? send_ok(uncached_chat, replace_request, NULL) : NULL;
    free(replace_request);
    CHECK(response != NULL, "turn 20 without the cache ran");
    if (response == NULL) return;
    const struct turn_figures uncached_last = figures_of(response);
    smallmind_string_free(response);
    printf("turn 20 without the KV cache: prompt %.0f tokens (%.0f cached), TTFT %.1f ms (%.2fx turn 1's %.1f ms)\n",
           uncached_last.prompt, uncached_last.cached, uncached_last.ttft, uncached_last.ttft / without_cache[0].ttft,
           without_cache[0].ttft);
    CHECK(uncached_last.prompt == last.prompt, "the replaced conversation is turn 20's prompt");
    CHECK(uncached_last.cached == 0, "kv_cache false: nothing reused at turn 20");
    CHECK(uncached_last.prompt >= 5 * without_cache[0].prompt, "without the cache turn 20 prefills 5x turn 1's tokens");
    CHECK(uncached_last.prompt - uncached_last.cached >= 5 * (last.prompt - last.cached),
          "without the cache turn 20 prefills at least 5x the tokens it does with the cache");
    for (int r = 0; r < REPLICAS; r++) smallmind_chat_free(cached_chats[r]);
    smallmind_chat_free(uncached_chat);
}

/* ---------------------------------------------------------------- threads */

struct chat_job {
    smallmind_chat *chat;
    const char *request;
    char reply[2048];
    smallmind_status status;
    pthread_mutex_t *gate_lock;
    pthread_cond_t *gate;
    bool *gate_open;
};

static void *run_chat_job(void *arg) {
    struct chat_job *job = arg;
    if (job->gate != NULL) { /* start both threads together */
        pthread_mutex_lock(job->gate_lock);
        while (!*job->gate_open) pthread_cond_wait(job->gate, job->gate_lock);
        pthread_mutex_unlock(job->gate_lock);
    }
    char *response = NULL;
    job->status = smallmind_chat_send(job->chat, job->request, NULL, &response);
    json_raw_string(response, "content", job->reply, sizeof job->reply);
    smallmind_string_free(response);
    return NULL;
}

static void test_two_chats_on_two_threads_match_sequential_runs(smallmind_engine *engine) {
    const char *requests[2] = {
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Write one sentence about the sea.\"}], \"temperature\": 0, "
        "\"max_tokens\": 12}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Write one sentence about mountains.\"}], \"temperature\": 0, "
        "\"max_tokens\": 12}",
    };
    struct chat_job sequential[2], concurrent[2];
    for (int i = 0; i < 2; i++) {
        memset(&sequential[i], 0, sizeof sequential[i]);
        sequential[i].chat = new_chat(engine, NULL);
        sequential[i].request = requests[i];
        if (sequential[i].chat) run_chat_job(&sequential[i]);
        CHECK_STATUS(sequential[i].status, SMALLMIND_OK);
    }
    pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t gate = PTHREAD_COND_INITIALIZER;
    bool gate_open = false;
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        memset(&concurrent[i], 0, sizeof concurrent[i]);
        concurrent[i].chat = new_chat(engine, NULL);
        concurrent[i].request = requests[i];
        concurrent[i].gate_lock = &gate_lock;
        concurrent[i].gate = &gate;
        concurrent[i].gate_open = &gate_open;
        CHECK(pthread_create(&threads[i], NULL, run_chat_job, &concurrent[i]) == 0, "start a thread");
    }
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate);
    pthread_mutex_unlock(&gate_lock);
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK_STATUS(concurrent[i].status, SMALLMIND_OK);
        CHECK(sequential[i].reply[0] != 0, "a reply was generated");
        CHECK(strcmp(sequential[i].reply, concurrent[i].reply) == 0, "concurrent chats reply as sequential ones do");
        printf("thread %d reply: %s\n", i, concurrent[i].reply);
        smallmind_chat_free(sequential[i].chat);
        smallmind_chat_free(concurrent[i].chat);
    }
}

/* A send whose callback holds it at a chosen point until the main thread says go on. */
struct held_send {
    smallmind_chat *chat;
    const char *request;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    bool reached; /* the callback is holding the send */
    bool released; /* the main thread let it go on */
    int tokens;
    int first_tokens;
    char response[8192];
    smallmind_status status;
};

static void hold_here(struct held_send *h) {
    pthread_mutex_lock(&h->lock);
    if (!h->reached) {
        h->reached = true;
        pthread_cond_broadcast(&h->changed);
        while (!h->released) pthread_cond_wait(&h->changed, &h->lock);
    }
    pthread_mutex_unlock(&h->lock);
}

static int32_t hold_at_first_token(void *ud, const char *text, size_t len) {
    (void)text;
    (void)len;
    struct held_send *h = ud;
    h->tokens++;
    hold_here(h);
    return 0;
}

static void hold_at_kv_access(void *ud, const char *session_id, bool hit, uint32_t cached_tokens) {
    (void)session_id;
    (void)hit;
    (void)cached_tokens;
    hold_here(ud);
}

static int32_t count_token(void *ud, const char *text, size_t len) {
    (void)text;
    (void)len;
    ((struct held_send *)ud)->tokens++;
    return 0;
}

static void count_first_token(void *ud, const char *session_id, double elapsed_ms) {
    (void)session_id;
    (void)elapsed_ms;
    ((struct held_send *)ud)->first_tokens++;
}

static smallmind_chat_callbacks held_callbacks;

static void *run_held_send(void *arg) {
    struct held_send *h = arg;
    char *response = NULL;
    h->status = smallmind_chat_send(h->chat, h->request, &held_callbacks, &response);
    snprintf(h->response, sizeof h->response, "%s", response ? response : "");
    smallmind_string_free(response);
    return NULL;
}

static void held_send_init(struct held_send *h, smallmind_chat *chat, const char *request) {
    memset(h, 0, sizeof *h);
    h->chat = chat;
    h->request = request;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->changed, NULL);
}

static void wait_until_held(struct held_send *h) {
    pthread_mutex_lock(&h->lock);
    while (!h->reached) pthread_cond_wait(&h->changed, &h->lock);
    pthread_mutex_unlock(&h->lock);
}

static void release(struct held_send *h) {
    pthread_mutex_lock(&h->lock);
    h->released = true;
    pthread_cond_broadcast(&h->changed);
    pthread_mutex_unlock(&h->lock);
}

static void held_send_destroy(struct held_send *h) {
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->changed);
}

/* Starts `request` on `chat` in another thread and returns once its first token is held. */
static bool start_held_send(struct held_send *h, smallmind_chat *chat, const char *request, pthread_t *thread) {
    held_send_init(h, chat, request);
    memset(&held_callbacks, 0, sizeof held_callbacks);
    held_callbacks.user_data = h;
    held_callbacks.on_token = hold_at_first_token;
    if (pthread_create(thread, NULL, run_held_send, h) != 0) return false;
    wait_until_held(h);
    return true;
}

static void test_second_send_on_a_busy_chat_is_refused(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine, NULL);
    if (chat == NULL) return;
    const char *request = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"temperature\": 0, \"max_tokens\": 4}";
    struct held_send first;
    pthread_t thread;
    CHECK(start_held_send(&first, chat, request, &thread), "start the first send");

    int busy = 0;
    char *response = SENTINEL;
    smallmind_status second = smallmind_chat_send(chat, request, NULL, &response);
    busy += second == SMALLMIND_ERR_BUSY;
    CHECK(second == SMALLMIND_ERR_BUSY, "a second concurrent send is refused at once");
    CHECK(contains(smallmind_last_error(), "busy with a call on another thread"), "the message says why");
    CHECK(response == SENTINEL, "output untouched");
    CHECK_STATUS(smallmind_chat_reset(chat), SMALLMIND_ERR_BUSY);
    CHECK_STATUS(smallmind_chat_history(chat, &response), SMALLMIND_ERR_BUSY);
    CHECK_STATUS(smallmind_chat_export(chat, &response), SMALLMIND_ERR_BUSY);
    CHECK_STATUS(smallmind_chat_render(chat, request, &response), SMALLMIND_ERR_BUSY);
    release(&first);
    pthread_join(thread, NULL);
    busy += first.status == SMALLMIND_ERR_BUSY;
    CHECK_STATUS(first.status, SMALLMIND_OK);
    CHECK(busy == 1, "exactly one of the two sends was BUSY");
    CHECK(history_length(chat) == 2, "the first send's turn was recorded (user, assistant), the refused one was not");
    held_send_destroy(&first);
    smallmind_chat_free(chat);
}

static void test_cancellation(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine, "{\"temperature\": 0}");
    if (chat == NULL) return;
    const char *long_request = "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me a long story.\"}], \"max_tokens\": 64}";

    /* From another thread while decoding: the send stops after the token being delivered. */
    struct held_send h;
    pthread_t thread;
    CHECK(start_held_send(&h, chat, long_request, &thread), "start the send");
    CHECK_STATUS(smallmind_chat_cancel(chat), SMALLMIND_OK);
    release(&h);
    pthread_join(thread, NULL);
    CHECK_STATUS(h.status, SMALLMIND_OK);
    CHECK(contains(h.response, "\"finish_reason\":\"cancelled\""), "the send reports it was cancelled");
    CHECK(json_number(h.response, "completion_tokens") == 1 && h.tokens == 1, "it stopped within one token");
    CHECK(history_length(chat) == 0, "a cancelled turn leaves the history as it was");
    held_send_destroy(&h);

    /* From another thread before the prefill: no token at all. */
    held_send_init(&h, chat, long_request);
    memset(&held_callbacks, 0, sizeof held_callbacks);
    held_callbacks.user_data = &h;
    held_callbacks.on_kv_cache_access = hold_at_kv_access;
    held_callbacks.on_token = count_token;
    held_callbacks.on_first_token = count_first_token;
    CHECK(pthread_create(&thread, NULL, run_held_send, &h) == 0, "start the send");
    wait_until_held(&h);
    CHECK_STATUS(smallmind_chat_cancel(chat), SMALLMIND_OK);
    release(&h);
    pthread_join(thread, NULL);
    CHECK_STATUS(h.status, SMALLMIND_OK);
    CHECK(contains(h.response, "\"finish_reason\":\"cancelled\""), "cancelled during the prefill");
    CHECK(json_number(h.response, "completion_tokens") == 0 && h.tokens == 0 && h.first_tokens == 0,
          "nothing was generated, and on_first_token did not fire");
    held_send_destroy(&h);

    /* After the cancels, a send runs to its end and is recorded. */
    char *response = send_ok(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Count to ten.\"}], \"max_tokens\": 3}", NULL);
    CHECK(contains(response, "\"finish_reason\":\"length\""), "the next send is not cancelled");
    smallmind_string_free(response);
    CHECK(history_length(chat) == 2, "a completed turn is recorded (user, assistant)");

    /* A cancel with no send running does not cancel the next send. */
    CHECK_STATUS(smallmind_chat_cancel(chat), SMALLMIND_OK);
    response = send_ok(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Thanks.\"}], \"max_tokens\": 2}", NULL);
    CHECK(!contains(response, "\"finish_reason\":\"cancelled\""), "an earlier cancel does not stop a later send");
    smallmind_string_free(response);
    smallmind_chat_free(chat);
}

static int32_t stop_after_two(void *ud, const char *text, size_t len) {
    (void)text;
    (void)len;
    int *count = ud;
    return ++*count >= 2;
}

static void test_on_token_returning_non_zero_cancels(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine, "{\"temperature\": 0}");
    if (chat == NULL) return;
    int count = 0;
    smallmind_chat_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.user_data = &count;
    cb.on_token = stop_after_two;
    char *response = send_ok(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me a story.\"}], \"max_tokens\": 32}", &cb);
    CHECK(contains(response, "\"finish_reason\":\"cancelled\""), "on_token returning non-zero cancels");
    CHECK(count == 2 && json_number(response, "completion_tokens") == 2, "no token after the one that cancelled");
    smallmind_string_free(response);
    CHECK(history_length(chat) == 0, "the cancelled turn was not recorded");
    smallmind_chat_free(chat);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODEL.gguf NOT_A_GGUF_FILE ORACLE_IDS ORACLE_USER ORACLE_REPLY\n", argv[0]);
        return 2;
    }
    test_bad_model_files(argv[2]);
    smallmind_engine *engine = load_engine(argv[1]);
    if (engine == NULL) return finish_tests("test_chat");
    test_null_handles_and_pointers(engine);
    test_bad_requests(engine);
    test_oracle_chat_case(engine, argv[3], argv[4], argv[5]);
    test_telemetry_and_history(engine);
    test_streamed_pieces_are_whole_utf8(engine);
    test_second_send_on_a_busy_chat_is_refused(engine);
    test_cancellation(engine);
    test_on_token_returning_non_zero_cancels(engine);
    test_two_chats_on_two_threads_match_sequential_runs(engine);
    test_twenty_turns_reuse_the_cache(engine);
    smallmind_engine_free(engine);
    return finish_tests("test_chat");
}
