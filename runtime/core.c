/* tarry.core: the module table. Each type's file registers itself from here. */
#include "tarry_private.h"

int tarry_open_core(lua_State *L)
{
    lua_newtable(L);
    tarry_json_open(L);
    return 1;
}
