/* A host compiled against an older header: tests/c/fixtures/smallmind_abi2_before_tools.h is
 * the header as generated when smallmind_chat_callbacks gained struct_size, before the tool
 * fields (execute_tool, on_tool_call, retrieve) were appended. Its table is smaller; the library
 * must read only struct_size bytes of it (the tables here are malloc'ed at exactly that size, so
 * AddressSanitizer catches any read past the end) and treat the later fields as NULL.
 *   test_old_header MODEL.gguf */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures/smallmind_abi2_before_tools.h"
#include "test_util.h"

static int count_tokens(void *user_data, const char *text, size_t len) {
    (void)text;
    (void)len;
    (*(int *)user_data)++;
    return 0;
}

static int completes = 0;

static void on_complete(void *user_data, const char *session_id, const smallmind_usage *usage) {
    (void)user_data;
    (void)session_id;
    (void)usage;
    completes++;
}

static const char *TOOL_REQUEST =
    "{\"messages\": [{\"role\": \"user\", \"content\": \"What time is it?\"}], \"max_tokens\": 64,"
    " \"temperature\": 0, \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_time\","
    " \"description\": \"The current time\", \"parameters\": {\"type\": \"object\", \"properties\": {}, \"additionalProperties\": false}}}],"
    " \"tool_choice\": \"required\"}";

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    CHECK(smallmind_abi_version() == SMALLMIND_ABI_VERSION, "the library keeps the ABI version of the old header");
    smallmind_engine *engine = NULL;
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\", \"context_length\": 1024}", argv[1]);
    CHECK_STATUS(smallmind_engine_create(options, NULL, &engine), SMALLMIND_OK);
    if (engine == NULL) return finish_tests("test_old_header");
    smallmind_chat *chat = NULL;
    CHECK_STATUS(smallmind_chat_create(engine, "{\"temperature\": 0}", &chat), SMALLMIND_OK);

    /* The old header's initializer: struct_size is the old, smaller sizeof. */
    int tokens = 0;
    smallmind_chat_callbacks init = SMALLMIND_CHAT_CALLBACKS_INIT;
    CHECK(init.struct_size == sizeof(smallmind_chat_callbacks) && init.on_token == NULL, "the initializer sets struct_size only");
    smallmind_chat_callbacks *cb = malloc(sizeof *cb);
    memcpy(cb, &init, sizeof *cb);
    cb->user_data = &tokens;
    cb->on_token = count_tokens;
    cb->on_request_complete = on_complete;
    char *response = NULL;
    CHECK_STATUS(smallmind_chat_send(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 3}", cb, &response),
                 SMALLMIND_OK);
    CHECK(tokens > 0 && completes == 1, "the old table's callbacks run");
    smallmind_string_free(response);

    /* A tool call with the old table: its execute_tool does not exist, so the library must not
     * look for one; the call goes back to the host. */
    response = NULL;
    CHECK_STATUS(smallmind_chat_send(chat, TOOL_REQUEST, cb, &response), SMALLMIND_OK);
    CHECK(contains(response, "\"finish_reason\":\"tool_calls\"") && contains(response, "\"name\":\"get_time\""),
          "without execute_tool in the table the calls are returned to the host");
    if (!contains(response, "\"finish_reason\":\"tool_calls\"")) printf("%s\n", response ? response : "(none)");
    smallmind_string_free(response);

    /* struct_size 0 (a zero-initialised table): only user_data and the first six callbacks. */
    memset(cb, 0, sizeof *cb);
    tokens = 0;
    cb->user_data = &tokens;
    cb->on_token = count_tokens;
    response = NULL;
    CHECK_STATUS(smallmind_chat_send(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 3, \"history\": \"replace\"}", cb, &response),
                 SMALLMIND_OK);
    CHECK(tokens > 0, "a zero-initialised table works");
    smallmind_string_free(response);

    /* A struct_size smaller than any table is refused before anything runs. */
    cb->struct_size = 12;
    response = NULL;
    CHECK_STATUS(smallmind_chat_send(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 3}", cb, &response),
                 SMALLMIND_ERR_INVALID_ARGUMENT);
    CHECK(response == NULL && contains(smallmind_last_error(), "struct_size is 12"), "the error names struct_size");
    free(cb);

    smallmind_chat_free(chat);
    smallmind_engine_free(engine);
    return finish_tests("test_old_header");
}
