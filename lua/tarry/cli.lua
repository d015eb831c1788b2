--- The `tarry` command line, on lua-argparse.
--
-- `cli.parse(argv)` turns the words after `tarry` into a command table (its `command` field names
-- it, the other fields are its options, checked and converted) or raises a usage error; it runs
-- nothing and opens no connection. `cli.main(argv)` parses, runs the command and returns the exit
-- code: 0 done, 1 the work failed (database down, job already enqueued, an error of your app or
-- script), 2 the command line (or the input it names) is wrong.
--
-- Each option also reads `TARRY_<OPTION>` (`--queueing-lock`: `TARRY_QUEUEING_LOCK`) when it is
-- not on the command line.
-- @module tarry.cli
local tarry = require "tarry"
local Log = require "tarry.log"

-- The parser's definition (tarry.cli_parser) and lua-argparse: required when a command line is
-- parsed, and let go of by the commands that run for long (see dispatch).
local function spec() return require "tarry.cli_parser" end

local M = {}

-- ---- errors: what the user did wrong (exit 2), what failed (exit 1), what their code raised ----

local UsageError = { __tostring = function(e) return "tarry: " .. e.message end }
local Failure = { __tostring = function(e) return "tarry: " .. e.message end }
local UserError = { __tostring = function(e) return "tarry: " .. e.message .. "\n" .. e.traceback end }

--- Raise a usage error (exit 2): `fmt` and its arguments as for string.format, one line.
function M.usage_error(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...):gsub("%s*\n%s*", "; ") }, UsageError), 0)
end

--- Raise a failure of the work (exit 1) with a one-line message.
function M.failure(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...):gsub("%s*\n%s*", " ") }, Failure), 0)
end

--- true when e was raised by `usage_error` (what `parse` raises on a wrong command line).
function M.is_usage_error(e) return getmetatable(e) == UsageError end

-- The directory holding tarry's own Lua files: their frames are not the user's business.
local OWN = debug.getinfo(1, "S").source:match("^@(.*/)cli%.lua$")

local function own_frame(info)
  return info.what == "C" or (OWN ~= nil and info.source:sub(2, #OWN + 1) == OWN)
end

local function frame_text(info)
  local where
  if info.what == "main" then where = "main chunk"
  elseif info.namewhat ~= "" then
    where = string.format("%s '%s'", info.namewhat == "global" and "function" or info.namewhat, info.name)
  else where = string.format("function <%s:%d>", info.short_src, info.linedefined) end
  return string.format("\t%s:%d: in %s", info.short_src, info.currentline, where)
end

-- The traceback of the user's code only (an xpcall handler's caller's frames, tarry's left out).
local function user_traceback()
  local lines = { "stack traceback:" }
  for level = 3, 200 do
    local info = debug.getinfo(level, "Sln")
    if not info then break end
    if not own_frame(info) then lines[#lines + 1] = frame_text(info) end
  end
  return table.concat(lines, "\n")
end

-- assert() would add nothing to a table error; unwrap what xpcall returns.
local function unwrap(ok, ...)
  if not ok then error((...), 0) end
  return ...
end
--- Call fn(...) as the user's code: an error it raises becomes a UserError (exit 1) carrying the
-- user's message and the user's frames of the traceback.
function M.call_user(fn, ...)
  local function handler(e)
    return setmetatable({ message = Log.error_text(e), traceback = user_traceback() }, UserError)
  end
  return unwrap(xpcall(fn, handler, ...))
end

-- ---- parsing ----

--- The argparse parser of the whole command line (built by tarry.cli_parser). `on_help(parser)`
-- is called when -h/--help is met; it must raise (parsing stops there).
function M.parser(on_help)
  return spec().build(require "argparse", on_help)
end

local HELP = "\0tarry-help\0"   -- raised by the help action, through argparse, to stop parsing

-- Words after the script of `tarry run` are the script's: cut them off before argparse sees them.
local function split_run(argv)
  local i = 1
  while argv[i] and argv[i]:sub(1, 1) == "-" and argv[i] ~= "--" do
    i = i + ((argv[i] == "--conninfo") and 2 or 1)
  end
  if argv[i] == "--" then i = i + 1 end
  if argv[i] ~= "run" then return argv, nil end
  local j = i + 1
  while argv[j] == "-h" or argv[j] == "--help" do j = j + 1 end
  if argv[j] == "--" then j = j + 1 end
  if argv[j] == nil or (argv[j]:sub(1, 1) == "-" and argv[j - 1] ~= "--") then return argv, nil end
  local head, rest = {}, {}
  for k = 1, #argv do
    if k <= j then head[#head + 1] = argv[k] else rest[#rest + 1] = argv[k] end
  end
  return head, rest
end

--- Parse the command line (`argv[1..n]`, the words after `tarry`) into a command table
-- `{ command = "defer", task = "add", args = {...}, queue = "q", ... }`, filling what is missing
-- from `TARRY_*` variables and checking every value. `tarry CMD --help` and `tarry help CMD`
-- give `{ command = "help", topic = "CMD" }`. Raises a usage error; runs nothing.
-- @tparam table argv the words
-- @treturn table the command
function M.parse(argv)
  local words, script_args = split_run(argv)
  local help_for
  local parser = M.parser(function(p) help_for = p; error(HELP, 0) end)
  local ok, ok2, result = pcall(parser.pparse, parser, spec().join_negative(words))
  if help_for then return { command = "help", topic = spec().topic_of(help_for) } end
  if not ok then error(ok2, 0) end                      -- a bug of the parser's definition
  if not ok2 then M.usage_error("%s", result) end
  result.script_args = script_args
  return spec().finish(result, M.usage_error)
end

-- ---- running ----

local function print_help(topic, stream)
  local parser = M.parser(function() end)
  local target = parser
  for word in (topic or ""):gmatch("%S+") do       -- "jobs list": the list command of jobs
    for _, c in ipairs(target._commands) do
      if c._name == word then target = c; break end
    end
  end
  stream:write(target:get_help(), "\n")
end

--- The app a Lua file returns, loaded as the user's code; the file's directory goes first on
-- package.path, so the app can require the modules beside it.
function M.load_app(path)
  local chunk, err = loadfile(path)
  if not chunk then M.usage_error("cannot load --app %s: %s", path, err) end
  local dir = path:match("^(.*)/[^/]*$") or "."
  package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path
  local app = M.call_user(chunk)
  local mt = getmetatable(app)
  if type(mt) ~= "table" or mt.__name ~= "tarry.App" then
    M.usage_error("--app %s must return a tarry.App (it returned %s)", path,
      type(mt) == "table" and mt.__name or type(app))
  end
  return app
end

local function connector_type(c)
  local mt = getmetatable(c)
  return type(mt) == "table" and mt.__name or type(c)
end
M.connector_type = connector_type

--- The app a command works with: the --app file's, or one on a PgConnector. A conninfo given to
-- the CLI (--conninfo or TARRY_CONNINFO) replaces the conninfo of the app's connector (same type),
-- and `note(text)` says so: the CLI never silently uses another database than it was told.
function M.app_for(cmd, note)
  if not cmd.app then return tarry.App{ connector = tarry.PgConnector{ conninfo = cmd.conninfo } } end
  local app = M.load_app(cmd.app)
  if cmd.conninfo == nil then return app end
  local kind = connector_type(app.connector)
  local make = ({ ["tarry.PgConnector"] = tarry.PgConnector, ["tarry.SyncPgConnector"] = tarry.SyncPgConnector })[kind]
  if not make then
    M.usage_error("--conninfo (or TARRY_CONNINFO) cannot apply to the %s of --app %s", kind, cmd.app)
  end
  local replaced = app:with_connector(make{ conninfo = cmd.conninfo })
  note(string.format("using the conninfo of %s (%s) instead of the app's %s", cmd.conninfo_from,
    (tostring(replaced.connector):match("^<%S+ (.-), ") or "?"), tostring(app.connector)))
  return replaced
end

local function cmd_run(cmd)
  if cmd.conninfo_from == "--conninfo" then
    M.usage_error("--conninfo does not apply to run: the script makes its own connectors (it can read TARRY_CONNINFO)")
  end
  local chunk, err = loadfile(cmd.script)
  if not chunk then M.usage_error("cannot load %s: %s", cmd.script, err) end
  local script_arg = { [0] = cmd.script, table.unpack(cmd.script_args or {}) }
  local dir = cmd.script:match("^(.*)/[^/]*$") or "."
  package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path
  _G.arg = script_arg
  local rv = M.call_user(chunk, table.unpack(script_arg))
  return math.type(rv) == "integer" and rv or 0
end

local COMMANDS = {
  defer = function(cmd) return require("tarry.cli_defer").run(M, cmd) end,
  worker = function(cmd) return require("tarry.cli_worker").run(M, cmd) end,
  schema = function(cmd) return require("tarry.cli_admin").schema(M, cmd) end,
  healthchecks = function(cmd) return require("tarry.cli_admin").healthchecks(M, cmd) end,
  jobs = function(cmd) return require("tarry.cli_jobs").run(M, cmd) end,
  queues = function(cmd) return require("tarry.cli_jobs").counts(M, cmd) end,
  tasks = function(cmd) return require("tarry.cli_jobs").counts(M, cmd) end,
  locks = function(cmd) return require("tarry.cli_jobs").counts(M, cmd) end,
  workers = function(cmd) return require("tarry.cli_jobs").workers(M, cmd) end,
  shell = function(cmd) return require("tarry.cli_shell").run(M, cmd) end,
  dashboard = function(cmd) return require("tarry.cli_dashboard").run(M, cmd) end,
  run = cmd_run,
  help = function(cmd)
    if cmd.missing then print_help(nil, io.stderr); return 2 end
    print_help(cmd.topic, io.stdout)
    return 0
  end,
  version = function() print("tarry " .. tarry.version); return 0 end,
  completion = function(cmd)
    local parser = M.parser(function() end)
    io.write(parser["get_" .. cmd.shell .. "_complete"](parser))
    return 0
  end,
}

-- The commands that run until they are stopped: they drop the parser (about 190 KiB of Lua
-- data: lua-argparse and tarry.cli_parser) once the command line is parsed. A later require of
-- either loads it again.
local LONG_RUNNING = { worker = true, dashboard = true }

local function dispatch(argv)
  local cmd = M.parse(argv)
  if LONG_RUNNING[cmd.command] then package.loaded.argparse, package.loaded["tarry.cli_parser"] = nil, nil end
  -- --query-timeout (TARRY_QUERY_TIMEOUT) is the default of every connector that does not set
  -- query_timeout: the CLI's, the --app file's, those of blocking tasks' threads. Set before any.
  if cmd.query_timeout then require("tarry.core").set_default_query_timeout(cmd.query_timeout) end
  return COMMANDS[cmd.command](cmd)
end

--- Entry point of the executable: runs the command line `argv` and returns the exit code.
-- @tparam table argv the words after `tarry`
-- @treturn integer the exit code
function M.main(argv)
  local ok, res = pcall(dispatch, argv)
  if ok then return res or 0 end
  local mt = getmetatable(res)
  if mt == UsageError or mt == Failure or mt == UserError then
    io.stderr:write(tostring(res), "\n")
    return mt == UsageError and 2 or 1
  end
  if tarry.is_error(res) then                -- one line, even for libpq's multi-line messages
    io.stderr:write((tostring(res):gsub("%s*\n%s*", " ")), "\n")
    return 1
  end
  error(res, 0)                              -- a bug of tarry's: main.c prints its traceback
end

return M
