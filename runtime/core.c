/* tarry.core: the module table. Each type's file registers itself from here. */
#include <ctype.h>
#include <string.h>

#include "tarry_private.h"

#define TYPE_PREFIX "tarry."

/* core.type(v) -> "App", "PgConnector", "SyncPgConnector", "MemoryConnector", "Job", ... or nil.
   As io.type: v's metatable must be the very table registered under "tarry.<Name>" (by C or by
   core.newmetatable), so a look-alike __name or __tostring is not enough. Only capitalised names
   are types; the markers "tarry.array" and "tarry.null" are not.  [-1, +1, -] */
static int core_type(lua_State *L)
{
    const char *name;
    luaL_checkany(L, 1);
    if (!lua_getmetatable(L, 1) || lua_getfield(L, -1, "__name") != LUA_TSTRING) {
        lua_pushnil(L);
        return 1;
    }
    name = lua_tostring(L, -1);
    if (strncmp(name, TYPE_PREFIX, sizeof TYPE_PREFIX - 1) != 0
        || !isupper((unsigned char)name[sizeof TYPE_PREFIX - 1])
        || luaL_getmetatable(L, name) != LUA_TTABLE || !lua_rawequal(L, -1, -3)) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, name + sizeof TYPE_PREFIX - 1);
    return 1;
}

/* core.newmetatable(name) -> the metatable registered under name, created (with __name) on
   first use: how types written in Lua ("tarry.MemoryConnector") become known to core.type.
   [-1, +1, m] */
static int core_newmetatable(lua_State *L)
{
    luaL_newmetatable(L, luaL_checkstring(L, 1));
    return 1;
}

int tarry_open_core(lua_State *L)
{
    lua_newtable(L);
    tarry_json_open(L);
    tarry_errors_open(L);
    tarry_runtime_open(L);
    tarry_sync_open(L);
    tarry_pg_connector_open(L);
    tarry_app_open(L);
    tarry_event_open(L);
    tarry_signals_open(L);
    tarry_listener_open(L);
    tarry_threads_open(L);
    tarry_http_open(L);
    lua_pushcfunction(L, core_type);
    lua_setfield(L, -2, "type");
    lua_pushcfunction(L, core_newmetatable);
    lua_setfield(L, -2, "newmetatable");
    lua_pushcfunction(L, tarry_set_default_query_timeout);
    lua_setfield(L, -2, "set_default_query_timeout");
    lua_pushliteral(L, TARRY_VERSION_STRING);
    lua_setfield(L, -2, "version");
    return 1;
}

void tarry_openlibs(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, tarry_open_core);
    lua_setfield(L, -2, "tarry.core");
    lua_pop(L, 1);
}
