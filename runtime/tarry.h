/* tarry: a job runner for Lua with a C runtime. Public header for C hosts.
 *
 * A host embeds tarry in its own lua_State: call tarry_openlibs(L) once, which makes
 * `require "tarry"` available, then drive tarry from Lua. All of tarry's state lives in the
 * Lua state (a private libev loop created with ev_loop_new, never libev's default loop), so
 * two states never share anything. */
#ifndef TARRY_H
#define TARRY_H

#include <lua.h>

#define TARRY_VERSION_STRING "0.1.0"

typedef struct tarry_rt tarry_rt;

/* Register tarry.core in package.preload so `require "tarry"` finds it.  [-0, +0, e] */
void tarry_openlibs(lua_State *L);

#endif
