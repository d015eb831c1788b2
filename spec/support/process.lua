-- Real `tarry` processes for specs: start in the background, signal, wait for exit.
local db = require "support.db"

local M = {}

local build = os.getenv("TARRY_BUILD_DIR") or "build"
M.tarry = build .. "/bin/tarry"

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read = read

--- Write a Lua app file for `tarry worker --app`: `body` registers tasks on `app`.
--- opts.conninfo replaces the test database's conninfo (a proxy's, say); opts.connector adds
--- PgConnector options ({ query_timeout = 2 }: numbers, strings and booleans).
function M.app_file(dbname, body, opts)
  opts = opts or {}
  local extra = {}
  for k, v in pairs(opts.connector or {}) do
    extra[#extra + 1] = string.format(type(v) == "string" and ", %s = %q" or ", %s = %s", k, v)
  end
  table.sort(extra)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(string.format([[
local tarry = require "tarry"
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = %q%s } }
%s
return app
]], opts.conninfo or db.conninfo(dbname), table.concat(extra), body))
  f:close()
  return path
end

local Proc = {}
Proc.__index = Proc
local started = {}

--- Kill every process a spec started that is still running (for after_each), and remove each
--- one's directory (its log, pid and exit files) once its shell has written the exit code.
function M.kill_all()
  for p in pairs(started) do
    if not read(p.exitfile) then p:signal("KILL") end
    for _ = 1, 100 do                  -- the shell writes the code as soon as the kill is reaped
      if read(p.exitfile) then break end
      os.execute("sleep 0.02")
    end
    if read(p.exitfile) then
      for _, f in ipairs { p.log, p.pidfile, p.exitfile } do os.remove(f) end
      os.remove(p.dir)
    end
    started[p] = nil
  end
end
-- The same at the end of the suite, for specs that start processes without it in after_each.
require("busted").subscribe({ "suite", "end" }, function()
  M.kill_all()
  return nil, true
end)

--- Start a shell command line in the background (it is run by sh; `env` is prepended, as in
--- "A=1 B=2 "); its stdout and stderr go to a log file. Killed by M.kill_all if still running.
function M.spawn(command, env)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local p = setmetatable({ dir = dir, log = dir .. "/log", pidfile = dir .. "/pid", exitfile = dir .. "/exit" }, Proc)
  local cmd = string.format("%s%s >%s 2>&1 & echo $! >%s; wait $!; echo $? >%s",
    env or "", command, p.log, p.pidfile, p.exitfile)
  assert(os.execute("sh -c " .. db.shell_quote(cmd) .. " >/dev/null 2>&1 &"))
  repeat p.pid = tonumber(read(p.pidfile) or "") until p.pid or not os.execute("sleep 0.02")
  started[p] = true
  return p
end

--- Start `tarry <args>` in the background; its output goes to a log file.
function M.start(args, env)
  return M.spawn(M.tarry .. " " .. args, env)
end

--- Start n workers of the app file, named w1..wn: `tarry worker --app <app> --name wI <options>`.
function M.start_workers(n, app, options)
  local workers = {}
  for i = 1, n do workers[i] = M.start(string.format("worker --app %s --name w%d %s", app, i, options or "")) end
  return workers
end

function Proc:signal(name)
  os.execute(string.format("kill -%s %d 2>/dev/null", name, self.pid))
end

--- Wait (up to `limit` seconds, a guard against a hang, not a speed check) for the exit code.
function Proc:wait(limit)
  local deadline = os.time() + (limit or 60)
  while os.time() <= deadline do
    local code = tonumber(read(self.exitfile) or "")
    if code then return code end
    os.execute("sleep 0.05")
  end
  self:signal("KILL")
  error("the process did not exit in time; its log:\n" .. (read(self.log) or ""), 2)
end

function Proc:output() return read(self.log) or "" end

--- true while the process has not exited.
function Proc:running() return read(self.exitfile) == nil end

--- How many lines of its output match the Lua pattern `pattern`.
function Proc:count(pattern)
  local n = 0
  for line in self:output():gmatch("[^\n]+") do
    if line:find(pattern) then n = n + 1 end
  end
  return n
end

--- Wait until at least `n` (default 1) lines of its output match `pattern`; guard of `limit` seconds.
function Proc:wait_for(pattern, n, limit)
  M.until_true(function() return self:count(pattern) >= (n or 1) or not self:running() end, limit or 60,
    "a line matching " .. pattern)
  if self:count(pattern) < (n or 1) then
    error("the process exited before printing " .. pattern .. "; its log:\n" .. self:output(), 2)
  end
end

--- Poll until fn() is true (an event we can only observe by asking), with a guard deadline.
--- (level: whom the timeout blames, as for error(); 2, the caller, by default.)
function M.until_true(fn, limit, what, level)
  local deadline = os.time() + (limit or 60)
  while os.time() <= deadline do
    if fn() then return end
    os.execute("sleep 0.05")
  end
  error("gave up waiting for " .. (what or "a condition"), level or 2)
end

--- M.until_true, failing at once (with its log) if one of the processes `procs` exits meanwhile.
function M.until_true_while(procs, fn, limit, what)
  local dead
  M.until_true(function()
    for _, p in ipairs(procs) do if not p:running() then dead = p; return true end end
    return fn()
  end, limit, what, 3)
  if dead then
    error(string.format("a process exited (code %s) while waiting for %s; its log:\n%s", read(dead.exitfile),
      what or "a condition", dead:output():sub(-4000)), 2)
  end
end

return M
