/* Pulls a record out of free text: the reply is constrained by a JSON schema, so it always
 * parses and validates (or the call fails and says why), whatever the model's size.
 *   json MODEL.gguf ["free text"]
 * Prints the record the model wrote, then its fields one per line. The reply is compact JSON
 * (no whitespace) and its keys are the schema's, which is what lets this example read the
 * fields with strstr; a real program would hand the record to its JSON parser. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smallmind.h"

static const char *const SCHEMA =
    "{\"type\": \"object\", \"additionalProperties\": false,"
    " \"required\": [\"name\", \"age\", \"city\", \"email\"],"
    " \"properties\": {"
    "  \"name\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 40},"
    "  \"age\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 130},"
    "  \"city\": {\"type\": \"string\", \"maxLength\": 40},"
    "  \"email\": {\"type\": \"string\", \"pattern\": \"^[a-z.]+@[a-z]+\\\\.[a-z]+$\"}}}";

/* Copies `text` into `out` as the inside of a JSON string. */
static void json_escape(const char *text, char *out, size_t size) {
    size_t n = 0;
    for (const char *c = text; *c && n + 3 < size; c++) {
        if (*c == '"' || *c == '\\') out[n++] = '\\';
        if ((unsigned char)*c >= 0x20) out[n++] = *c;
    }
    out[n] = 0;
}

/* The response's message content, unescaped into `out`: the string after "content":" up to
 * its closing quote. Returns 0 when the response has none. */
static int message_content(const char *response, char *out, size_t size) {
    const char *c = strstr(response, "\"content\":\"");
    if (c == NULL) return 0;
    size_t n = 0;
    for (c += strlen("\"content\":\""); *c && *c != '"' && n + 1 < size; c++) {
        if (*c == '\\' && c[1] != 0) c++; /* the schema's strings hold no \u escapes here */
        out[n++] = *c;
    }
    out[n] = 0;
    return 1;
}

/* Prints the value of "key" in the compact record: a string up to its quote, a number up to
 * the next comma or brace. */
static void print_field(const char *record, const char *key) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":", key);
    const char *value = strstr(record, needle);
    if (value == NULL) return;
    value += strlen(needle);
    size_t length = *value == '"' ? strcspn(value + 1, "\"") + 2 : strcspn(value, ",}");
    printf("%-6s %.*s\n", key, (int)length, value);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [\"free text\"]\n", argv[0]);
        return 2;
    }
    const char *text = argc > 2 ? argv[2]
                                : "Hello, my name is Maria Lopez. I am 34 years old and I live in Lisbon. "
                                  "You can write to me at maria@example.org.";
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", argv[1]);
    smallmind_engine *engine = NULL;
    smallmind_chat *chat = NULL;
    if (smallmind_engine_create(options, NULL, &engine) != SMALLMIND_OK ||
        smallmind_chat_create(engine, "{\"temperature\": 0}", &chat) != SMALLMIND_OK) {
        fprintf(stderr, "%s\n", smallmind_last_error());
        smallmind_engine_free(engine);
        return 1;
    }
    char escaped[2048];
    json_escape(text, escaped, sizeof escaped);
    size_t size = strlen(escaped) + strlen(SCHEMA) + 512;
    char *request = malloc(size);
    if (request == NULL) return 1;
    snprintf(request, size,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"Extract the person's name, age, city and email from: %s\"}],"
             " \"max_tokens\": 96,"
             " \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"person\", \"strict\": true, \"schema\": %s}}}",
             escaped, SCHEMA);

    char *response = NULL;
    int failed = smallmind_chat_send(chat, request, NULL, &response) != SMALLMIND_OK;
    char record[2048];
    if (failed) {
        fprintf(stderr, "%s\n", smallmind_last_error());
    } else if (strstr(response, "\"finish_reason\":\"length\"") != NULL) {
        fprintf(stderr, "max_tokens ran out before the record was complete: %s\n", response);
        failed = 1;
    } else if (!message_content(response, record, sizeof record)) {
        fprintf(stderr, "the response has no content: %s\n", response);
        failed = 1;
    } else {
        printf("%s\n", record);
        print_field(record, "name");
        print_field(record, "age");
        print_field(record, "city");
        print_field(record, "email");
    }
    free(request);
    smallmind_string_free(response);
    smallmind_chat_free(chat);
    smallmind_engine_free(engine);
    return failed;
}
