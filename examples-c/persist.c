/* A chat that survives restarts: each run answers one message and saves the whole session,
 * KV cache included, so the next run resumes the conversation without recomputing it.
 *   persist MODEL.gguf STATE_FILE "message"
 * The first run (no STATE_FILE yet) starts a new chat; later runs load it. The save is atomic:
 * a crash or kill at any moment leaves the previous state or the new one. A state file from
 * another model still loads its history (the next response's "warnings" says the KV cache was
 * not used, and that turn recomputes the prompt).
 * Build: cc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples-c/persist.c \
 *           -Ltarget/release -lsmallmind */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"

static int32_t print_piece(void *user_data, const char *text, size_t len) {
    (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static void keep_usage(void *user_data, const char *session_id, const smallmind_usage *usage) {
    (void)session_id;
    *(smallmind_usage *)user_data = *usage;
}

/* {"messages": [{"role": "user", "content": MESSAGE}]} with MESSAGE escaped as a JSON string;
 * the caller frees it. */
static char *user_request(const char *message) {
    const char *head = "{\"messages\": [{\"role\": \"user\", \"content\": \"";
    const char *tail = "\"}]}";
    size_t n = strlen(message);
    char *out = malloc(strlen(head) + 6 * n + strlen(tail) + 1);
    if (out == NULL) return NULL;
    char *p = out + sprintf(out, "%s", head);
    for (const unsigned char *c = (const unsigned char *)message; *c; c++) {
        if (*c == '"' || *c == '\\') {
            *p++ = '\\';
            *p++ = (char)*c;
        } else if (*c < 0x20) {
            p += sprintf(p, "\\u%04x", *c);
        } else {
            *p++ = (char)*c;
        }
    }
    strcpy(p, tail);
    return out;
}

static size_t count(const char *haystack, const char *needle) {
    size_t n = 0;
    for (const char *p = haystack; p && (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

static int fail(const char *what) {
    const char *error = smallmind_last_error();
    fprintf(stderr, "%s: %s\n", what, error ? error : "unknown error");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf STATE_FILE \"message\"\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *state = argv[2], *message = argv[3];

    char options[4096];
    if (snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", model) >= (int)sizeof options) {
        fprintf(stderr, "the model path is too long\n");
        return 2;
    }
    smallmind_engine *engine = NULL;
    if (smallmind_engine_create(options, NULL, &engine) != SMALLMIND_OK) return fail("loading the model");

    smallmind_chat *chat = NULL;
    FILE *existing = fopen(state, "rb");
    if (existing != NULL) {
        fclose(existing);
        if (smallmind_chat_load(engine, state, NULL, &chat) != SMALLMIND_OK) {
            smallmind_engine_free(engine);
            return fail("loading the saved chat");
        }
        char *history = NULL;
        if (smallmind_chat_history(chat, &history) == SMALLMIND_OK) {
            fprintf(stderr, "[resumed %s: %zu messages]\n", state, count(history, "\"role\":"));
            smallmind_string_free(history);
        }
    } else {
        const char *chat_options =
            "{\"system_prompt\": \"You are a helpful assistant. Answer in one short sentence.\","
            " \"temperature\": 0, \"max_tokens\": 32}";
        if (smallmind_chat_create(engine, chat_options, &chat) != SMALLMIND_OK) {
            smallmind_engine_free(engine);
            return fail("creating a chat");
        }
        fprintf(stderr, "[new conversation]\n");
    }

    char *request = user_request(message);
    smallmind_usage usage;
    memset(&usage, 0, sizeof usage);
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = &usage;
    cb.on_token = print_piece;
    cb.on_request_complete = keep_usage;
    char *response = NULL;
    smallmind_status status = request ? smallmind_chat_send(chat, request, &cb, &response) : SMALLMIND_ERR_INTERNAL;
    free(request);
    int rc = 0;
    if (status != SMALLMIND_OK) {
        rc = fail("sending");
    } else {
        printf("\n");
        fprintf(stderr, "[prompt %u tokens, %u cached | completion %u tokens]\n", usage.prompt_tokens,
                usage.cached_tokens, usage.completion_tokens);
        if (strstr(response, "\"warnings\":[]") == NULL) fprintf(stderr, "[response: %s]\n", response);
        smallmind_string_free(response);
        if (smallmind_chat_save(chat, state, "{\"include_kv\": true}") != SMALLMIND_OK) {
            rc = fail("saving the chat");
        } else {
            fprintf(stderr, "[saved to %s]\n", state);
        }
    }
    smallmind_chat_free(chat);
    smallmind_engine_free(engine);
    return rc;
}
