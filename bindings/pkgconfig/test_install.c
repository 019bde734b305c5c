/* Built by scripts/test-bindings against an installed copy of smallmind, with nothing but
 * `pkg-config --cflags --libs smallmind`: the header, the library, its soname. It loads the
 * model given as argv[1] and tokenizes a text whose ids llama.cpp recorded
 * (tests/oracle/llamacpp-greedy.json, SmolLM2-135M-Instruct case "a"). */
#include <smallmind.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf EXPECTED_VERSION\n", argv[0]);
        return 2;
    }
    if (strcmp(smallmind_version(), argv[2]) != 0 || smallmind_abi_version() != SMALLMIND_ABI_VERSION) {
        fprintf(stderr, "installed library %s (ABI %u), expected %s (ABI %d)\n", smallmind_version(),
                (unsigned)smallmind_abi_version(), argv[2], SMALLMIND_ABI_VERSION);
        return 1;
    }
    char options[4096];
    snprintf(options, sizeof options, "{\"model_path\": \"%s\"}", argv[1]);
    smallmind_engine *engine = NULL;
    if (smallmind_engine_create(options, NULL, &engine) != SMALLMIND_OK) {
        fprintf(stderr, "engine: %s\n", smallmind_last_error());
        return 1;
    }
    char *out = NULL;
    smallmind_status status = smallmind_engine_tokenize(
        engine, "{\"text\": \"The capital of France is\", \"parse_special\": true}", &out);
    int ok = status == SMALLMIND_OK && strstr(out, "\"ids\":[504,3575,282,4649,314]") != NULL;
    if (!ok) fprintf(stderr, "tokenize: %s\n", out ? out : smallmind_last_error());
    smallmind_string_free(out);
    smallmind_engine_free(engine);
    printf("installed library %s: %s\n", smallmind_version(), ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
