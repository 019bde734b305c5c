/* C API tests of tool calling and retrieval against the real default model:
 *   test_tools MODEL.gguf
 * Covers: the loop through execute_tool (two tools, results fed back, the final answer),
 * on_tool_call, max_tool_calls, a host answer that is not UTF-8, execute_tool cancelling,
 * struct_size 0 hiding the tool fields, the retrieve callback and citations, and the rendered
 * prompt showing the chunks. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"
#include "test_util.h"

#define TOOLS                                                                                                     \
    "[{\"type\": \"function\", \"function\": {\"name\": \"calculator\", \"description\": \"Evaluates an "          \
    "arithmetic expression\", \"parameters\": {\"type\": \"object\", \"properties\": {\"expression\": {\"type\": " \
    "\"string\", \"maxLength\": 24}}, \"required\": [\"expression\"], \"additionalProperties\": false}}},"        \
    " {\"type\": \"function\", \"function\": {\"name\": \"clock\", \"description\": \"The current time in a "      \
    "city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", "            \
    "\"maxLength\": 20}}, \"required\": [\"city\"], \"additionalProperties\": false}}}]"

struct host {
    int calls;
    char names[8][32];
    int telemetry;
    const char *answer; /* what execute_tool answers; NULL: by tool name */
    int cancel;         /* execute_tool returns this */
    smallmind_status set_status;
};

/* Copies the string value of "key" in a compact JSON object (no escapes in the values used here). */
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

static int32_t execute_tool(void *user_data, const char *session_id, const char *call_json,
                            smallmind_host_result *result) {
    (void)session_id;
    struct host *h = user_data;
    char name[32];
    json_string(call_json, "name", name, sizeof name);
    if (h->calls < 8) snprintf(h->names[h->calls], sizeof h->names[0], "%s", name);
    h->calls++;
    if (h->cancel) return h->cancel;
    const char *answer = h->answer ? h->answer : strcmp(name, "calculator") == 0 ? "391" : "14:05";
    h->set_status = smallmind_host_result_set(result, answer);
    return 0;
}

static void on_tool_call(void *user_data, const char *session_id, const char *name, double elapsed_ms) {
    (void)session_id;
    (void)name;
    struct host *h = user_data;
    if (elapsed_ms >= 0) h->telemetry++;
}

static smallmind_chat *new_chat(smallmind_engine *engine) {
    smallmind_chat *chat = NULL;
    CHECK_STATUS(smallmind_chat_create(engine, "{\"temperature\": 0}", &chat), SMALLMIND_OK);
    return chat;
}

static char *send(smallmind_chat *chat, const char *request, const smallmind_chat_callbacks *cb, smallmind_status expected) {
    char *response = NULL;
    CHECK_STATUS(smallmind_chat_send(chat, request, cb, &response), expected);
    return response;
}

static void test_the_loop_runs_both_tools_and_answers(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine);
    struct host h;
    memset(&h, 0, sizeof h);
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = &h;
    cb.execute_tool = execute_tool;
    cb.on_tool_call = on_tool_call;
    char *response = send(chat,
                          "{\"messages\": [{\"role\": \"user\", \"content\": \"Use the clock for Paris and the calculator for 17*23.\"}],"
                          " \"tools\": " TOOLS ", \"tool_choice\": \"required\", \"max_tokens\": 64}",
                          &cb, SMALLMIND_OK);
    printf("loop: %s\n", response ? response : "(none)");
    CHECK(h.calls >= 2 && strcmp(h.names[0], "calculator") == 0 && strcmp(h.names[1], "clock") == 0,
          "the model called the calculator, then the clock, through execute_tool");
    CHECK(h.telemetry == h.calls, "on_tool_call once per call");
    CHECK(contains(response, "\"tool_results\":[{") && contains(response, "\"content\":\"391\"") &&
              contains(response, "\"content\":\"14:05\""),
          "tool_results lists both results");
    CHECK(contains(response, "\"finish_reason\":\"stop\"") && contains(response, "\"content\":\"") &&
              contains(strstr(response, "\"content\":\""), "391"),
          "the final answer uses the calculator's result");
    smallmind_string_free(response);
    smallmind_chat_free(chat);
}

static void test_max_tool_calls_bounds_the_loop(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine);
    struct host h;
    memset(&h, 0, sizeof h);
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = &h;
    cb.execute_tool = execute_tool;
    char *response = send(chat,
                          "{\"messages\": [{\"role\": \"user\", \"content\": \"Use the clock for Paris and the calculator for 17*23.\"}],"
                          " \"tools\": " TOOLS ", \"tool_choice\": \"required\", \"max_tool_calls\": 1, \"max_tokens\": 64}",
                          &cb, SMALLMIND_OK);
    CHECK(h.calls == 1 && strcmp(h.names[0], "calculator") == 0, "exactly max_tool_calls calls ran");
    CHECK(contains(response, "\"finish_reason\":\"tool_calls\"") && contains(response, "max_tool_calls (1) reached"),
          "the send ends on the next calls, with a warning");
    CHECK(contains(response, "\"tool_calls\":[{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"clock\""),
          "message.tool_calls holds the call that did not run, for the host");
    smallmind_string_free(response);
    smallmind_chat_free(chat);
}

static void test_bad_host_answers(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine);
    struct host h;
    memset(&h, 0, sizeof h);
    h.answer = "caf\xe9"; /* Latin-1, not UTF-8 */
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = &h;
    cb.execute_tool = execute_tool;
    const char *request = "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}], \"tools\": " TOOLS
                          ", \"tool_choice\": \"required\", \"max_tokens\": 64}";
    char *response = send(chat, request, &cb, SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(response == NULL && h.set_status == SMALLMIND_ERR_INVALID_ARGUMENT, "a result that is not UTF-8 is refused");
    CHECK(contains(smallmind_last_error(), "the execute_tool callback's result: content is not valid UTF-8"),
          "the error says which callback and what is wrong");

    memset(&h, 0, sizeof h);
    h.cancel = 1;
    response = send(chat, request, &cb, SMALLMIND_OK);
    CHECK(contains(response, "\"finish_reason\":\"cancelled\"") && h.calls == 1, "execute_tool returning non-zero cancels");
    smallmind_string_free(response);

    CHECK_STATUS(smallmind_host_result_set(NULL, "x"), SMALLMIND_ERR_INVALID_ARGUMENT);

    /* struct_size 0: the fields after the first six count as NULL, even when set. */
    memset(&h, 0, sizeof h);
    cb.struct_size = 0;
    response = send(chat, request, &cb, SMALLMIND_OK);
    CHECK(h.calls == 0 && contains(response, "\"finish_reason\":\"tool_calls\""),
          "with struct_size 0 execute_tool is not called: the calls go back to the host");
    smallmind_string_free(response);
    smallmind_chat_free(chat);
}

static int32_t retrieve(void *user_data, const char *session_id, const char *query, smallmind_host_result *result) {
    (void)session_id;
    snprintf(user_data, 128, "%s", query);
    smallmind_host_result_set(result,
                              "[{\"id\": \"kb-7\", \"title\": \"Opening hours\", \"source\": \"faq.md\", \"content\": "
                              "\"The museum opens at 9:00 and closes at 17:00.\", \"score\": 0.8}]");
    return 0;
}

static void test_retrieval(smallmind_engine *engine) {
    smallmind_chat *chat = new_chat(engine);
    char query[128] = {0};
    smallmind_chat_callbacks cb = SMALLMIND_CHAT_CALLBACKS_INIT;
    cb.user_data = query;
    cb.retrieve = retrieve;
    char *response = send(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"When does the museum open?\"}], \"max_tokens\": 24}",
                          &cb, SMALLMIND_OK);
    CHECK(strcmp(query, "When does the museum open?") == 0, "retrieve gets the last user message");
    CHECK(contains(response, "9:00"), "the answer uses the retrieved chunk");
    smallmind_string_free(response);

    char *rendered = NULL;
    CHECK_STATUS(smallmind_chat_render(chat,
                                       "{\"messages\": [{\"role\": \"user\", \"content\": \"When?\"}], \"retrieved_context\": "
                                       "[{\"id\": \"kb-7\", \"title\": \"Opening hours\", \"content\": \"Open at 9:00.\"}]}",
                                       &rendered),
                 SMALLMIND_OK);
    CHECK(contains(rendered, "[1] Opening hours\\nOpen at 9:00."), "the rendered prompt shows the numbered chunk");
    smallmind_string_free(rendered);
    smallmind_chat_free(chat);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    smallmind_engine *engine = NULL;
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\", \"context_length\": 2048}", argv[1]);
    CHECK_STATUS(smallmind_engine_create(options, NULL, &engine), SMALLMIND_OK);
    if (engine == NULL) return finish_tests("test_tools");
    test_the_loop_runs_both_tools_and_answers(engine);
    test_max_tool_calls_bounds_the_loop(engine);
    test_bad_host_answers(engine);
    test_retrieval(engine);
    smallmind_engine_free(engine);
    return finish_tests("test_tools");
}
