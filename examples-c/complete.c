/* Streams a raw completion of a prompt from a model.
 *   complete MODEL.gguf "The capital of France is" [max_tokens]
 * Build: cc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples-c/complete.c -Ltarget/release -lsmallmind */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "smallmind.h"

static int32_t print_piece(void *user_data, const char *text, size_t len) {
    (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* keep going */
}

static void print_usage_line(void *user_data, const char *session_id, const smallmind_usage *u) {
    (void)user_data;
    (void)session_id;
    fprintf(stderr, "\n[%u prompt + %u generated tokens; first token after %.0f ms; %.1f tokens/s]\n",
            u->prompt_tokens, u->completion_tokens, u->time_to_first_token_ms, u->decode_tokens_per_second);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [MAX_TOKENS]\n", argv[0]);
        return 2;
    }
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", argv[1]);
    smallmind_engine *engine = NULL;
    if (smallmind_engine_create(options, NULL, &engine) != SMALLMIND_OK) {
        fprintf(stderr, "could not load the model: %s\n", smallmind_last_error());
        return 1;
    }

    /* The prompt goes into JSON: the library parses it, so quote it with a JSON encoder in a real
     * program. Here we only escape quotes and backslashes. */
    char request[8192];
    size_t n = 0;
    n += (size_t)snprintf(request, sizeof request, "{\"prompt\": \"");
    for (const char *p = argv[2]; *p && n < sizeof request - 128; p++) {
        if (*p == '"' || *p == '\\') request[n++] = '\\';
        request[n++] = *p;
    }
    snprintf(request + n, sizeof request - n, "\", \"max_tokens\": %d, \"temperature\": 0}",
             argc > 3 ? atoi(argv[3]) : 64);

    smallmind_chat_callbacks callbacks = {0};
    callbacks.on_token = print_piece;
    callbacks.on_request_complete = print_usage_line;
    fputs(argv[2], stdout);
    char *response = NULL;
    smallmind_status status = smallmind_engine_complete(engine, request, &callbacks, &response);
    if (status != SMALLMIND_OK) {
        fprintf(stderr, "completion failed (%d): %s\n", (int)status, smallmind_last_error());
    }
    smallmind_string_free(response);
    smallmind_engine_free(engine);
    return status == SMALLMIND_OK ? 0 : 1;
}
