/* tarry.core: the module table. Each type's file registers itself from here. */
#include "tarry_private.h"

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
