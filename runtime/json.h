/* JSON <-> Lua values (jansson). */
#ifndef TARRY_JSON_H
#define TARRY_JSON_H
#include <lua.h>
/* Adds json_encode, json_decode, array, null to the table at the top of the stack.  [-0, +0, e] */
void tarry_json_open(lua_State *L);
#endif
