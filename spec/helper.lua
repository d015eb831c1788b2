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
