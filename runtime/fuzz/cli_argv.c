/* libFuzzer target: the command line. The input, split on NUL bytes, is argv for
   require("tarry.cli").parse(argv), which returns the parsed command or raises a usage error and
   never runs the command (no database, no --app file loaded). Anything else it raises (a Lua
   runtime error in the CLI) is a finding, as are crashes, leaks and undefined behaviour. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "fuzz.h"
#include "tarry_private.h"

#ifndef TARRY_FUZZ_LUA_DIR
#error "build with -DTARRY_FUZZ_LUA_DIR=\"<source>/lua\" (scripts/fuzz does)"
#endif

static lua_State *state;

/* Registry keys (by address) of cli.parse and cli.is_usage_error. */
static const char parse_key = 'p', usage_key = 'u';

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL && !lua_istable(L, 1))
        msg = lua_pushfstring(L, "(a %s error value)", luaL_typename(L, 1));
    if (msg != NULL)
        luaL_traceback(L, L, msg, 1);
    return 1;
}

static lua_State *cli_state(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        fuzz_fail("setup", "cannot create a Lua state");
    luaL_openlibs(L);
    tarry_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushliteral(L, TARRY_FUZZ_LUA_DIR "/?.lua;" TARRY_FUZZ_LUA_DIR "/?/init.lua");
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "tarry.cli");
    if (lua_pcall(L, 1, 1, -3) != LUA_OK)
        fuzz_fail("setup: require \"tarry.cli\"", lua_tostring(L, -1));
    if (lua_getfield(L, -1, "parse") != LUA_TFUNCTION)
        fuzz_fail("setup", "tarry.cli has no parse function");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &parse_key);
    lua_getfield(L, -1, "is_usage_error");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &usage_key);
    lua_settop(L, 0);
    fuzz_lua_coverage(L);
    return L;
}

/* Pushes argv: "tarry" at 0, then each NUL-separated piece of the input. */
static void push_argv(lua_State *L, const char *data, size_t size)
{
    lua_Integer n = 0;
    const char *end = data + size, *p = data;
    lua_newtable(L);
    lua_pushliteral(L, "tarry");
    lua_rawseti(L, -2, 0);
    while (p < end) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        const char *stop = nul ? nul : end;
        lua_pushlstring(L, p, (size_t)(stop - p));
        lua_rawseti(L, -2, ++n);
        p = nul ? nul + 1 : end;
    }
}

/* Whether the error at the top is a usage error: cli.is_usage_error says so when it exists,
   else any error object or message counts as one. */
static int is_usage_error(lua_State *L)
{
    int usage;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &usage_key) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return 1;
    }
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
    usage = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return usage;
}

/* [-0, +0, m]  (data, size) -> nothing */
static int parse(lua_State *L)
{
    const char *data = lua_touserdata(L, 1);
    size_t size = (size_t)lua_tointeger(L, 2);
    lua_pushcfunction(L, traceback);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &parse_key);
    push_argv(L, data, size);
    if (lua_pcall(L, 1, 1, -3) == LUA_OK) {
        if (!lua_istable(L, -1))
            fuzz_fail("cli.parse", "returned something other than a table");
    } else if (!is_usage_error(L)) {
        fuzz_fail("cli.parse raised an error that is not a usage error", lua_tostring(L, -1));
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (state == NULL)
        state = cli_state();
    fuzz_protected(state, parse, data, size);
    return 0;
}
