/* The C API of chats that last: save/load with and without the KV cache into a new engine,
 * export/import with options, the version-1 file, refused files and options, and the KV
 * budget's eviction and refusal with their callbacks and engine info.
 *   test_persist MODEL.gguf V1_EXPORT.json SCRATCH_DIR */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"
#include "test_util.h"

static const char *model_path;
static char scratch[1024];

static smallmind_engine *new_engine(const char *extra) {
    char options[2048];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\", \"context_length\": 2048%s}", model_path, extra);
    smallmind_engine *engine = NULL;
    CHECK_STATUS(smallmind_engine_create(options, NULL, &engine), SMALLMIND_OK);
    return engine;
}

static void path_in_scratch(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", scratch, name);
}

/* What the callbacks of one send saw. */
struct seen {
    uint32_t cached;
    int evictions;
    char evicted[64];
    uint32_t evicted_tokens;
    uint64_t evicted_bytes;
    int exceeded;
    uint64_t requested, budget;
};

static void on_access(void *ud, const char *session_id, bool hit, uint32_t cached) {
    (void)session_id;
    (void)hit;
    ((struct seen *)ud)->cached = cached;
}

static void on_eviction(void *ud, const char *session_id, uint32_t tokens, uint64_t bytes) {
    struct seen *s = ud;
    s->evictions++;
    snprintf(s->evicted, sizeof s->evicted, "%s", session_id);
    s->evicted_tokens = tokens;
    s->evicted_bytes = bytes;
}

static void on_exceeded(void *ud, const char *session_id, uint64_t requested, uint64_t budget) {
    (void)session_id;
    struct seen *s = ud;
    s->exceeded++;
    s->requested = requested;
    s->budget = budget;
}

/* Sends one user message; returns the reply's content (freed by the caller) or NULL. */
static char *send_text(smallmind_chat *chat, const char *content, struct seen *seen, smallmind_status expected) {
    char request[1024];
    snprintf(request, sizeof request, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}]}", content);
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = seen;
    cb.on_kv_cache_access = on_access;
    cb.on_kv_eviction = on_eviction;
    cb.on_kv_budget_exceeded = on_exceeded;
    memset(seen, 0, sizeof *seen);
    char *response = NULL;
    CHECK_STATUS(smallmind_chat_send(chat, request, &cb, &response), expected);
    if (response == NULL) return NULL;
    const char *start = strstr(response, "\"content\":\"");
    char *reply = NULL;
    if (start != NULL) {
        start += strlen("\"content\":\"");
        const char *end = strstr(start, "\"},");
        if (end != NULL) {
            reply = malloc((size_t)(end - start) + 1);
            memcpy(reply, start, (size_t)(end - start));
            reply[end - start] = 0;
        }
    }
    smallmind_string_free(response);
    return reply;
}

static const char *CHAT_OPTIONS = "{\"session_id\": \"c-persist\", \"temperature\": 0, \"max_tokens\": 8}";

static void test_save_and_load_into_a_new_engine(void) {
    smallmind_engine *engine = new_engine("");
    smallmind_chat *chat = NULL;
    CHECK_STATUS(smallmind_chat_create(engine, CHAT_OPTIONS, &chat), SMALLMIND_OK);
    if (chat == NULL) return;
    struct seen seen;
    free(send_text(chat, "What is the capital of France?", &seen, SMALLMIND_OK));
    char with_kv[1200], without_kv[1200];
    path_in_scratch(with_kv, sizeof with_kv, "with-kv.smchat");
    path_in_scratch(without_kv, sizeof without_kv, "without-kv.smchat");
    CHECK_STATUS(smallmind_chat_save(chat, with_kv, "{\"include_kv\": true}"), SMALLMIND_OK);
    CHECK_STATUS(smallmind_chat_save(chat, without_kv, NULL), SMALLMIND_OK);
    char *expected = send_text(chat, "And of Italy?", &seen, SMALLMIND_OK);
    CHECK(expected != NULL && seen.cached > 0, "the original's next turn reuses its cache");

    /* A second engine on the same file: a restart. */
    smallmind_engine *fresh = new_engine("");
    smallmind_chat *loaded = NULL;
    CHECK_STATUS(smallmind_chat_load(fresh, with_kv, NULL, &loaded), SMALLMIND_OK);
    if (loaded != NULL) {
        char *reply = send_text(loaded, "And of Italy?", &seen, SMALLMIND_OK);
        CHECK(reply && expected && strcmp(reply, expected) == 0, "the same greedy reply after a restart");
        CHECK(seen.cached > 0, "the saved KV cache is used: cached_tokens > 0");
        free(reply);
        smallmind_chat_free(loaded);
        loaded = NULL;
    }
    CHECK_STATUS(smallmind_chat_load(fresh, without_kv, "{\"session_id\": \"renamed\"}", &loaded), SMALLMIND_OK);
    if (loaded != NULL) {
        char *history = NULL;
        CHECK_STATUS(smallmind_chat_history(loaded, &history), SMALLMIND_OK);
        CHECK(contains(history, "\"session_id\":\"renamed\""), "load options override the saved ones");
        smallmind_string_free(history);
        char *reply = send_text(loaded, "And of Italy?", &seen, SMALLMIND_OK);
        CHECK(reply && expected && strcmp(reply, expected) == 0, "the same reply, recomputed");
        CHECK(seen.cached == 0, "without the KV cache: cached_tokens 0");
        free(reply);
        smallmind_chat_free(loaded);
    }

    /* Export with the KV cache, import with options. */
    char *exported = NULL;
    CHECK_STATUS(smallmind_chat_export_with_options(chat, "{\"include_kv\": true}", &exported), SMALLMIND_OK);
    CHECK(contains(exported, "\"kv_snapshot\":\"U01LV"), "the export carries the KV section as base64");
    smallmind_chat *imported = NULL;
    CHECK_STATUS(smallmind_chat_import_with_options(fresh, exported, "{\"session_id\": \"copy\"}", &imported),
                 SMALLMIND_OK);
    if (imported != NULL) {
        char *reply = send_text(imported, "And of Spain?", &seen, SMALLMIND_OK);
        CHECK(reply != NULL && seen.cached > 0, "the imported KV cache is used");
        free(reply);
        smallmind_chat_free(imported);
    }
    smallmind_string_free(exported);
    CHECK_STATUS(smallmind_chat_export_with_options(chat, "{\"include_kv\": 1}", &exported),
                 SMALLMIND_ERR_INVALID_JSON);
    CHECK_STATUS(smallmind_chat_export_with_options(chat, "{\"with_kv\": true}", &exported),
                 SMALLMIND_ERR_INVALID_JSON);
    CHECK(contains(smallmind_last_error(), "with_kv"), "the unknown option is named");

    free(expected);
    smallmind_chat_free(chat);
    smallmind_engine_free(fresh);
    smallmind_engine_free(engine);
}

static void test_old_and_bad_files(const char *v1_export) {
    smallmind_engine *engine = new_engine("");
    smallmind_chat *chat = NULL;
    CHECK_STATUS(smallmind_chat_load(engine, v1_export, NULL, &chat), SMALLMIND_OK);
    if (chat != NULL) {
        char *history = NULL;
        CHECK_STATUS(smallmind_chat_history(chat, &history), SMALLMIND_OK);
        CHECK(contains(history, "\"session_id\":\"yesterday\"") && contains(history, "Rome"),
              "the version-1 export migrates with its history");
        smallmind_string_free(history);
        smallmind_chat_free(chat);
        chat = NULL;
    }
    char path[1200];
    path_in_scratch(path, sizeof path, "missing.smchat");
    CHECK_STATUS(smallmind_chat_load(engine, path, NULL, &chat), SMALLMIND_ERR_IO);
    CHECK(contains(smallmind_last_error(), "missing.smchat"), "the message names the file");
    path_in_scratch(path, sizeof path, "garbage.smchat");
    FILE *f = fopen(path, "wb");
    if (f != NULL) {
        fputs("SMLMCHAT\001\000\000", f);
        fclose(f);
    }
    CHECK_STATUS(smallmind_chat_load(engine, path, NULL, &chat), SMALLMIND_ERR_IO);
    CHECK(contains(smallmind_last_error(), "at byte 8"), "a truncated file names the offset");
    CHECK(chat == NULL, "no chat on failure");
    CHECK_STATUS(smallmind_chat_load(engine, v1_export, "{\"sesion_id\": \"x\"}", &chat), SMALLMIND_ERR_INVALID_JSON);
    CHECK_STATUS(smallmind_chat_load(engine, NULL, NULL, &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_load(NULL, v1_export, NULL, &chat), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_chat_load(engine, v1_export, NULL, NULL), SMALLMIND_ERR_INVALID_ARGUMENT);

    CHECK_STATUS(smallmind_chat_create(engine, CHAT_OPTIONS, &chat), SMALLMIND_OK);
    if (chat != NULL) {
        CHECK_STATUS(smallmind_chat_save(chat, NULL, NULL), SMALLMIND_ERR_INVALID_ARGUMENT);
        path_in_scratch(path, sizeof path, "no/such/dir/x.smchat");
        CHECK_STATUS(smallmind_chat_save(chat, path, NULL), SMALLMIND_ERR_IO);
        path_in_scratch(path, sizeof path, "x.smchat");
        CHECK_STATUS(smallmind_chat_save(chat, path, "{\"include_kv\": \"yes\"}"), SMALLMIND_ERR_INVALID_JSON);
        smallmind_chat_free(chat);
    }
    smallmind_engine_free(engine);
}

/* SmolLM2: 30 layers, 3 KV heads of 64, f16: 2 * 30 * 192 * 2 = 23,040 bytes per position;
 * a cache grows in chunks of 64 positions, 1,474,560 bytes. */
#define CHUNK_BYTES 1474560ull

static void test_budget_evicts_and_refuses(void) {
    smallmind_engine *bad = NULL;
    char options[2048];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\", \"kv_budget_bytes\": 0}", model_path);
    CHECK_STATUS(smallmind_engine_create(options, NULL, &bad), SMALLMIND_ERR_INVALID_ARGUMENT);

    /* Room for two chats of one chunk each. */
    smallmind_engine *engine = new_engine(", \"kv_budget_bytes\": 2949120, \"max_sessions\": 8");
    smallmind_chat *chats[3] = {NULL, NULL, NULL};
    const char *ids[3] = {"{\"session_id\": \"b1\", \"temperature\": 0, \"max_tokens\": 4}",
                          "{\"session_id\": \"b2\", \"temperature\": 0, \"max_tokens\": 4}",
                          "{\"session_id\": \"b3\", \"temperature\": 0, \"max_tokens\": 4}"};
    struct seen seen;
    for (int i = 0; i < 3; i++) {
        CHECK_STATUS(smallmind_chat_create(engine, ids[i], &chats[i]), SMALLMIND_OK);
        if (chats[i] == NULL) return;
        free(send_text(chats[i], "Name a fruit.", &seen, SMALLMIND_OK));
    }
    CHECK(seen.evictions == 1 && strcmp(seen.evicted, "b1") == 0, "the third chat evicts the least recently used");
    CHECK(seen.evicted_tokens > 0 && seen.evicted_bytes == CHUNK_BYTES, "the eviction reports its size");
    char *info = NULL;
    CHECK_STATUS(smallmind_engine_info(engine, &info), SMALLMIND_OK);
    CHECK(contains(info, "\"kv_cache\":{\"budget_bytes\":2949120,\"max_sessions\":8,\"used_bytes\":2949120,"
                         "\"sessions\":3,\"resident_sessions\":2,\"evictions\":1"),
          "engine info reports the budget");
    smallmind_string_free(info);

    /* The evicted chat recomputes. */
    free(send_text(chats[0], "Name a color.", &seen, SMALLMIND_OK));
    CHECK(seen.cached == 0 && seen.evictions == 1 && strcmp(seen.evicted, "b2") == 0,
          "its next turn recomputes and evicts the next least recently used");

    /* One chat alone over the budget: 200 more tokens need at least 4 chunks. */
    char *response = NULL;
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = &seen;
    cb.on_kv_budget_exceeded = on_exceeded;
    memset(&seen, 0, sizeof seen);
    CHECK_STATUS(smallmind_chat_send(chats[1], "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi.\"}], \"max_tokens\": 200}",
                                     &cb, &response),
                 SMALLMIND_ERR_BUDGET_EXCEEDED);
    CHECK(contains(smallmind_last_error(), "more than the whole kv_budget_bytes of 2949120"), "the message names the sizes");
    CHECK(seen.exceeded == 1 && seen.requested > 2949120 && seen.requested % CHUNK_BYTES == 0 && seen.budget == 2949120,
          "on_kv_budget_exceeded reports the sizes (whole chunks, more than the budget)");
    CHECK(response == NULL, "no response on failure");
    for (int i = 0; i < 3; i++) smallmind_chat_free(chats[i]);
    CHECK_STATUS(smallmind_engine_info(engine, &info), SMALLMIND_OK);
    CHECK(contains(info, "\"used_bytes\":0,\"sessions\":0"), "freed chats leave the budget");
    smallmind_string_free(info);
    smallmind_engine_free(engine);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf V1_EXPORT.json SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    model_path = argv[1];
    snprintf(scratch, sizeof scratch, "%s", argv[3]);
    test_save_and_load_into_a_new_engine();
    test_old_and_bad_files(argv[2]);
    test_budget_evicts_and_refuses();
    return finish_tests("test_persist");
}
