/* Shared by tarry's libFuzzer targets (scripts/fuzz builds them; not part of the library).
   Each target keeps one Lua state for the whole run: a fuzz target has no other place for it. */
#ifndef TARRY_FUZZ_H
#define TARRY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

/* Prints "tarry fuzz: <what>: <detail>" and aborts, so that libFuzzer records the input. */
void fuzz_fail(const char *what, const char *detail) __attribute__((noreturn));

/* A Lua state with the JSON functions of tarry.core in the global table `core`. */
lua_State *fuzz_json_state(void);

/* Calls f (a lua_CFunction) on the bytes [data, data+size) under lua_pcall; a raised error is a
   finding unless it is Lua's own "not enough memory".  Leaves the stack as it found it. */
void fuzz_protected(lua_State *L, lua_CFunction f, const uint8_t *data, size_t size);

/* Feeds the lines Lua runs to libFuzzer as coverage (an extra-counters section), so that inputs
   reaching new Lua code are kept: libFuzzer sees only instrumented C otherwise. */
void fuzz_lua_coverage(lua_State *L);

#endif
