/* A panic inside a forward pass (injected: SMALLMIND_DEBUG_INJECT_PANIC names the chat's
 * session id) is caught at the boundary: the send returns SMALLMIND_ERR_INTERNAL with the
 * panic's message, carried from the worker thread; that chat refuses sends until
 * smallmind_chat_reset, then works again and replies exactly as a fresh chat does; other
 * chats on the same engine are unaffected.
 * Usage: test_panic MODEL.gguf (the environment variable must be set to "victim"). */
#define _POSIX_C_SOURCE 200809L /* unsetenv */
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"
#include "test_util.h"

static const char *REQUEST =
    "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}],\"max_tokens\":4,\"temperature\":0}";

/* The reply text of a send, or NULL; the caller frees it. */
static char *send(smallmind_chat *chat, smallmind_status expected) {
    char *response = NULL;
    smallmind_status st = smallmind_chat_send(chat, REQUEST, NULL, &response);
    CHECK_STATUS(st, expected);
    if (st != SMALLMIND_OK) {
        CHECK(response == NULL, "no output on failure");
        return NULL;
    }
    return response;
}

/* The reply's "content" string as it stands in the JSON (escapes kept), or "". */
static const char *content_of(const char *response) {
    static char buf[2][1024];
    static int which = 0;
    char *out = buf[which ^= 1];
    out[0] = '\0';
    const char *c = response ? strstr(response, "\"content\":\"") : NULL;
    if (c == NULL) return out;
    c += strlen("\"content\":\"");
    size_t n = 0;
    while (c[n] != '\0' && c[n] != '"' && n + 1 < sizeof buf[0]) {
        if (c[n] == '\\' && c[n + 1] != '\0') n++;
        n++;
    }
    memcpy(out, c, n);
    out[n] = '\0';
    return out;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    const char *armed = getenv("SMALLMIND_DEBUG_INJECT_PANIC");
    CHECK(armed != NULL && strcmp(armed, "victim") == 0, "the hook is armed for 'victim'");

    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\":\"%s\",\"threads\":2}", argv[1]);
    smallmind_engine *engine = NULL;
    CHECK_STATUS(smallmind_engine_create(options, NULL, &engine), SMALLMIND_OK);
    if (engine == NULL) return finish_tests("test_panic");

    smallmind_chat *victim = NULL, *bystander = NULL, *reference = NULL;
    CHECK_STATUS(smallmind_chat_create(engine, "{\"session_id\":\"victim\"}", &victim),
                 SMALLMIND_OK);
    CHECK_STATUS(smallmind_chat_create(engine, "{\"session_id\":\"bystander\"}", &bystander),
                 SMALLMIND_OK);
    CHECK_STATUS(smallmind_chat_create(engine, "{\"session_id\":\"reference\"}", &reference),
                 SMALLMIND_OK);

    char *expected = send(reference, SMALLMIND_OK);
    CHECK(expected != NULL, "a chat that is not named replies");

    /* The injected panic: INTERNAL, and the message says what panicked, through the pool. */
    CHECK(send(victim, SMALLMIND_ERR_INTERNAL) == NULL, "the panicking send has no output");
    const char *err = smallmind_last_error();
    CHECK(contains(err, "injected panic (SMALLMIND_DEBUG_INJECT_PANIC)"), "the panic's message");
    CHECK(contains(err, "a part of a parallel kernel panicked"), "carried through the pool");

    /* The chat is marked broken: later sends fail, without running, until reset. */
    CHECK(send(victim, SMALLMIND_ERR_INTERNAL) == NULL, "a broken chat refuses sends");
    CHECK(contains(smallmind_last_error(), "smallmind_chat_reset"), "the message says to reset");
    CHECK(send(victim, SMALLMIND_ERR_INTERNAL) == NULL, "still refused");

    /* Other chats on the same engine are unaffected. */
    char *other = send(bystander, SMALLMIND_OK);
    CHECK(other != NULL && strcmp(content_of(other), content_of(expected)) == 0,
          "another chat replies as before");

    /* After reset the victim works again (its next forward pass is not armed: the hook
     * fires once per send, so disarm it for the rest of the run) and replies exactly as a
     * fresh chat does: its KV cache was rolled back, not left with stray rows. */
    CHECK_STATUS(smallmind_chat_reset(victim), SMALLMIND_OK);
    unsetenv("SMALLMIND_DEBUG_INJECT_PANIC");
    char *again = send(victim, SMALLMIND_OK);
    CHECK(again != NULL && strcmp(content_of(again), content_of(expected)) == 0,
          "after reset the chat replies as a fresh chat does");

    smallmind_string_free(expected);
    smallmind_string_free(other);
    smallmind_string_free(again);
    smallmind_chat_free(victim);
    smallmind_chat_free(bystander);
    smallmind_chat_free(reference);
    smallmind_engine_free(engine);
    return finish_tests("test_panic");
}
