/* Tool calling with the loop run inside the library: the host registers execute_tool, and one
 * smallmind_chat_send calls the model, runs its calls (a calculator and a clock), feeds the
 * results back and returns the answer.
 *   tools MODEL.gguf ["question"] */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smallmind.h"

static const char *TOOLS =
    "[{\"type\": \"function\", \"function\": {\"name\": \"calculator\", \"description\": \"Evaluates an arithmetic "
    "expression with + - * / and parentheses\", \"parameters\": {\"type\": \"object\", \"properties\": "
    "{\"expression\": {\"type\": \"string\", \"maxLength\": 24}}, \"required\": [\"expression\"], "
    "\"additionalProperties\": false}}},"
    " {\"type\": \"function\", \"function\": {\"name\": \"clock\", \"description\": \"The current time (UTC) for a "
    "city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"maxLength\": "
    "20}}, \"required\": [\"city\"], \"additionalProperties\": false}}}]";

/* ------------------------------------------------------------ a tiny calculator */

static const char *cursor;

static double expression(void);

static void skip_spaces(void) {
    while (*cursor == ' ') cursor++;
}

static double factor(void) {
    skip_spaces();
    if (*cursor == '(') {
        cursor++;
        double v = expression();
        skip_spaces();
        if (*cursor == ')') cursor++;
        return v;
    }
    if (*cursor == '-') {
        cursor++;
        return -factor();
    }
    char *end = NULL;
    double v = strtod(cursor, &end);
    cursor = end;
    return v;
}

static double term(void) {
    double v = factor();
    for (;;) {
        skip_spaces();
        if (*cursor == '*' || *cursor == 'x') {
            cursor++;
            v *= factor();
        } else if (*cursor == '/') {
            cursor++;
            v /= factor();
        } else {
            return v;
        }
    }
}

static double expression(void) {
    double v = term();
    for (;;) {
        skip_spaces();
        if (*cursor == '+') {
            cursor++;
            v += term();
        } else if (*cursor == '-') {
            cursor++;
            v -= term();
        } else {
            return v;
        }
    }
}

/* The string value of "key" in the compact call JSON (the values here carry no escapes). */
static void json_string(const char *json, const char *key, char *out, size_t size) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":\"", key);
    out[0] = 0;
    const char *at = strstr(json, needle);
    if (at == NULL) return;
    at += strlen(needle);
    size_t n = 0;
    while (at[n] && at[n] != '"' && n + 1 < size) n++;
    memcpy(out, at, n);
    out[n] = 0;
}

/* ------------------------------------------------------------ the callbacks */

/* call_json is {"id": "call_1", "name": "calculator", "arguments": {...}}. */
static int32_t execute_tool(void *user_data, const char *session_id, const char *call_json,
                            smallmind_host_result *result) {
    (void)user_data;
    (void)session_id;
    char name[64], answer[128];
    json_string(call_json, "name", name, sizeof name);
    if (strcmp(name, "calculator") == 0) {
        char text[64];
        json_string(call_json, "expression", text, sizeof text);
        cursor = text;
        snprintf(answer, sizeof answer, "%g", expression());
    } else if (strcmp(name, "clock") == 0) {
        time_t now = time(NULL);
        struct tm utc;
        gmtime_r(&now, &utc);
        strftime(answer, sizeof answer, "%H:%M UTC", &utc);
    } else {
        snprintf(answer, sizeof answer, "unknown tool %s", name);
    }
    printf("[execute_tool] %s -> %s\n", call_json, answer);
    return smallmind_host_result_set(result, answer) == SMALLMIND_OK ? 0 : 1;
}

static void on_tool_call(void *user_data, const char *session_id, const char *name, double elapsed_ms) {
    (void)user_data;
    (void)session_id;
    printf("[on_tool_call] %s took %.3f ms\n", name, elapsed_ms);
}

static int32_t print_piece(void *user_data, const char *text, size_t len) {
    (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [\"question\"]\n", argv[0]);
        return 2;
    }
    const char *question = argc > 2 ? argv[2] : "Use the clock for Paris and the calculator for 17*23.";
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
    /* The question as a JSON string: escape quotes and backslashes, drop control characters. */
    char escaped[1024];
    size_t n = 0;
    for (const char *c = question; *c && n + 2 < sizeof escaped; c++) {
        if (*c == '"' || *c == '\\') escaped[n++] = '\\';
        if ((unsigned char)*c >= 0x20) escaped[n++] = *c;
    }
    escaped[n] = 0;
    size_t size = strlen(TOOLS) + strlen(escaped) + 256;
    char *request = malloc(size);
    snprintf(request, size,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}], \"tools\": %s, \"tool_choice\": \"required\","
             " \"max_tokens\": 64}",
             escaped, TOOLS);

    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.execute_tool = execute_tool;
    cb.on_tool_call = on_tool_call;
    cb.on_token = print_piece;
    char *response = NULL;
    int failed = smallmind_chat_send(chat, request, &cb, &response) != SMALLMIND_OK;
    if (failed) {
        fprintf(stderr, "%s\n", smallmind_last_error());
    } else {
        printf("\n[response] %s\n", response);
    }
    smallmind_string_free(response);
    free(request);
    smallmind_chat_free(chat);
    smallmind_engine_free(engine);
    return failed;
}
