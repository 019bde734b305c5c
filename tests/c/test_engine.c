/* C API tests of the engine-level calls: status codes, last error, ownership, and a real
 * model (path in argv[1]) compared with llama.cpp's greedy output. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"
#include "test_util.h"

static void test_library_identity(void) {
    CHECK(strcmp(smallmind_version(), "0.1.0") == 0, "version string");
    CHECK(smallmind_abi_version() == SMALLMIND_ABI_VERSION, "ABI version matches the header");
    smallmind_string_free(NULL); /* a no-op */
    smallmind_engine_free(NULL);
}

static void test_bad_engine_options(const char *not_gguf_path) {
    smallmind_engine *engine = (smallmind_engine *)0x1;
    CHECK_STATUS(smallmind_engine_create(NULL, NULL, &engine), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "options_json is NULL"), "message names the NULL argument");
    CHECK(engine == (smallmind_engine *)0x1, "output untouched on failure");
    CHECK_STATUS(smallmind_engine_create("{\"model_path\": \"x.gguf\"}", NULL, NULL), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_engine_create("{not json", NULL, &engine), SMALLMIND_ERR_INVALID_JSON);
    CHECK_STATUS(smallmind_engine_create("{\"model_path\": \"m.gguf\", \"treads\": 2}", NULL, &engine),
                 SMALLMIND_ERR_INVALID_JSON);
    CHECK(contains(smallmind_last_error(), "treads"), "message names the unknown field");
    CHECK_STATUS(smallmind_engine_create("{\"model_path\": \"/nonexistent/model.gguf\"}", NULL, &engine),
                 SMALLMIND_ERR_IO);
    CHECK(contains(smallmind_last_error(), "/nonexistent/model.gguf"), "message names the missing file");
    CHECK_STATUS(smallmind_engine_create("{\"model_path\": \"m.gguf\", \"kv_type\": \"q8\"}", NULL, &engine),
                 SMALLMIND_ERR_INVALID_ARGUMENT);
    const char invalid_utf8[] = {'{', '"', 'm', (char)0xff, '"', '}', 0};
    CHECK_STATUS(smallmind_engine_create(invalid_utf8, NULL, &engine), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "UTF-8"), "message says the string is not UTF-8");

    char options[1024];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", not_gguf_path);
    CHECK_STATUS(smallmind_engine_create(options, NULL, &engine), SMALLMIND_ERR_MODEL_LOAD);
    CHECK(engine == (smallmind_engine *)0x1, "output untouched on failure");

    smallmind_status ok = smallmind_engine_info(NULL, NULL);
    CHECK(ok == SMALLMIND_ERR_INVALID_ARGUMENT, "info on NULL engine");
}

struct progress_state {
    int calls;
    float last;
    int abort_at;
};

static int32_t on_progress(void *user_data, float fraction) {
    struct progress_state *s = user_data;
    s->calls++;
    s->last = fraction;
    return s->abort_at > 0 && s->calls >= s->abort_at;
}

struct stream_state {
    char text[8192];
    size_t len;
    int tokens;
    int stop_after;
};

static int32_t on_token(void *user_data, const char *text, size_t len) {
    struct stream_state *s = user_data;
    if (s->len + len < sizeof s->text) {
        memcpy(s->text + s->len, text, len);
        s->len += len;
        s->text[s->len] = 0;
    }
    s->tokens++;
    return s->stop_after > 0 && s->tokens >= s->stop_after;
}

static void test_real_model(const char *model_path) {
    char options[1024];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\", \"threads\": 1, \"kv_type\": \"f32\"}", model_path);

    struct progress_state aborting = {0, 0.0f, 2};
    smallmind_engine_callbacks abort_cb = {&aborting, on_progress, NULL};
    smallmind_engine *engine = NULL;
    CHECK_STATUS(smallmind_engine_create(options, &abort_cb, &engine), SMALLMIND_ERR_CANCELLED);
    CHECK(engine == NULL, "no engine after an aborted load");

    struct progress_state progress = {0, 0.0f, 0};
    smallmind_engine_callbacks cb = {&progress, on_progress, NULL};
    CHECK_STATUS(smallmind_engine_create(options, &cb, &engine), SMALLMIND_OK);
    if (engine == NULL) return;
    CHECK(progress.calls >= 3 && progress.last == 1.0f, "progress reported up to 1.0");

    char *json = NULL;
    CHECK_STATUS(smallmind_engine_info(engine, &json), SMALLMIND_OK);
    CHECK(contains(json, "\"architecture\":\"llama\""), "info names the architecture");
    CHECK(contains(json, "\"n_vocab\":49152"), "info has the vocabulary size");
    CHECK(contains(json, "\"Q4_1\":210"), "info counts tensor types");
    smallmind_string_free(json);

    json = NULL;
    CHECK_STATUS(smallmind_engine_tokenize(engine, "{\"text\": \"The capital of France is\"}", &json), SMALLMIND_OK);
    CHECK(contains(json, "\"ids\":[504,3575,282,4649,314]"), "token ids equal llama.cpp's");
    smallmind_string_free(json);

    json = NULL;
    CHECK_STATUS(smallmind_engine_detokenize(engine, "{\"ids\": [504,3575,282,4649,314]}", &json), SMALLMIND_OK);
    CHECK(contains(json, "\"text\":\"The capital of France is\""), "detokenize gives the text back");
    smallmind_string_free(json);
    CHECK_STATUS(smallmind_engine_detokenize(engine, "{\"ids\": [49152]}", &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_engine_tokenize(engine, "{\"txt\": \"a\"}", &json), SMALLMIND_ERR_INVALID_JSON);

    /* Greedy: llama.cpp's first two tokens are " Paris" (7042) and "." (30). */
    struct stream_state stream = {{0}, 0, 0, 0};
    smallmind_chat_callbacks ccb;
    memset(&ccb, 0, sizeof ccb);
    ccb.user_data = &stream;
    ccb.on_token = on_token;
    json = NULL;
    CHECK_STATUS(smallmind_engine_complete(engine,
                                           "{\"prompt\": \"The capital of France is\", \"temperature\": 0, \"max_tokens\": 4}",
                                           &ccb, &json),
                 SMALLMIND_OK);
    CHECK(contains(json, "\"token_ids\":[7042,30,"), "greedy tokens equal llama.cpp's");
    CHECK(contains(json, "\"finish_reason\":\"length\""), "stopped by max_tokens");
    CHECK(strncmp(stream.text, " Paris.", 7) == 0, "streamed text");
    smallmind_string_free(json);

    struct stream_state cancelling = {{0}, 0, 0, 1};
    ccb.user_data = &cancelling;
    json = NULL;
    CHECK_STATUS(smallmind_engine_complete(engine, "{\"prompt\": \"Once upon a time\", \"temperature\": 0, \"max_tokens\": 50}",
                                           &ccb, &json),
                 SMALLMIND_OK);
    CHECK(contains(json, "\"finish_reason\":\"cancelled\""), "on_token returning non-zero cancels");
    CHECK(cancelling.tokens == 1, "no token after cancelling");
    smallmind_string_free(json);

    CHECK_STATUS(smallmind_engine_complete(engine, "{\"prompt\": \"x\", \"max_tokens\": -1}", NULL, &json),
                 SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "max_tokens"), "message names max_tokens");
    CHECK_STATUS(smallmind_engine_complete(engine, "{\"prompt\": \"x\", \"temperature\": \"hot\"}", NULL, &json),
                 SMALLMIND_ERR_INVALID_JSON);
    CHECK_STATUS(smallmind_engine_complete(engine, "{\"prompt_ids\": [1, 99999999]}", NULL, &json),
                 SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(smallmind_engine_complete(engine, "{}", NULL, &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    /* One rule for every numeric field: out of range is INVALID_ARGUMENT, naming the field. */
    CHECK_STATUS(smallmind_engine_complete(engine, "{\"prompt\": \"x\", \"logprobs\": -1}", NULL, &json),
                 SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "logprobs is -1"), "names logprobs");
    CHECK_STATUS(smallmind_engine_complete(engine, "{\"prompt\": \"x\", \"stop_token_ids\": [49152]}", NULL, &json),
                 SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "stop_token_ids contains 49152"), "refuses a stop id outside the vocabulary");
    CHECK_STATUS(smallmind_engine_detokenize(engine, "{\"ids\": [-1]}", &json), SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(contains(smallmind_last_error(), "ids entries is -1"), "names ids");
    /* seed -1 is random, as in llama.cpp; the seed drawn is below 2^53. */
    CHECK_STATUS(smallmind_engine_complete(engine, "{\"prompt\": \"x\", \"seed\": -1, \"max_tokens\": 1}", NULL, &json),
                 SMALLMIND_OK);
    CHECK(contains(json, "\"seed\":"), "reports the seed");
    smallmind_string_free(json);
    CHECK_STATUS(smallmind_engine_complete(NULL, "{}", NULL, &json), SMALLMIND_ERR_INVALID_ARGUMENT);

    smallmind_engine_free(engine);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf NOT_A_GGUF_FILE\n", argv[0]);
        return 2;
    }
    test_library_identity();
    test_bad_engine_options(argv[2]);
    test_real_model(argv[1]);
    return finish_tests("test_engine");
}
