-- Loaded by busted before the specs (see .busted).
package.path = "spec/?.lua;" .. package.path

-- Under the sanitizer build, lua5.4 runs with the ASan/UBSan runtimes preloaded (scripts/run-specs)
-- for tarry/core.so. Child processes (psql, pg_ctlcluster, tarry, which links its own) must not
-- inherit the preload: psql's GSSAPI set-up deadlocks under it.
if os.getenv("LD_PRELOAD") then
  local popen, execute = io.popen, os.execute
  io.popen = function(cmd, ...) return popen("unset LD_PRELOAD; " .. cmd, ...) end
  os.execute = function(cmd, ...)
    if cmd == nil then return execute() end
    return execute("unset LD_PRELOAD; " .. cmd, ...)
  end
end

-- luv cannot be opened twice in one Lua state (its second luaopen_luv reuses the default loop's
-- state and crashes in uv_poll_init). busted's insulation unloads modules between spec files, so
-- README's example and spec/embed_loop_spec.lua would each open it: load it once, here, before
-- insulation, so every file gets this copy.
pcall(require, "luv")

-- os.tmpname() creates an empty file, and many specs only use its name as a base ("<name>.lua",
-- a directory made after removing it): at the end of the suite, remove every name it gave that is
-- still a plain file or an empty directory, and the "<name>.lua" files written beside them, so
-- spec runs leave no /tmp/lua_XXXXXX behind.
do
  local tmpname, names = os.tmpname, {}
  os.tmpname = function()
    local name = tmpname()
    names[#names + 1] = name
    return name
  end
  require("busted").subscribe({ "suite", "end" }, function()
    for _, name in ipairs(names) do          -- a directory that is not empty stays
      os.remove(name)
      os.remove(name .. ".lua")
    end
    return nil, true
  end)
end
