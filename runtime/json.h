/* JSON <-> Lua values (decoding with jansson; encoding straight to text).
   A table with string keys is an object; a table with keys 1..n, or any table marked by array(),
   is an array; the sentinel `null` is JSON null. Integers stay integers, floats stay floats. */
#ifndef TARRY_JSON_H
#define TARRY_JSON_H

#include <stddef.h>

#include <lua.h>
#include <jansson.h>

/* Tables nest at most this deep, both ways: the encoder refuses a deeper table and the decoder a
   deeper JSON text, so what tarry decodes it can encode again. */
#define TARRY_JSON_MAX_DEPTH 512

/* Adds json_encode, json_decode, array, is_array and null to the table at the top of the stack.
   [-0, +0, e] */
void tarry_json_open(lua_State *L);

/* Where the encoder's text goes, piece by piece (jansson's json_dump_callback_t): 0, or -1 to
   refuse a piece (out of memory). */
typedef int (*tarry_json_out)(const char *text, size_t len, void *data);

/* Writes the Lua value at idx as compact JSON text through out: keys sorted, each real in the
   shortest form that reads back bit-exactly and that PostgreSQL jsonb keeps a real. `path` names
   the value in errors ("args"). If `object_only`, the value must encode as an object. Returns 1;
   or 0 with a message such as "args.tags[3]: cannot encode a function" in err (part of the text
   may have gone out). Raises only memory errors.  [-0, +0, m] */
int tarry_json_write(lua_State *L, int idx, const char *path, int object_only, tarry_json_out out,
                     void *data, char *err, size_t errlen);

/* A growing malloc'd text (p NUL-terminated once anything was written; free(p) when done),
   and the tarry_json_out that appends to it (data: the tarry_json_buf). */
typedef struct tarry_json_buf {
    char *p;
    size_t n, cap;
} tarry_json_buf;

int tarry_json_buf_out(const char *text, size_t len, void *buf);

/* The same text, malloc'd and NUL-terminated (free()), its length in *len if len is not NULL;
   NULL with the message in err (or "out of memory").  [-0, +0, m] */
char *tarry_json_encode(lua_State *L, int idx, const char *path, int object_only, size_t *len,
                        char *err, size_t errlen);

/* s (n bytes of valid UTF-8) as a JSON string token through out, escaped as the encoder escapes:
   quote, backslash and control bytes. 0, or -1 when out refused a piece. */
int tarry_json_write_string(const char *s, size_t n, tarry_json_out out, void *data);

/* Pushes the Lua value of j: objects as plain tables, arrays as marked tables, null as the
   sentinel. Raises if j nests deeper than TARRY_JSON_MAX_DEPTH.  [-0, +1, e] */
void tarry_json_push(lua_State *L, const json_t *j);

/* Parses len bytes of JSON text (any value, not only objects) and pushes its Lua value. When it
   cannot, returns 0, pushes nothing and writes why to err: for a value Lua cannot hold (an
   integer beyond 64 bits, a number beyond a double, nesting deeper than TARRY_JSON_MAX_DEPTH, a
   string jansson refuses) "<root><path>: <problem>", as in "args.n: integer does not fit in 64
   bits"; for malformed JSON, jansson's message with line and column.  [-0, +(0|1), m] */
int tarry_json_decode_as(lua_State *L, const char *text, size_t len, const char *root, char *err,
                         size_t errlen);

/* tarry_json_decode_as with the root named "value".  [-0, +(0|1), m] */
int tarry_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen);

/* Bytes of s before its first invalid UTF-8 sequence (overlong, a surrogate, above U+10FFFF or
   cut short): len when all of s is valid UTF-8. */
size_t tarry_json_utf8_valid(const char *s, size_t len);

#endif
