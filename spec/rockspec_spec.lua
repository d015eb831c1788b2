-- `luarocks make` in a fresh copy of the checkout builds tarry with CMake and installs it into a
-- luarocks tree, after which the stock lua5.4 finds it and the tree's `tarry` runs.
local db = require "support.db"
local q = db.shell_quote

local function sh(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

describe("the rockspec", function()
  local dir
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. q(dir .. "/src")))
    -- a fresh checkout: the tracked files only (or, in a source tree without git, everything but
    -- the build directories)
    local copy = sh("git rev-parse --is-inside-work-tree >/dev/null 2>&1")
      and "git ls-files -z | xargs -0 tar cf - | tar xf - -C %s"
      or "tar cf - --exclude='./build*' --exclude=./doc . | tar xf - -C %s"
    assert(sh(string.format(copy, q(dir .. "/src"))))
    -- this machine's lua-argparse is the Debian package: tell luarocks the platform provides it
    local f = assert(io.open(dir .. "/config.lua", "w"))
    f:write(string.format("rocks_trees = { { name = 'test', root = %q } }\nrocks_provided = { argparse = '0.7.1-1' }\n",
      dir .. "/tree"))
    f:close()
  end)
  teardown(function() os.execute("rm -rf " .. q(dir)) end)

  it("builds and installs with luarocks make; then require 'tarry' works in lua5.4", function()
    local env = "LUAROCKS_CONFIG=" .. q(dir .. "/config.lua")
    local ok, out = sh(string.format("cd %s/src && %s luarocks --lua-version 5.4 --tree %s make "
      .. "rockspecs/tarry-0.1.0-1.rockspec", q(dir), env, q(dir .. "/tree")))
    assert(ok, out)
    assert.matches("tarry 0%.1%.0%-1 is now installed", out)
    ok, out = sh(string.format("cd / && eval \"$(%s luarocks --lua-version 5.4 --tree %s path)\" && "
      .. "lua5.4 -e 'local t = require \"tarry\"; print(t.version, package.searchpath(\"tarry.core\", package.cpath))'",
      env, q(dir .. "/tree")))
    assert(ok, out)
    assert.are.equal("0.1.0\t" .. dir .. "/tree/lib/lua/5.4/tarry/core.so\n", out)
    ok, out = sh(string.format("cd / && %s/tree/bin/tarry defer --help", q(dir)))
    assert(ok, out)
    assert.matches("^Usage: tarry defer ", out)
  end)
end)
