/* What json.c shares with json_diagnose.c only: the steps of a path and the message writer that
   names a value by its path in Lua syntax (args.tags[3], args["my key"]). */
#ifndef TARRY_JSON_INTERNAL_H
#define TARRY_JSON_INTERNAL_H

#include <stddef.h>

#include <lua.h>

/* One step of the path from the root to a value; steps live on the C stack of a recursive walk. */
typedef struct tarry_json_step {
    const struct tarry_json_step *up; /* NULL for a child of the root */
    const void *table;                /* the Lua table this step goes into (encoding only) */
    const char *key;                  /* the object key (its bytes), or NULL for an array index */
    size_t keylen;
    lua_Integer index;
    int level; /* 1 for a child of the root */
} tarry_json_step;

/* Writes "<root><path to at>: <message>" to err (at NULL: the root itself), as the encoder's
   errors read; a path deeper than 16 steps shows its ends around "...". */
void tarry_json_path_error(char *err, size_t errlen, const char *root, const tarry_json_step *at,
                           const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* Why text (len bytes), which jansson refused or which nests deeper than TARRY_JSON_MAX_DEPTH,
   cannot be decoded, as "<root><path>: <problem>" in err. Returns 0, writing nothing, when the
   text is malformed JSON rather than a value tarry cannot hold (then jansson's message is the
   better one). */
int tarry_json_diagnose(const char *text, size_t len, const char *root, char *err, size_t errlen);

#endif
