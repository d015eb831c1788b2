/* Helpers shared by the fuzz targets: see fuzz.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "fuzz.h"
#include "json.h"

void fuzz_fail(const char *what, const char *detail)
{
    fprintf(stderr, "tarry fuzz: %s: %s\n", what, detail ? detail : "");
    abort();
}

lua_State *fuzz_json_state(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        fuzz_fail("setup", "cannot create a Lua state");
    luaL_openlibs(L);
    lua_newtable(L);
    tarry_json_open(L);
    lua_setglobal(L, "core");
    return L;
}

void fuzz_protected(lua_State *L, lua_CFunction f, const uint8_t *data, size_t size)
{
    int top = lua_gettop(L);
    lua_pushcfunction(L, f);
    lua_pushlightuserdata(L, (void *)data);
    lua_pushinteger(L, (lua_Integer)size);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        if (lua_status(L) != LUA_OK || msg == NULL || strcmp(msg, "not enough memory") != 0)
            fuzz_fail("raised", msg ? msg : "(an error that is not a string)");
    }
    lua_settop(L, top);
}

/* ---- Lua line coverage as libFuzzer extra counters ---- */

#define COUNTERS (1 << 16)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_counters[COUNTERS];

/* The previous location, so that a counter stands for an edge (from line, to line), as AFL's. */
static uintptr_t previous;

static void line_hook(lua_State *L, lua_Debug *ar)
{
    uintptr_t here;
    if (!lua_getinfo(L, "S", ar))
        return;
    here = ((uintptr_t)ar->source * 31u + (uintptr_t)ar->currentline) * 2654435761u;
    lua_counters[(here ^ previous) % COUNTERS]++;
    previous = here >> 1;
}

void fuzz_lua_coverage(lua_State *L)
{
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
}
