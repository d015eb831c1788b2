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
