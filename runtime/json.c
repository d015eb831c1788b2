/* JSON <-> Lua values.
   Encoding walks the Lua value and writes the text as it goes, without raising: a failure is a
   message that names the bad value by its path in Lua syntax (args.tags[3], args["my key"]).
   Decoding parses with jansson, then refuses what a Lua value cannot
   hold (integers beyond 64 bits, numbers beyond a double, nesting deeper than the encoder allows)
   and json_diagnose.c names the place the same way. The array marker and the null sentinel live
   in the registry. */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json.h"
#include "json_internal.h"

#define ARRAY_MT "tarry.array"
#define NULL_MT "tarry.null"
#define GUARD_MT "tarry.json.guard"
#define NOT_OBJECT "must be a table with string keys (a JSON object), got %s"
#define PATH_ENDS 8 /* a deeper path shows its first and last PATH_ENDS steps around "..." */

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF_LIKE(f, a)
#endif

/* Its address is the registry key of the null sentinel. */
static const char null_key = 'n';

/* ---- UTF-8: the sequences jansson accepts ---- */

/* Length of the UTF-8 sequence at p (left bytes available), or 0 if it is invalid: overlong,
   a surrogate, above U+10FFFF or cut short. */
static size_t utf8_seq(const unsigned char *p, size_t left)
{
    size_t i, n = p[0] < 0x80 ? 1 : p[0] < 0xC2 ? 0 : p[0] < 0xE0 ? 2 : p[0] < 0xF0 ? 3
                : p[0] < 0xF5 ? 4 : 0;
    unsigned long c = p[0] & (0xFFu >> (n + 1));
    if (n == 0 || n > left)
        return 0;
    for (i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3F);
    }
    if (n == 3 && (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF)))
        return 0;
    return n == 4 && (c < 0x10000 || c > 0x10FFFF) ? 0 : n;
}

/* Bytes of s before its first invalid UTF-8 sequence (len if s is valid). */
size_t tarry_json_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n, i = 0;
    while (i < len && (n = utf8_seq(p + i, len - i)) > 0)
        i += n;
    return i;
}

/* ---- Encoding: the walk and its error messages ---- */

typedef tarry_json_step Step;

typedef struct Encoder {
    lua_State *L;
    int array_mt, null; /* stack slots of the array metatable and of the null sentinel */
    int want_object;    /* the root must encode as an object */
    const char *root;   /* the root's name in paths */
    char *err;
    size_t errlen;
    tarry_json_out out; /* where the text goes, piece by piece */
    void *out_data;
} Encoder;

static int write_value(const Encoder *e, int idx, const Step *at);

/* Appends to the error message, which is len bytes long; returns the new length (clipped). */
PRINTF_LIKE(3, 4) static size_t put(const Encoder *e, size_t len, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (len + 1 >= e->errlen)
        return len;
    va_start(ap, fmt);
    n = vsnprintf(e->err + len, e->errlen - len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return len;
    return len + (size_t)n < e->errlen ? len + (size_t)n : e->errlen - 1;
}

static int is_name(const char *k, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char c = k[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return 0;
    }
    return n > 0;
}

/* ["key"], with quotes, backslashes, control bytes and the bytes of invalid UTF-8 as Lua escapes. */
static size_t put_quoted(const Encoder *e, size_t len, const char *k, size_t n)
{
    int raw = tarry_json_utf8_valid(k, n) == n;
    size_t i;
    len = put(e, len, "[\"");
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (c == '"' || c == '\\')
            len = put(e, len, "\\%c", c);
        else if (c < 0x20 || c == 0x7F || (c >= 0x80 && !raw))
            len = put(e, len, "\\%03u", (unsigned)c);
        else
            len = put(e, len, "%c", c);
    }
    return put(e, len, "\"]");
}

static size_t put_step(const Encoder *e, size_t len, const Step *s)
{
    if (s->key == NULL)
        return put(e, len, "[" LUA_INTEGER_FMT "]", s->index);
    if (is_name(s->key, s->keylen)) /* keys need no NUL after them: a decoded text's do not */
        return put(e, len, ".%.*s", s->keylen < INT_MAX ? (int)s->keylen : INT_MAX, s->key);
    return put_quoted(e, len, s->key, s->keylen);
}

/* Writes the path to s, of a path `total` steps long. */
static size_t put_path(const Encoder *e, size_t len, const Step *s, int total)
{
    if (s == NULL)
        return put(e, len, "%s", e->root);
    len = put_path(e, len, s->up, total);
    if (s->level > PATH_ENDS && s->level <= total - PATH_ENDS)
        return s->level == PATH_ENDS + 1 ? put(e, len, "...") : len;
    return put_step(e, len, s);
}

/* The path gets the room the message leaves (a long key must not push the reason out); a clipped
   path ends with "..." after its last whole UTF-8 character. */
static void vfail(const Encoder *e, const Step *at, const char *fmt, va_list ap)
{
    char msg[256];
    size_t len, room;
    Encoder path = *e;
    if (e->errlen == 0)
        return;
    vsnprintf(msg, sizeof msg, fmt, ap);
    room = strlen(msg) + 3; /* ": " and the NUL */
    if (e->errlen > room + 8)
        path.errlen = e->errlen - room;
    e->err[0] = '\0';
    len = put_path(&path, 0, at, at ? at->level : 0);
    if (len + 1 >= path.errlen && path.errlen < e->errlen) {
        len = tarry_json_utf8_valid(e->err, len > 3 ? len - 3 : 0);
        len += (size_t)snprintf(e->err + len, e->errlen - len, "...");
    }
    snprintf(e->err + len, e->errlen - len, ": %s", msg);
}

void tarry_json_path_error(char *err, size_t errlen, const char *root, const Step *at,
                           const char *fmt, ...)
{
    Encoder e = {NULL, 0, 0, 0, root, err, errlen, NULL, NULL};
    va_list ap;
    va_start(ap, fmt);
    vfail(&e, at, fmt, ap);
    va_end(ap);
}

/* The same as fail, for the checks that return 1 when they pass; returns 0. */
PRINTF_LIKE(3, 4) static int reject(const Encoder *e, const Step *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(e, at, fmt, ap);
    va_end(ap);
    return 0;
}

/* Hands n bytes of text on; 0 (with the error written) when the output refused them. */
static int emit_text(const Encoder *e, const Step *at, const char *s, size_t n)
{
    return e->out(s, n, e->out_data) == 0 ? 1 : reject(e, at, "out of memory");
}

#define EMIT_LITERAL(e, at, s) emit_text((e), (at), (s), sizeof(s) - 1)

/* The decimal digits of v into the end of buf (24 bytes); returns where they start. */
static char *integer_text(char *end, lua_Integer v)
{
    lua_Unsigned u = v < 0 ? 0u - (lua_Unsigned)v : (lua_Unsigned)v;
    char *p = end;
    do
        *--p = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        *--p = '-';
    return p;
}

static int real_precision(double x, int p);
static size_t real_text(double x, char *buf);

static int write_number(const Encoder *e, int idx, const Step *at)
{
    char buf[400];
    lua_Number x;
    if (lua_isinteger(e->L, idx)) {
        char *end = buf + 24, *p = integer_text(end, lua_tointeger(e->L, idx));
        return emit_text(e, at, p, (size_t)(end - p));
    }
    x = lua_tonumber(e->L, idx);
    if (isnan(x))
        return reject(e, at, "cannot encode NaN");
    if (isinf(x))
        return reject(e, at, "cannot encode %s", x > 0 ? "inf" : "-inf");
    return emit_text(e, at, buf, real_text(x, buf));
}

int tarry_json_write_string(const char *s, size_t n, tarry_json_out out, void *data)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    if (out("\"", 1, data) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t elen = 2;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default: esc[1] = 'u'; esc[4] = hex[c >> 4]; esc[5] = hex[c & 15]; elen = 6; break;
        }
        if ((i > run && out(s + run, i - run, data) != 0) || out(esc, elen, data) != 0)
            return -1;
        run = i + 1;
    }
    if ((n > run && out(s + run, n - run, data) != 0) || out("\"", 1, data) != 0)
        return -1;
    return 0;
}

/* Checks a string (or a key) for what JSON or jsonb cannot hold: 0 (with the error written) if
   bad. */
static int check_text(const Encoder *e, const Step *at, const char *s, size_t len, int key)
{
    size_t good;
    const char *nul;
    if ((good = tarry_json_utf8_valid(s, len)) < len)
        return reject(e, at, "invalid UTF-8 in %s at byte %zu", key ? "key" : "string", good + 1);
    /* PostgreSQL's jsonb cannot store \u0000: refuse it here, with the path, not at insert time */
    if ((nul = memchr(s, 0, len)) != NULL)
        return key
            ? reject(e, at, "NUL byte in key (JSON decoders reject it)")
            : reject(e, at, "NUL byte in string at byte %zu (PostgreSQL's jsonb rejects \\u0000)",
                     (size_t)(nul - s) + 1);
    return 1;
}

static int write_string(const Encoder *e, int idx, const Step *at)
{
    size_t len;
    const char *s = lua_tolstring(e->L, idx, &len);
    if (!check_text(e, at, s, len, 0))
        return 0;
    return tarry_json_write_string(s, len, e->out, e->out_data) == 0 ? 1
                                                                      : reject(e, at, "out of memory");
}

/* What a table's keys make of it. */
typedef struct Shape {
    lua_Integer count, max; /* how many positive integer keys, and the largest */
    size_t strings;         /* how many string keys */
    char odd[64];           /* the first key that is neither, described; "" if none */
    int array;              /* the table encodes as an array */
} Shape;

static void describe_key(lua_State *L, int idx, char *buf, size_t size)
{
    if (lua_isinteger(L, idx))
        snprintf(buf, size, "number (" LUA_INTEGER_FMT ")", lua_tointeger(L, idx));
    else if (lua_type(L, idx) == LUA_TNUMBER)
        snprintf(buf, size, "number (" LUA_NUMBER_FMT ")", lua_tonumber(L, idx));
    else if (lua_type(L, idx) == LUA_TBOOLEAN)
        snprintf(buf, size, "boolean (%s)", lua_toboolean(L, idx) ? "true" : "false");
    else
        snprintf(buf, size, "%s", luaL_typename(L, idx));
}

static void scan(lua_State *L, int t, Shape *s)
{
    s->count = s->max = 0;
    s->strings = 0;
    s->odd[0] = '\0';
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            s->strings++;
        else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0) {
            s->count++;
            if (lua_tointeger(L, -1) > s->max)
                s->max = lua_tointeger(L, -1);
        } else if (s->odd[0] == '\0')
            describe_key(L, -1, s->odd, sizeof s->odd);
    }
}

/* Whether the value at idx has the metatable at stack slot mt. */
static int has_metatable(lua_State *L, int idx, int mt)
{
    int same;
    if (!lua_getmetatable(L, idx))
        return 0;
    same = lua_rawequal(L, -1, mt);
    lua_pop(L, 1);
    return same;
}

/* The smallest index of a sparse array without a value (one is at most count + 1). */
static lua_Integer first_hole(lua_State *L, int t)
{
    lua_Integer i = 1;
    while (lua_rawgeti(L, t, i) != LUA_TNIL) {
        lua_pop(L, 1);
        i++;
    }
    lua_pop(L, 1);
    return i;
}

/* Decides whether table t is an array or an object; 0 (with the error written) if it is neither. */
static int check_shape(const Encoder *e, int t, const Step *at, Shape *s)
{
    int marked = has_metatable(e->L, t, e->array_mt);
    scan(e->L, t, s);
    if (s->odd[0])
        return reject(e, at, s->strings ? "key of type %s in a table with string keys"
                                        : "key of type %s is neither a string nor an array index",
                     s->odd);
    if (s->strings && (s->count || marked))
        return reject(e, at, s->count ? "table mixes array indexes and string keys"
                                     : "table marked as an array has string keys");
    if (s->count < s->max)
        return reject(e, at, "sparse array (index " LUA_INTEGER_FMT " is nil, highest index is "
                     LUA_INTEGER_FMT ")", first_hole(e->L, t), s->max);
    s->array = marked || s->count > 0;
    if (s->array && at == NULL && e->want_object)
        return reject(e, at, NOT_OBJECT, "array");
    return 1;
}

/* Checks that table t may be entered from step at: no cycle, not too deep, room on the stack. */
static int enter(const Encoder *e, int t, const Step *at)
{
    const void *p = lua_topointer(e->L, t);
    const Step *s;
    for (s = at; s != NULL; s = s->up)
        if (s->table == p)
            return reject(e, at, "cycle (table contains itself)");
    if (at && at->level >= TARRY_JSON_MAX_DEPTH)
        return reject(e, at, "nested too deep (more than %d levels)", TARRY_JSON_MAX_DEPTH);
    if (!lua_checkstack(e->L, 4))
        return reject(e, at, "Lua stack overflow");
    return 1;
}

static Step step_into(const Encoder *e, int t, const Step *at)
{
    Step s = {at, lua_topointer(e->L, t), NULL, 0, 0, at ? at->level + 1 : 1};
    return s;
}

static int write_array(const Encoder *e, int t, lua_Integer n, const Step *at)
{
    Step step = step_into(e, t, at);
    if (!EMIT_LITERAL(e, at, "["))
        return 0;
    for (step.index = 1; step.index <= n; step.index++) {
        int ok;
        if (step.index > 1 && !EMIT_LITERAL(e, at, ","))
            return 0;
        lua_rawgeti(e->L, t, step.index);
        ok = write_value(e, lua_gettop(e->L), &step);
        lua_pop(e->L, 1);
        if (!ok)
            return 0;
    }
    return EMIT_LITERAL(e, at, "]");
}

typedef struct Key {
    const char *s;
    size_t n;
} Key;

/* Byte order, a prefix first: the order jansson's JSON_SORT_KEYS gave (keys hold no NUL). */
static int key_order(const void *pa, const void *pb)
{
    const Key *a = pa, *b = pb;
    int c = memcmp(a->s, b->s, a->n < b->n ? a->n : b->n);
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

/* Writes the object t's members, keys sorted, from its nkeys string keys (a shape checked).
   The key strings stay alive in t, which nothing changes meanwhile. */
static int write_members(const Encoder *e, int t, Key *keys, size_t nkeys, const Step *at)
{
    Step step = step_into(e, t, at);
    size_t i = 0;
    lua_pushnil(e->L);
    while (lua_next(e->L, t)) {          /* every key is a string: check_shape counted nkeys */
        lua_pop(e->L, 1);
        if (i < nkeys) {
            keys[i].s = lua_tolstring(e->L, -1, &keys[i].n);
            i++;
        }
    }
    if (nkeys > 1)
        qsort(keys, nkeys, sizeof *keys, key_order);
    for (i = 0; i < nkeys; i++) {
        int ok;
        step.key = keys[i].s;
        step.keylen = keys[i].n;
        if (!check_text(e, &step, step.key, step.keylen, 1))
            return 0;
        if (!emit_text(e, at, i ? "," : "{", 1)
            || tarry_json_write_string(step.key, step.keylen, e->out, e->out_data) != 0
            || !EMIT_LITERAL(e, at, ":"))
            return reject(e, at, "out of memory");
        lua_pushlstring(e->L, step.key, step.keylen);
        lua_rawget(e->L, t);
        ok = write_value(e, lua_gettop(e->L), &step);
        lua_pop(e->L, 1);
        if (!ok)
            return 0;
    }
    return nkeys ? EMIT_LITERAL(e, at, "}") : EMIT_LITERAL(e, at, "{}");
}

static int write_object(const Encoder *e, int t, size_t nkeys, const Step *at)
{
    Key small[16], *keys = nkeys <= 16 ? small : malloc(nkeys * sizeof *keys);
    int ok;
    if (keys == NULL)
        return reject(e, at, "out of memory");
    ok = write_members(e, t, keys, nkeys, at);
    if (keys != small)
        free(keys);
    return ok;
}

static int write_table(const Encoder *e, int t, const Step *at)
{
    Shape s;
    if (!enter(e, t, at) || !check_shape(e, t, at, &s))
        return 0;
    return s.array ? write_array(e, t, s.count, at) : write_object(e, t, s.strings, at);
}

static int write_value(const Encoder *e, int idx, const Step *at)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? EMIT_LITERAL(e, at, "true") : EMIT_LITERAL(e, at, "false");
    case LUA_TNUMBER: return write_number(e, idx, at);
    case LUA_TSTRING: return write_string(e, idx, at);
    case LUA_TTABLE: return write_table(e, idx, at);
    case LUA_TNIL: return reject(e, at, "cannot encode nil");
    default:
        if (lua_rawequal(L, idx, e->null))
            return EMIT_LITERAL(e, at, "null");
        return reject(e, at, "cannot encode a %s", luaL_typename(L, idx));
    }
}

int tarry_json_write(lua_State *L, int idx, const char *path, int object_only, tarry_json_out out,
                     void *data, char *err, size_t errlen)
{
    Encoder e = {L, 0, 0, object_only, path ? path : "value", err, errlen, out, data};
    int ok;
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 2))
        return reject(&e, NULL, "Lua stack overflow");
    luaL_getmetatable(L, ARRAY_MT);
    e.array_mt = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key);
    e.null = lua_gettop(L);
    if (object_only && lua_type(L, idx) != LUA_TTABLE)
        ok = reject(&e, NULL, NOT_OBJECT, lua_rawequal(L, idx, e.null) ? "null" : luaL_typename(L, idx));
    else
        ok = write_value(&e, idx, NULL);
    lua_pop(L, 2);
    return ok;
}

int tarry_json_buf_out(const char *s, size_t n, void *data)
{
    tarry_json_buf *t = data;
    if (t->cap - t->n < n + 1) {
        size_t cap = t->cap ? t->cap : 64;
        char *p;
        while (cap - t->n < n + 1)
            cap *= 2;
        if ((p = realloc(t->p, cap)) == NULL)
            return -1;
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = '\0';
    return 0;
}

char *tarry_json_encode(lua_State *L, int idx, const char *path, int object_only, size_t *len,
                        char *err, size_t errlen)
{
    tarry_json_buf t = {NULL, 0, 0};
    if (!tarry_json_write(L, idx, path, object_only, tarry_json_buf_out, &t, err, errlen)) {
        free(t.p);
        return NULL;
    }
    if (len)
        *len = t.n;
    return t.p;
}

/* ---- Reals ---- */

/* The smallest precision, at least p, at which "%.*g" gives x back exactly. */
static int real_precision(double x, int p)
{
    char buf[40];
    for (; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    return p;
}

/* Text written to p. */
typedef struct Out {
    char *p;
    size_t n;
} Out;

static void emit(Out *o, const char *s, size_t n)
{
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void emit_zeros(Out *o, size_t n)
{
    memset(o->p + o->n, '0', n);
    o->n += n;
}

/* x in its shortest "%g" form that reads back exactly, into buf (400 bytes); returns its length.
   It keeps a decimal point or an exponent, so that it decodes as a float, and a positive exponent
   is written out (1.5e20 as 150000000000000000000.0): PostgreSQL's jsonb keeps numbers as numeric
   and would print 1e2 as 100, which would come back an integer. */
static size_t real_text(double x, char *buf)
{
    char g[40], *e, *dot;
    Out o = {buf, 0};
    long exp;
    size_t frac;
    snprintf(g, sizeof g, "%.*g", real_precision(x, 1), x);
    if ((e = strchr(g, 'e')) == NULL) {
        emit(&o, g, strlen(g));
        if (strchr(g, '.') == NULL)
            emit(&o, ".0", 2);
        return o.n;
    }
    exp = strtol(e + 1, NULL, 10);
    dot = memchr(g, '.', (size_t)(e - g));
    frac = dot ? (size_t)(e - dot - 1) : 0;
    if (exp < 0) {                                  /* 1e-05 as 1e-5 */
        char digits[8];
        emit(&o, g, (size_t)(e - g));
        emit(&o, digits, (size_t)snprintf(digits, sizeof digits, "e%ld", exp));
        return o.n;
    }
    emit(&o, g, (size_t)((dot ? dot : e) - g));    /* %g's exponent is at least its fraction's digits */
    if (dot)
        emit(&o, dot + 1, frac);
    emit_zeros(&o, (size_t)exp - frac);
    emit(&o, ".0", 2);
    return o.n;
}

/* ---- Decoding ---- */

static int push_json(lua_State *L, const json_t *j, int depth);

/* The pushes return 0, having pushed nothing, when a container lies TARRY_JSON_MAX_DEPTH deep:
   the encoder refuses such a table, so the decoder does not make one. */
static int push_array(lua_State *L, const json_t *a, int depth)
{
    size_t i, n = json_array_size(a);
    lua_createtable(L, n < INT_MAX ? (int)n : INT_MAX, 0);
    for (i = 0; i < n; i++) {
        if (!push_json(L, json_array_get(a, i), depth + 1)) {
            lua_pop(L, 1);
            return 0;
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    luaL_setmetatable(L, ARRAY_MT);
    return 1;
}

static int push_object(lua_State *L, const json_t *o, int depth)
{
    const char *key;
    size_t len, n = json_object_size(o);
    json_t *v;
    lua_createtable(L, 0, n < INT_MAX ? (int)n : INT_MAX);
    json_object_keylen_foreach((json_t *)o, key, len, v) {
        lua_pushlstring(L, key, len);
        if (!push_json(L, v, depth + 1)) {
            lua_pop(L, 2);
            return 0;
        }
        lua_rawset(L, -3);
    }
    return 1;
}

static int push_json(lua_State *L, const json_t *j, int depth)
{
    luaL_checkstack(L, 3, "JSON nested too deep");
    switch (json_typeof(j)) {
    case JSON_OBJECT: return depth < TARRY_JSON_MAX_DEPTH && push_object(L, j, depth);
    case JSON_ARRAY: return depth < TARRY_JSON_MAX_DEPTH && push_array(L, j, depth);
    case JSON_STRING: lua_pushlstring(L, json_string_value(j), json_string_length(j)); break;
    case JSON_INTEGER: lua_pushinteger(L, json_integer_value(j)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(j)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    case JSON_NULL: lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key); break;
    }
    return 1;
}

/* Pushes the Lua value of j.  [-0, +1, e] */
void tarry_json_push(lua_State *L, const json_t *j)
{
    if (!push_json(L, j, 0))
        luaL_error(L, "JSON nested too deep (more than %d levels)", TARRY_JSON_MAX_DEPTH);
}

/* A userdata that owns a jansson value and a dumped text until released, so that a memory error
   raised while they are in use does not leak them. */
typedef struct Guard {
    json_t *json;
    char *text;
} Guard;

static void guard_release(Guard *g)
{
    json_decref(g->json);
    free(g->text);
    g->json = NULL;
    g->text = NULL;
}

static int guard_gc(lua_State *L)
{
    guard_release(lua_touserdata(L, 1));
    return 0;
}

/* [-0, +1, m] */
static Guard *guard_new(lua_State *L)
{
    Guard *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->json = NULL;
    g->text = NULL;
    luaL_setmetatable(L, GUARD_MT);
    return g;
}

/* Parses text and pushes its value; 0 with "<root><path>: <problem>" (or jansson's message on
   malformed JSON) in err when it cannot.  [-0, +(0|1), m] */
int tarry_json_decode_as(lua_State *L, const char *text, size_t len, const char *root, char *err,
                         size_t errlen)
{
    json_error_t je;
    Guard *g;
    int loaded, pushed;
    if (len == 2 && text[0] == '{' && text[1] == '}') {   /* jsonb's text of the commonest args */
        lua_createtable(L, 0, 0);
        return 1;
    }
    g = guard_new(L);
    g->json = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    loaded = g->json != NULL;
    pushed = loaded && push_json(L, g->json, 0);
    guard_release(g);
    lua_remove(L, pushed ? -2 : -1);
    if (pushed)
        return 1;
    if (!tarry_json_diagnose(text, len, root, err, errlen)) {
        if (loaded) /* not reached: the scan finds the depth push_json refused */
            tarry_json_path_error(err, errlen, root, NULL, "nested too deep");
        else
            snprintf(err, errlen, "invalid JSON: %s (line %d, column %d)", je.text, je.line,
                     je.column);
    }
    return 0;
}

int tarry_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen)
{
    return tarry_json_decode_as(L, text, len, "value", err, errlen);
}

/* ---- The Lua functions ---- */

/* core.json_encode(v) -> string; raises "<path>: <problem>" if v has no JSON form. */
static int core_json_encode(lua_State *L)
{
    char err[1024];
    size_t len;
    Guard *g;
    luaL_checkany(L, 1);
    g = guard_new(L);
    g->text = tarry_json_encode(L, 1, "value", 0, &len, err, sizeof err);
    if (g->text == NULL)
        return luaL_error(L, "%s", err);
    lua_pushlstring(L, g->text, len);
    guard_release(g);
    return 1;
}

/* core.json_decode(s) -> value; raises "<path>: <problem>" on what Lua cannot hold, or on
   invalid JSON. */
static int core_json_decode(lua_State *L)
{
    char err[1024];
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (!tarry_json_decode(L, s, len, err, sizeof err))
        return luaL_error(L, "%s", err);
    return 1;
}

/* core.array([t]) -> t marked as a JSON array (a new empty one without t). */
static int core_array(lua_State *L)
{
    if (lua_isnone(L, 1))
        lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    luaL_getmetatable(L, ARRAY_MT);
    if (lua_getmetatable(L, 1) && !lua_rawequal(L, -1, -2))
        return luaL_argerror(L, 1, "table already has a metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

/* core.is_array(v) -> whether v is a table marked as a JSON array. */
static int core_is_array(lua_State *L)
{
    luaL_checkany(L, 1);
    luaL_getmetatable(L, ARRAY_MT);
    lua_pushboolean(L, lua_istable(L, 1) && has_metatable(L, 1, lua_gettop(L)));
    return 1;
}

static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "tarry.null");
    return 1;
}

/* Pushes the null sentinel, made on the first call in a state.  [-0, +1, m] */
static void push_null(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    lua_newuserdatauv(L, 0, 0);
    if (luaL_newmetatable(L, NULL_MT)) {
        lua_pushcfunction(L, null_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &null_key);
}

static const luaL_Reg json_functions[] = {
    {"json_encode", core_json_encode},
    {"json_decode", core_json_decode},
    {"array", core_array},
    {"is_array", core_is_array},
    {NULL, NULL},
};

/* Adds the JSON functions and `null` to the table at the top of the stack.  [-0, +0, e] */
void tarry_json_open(lua_State *L)
{
    luaL_checkstack(L, 3, NULL);
    luaL_newmetatable(L, ARRAY_MT);
    if (luaL_newmetatable(L, GUARD_MT)) {
        lua_pushcfunction(L, guard_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 2);
    luaL_setfuncs(L, json_functions, 0);
    push_null(L);
    lua_setfield(L, -2, "null");
}
