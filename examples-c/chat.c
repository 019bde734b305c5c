/* A chat with a local model, streamed as it is generated.
 *   chat [--max-tokens N] [--temperature T] MODEL.gguf            interactive (a REPL)
 *   chat [--max-tokens N] [--temperature T] MODEL.gguf "PROMPT"   one answer, then exit
 * In the REPL: /reset forgets the conversation, /quit or Ctrl-D leaves, Ctrl-C stops a reply.
 * After each reply, a line on stderr gives the prompt, cached and completion tokens, the time
 * to first token and the decode rate. The conversation's history and KV cache live in the
 * chat handle: each turn re-processes only what is new.
 * Build: cc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples-c/chat.c \
 *           -Ltarget/release -lsmallmind */
#define _POSIX_C_SOURCE 200809L /* isatty */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smallmind.h"

/* Set by Ctrl-C; the streaming callback then asks smallmind to stop. */
static volatile sig_atomic_t interrupted = 0;

static void on_interrupt(int signal_number) {
    interrupted = 1;
    signal(signal_number, on_interrupt); /* some C libraries reset the handler */
}

static int32_t print_piece(void *user_data, const char *text, size_t len) {
    (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return interrupted ? 1 : 0; /* non-zero cancels: the reply ends here */
}

static void keep_usage(void *user_data, const char *session_id, const smallmind_usage *usage) {
    (void)session_id;
    *(smallmind_usage *)user_data = *usage;
}

/* A growable string. */
struct text {
    char *data;
    size_t len, cap;
};

static int text_reserve(struct text *t, size_t extra) {
    if (t->len + extra + 1 <= t->cap) return 1;
    size_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + extra + 1) cap *= 2;
    char *data = realloc(t->data, cap);
    if (data == NULL) return 0;
    t->data = data;
    t->cap = cap;
    return 1;
}

static int text_append(struct text *t, const char *s, size_t n) {
    if (!text_reserve(t, n)) return 0;
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = 0;
    return 1;
}

static int text_append_str(struct text *t, const char *s) {
    return text_append(t, s, strlen(s));
}

/* Appends `s` as a JSON string literal. Bytes >= 0x80 pass through: smallmind checks that they
 * are valid UTF-8 and says so when they are not. */
static int text_append_json_string(struct text *t, const char *s) {
    if (!text_append_str(t, "\"")) return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char escaped[8];
        if (*p == '"' || *p == '\\') {
            snprintf(escaped, sizeof escaped, "\\%c", *p);
        } else if (*p < 0x20) {
            snprintf(escaped, sizeof escaped, "\\u%04x", *p);
        } else {
            if (!text_append(t, (const char *)p, 1)) return 0;
            continue;
        }
        if (!text_append_str(t, escaped)) return 0;
    }
    return text_append_str(t, "\"");
}

/* Reads one line without its newline into `line`; 0 at end of input or on an interrupt. */
static int read_line(struct text *line) {
    line->len = 0;
    if (!text_reserve(line, 0)) return 0;
    line->data[0] = 0;
    char chunk[1024];
    while (fgets(chunk, sizeof chunk, stdin) != NULL) {
        size_t n = strlen(chunk);
        int complete = n > 0 && chunk[n - 1] == '\n';
        if (!text_append(line, chunk, complete ? n - 1 : n)) return 0;
        if (complete) return 1;
    }
    return line->len > 0 && !ferror(stdin);
}

/* One turn: sends `prompt`, streams the reply to stdout, prints the usage line to stderr. */
static int chat_turn(smallmind_chat *chat, const char *prompt) {
    struct text request = {NULL, 0, 0};
    int ok = text_append_str(&request, "{\"messages\": [{\"role\": \"user\", \"content\": ") &&
             text_append_json_string(&request, prompt) && text_append_str(&request, "}]}");
    if (!ok) {
        fprintf(stderr, "out of memory\n");
        free(request.data);
        return 0;
    }
    smallmind_usage usage;
    memset(&usage, 0, sizeof usage);
    smallmind_chat_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.user_data = &usage;
    callbacks.on_token = print_piece;
    callbacks.on_request_complete = keep_usage;

    interrupted = 0;
    char *response = NULL;
    smallmind_status status = smallmind_chat_send(chat, request.data, &callbacks, &response);
    free(request.data);
    if (status != SMALLMIND_OK) {
        fprintf(stderr, "error %d: %s\n", (int)status, smallmind_last_error());
        return 0;
    }
    /* The response is JSON with the same figures; the callback already has them as numbers. */
    int cancelled = strstr(response, "\"finish_reason\":\"cancelled\"") != NULL;
    smallmind_string_free(response);
    printf("%s\n", cancelled ? " [stopped]" : "");
    fflush(stdout); /* the reply's last line before the usage line on stderr */
    fprintf(stderr, "[prompt %u tokens, %u cached | completion %u tokens | first token %.0f ms | %.1f tokens/s]\n",
            usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.time_to_first_token_ms,
            usage.decode_tokens_per_second);
    return 1;
}

static int usage_error(const char *program) {
    fprintf(stderr, "usage: %s [--max-tokens N] [--temperature T] MODEL.gguf [PROMPT]\n", program);
    return 2;
}

int main(int argc, char **argv) {
    long max_tokens = 512;
    double temperature = -1; /* the library's default */
    int arg = 1;
    for (; arg < argc && strncmp(argv[arg], "--", 2) == 0; arg += 2) {
        if (arg + 1 >= argc) return usage_error(argv[0]);
        if (strcmp(argv[arg], "--max-tokens") == 0) {
            max_tokens = strtol(argv[arg + 1], NULL, 10);
        } else if (strcmp(argv[arg], "--temperature") == 0) {
            temperature = strtod(argv[arg + 1], NULL);
        } else {
            return usage_error(argv[0]);
        }
    }
    if (arg >= argc || argc - arg > 2) return usage_error(argv[0]);
    const char *model_path = argv[arg];
    const char *prompt = arg + 1 < argc ? argv[arg + 1] : NULL;

    struct text options = {NULL, 0, 0};
    if (!text_append_str(&options, "{\"model_path\": ") || !text_append_json_string(&options, model_path) ||
        !text_append_str(&options, "}")) {
        return 1;
    }
    smallmind_engine *engine = NULL;
    smallmind_status status = smallmind_engine_create(options.data, NULL, &engine);
    free(options.data);
    if (status != SMALLMIND_OK) {
        fprintf(stderr, "could not load the model: %s\n", smallmind_last_error());
        return 1;
    }
    char chat_options[128];
    if (temperature >= 0) {
        snprintf(chat_options, sizeof chat_options, "{\"max_tokens\": %ld, \"temperature\": %g}", max_tokens, temperature);
    } else {
        snprintf(chat_options, sizeof chat_options, "{\"max_tokens\": %ld}", max_tokens);
    }
    smallmind_chat *chat = NULL;
    if (smallmind_chat_create(engine, chat_options, &chat) != SMALLMIND_OK) {
        fprintf(stderr, "could not create the chat: %s\n", smallmind_last_error());
        smallmind_engine_free(engine);
        return 1;
    }
    signal(SIGINT, on_interrupt);

    int ok = 1;
    if (prompt != NULL) {
        ok = chat_turn(chat, prompt);
    } else {
        int terminal = isatty(STDIN_FILENO);
        if (terminal) fprintf(stderr, "Chat with the model. /reset forgets the conversation, /quit leaves, Ctrl-C stops a reply.\n");
        struct text line = {NULL, 0, 0};
        for (;;) {
            if (terminal) {
                printf("> ");
                fflush(stdout);
            }
            interrupted = 0;
            if (!read_line(&line)) break;
            if (strcmp(line.data, "/quit") == 0) break;
            if (strcmp(line.data, "/reset") == 0) {
                smallmind_chat_reset(chat);
                fprintf(stderr, "[conversation forgotten]\n");
                continue;
            }
            if (line.len == 0) continue;
            chat_turn(chat, line.data);
        }
        if (terminal) printf("\n");
        free(line.data);
    }
    smallmind_chat_free(chat);
    smallmind_engine_free(engine);
    return ok ? 0 : 1;
}
