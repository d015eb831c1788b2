/* The tarry executable: a Lua 5.4 interpreter with tarry built in, running lua/tarry/cli.lua. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lualib.h>

#include "tarry_config.h"
#include "tarry_private.h"

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* The directory of the running executable (/proc/self/exe, else argv[0]) into dir; 0 if unknown. */
static int exe_dir(const char *argv0, char *dir)
{
    char *slash;
    ssize_t n = readlink("/proc/self/exe", dir, PATH_MAX - 1);
    if (n > 0) dir[n] = 0;
    else if (!argv0 || !strchr(argv0, '/') || !realpath(argv0, dir)) return 0;
    slash = strrchr(dir, '/');
    if (!slash) return 0;
    *slash = 0;
    return 1;
}

/* Where tarry's Lua files are: the source tree for the build tree's executable, else the
   install's share/lua/5.4 relative to the executable. Pushes the directory.  [-0, +1, m] */
static void push_lua_dir(lua_State *L, const char *argv0)
{
    char dir[PATH_MAX], build[PATH_MAX];
    if (!exe_dir(argv0, dir)) {
        lua_pushliteral(L, TARRY_LUA_INSTALL_DIR);   /* where it was meant to be installed */
        return;
    }
    if (realpath(TARRY_BUILD_BIN_DIR, build) && strcmp(build, dir) == 0)
        lua_pushliteral(L, TARRY_LUA_SOURCE_DIR);
    else
        lua_pushfstring(L, "%s/%s", dir, TARRY_LUA_RELATIVE_DIR);
}

/* Prepend tarry's Lua directory to package.path (LUA_PATH and the defaults still apply after it,
   for the modules tasks require). */
static void set_path(lua_State *L, const char *argv0)
{
    lua_getglobal(L, "package");
    push_lua_dir(L, argv0);
    lua_getfield(L, -2, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", lua_tostring(L, -2), lua_tostring(L, -2),
                    lua_tostring(L, -1));
    lua_setfield(L, -4, "path");
    lua_pop(L, 3);
}

/* The CLI: require("tarry.cli").main(arg) under a traceback handler; its result is the exit code. */
static int run_cli(lua_State *L)
{
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    luaL_openlibs(L);
    tarry_openlibs(L);
    set_path(L, argc > 0 ? argv[0] : NULL);
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, -1);
    lua_setglobal(L, "arg");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "tarry.cli");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "main");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 1);
    return 1;
}

int main(int argc, char **argv)
{
    lua_State *L = luaL_newstate();
    int status, code;
    if (!L) { fputs("tarry: cannot create a Lua state\n", stderr); return 1; }
    lua_pushcfunction(L, traceback);
    lua_pushcfunction(L, run_cli);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    status = lua_pcall(L, 2, 1, 1);
    if (status != LUA_OK) {
        fprintf(stderr, "tarry: %s\n", lua_tostring(L, -1));
        code = 1;
    } else {
        code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : (lua_toboolean(L, -1) || lua_isnil(L, -1) ? 0 : 1);
    }
    lua_close(L);
    return code;
}
