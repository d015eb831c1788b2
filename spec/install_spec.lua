-- The build's three ways in, as a user gets them: `cmake --install` into a prefix, the stock
-- lua5.4 loading tarry from there, and a C host linking the static library with tarry.h.
local db = require "support.db"

local build = os.getenv("TARRY_BUILD_DIR") or "build"

-- An instrumented libtarry.a needs the sanitizer runtimes at link time.
local function sanitize_flags()
  local f = io.open(build .. "/CMakeCache.txt")
  local cache = f and f:read("a") or ""
  if f then f:close() end
  return cache:match("CMAKE_BUILD_TYPE:STRING=Sanitize") and "-fsanitize=address,undefined" or ""
end

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

describe("an installed tarry", function()
  local prefix

  setup(function()
    prefix = os.tmpname()
    os.remove(prefix)
    local ok, out = run(string.format("cmake --install %s --prefix %s", build, prefix))
    assert(ok, out)
  end)

  teardown(function() os.execute("rm -rf " .. prefix) end)

  it("is found by the stock lua5.4 through the usual lua/5.4 directories", function()
    -- Under the sanitizer build, the stock interpreter needs the runtimes preloaded for core.so.
    local preload = os.getenv("TARRY_SANITIZER_PRELOAD")
    local ok, out = run(string.format((preload and ("LD_PRELOAD='" .. preload .. "' ") or "") ..
      "LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua' LUA_CPATH='%s/lib/lua/5.4/?.so' " ..
      "lua5.4 -e 'local t = require \"tarry\"; print(t.version, #require(\"tarry.schema\").sql() > 0)'",
      prefix, prefix, prefix))
    assert(ok, out)
    assert.are.equal("0.1.0\ttrue\n", out)
  end)

  it("runs the Lua files of its own prefix, wherever the prefix is moved, never the source tree's", function()
    local moved = prefix .. "-moved"
    assert(run(string.format("cp -a %s %s", prefix, moved)))
    local script = moved .. "/path.lua"
    local f = assert(io.open(script, "w"))
    f:write("io.write(package.path, '\\n', package.searchpath('tarry.cli', package.path))")
    f:close()
    local ok, out = run(string.format("cd / && %s/bin/tarry run %s", moved, script))
    assert(ok, out)
    local path, cli = out:match("^(.-)\n(.*)$")
    assert.are.equal(moved .. "/?.lua", path:match("^[^;]*"))               -- the script's directory, then
    assert.are.equal(moved .. "/bin/../share/lua/5.4/?.lua", path:match("^[^;]*;[^;]*;([^;]*)"))   -- tarry's
    assert.are.equal(moved .. "/bin/../share/lua/5.4/tarry/cli.lua", cli)
    local source = os.getenv("PWD") .. "/lua"
    assert.is_nil(path:find(source, 1, true))
    ok, out = run(moved .. "/bin/tarry version")
    assert(ok, out)
    assert.are.equal("tarry 0.1.0\n", out)
    os.execute("rm -rf " .. moved)
  end)

  it("installs the bash, zsh and fish completions generated from the command line's parser", function()
    for shell, file in pairs { bash = "share/bash-completion/completions/tarry", zsh = "share/zsh/vendor-completions/_tarry",
      fish = "share/fish/vendor_completions.d/tarry.fish" } do
      local f = assert(io.open(prefix .. "/" .. file), file)
      local installed = f:read("a")
      f:close()
      local ok, out = run(prefix .. "/bin/tarry completion " .. shell)
      assert(ok, out)
      assert.are.equal(out, installed)
    end
  end)

  it("ships a core.so that does not link liblua (the interpreter already carries Lua)", function()
    local ok, out = run("ldd " .. prefix .. "/lib/lua/5.4/tarry/core.so")
    assert(ok, out)
    assert.is_nil(out:match("liblua"))
    assert.is_not_nil(out:match("libpq"))
  end)

  it("gives C hosts a static library and tarry.h: a host opens tarry in its own lua_State", function()
    local name = db.fresh()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/host.c", "w"))
    f:write(string.format([[
#include <stdio.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <tarry.h>

int main(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    tarry_openlibs(L);
    int rc = luaL_dostring(L,
        "package.path = '%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua'\n"
        "local tarry = require 'tarry'\n"
        "local app = tarry.App{ connector = tarry.PgConnector{ conninfo = '%s' } }\n"
        "local id = app:task('host.ping', function() end):defer{ from = 'C' }\n"
        "print(math.type(id))");
    if (rc != LUA_OK) fprintf(stderr, "%%s\n", lua_tostring(L, -1));
    lua_close(L);
    return rc;
}
]], prefix, prefix, db.conninfo(name)))
    f:close()
    -- no libmicrohttpd: the runtime opens it when a first HTTP server starts
    local ok, out = run(string.format("gcc -Wall -Wextra -Werror %s -I%s/include $(pkg-config --cflags lua5.4) " ..
      "-o %s/host %s/host.c %s/lib/libtarry.a $(pkg-config --libs lua5.4 libpq jansson) -lev -lm",
      sanitize_flags(), prefix, dir, dir, prefix))
    assert(ok, out)
    ok, out = run(dir .. "/host")
    assert(ok, out)
    assert.are.equal("integer\n", out)
    assert.are.equal("1", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'host.ping'"))
    os.execute("rm -rf " .. dir)
    db.drop(name)
  end)
end)
