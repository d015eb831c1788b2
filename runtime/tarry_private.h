/* Prototypes shared between the runtime's C files. Not installed; C hosts use tarry.h. */
#ifndef TARRY_PRIVATE_H
#define TARRY_PRIVATE_H

#include <lua.h>
#include <lauxlib.h>

#include "json.h"

/* core.c: builds the tarry.core module table.  [-0, +1, e] */
int tarry_open_core(lua_State *L);

#endif
