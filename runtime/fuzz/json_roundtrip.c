/* libFuzzer target: the JSON round trip. Whatever tarry_json_decode accepts is encoded again
   (tarry_json_encode) and decoded once more; the two Lua values must be equal,
   integers exactly and floats bit for bit, arrays still marked, and encoding the second value must
   give the same text. The encoder may refuse only what it documents refusing of decoded JSON:
   NUL bytes (PostgreSQL's jsonb cannot store \u0000) and nesting deeper than it allows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "fuzz.h"
#include "json.h"

static lua_State *state;

/* Whether the values at the absolute indexes a and b are equal (tables compared deeply). */
static int same(lua_State *L, int a, int b);

/* Two tables: the same array marking, the same keys, equal values under each. */
static int same_table(lua_State *L, int a, int b)
{
    int ma = lua_getmetatable(L, a), mb = lua_getmetatable(L, b);
    size_t na = 0, nb = 0;
    if (ma != mb || (ma && !lua_rawequal(L, -1, -2)))
        return 0;
    lua_pop(L, ma + mb);
    luaL_checkstack(L, 4, "too deep to compare");
    lua_pushnil(L);
    while (lua_next(L, a)) {
        na++;
        lua_pushvalue(L, -2);
        lua_rawget(L, b);
        if (!same(L, lua_gettop(L) - 1, lua_gettop(L))) {
            lua_pop(L, 3);
            return 0;
        }
        lua_pop(L, 2);
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
        nb++;
        lua_pop(L, 1);
    }
    return na == nb;
}

static int same(lua_State *L, int a, int b)
{
    if (lua_type(L, a) != lua_type(L, b))
        return 0;
    switch (lua_type(L, a)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, a) != lua_isinteger(L, b))
            return 0;
        if (lua_isinteger(L, a))
            return lua_tointeger(L, a) == lua_tointeger(L, b);
        {
            lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
            return memcmp(&x, &y, sizeof x) == 0;
        }
    case LUA_TTABLE: return same_table(L, a, b);
    default: return lua_rawequal(L, a, b);
    }
}

/* Encodes the value at the top; returns the malloc'd text, or NULL with the refusal in err. */
static char *encode(lua_State *L, char *err, size_t errlen)
{
    char *text = tarry_json_encode(L, -1, "value", 0, NULL, err, errlen);
    size_t n, oom = sizeof ": out of memory" - 1;
    if (text == NULL && (n = strlen(err)) >= oom && strcmp(err + n - oom, ": out of memory") == 0)
        fuzz_fail("encode", "out of memory");                  /* the reason, not a key in the path */
    return text;
}

static int refusal_allowed(const char *err)
{
    return strstr(err, ": NUL byte in ") != NULL || strstr(err, ": nested too deep") != NULL;
}

/* Decodes text as the round trip's second step; a refusal of tarry's own output is a finding. */
static void decode_again(lua_State *L, const char *text, const char *first)
{
    char err[256] = "";
    if (!tarry_json_decode(L, text, strlen(text), err, sizeof err)) {
        fprintf(stderr, "input decoded to: %s\n", first);
        fuzz_fail("the encoder's output does not decode", err);
    }
}

/* [-0, +0, m]  (data, size) -> nothing */
static int roundtrip(lua_State *L)
{
    const char *data = lua_touserdata(L, 1);
    size_t size = (size_t)lua_tointeger(L, 2);
    char err[1024] = "";
    char *text, *again;
    if (!tarry_json_decode(L, data, size, err, sizeof err))
        return 0;
    if ((text = encode(L, err, sizeof err)) == NULL) {
        if (!refusal_allowed(err))
            fuzz_fail("the encoder refused a decoded value", err);
        return 0;
    }
    decode_again(L, text, text);
    if (!same(L, lua_gettop(L) - 1, lua_gettop(L))) {
        fprintf(stderr, "encoded as: %s\n", text);
        free(text);
        fuzz_fail("round trip", "the value decoded again differs");
    }
    again = encode(L, err, sizeof err);
    if (again == NULL || strcmp(text, again) != 0) {
        fprintf(stderr, "first: %s\nagain: %s\n", text, again ? again : err);
        fuzz_fail("round trip", "encoding is not stable");
    }
    free(again);
    free(text);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (state == NULL)
        state = fuzz_json_state();
    fuzz_protected(state, roundtrip, data, size);
    return 0;
}
