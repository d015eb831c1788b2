/* libFuzzer target: tarry_json_decode on arbitrary bytes. It must decode or refuse with a
   message ("invalid JSON: ..."), never crash, leak or raise (beyond running out of memory). */
#include <string.h>

#include <lauxlib.h>

#include "fuzz.h"
#include "json.h"

static lua_State *state;

/* The decoded value must be a Lua value JSON can give: nil never, a marked table for arrays. */
static void check_value(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: case LUA_TSTRING: case LUA_TBOOLEAN: case LUA_TTABLE: return;
    case LUA_TUSERDATA:
        lua_getglobal(L, "core");
        lua_getfield(L, -1, "null");
        if (!lua_rawequal(L, idx, -1))
            fuzz_fail("decoded", "a userdata that is not tarry.null");
        lua_pop(L, 2);
        return;
    default: fuzz_fail("decoded", luaL_typename(L, idx));
    }
}

/* [-0, +0, m]  (data, size) -> nothing */
static int decode(lua_State *L)
{
    const char *text = lua_touserdata(L, 1);
    size_t size = (size_t)lua_tointeger(L, 2);
    char err[256] = "";
    int top = lua_gettop(L);
    if (tarry_json_decode(L, text, size, err, sizeof err)) {
        if (lua_gettop(L) != top + 1)
            fuzz_fail("decode", "pushed other than one value");
        check_value(L, -1);
    } else if (lua_gettop(L) != top || strncmp(err, "invalid JSON: ", 14) != 0)
        fuzz_fail("decode refused without a message, or left values", err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (state == NULL)
        state = fuzz_json_state();
    fuzz_protected(state, decode, data, size);
    return 0;
}
