/* Retrieval-augmented answers: the host's retrieve callback supplies chunks for the question
 * (here from a small in-memory knowledge base, ranked by shared words); the library numbers
 * them [1]..[n] in the prompt, and the response's "citations" lists the chunks the answer cites.
 *   rag MODEL.gguf ["question"] */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"

struct doc {
    const char *id, *title, *source, *content;
};

static const struct doc KNOWLEDGE[] = {
    {"kb-1", "Opening hours", "museum-faq.md", "The museum opens at 9:00 and closes at 17:00, every day except Monday."},
    {"kb-2", "Tickets", "museum-faq.md", "A ticket costs 12 euros; children under 12 enter free."},
    {"kb-3", "Getting there", "museum-faq.md", "Tram line 4 stops in front of the museum."},
};

/* How many words (of 4+ letters) of the query occur in the text: a toy ranking. */
static int score(const char *query, const char *text) {
    int hits = 0;
    char word[32];
    size_t n = 0;
    for (const char *c = query;; c++) {
        if (isalpha((unsigned char)*c) && n + 1 < sizeof word) {
            word[n++] = (char)tolower((unsigned char)*c);
            continue;
        }
        word[n] = 0;
        if (n >= 4 && strstr(text, word) != NULL) hits++;
        n = 0;
        if (*c == 0) break;
    }
    return hits;
}

static int32_t retrieve(void *user_data, const char *session_id, const char *query, smallmind_host_result *result) {
    (void)user_data;
    (void)session_id;
    char json[2048] = "[";
    int added = 0;
    for (size_t i = 0; i < sizeof KNOWLEDGE / sizeof KNOWLEDGE[0]; i++) {
        int s = score(query, KNOWLEDGE[i].content) + score(query, KNOWLEDGE[i].title);
        if (s == 0) continue;
        char item[512];
        snprintf(item, sizeof item, "%s{\"id\": \"%s\", \"title\": \"%s\", \"source\": \"%s\", \"content\": \"%s\", \"score\": %d}",
                 added++ ? ", " : "", KNOWLEDGE[i].id, KNOWLEDGE[i].title, KNOWLEDGE[i].source, KNOWLEDGE[i].content, s);
        strncat(json, item, sizeof json - strlen(json) - 2);
    }
    strcat(json, "]");
    printf("[retrieve] \"%s\" -> %d chunk(s)\n", query, added);
    return smallmind_host_result_set(result, json) == SMALLMIND_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [\"question\"]\n", argv[0]);
        return 2;
    }
    const char *question = argc > 2 ? argv[2] : "When does the museum open?";
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\", \"context_length\": 2048}", argv[1]);
    smallmind_engine *engine = NULL;
    smallmind_chat *chat = NULL;
    if (smallmind_engine_create(options, NULL, &engine) != SMALLMIND_OK ||
        smallmind_chat_create(engine, "{\"temperature\": 0}", &chat) != SMALLMIND_OK) {
        fprintf(stderr, "%s\n", smallmind_last_error());
        smallmind_engine_free(engine);
        return 1;
    }
    char request[2048], escaped[1024];
    size_t n = 0;
    for (const char *c = question; *c && n + 2 < sizeof escaped; c++) {
        if (*c == '"' || *c == '\\') escaped[n++] = '\\';
        if ((unsigned char)*c >= 0x20) escaped[n++] = *c;
    }
    escaped[n] = 0;
    snprintf(request, sizeof request, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}], \"max_tokens\": 48}", escaped);

    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.retrieve = retrieve;
    char *response = NULL;
    int failed = smallmind_chat_send(chat, request, &cb, &response) != SMALLMIND_OK;
    if (failed) {
        fprintf(stderr, "%s\n", smallmind_last_error());
    } else {
        printf("[response] %s\n", response);
    }
    smallmind_string_free(response);
    smallmind_chat_free(chat);
    smallmind_engine_free(engine);
    return failed;
}
