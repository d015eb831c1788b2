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
function M.app_file(dbname, body)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(string.format([[
local tarry = require "tarry"
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = %q } }
%s
return app
]], db.conninfo(dbname), body))
  f:close()
  return path
end

local Proc = {}
Proc.__index = Proc
local started = {}

--- Kill every process a spec started that is still running (for after_each).
function M.kill_all()
  for p in pairs(started) do
    if not read(p.exitfile) then p:signal("KILL") end
    started[p] = nil
  end
end

--- Start `tarry <args>` in the background; its output goes to a log file.
function M.start(args, env)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local p = setmetatable({ dir = dir, log = dir .. "/log", pidfile = dir .. "/pid", exitfile = dir .. "/exit" }, Proc)
  local cmd = string.format("%s%s %s >%s 2>&1 & echo $! >%s; wait $!; echo $? >%s",
    env or "", M.tarry, args, p.log, p.pidfile, p.exitfile)
  assert(os.execute("sh -c " .. db.shell_quote(cmd) .. " >/dev/null 2>&1 &"))
  repeat p.pid = tonumber(read(p.pidfile) or "") until p.pid or not os.execute("sleep 0.02")
  started[p] = true
  return p
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

--- Poll until fn() is true (an event we can only observe by asking), with a guard deadline.
function M.until_true(fn, limit, what)
  local deadline = os.time() + (limit or 60)
  while os.time() <= deadline do
    if fn() then return end
    os.execute("sleep 0.05")
  end
  error("gave up waiting for " .. (what or "a condition"), 2)
end

return M
