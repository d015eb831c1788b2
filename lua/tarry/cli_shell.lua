--- `tarry shell`: a Lua REPL with the app preloaded, as lua5.4's own. Globals: `app` (from --app,
-- else an app on a PgConnector of --conninfo), `jobs` (app.jobs) and `tarry`. Reads lines from
-- stdin, a terminal or a pipe: a line is tried as an expression first (`jobs:get(1)` prints the
-- job), then as a statement; an incomplete chunk reads the next line; an error is printed on
-- stderr and the shell goes on; end of input ends it (exit 0). Prompts only on a terminal.
-- @module tarry.cli_shell
local tarry = require "tarry"
local Output = require "tarry.cli_output"

local M = {}

local MAX_ITEMS = 50                     -- a table shows at most this many entries
local ONE_LINE = 100                     -- a longer table shows one entry per line

-- ---- showing values ----

local show

local function key_text(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return k end
  return "[" .. show(k, 2) .. "]"
end

-- The entries of a plain table: its sequence, then the other keys in a stable order.
local function entries(t, depth)
  local items, n = {}, #t
  for i = 1, n do items[#items + 1] = show(t[i], depth + 1) end
  local keys = {}
  for k in pairs(t) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do items[#items + 1] = key_text(k) .. " = " .. show(t[k], depth + 1) end
  return items
end

--- How the shell prints a value: tostring, except that a plain table (no __tostring, no __name)
-- shows its entries two levels deep, so `jobs:list{}` and `jobs:queues()` read well.
function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return depth == 0 and v or string.format("%q", v) end
  local mt = getmetatable(v)
  if type(v) ~= "table" or (type(mt) == "table" and (mt.__tostring or mt.__name)) or depth >= 2 then
    return tostring(v)
  end
  local items = entries(v, depth)
  if #items == 0 then return tarry.is_array(v) and "[]" or "{}" end
  if #items > MAX_ITEMS then
    local more = #items - MAX_ITEMS
    items = { table.unpack(items, 1, MAX_ITEMS) }
    items[#items + 1] = string.format("... (%d more)", more)
  end
  local flat = "{ " .. table.concat(items, ", ") .. " }"
  if #flat <= ONE_LINE or depth > 0 then return flat end
  return "{\n  " .. table.concat(items, ",\n  ") .. ",\n}"
end
M.show = show

-- ---- reading and running ----

-- A chunk: `line` as an expression when it is one (only for the first line, as lua5.4), else the
-- whole buffer as statements. Returns the function, or nil and "incomplete", or nil and the error.
local function compile(buffer, first)
  if first then
    local f = load("return " .. buffer, "=stdin", "t")
    if f then return f end
  end
  local f, err = load(buffer, "=stdin", "t")
  if f then return f end
  if err:sub(-5) == "<eof>" then return nil, "incomplete" end
  return nil, err
end

local function error_text(e)
  if type(e) == "string" then return e end
  local mt = getmetatable(e)
  if type(e) == "table" and type(mt) == "table" and mt.__tostring then return tostring(e) end
  return string.format("(error object is a %s value)", type(e))
end

local function print_results(ok, ...)
  if not ok then
    io.stderr:write(error_text((...)), "\n")
    return
  end
  local n = select("#", ...)
  if n == 0 then return end
  local parts = {}
  for i = 1, n do parts[i] = show((select(i, ...))) end
  io.stdout:write(table.concat(parts, "\t"), "\n")
end

local Repl = {}
Repl.__index = Repl

function Repl:read(prompt)
  if self.tty then io.stdout:write(prompt); io.stdout:flush() end
  return self.input:read("l")
end

-- One chunk: the lines it takes, compiled, run, its results or its error printed. false at the
-- end of the input.
function Repl:step()
  local line = self:read("> ")
  if line == nil then return false end
  local buffer, first = line, true
  while true do
    local f, err = compile(buffer, first)
    if f then
      print_results(xpcall(f, function(e) return e end))
      break
    end
    if err ~= "incomplete" then io.stderr:write(err, "\n"); break end
    local more = self:read(">> ")
    if more == nil then io.stderr:write(select(2, load(buffer, "=stdin", "t")), "\n"); return false end
    buffer, first = buffer .. "\n" .. more, false
  end
  io.stdout:flush()
  io.stderr:flush()
  return true
end

--- Run `tarry shell` for the parsed command `cmd`; returns the exit code.
function M.run(cli, cmd)
  local out = Output.new(false)
  local app = cli.app_for(cmd, function(text) out:note(text) end)
  _G.app, _G.jobs, _G.tarry = app, app.jobs, tarry
  local repl = setmetatable({ input = io.stdin, tty = Output.is_terminal(0) }, Repl)
  if repl.tty then
    io.stdout:write(string.format("tarry %s shell on %s: app, jobs, tarry; end with Ctrl-D\n", tarry.version,
      tostring(app.connector)))
  end
  while repl:step() do end
  if repl.tty then io.stdout:write("\n") end
  return 0
end

return M
