/* The Lua C module tarry/core.so, for the stock lua5.4 interpreter. */
#include "tarry_private.h"

/* require "tarry.core"  [-0, +1, e] */
__attribute__((visibility("default"))) int luaopen_tarry_core(lua_State *L)
{
    return tarry_open_core(L);
}
