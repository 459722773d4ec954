// mask: a transform plugin in C (plugin ABI 1, docs/plugin-abi.md). It takes an envelope as
// JSON and returns it with every digit of its `content` replaced by MASK, so that numbers
// (card, phone, account) never reach the next node. Everything else passes unchanged.
//
// Built by `mofa-plugin build plugins/mask` (clang --target=wasm32-wasi with wasi-libc); the
// module imports nothing but the host's log function.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef MASK
#define MASK '#'
#endif

__attribute__((import_module("mofa"), import_name("log")))
extern void mofa_log(int32_t level, const char *text, int32_t len);

__attribute__((export_name("mofa_abi_version")))
int32_t mofa_abi_version(void) { return 1; }

__attribute__((export_name("mofa_alloc")))
void *mofa_alloc(int32_t len) { return malloc(len > 0 ? (size_t)len : 1); }

__attribute__((export_name("mofa_free")))
void mofa_free(void *ptr, int32_t len) { (void)len; free(ptr); }

static int64_t answer(uint8_t status, const char *body, size_t len, char *out) {
    out[0] = (char)status;
    if (body != out + 1) memcpy(out + 1, body, len);
    return ((int64_t)(uintptr_t)out << 32) | (int64_t)(len + 1);
}

static int64_t fail(const char *message) {
    size_t len = strlen(message);
    char *out = malloc(len + 1);
    return answer(1, message, len, out);
}

// Masks the digits of the string value that starts at `at` (just after its opening quote);
// returns the index of its closing quote, or `len` if there is none. Escapes are kept whole:
// the hex digits of a \uXXXX are not masked.
static size_t mask_string(char *s, size_t at, size_t len, int mask, int *count) {
    size_t i = at;
    while (i < len && s[i] != '"') {
        if (s[i] == '\\') {
            i += (i + 1 < len && s[i + 1] == 'u') ? 6 : 2;
            continue;
        }
        if (mask && s[i] >= '0' && s[i] <= '9') {
            s[i] = MASK;
            (*count)++;
        }
        i++;
    }
    return i;
}

__attribute__((export_name("mofa_handle")))
int64_t mofa_handle(const char *in, int32_t in_len) {
    size_t len = (size_t)in_len;
    char *out = malloc(len + 1);
    if (!out) return fail("mask: out of memory");
    char *s = out + 1;
    memcpy(s, in, len);

    // Walk the object's top level: a string right after `{` or `,` is a key; the string
    // after the key "content" and its colon is the value to mask.
    int depth = 0, count = 0, found = 0, expect_key = 0, in_content = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '"') {
            size_t end = mask_string(s, i + 1, len, in_content, &count);
            if (depth == 1 && expect_key) {
                in_content = (end - (i + 1) == 7 && memcmp(s + i + 1, "content", 7) == 0);
                found |= in_content;
                expect_key = 0;
            } else {
                in_content = 0;
            }
            i = end;
        } else if (c == '{' || c == '[') {
            depth++;
            expect_key = (c == '{' && depth == 1);
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',' && depth == 1) {
            expect_key = 1;
            in_content = 0;
        }
    }
    if (depth != 0 || len == 0 || s[0] != '{') {
        free(out);
        return fail("mask: the input is not a JSON object");
    }
    if (!found) {
        free(out);
        return fail("mask: the envelope has no content");
    }
    if (count > 0) {
        static const char note[] = "masked digits in content";
        mofa_log(2, note, sizeof note - 1);
    }
    return answer(0, s, len, out);
}
