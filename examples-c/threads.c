/* Two conversations on one engine at the same time, each on its own thread. The engine (the
 * model's weights, the worker threads) is shared by every thread; each chat has its own history
 * and KV cache and serves one call at a time. With temperature 0 each chat gives the same
 * replies as it would alone.
 *   threads MODEL.gguf
 * Build: cc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude examples-c/threads.c \
 *           -Ltarget/release -lsmallmind -lpthread */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "smallmind.h"

/* stdout is shared: one thread prints at a time. */
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

struct conversation {
    int number;
    smallmind_engine *engine;
    const char *questions[2];
    int failed;
};

static void keep_usage(void *user_data, const char *session_id, const smallmind_usage *usage) {
    (void)session_id;
    *(smallmind_usage *)user_data = *usage;
}

/* The reply's text as the response JSON carries it (still escaped). */
static void print_reply(int number, const char *response, const smallmind_usage *u) {
    const char *content = strstr(response, "\"content\":\"");
    int len = 0;
    if (content != NULL) {
        content += strlen("\"content\":\"");
        while (content[len] && content[len] != '"') len += content[len] == '\\' && content[len + 1] ? 2 : 1;
    }
    pthread_mutex_lock(&print_lock);
    printf("[thread %d] %.*s\n[thread %d] (prompt %u tokens, %u cached; first token after %.0f ms; %.1f tokens/s)\n",
           number, len, content ? content : "", number, u->prompt_tokens, u->cached_tokens, u->time_to_first_token_ms,
           u->decode_tokens_per_second);
    pthread_mutex_unlock(&print_lock);
}

static void *converse(void *arg) {
    struct conversation *c = arg;
    smallmind_chat *chat = NULL;
    /* Creating a chat is thread-safe; this one belongs to this thread. */
    if (smallmind_chat_create(c->engine, "{\"temperature\": 0, \"max_tokens\": 16}", &chat) != SMALLMIND_OK) {
        fprintf(stderr, "[thread %d] %s\n", c->number, smallmind_last_error());
        c->failed = 1;
        return NULL;
    }
    smallmind_usage usage;
    smallmind_chat_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.user_data = &usage;
    callbacks.on_request_complete = keep_usage; /* callbacks run on this thread */
    for (int turn = 0; turn < 2; turn++) {
        char request[512];
        snprintf(request, sizeof request, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}]}", c->questions[turn]);
        char *response = NULL;
        /* smallmind_last_error() is per thread: this message is this thread's. */
        if (smallmind_chat_send(chat, request, &callbacks, &response) != SMALLMIND_OK) {
            fprintf(stderr, "[thread %d] %s\n", c->number, smallmind_last_error());
            c->failed = 1;
            break;
        }
        print_reply(c->number, response, &usage);
        smallmind_string_free(response);
    }
    smallmind_chat_free(chat);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", argv[1]); /* a path without quotes */
    smallmind_engine *engine = NULL;
    if (smallmind_engine_create(options, NULL, &engine) != SMALLMIND_OK) {
        fprintf(stderr, "could not load the model: %s\n", smallmind_last_error());
        return 1;
    }
    struct conversation conversations[2] = {
        {1, engine, {"Name a planet.", "Why is it interesting?"}, 0},
        {2, engine, {"Name a river.", "Where does it flow?"}, 0},
    };
    pthread_t threads[2];
    int started = 0;
    for (; started < 2; started++) {
        if (pthread_create(&threads[started], NULL, converse, &conversations[started]) != 0) break;
    }
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    smallmind_engine_free(engine); /* after every thread is done with it */
    return started == 2 && !conversations[0].failed && !conversations[1].failed ? 0 : 1;
}
