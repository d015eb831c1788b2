-- luarocks make rockspecs/tarry-0.1.0-1.rockspec   (from the checkout; see README "Installing")
rockspec_format = "3.0"
package = "tarry"
version = "0.1.0-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "A job runner for Lua 5.4 with a C runtime, speaking Procrastinate 3.9's PostgreSQL protocol",
  detailed = [[
Tasks are Lua functions; jobs are stored in PostgreSQL and run by workers (libev, libpq, jansson),
interoperable with Python Procrastinate workers. Installs the Lua module (tarry, tarry.core) and
the tarry executable.]],
  license = "MIT",
  labels = { "jobs", "queue", "postgresql", "procrastinate" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "argparse >= 0.7",      -- the command line only; Debian: lua-argparse (see README)
}
-- libpq, libev, jansson and libmicrohttpd (Debian: libpq-dev libev-dev libjansson-dev libmicrohttpd-dev)
-- are found by CMake.
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    TARRY_INSTALL_BINDIR = "$(BINDIR)",
    TARRY_INSTALL_LUADIR = "$(LUADIR)",
    TARRY_INSTALL_CMODDIR = "$(LIBDIR)",
    -- luarocks deploys $(BINDIR) to <tree>/bin and $(LUADIR) to <tree>/share/lua/5.4
    TARRY_EXE_LUADIR = "../share/lua/5.4",
    TARRY_INSTALL_C_API = "OFF",
    TARRY_INSTALL_COMPLETIONS = "OFF",
  },
}
