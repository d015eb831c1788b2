/* Why a JSON text cannot be decoded, and where. When jansson refuses a text (an integer beyond
   64 bits, a real beyond a double, a string it rejects) or the decoder finds it nesting deeper
   than TARRY_JSON_MAX_DEPTH, a second walk over the text finds the first such value and names it
   by its path, as the encoder names what it cannot encode: "args.n: integer does not fit in 64
   bits". The walk runs only after a failed decode and leaves the grammar to jansson: on malformed
   text it gives up, and jansson's message (with line and column) stands. */
#include <string.h>

#include <jansson.h>

#include "json.h"
#include "json_internal.h"

typedef tarry_json_step Step;

typedef struct Scan {
    const char *p, *end;
    const char *root; /* the root's name in paths */
    char *err;
    size_t errlen;
} Scan;

/* What a scan step returns: the text is malformed here, the problem is found (and written to
   err), or this value is fine. */
enum { MALFORMED = -1, FOUND = 0, FINE = 1 };

#define LOAD_FLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)

static int scan_value(Scan *s, const Step *at);

static char peek(const Scan *s)
{
    return s->p < s->end ? *s->p : '\0';
}

static void skip_space(Scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int scan_literal(Scan *s)
{
    static const char *const words[] = {"true", "false", "null"};
    size_t i, n;
    for (i = 0; i < sizeof words / sizeof words[0]; i++) {
        n = strlen(words[i]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, words[i], n) == 0) {
            s->p += n;
            return FINE;
        }
    }
    return MALFORMED;
}

/* Moves past the string token at s->p, quotes included, and gives it in tok and len. */
static int string_token(Scan *s, const char **tok, size_t *len)
{
    const char *q = s->p + 1;
    while (q < s->end && *q != '"')
        q += *q == '\\' ? 2 : 1;
    if (q >= s->end)
        return MALFORMED;
    *tok = s->p;
    *len = (size_t)(q + 1 - s->p);
    s->p = q + 1;
    return FINE;
}

/* Whether a string token is its own value: no escape, no control byte, valid UTF-8. */
static int plain(const char *tok, size_t len)
{
    size_t i;
    for (i = 1; i + 1 < len; i++)
        if ((unsigned char)tok[i] < 0x20 || tok[i] == '\\')
            return 0;
    return tarry_json_utf8_valid(tok + 1, len - 2) == len - 2;
}

static int scan_string(Scan *s, const Step *at)
{
    const char *tok;
    size_t len;
    json_error_t je;
    json_t *j;
    if (string_token(s, &tok, &len) != FINE)
        return MALFORMED;
    if (plain(tok, len))
        return FINE;
    if ((j = json_loadb(tok, len, LOAD_FLAGS, &je)) != NULL) {
        json_decref(j);
        return FINE;
    }
    tarry_json_path_error(s->err, s->errlen, s->root, at, "%s", je.text);
    return FOUND;
}

static int has_exponent(const char *tok, size_t len)
{
    return memchr(tok, 'e', len) != NULL || memchr(tok, 'E', len) != NULL;
}

/* Whether a number token certainly fits: up to 18 digits, or a real without an exponent whose
   integral part is shorter than DBL_MAX's 309 digits. */
static int surely_fits(const char *tok, size_t len, int real)
{
    return real ? !has_exponent(tok, len) && len < 300 : len <= 18;
}

static int scan_number(Scan *s, const Step *at)
{
    const char *tok = s->p;
    size_t len;
    int real;
    json_error_t je;
    json_t *j;
    while (s->p < s->end && *s->p != '\0' && strchr("0123456789+-.eE", *s->p))
        s->p++;
    len = (size_t)(s->p - tok);
    real = memchr(tok, '.', len) != NULL || has_exponent(tok, len);
    if (surely_fits(tok, len, real))
        return FINE;
    if ((j = json_loadb(tok, len, JSON_DECODE_ANY, &je)) != NULL) {
        json_decref(j);
        return FINE;
    }
    if (json_error_code(&je) != json_error_numeric_overflow)
        return MALFORMED;
    tarry_json_path_error(s->err, s->errlen, s->root, at, real ? "number does not fit in a double"
                                                               : "integer does not fit in 64 bits");
    return FOUND;
}

static int scan_array(Scan *s, const Step *at)
{
    Step step = {at, NULL, NULL, 0, 0, at ? at->level + 1 : 1};
    int r;
    s->p++;
    skip_space(s);
    if (peek(s) == ']') {
        s->p++;
        return FINE;
    }
    for (step.index = 1;; step.index++) {
        if ((r = scan_value(s, &step)) != FINE)
            return r;
        skip_space(s);
        if (peek(s) == ']') {
            s->p++;
            return FINE;
        }
        if (peek(s) != ',')
            return MALFORMED;
        s->p++;
    }
}

/* Reads a key into step: its bytes in the text, or decoded by jansson when it has escapes
   (*owned then holds the decoded string). `object` is the step to the object. */
static int scan_key(Scan *s, Step *step, const Step *object, json_t **owned)
{
    const char *tok;
    size_t len;
    json_error_t je;
    if (peek(s) != '"' || string_token(s, &tok, &len) != FINE)
        return MALFORMED;
    if (plain(tok, len)) {
        step->key = tok + 1;
        step->keylen = len - 2;
        return FINE;
    }
    if ((*owned = json_loadb(tok, len, LOAD_FLAGS, &je)) == NULL) {
        tarry_json_path_error(s->err, s->errlen, s->root, object, "key: %s", je.text);
        return FOUND;
    }
    step->key = json_string_value(*owned);
    step->keylen = json_string_length(*owned);
    if (memchr(step->key, '\0', step->keylen) == NULL)
        return FINE;
    tarry_json_path_error(s->err, s->errlen, s->root, step,
                          "NUL byte in key (tarry cannot decode it)");
    return FOUND;
}

static int scan_member(Scan *s, Step *step, const Step *object)
{
    json_t *owned = NULL;
    int r;
    skip_space(s);
    r = scan_key(s, step, object, &owned);
    if (r == FINE) {
        skip_space(s);
        if (peek(s) == ':') {
            s->p++;
            r = scan_value(s, step);
        } else {
            r = MALFORMED;
        }
    }
    json_decref(owned);
    return r;
}

static int scan_object(Scan *s, const Step *at)
{
    Step step = {at, NULL, NULL, 0, 0, at ? at->level + 1 : 1};
    int r;
    s->p++;
    skip_space(s);
    if (peek(s) == '}') {
        s->p++;
        return FINE;
    }
    for (;;) {
        if ((r = scan_member(s, &step, at)) != FINE)
            return r;
        skip_space(s);
        if (peek(s) == '}') {
            s->p++;
            return FINE;
        }
        if (peek(s) != ',')
            return MALFORMED;
        s->p++;
    }
}

static int scan_value(Scan *s, const Step *at)
{
    char c;
    skip_space(s);
    c = peek(s);
    if (c == '{' || c == '[') {
        if (at && at->level >= TARRY_JSON_MAX_DEPTH) {
            tarry_json_path_error(s->err, s->errlen, s->root, at,
                                  "nested too deep (more than %d levels)", TARRY_JSON_MAX_DEPTH);
            return FOUND;
        }
        return c == '{' ? scan_object(s, at) : scan_array(s, at);
    }
    if (c == '"')
        return scan_string(s, at);
    if (c == 't' || c == 'f' || c == 'n')
        return scan_literal(s);
    if (c == '-' || (c >= '0' && c <= '9'))
        return scan_number(s, at);
    return MALFORMED;
}

int tarry_json_diagnose(const char *text, size_t len, const char *root, char *err, size_t errlen)
{
    Scan s = {text, text + len, root, err, errlen};
    return scan_value(&s, NULL) == FOUND;
}
