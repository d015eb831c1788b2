--- The `tarry` command line. Each command's options also read a TARRY_<OPTION> environment
-- variable (--queueing-lock: TARRY_QUEUEING_LOCK); the command line wins. Exit codes: 0 done,
-- 1 the work failed (database down, job already enqueued, ...), 2 the command line is wrong.
local tarry = require "tarry"
local timeparse = require "tarry.timeparse"

local M = {}

local USAGE = [[
usage: tarry [--conninfo CONNINFO] COMMAND [OPTIONS]

commands:
  worker --app FILE [-q a,b] [-c N]  run jobs: --one-shot --name W --no-listen-notify
        --delete-jobs never|successful|always --shutdown-graceful-timeout S
        --fetch-job-polling-interval S --log-format human|json -v | --log-level L
  defer [--app FILE] TASK [JSON]   defer one job of TASK with JSON-object arguments
        --queue Q --lock L --queueing-lock QL --priority N
        --at ISO8601 | --in SECONDS  --ignore-already-enqueued  --unknown
  schema --apply | --read         create tarry's (Procrastinate 3.9) schema, or print its SQL
  healthchecks                    check the database connection and the schema
  run FILE.lua [ARGS...]          run a Lua script inside tarry's runtime
  version                         print tarry's version

--conninfo (or TARRY_CONNINFO) is a libpq connection string; without it, libpq's PG*
environment variables apply. --app FILE (or TARRY_APP) is a Lua file returning a tarry.App.
]]

local UsageError = {}

local function usage_error(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, UsageError), 0)
end

--- Parse argv[first..] against a spec {name = "value"|"flag"}; positional arguments in order.
local function parse(argv, first, spec, short)
  local opts, pos, i = {}, {}, first
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i + 1, #argv do pos[#pos + 1] = argv[j] end
      break
    elseif a:sub(1, 2) == "--" and #a > 2 then
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local kind = spec[name]
      if not kind then usage_error("unknown option --%s", name) end
      if kind == "flag" then
        if value then usage_error("option --%s takes no value", name) end
        opts[name] = true
      else
        if not value then
          i = i + 1
          value = argv[i]
          if value == nil then usage_error("option --%s needs a value", name) end
        end
        opts[name] = value
      end
    elseif short and short[a:sub(2, 2)] and #a >= 2 and a:sub(2, 2) ~= "-" then
      local name = short[a:sub(2, 2)]                -- -c 10, -c10, -v
      if spec[name] == "flag" then
        if #a > 2 then usage_error("option %s takes no value", a:sub(1, 2)) end
        opts[name] = true
      else
        local value = #a > 2 and a:sub(3) or argv[i + 1]
        if #a == 2 then i = i + 1 end
        if value == nil then usage_error("option %s needs a value", a) end
        opts[name] = value
      end
    elseif a:sub(1, 1) == "-" and #a > 1 and not tonumber(a) then
      usage_error("unknown option %s", a)
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  for name, kind in pairs(spec) do           -- TARRY_* variables fill what the command line left out
    if opts[name] == nil then
      local env = os.getenv("TARRY_" .. name:upper():gsub("%-", "_"))
      if env and env ~= "" then
        if kind == "flag" then opts[name] = env ~= "0" and env:lower() ~= "false" else opts[name] = env end
      end
    end
  end
  return opts, pos
end
M.parse_options = parse
M.usage_error = usage_error
--- true when err is a command-line mistake (what M.main reports with exit code 2).
function M.is_usage_error(err) return getmetatable(err) == UsageError end

local function connector(global)
  return tarry.PgConnector{ conninfo = global.conninfo }
end

local function load_app(path)
  local chunk, err = loadfile(path)
  if not chunk then usage_error("cannot load --app %s: %s", path, err) end
  local app = chunk()
  if type(app) ~= "userdata" or not tostring(app):match("^<tarry%.App") then
    usage_error("--app %s must return a tarry.App (it returned %s)", path, type(app))
  end
  return app
end

M.load_app = load_app

local function decode_args(text)
  local ok, value = pcall(tarry.json.decode, text)
  if not ok then usage_error("JSON arguments are malformed: %s", tostring(value):gsub("\n", " ")) end
  if type(value) ~= "table" or tarry.is_array(value) then
    usage_error("JSON arguments must be an object, like '{\"a\": 1}'")
  end
  return value
end

local function integer_option(opts, name)
  if opts[name] == nil then return nil end
  local n = math.tointeger(tonumber(opts[name]))
  if not n then usage_error("--%s must be an integer, got %q", name, opts[name]) end
  return n
end

local function schedule(opts)
  if opts.at and opts["in"] then usage_error("give --at or --in, not both") end
  if opts.at then
    local t, err = timeparse.iso8601(opts.at)
    if not t then usage_error("--at: %s", err) end
    return { schedule_at = t }
  end
  if opts["in"] then
    local s = tonumber(opts["in"])
    if not s or s ~= s then usage_error("--in must be a number of seconds, got %q", opts["in"]) end
    return { schedule_in = s }
  end
  return {}
end

local DEFER_SPEC = { app = "value", queue = "value", lock = "value", ["queueing-lock"] = "value",
  priority = "value", at = "value", ["in"] = "value", ["ignore-already-enqueued"] = "flag",
  unknown = "flag" }

-- defer's command line, checked: opts, the task name, its arguments and the per-defer overrides.
local function defer_request(argv, first)
  local opts, pos = parse(argv, first, DEFER_SPEC)
  if #pos < 1 or #pos > 2 then usage_error("defer needs TASK and optionally JSON arguments") end
  local overrides = schedule(opts)
  overrides.queue, overrides.lock = opts.queue, opts.lock
  overrides.queueing_lock, overrides.priority = opts["queueing-lock"], integer_option(opts, "priority")
  return opts, pos[1], decode_args(pos[2] or "{}"), overrides
end

local function cmd_defer(argv, first, global)
  local opts, task_name, args, overrides = defer_request(argv, first)
  local app = opts.app and load_app(opts.app) or tarry.App{ connector = connector(global) }
  if opts.app and not app:find_task(task_name) and not opts.unknown then
    usage_error("task %q is not in %s (pass --unknown to defer it anyway)", task_name, opts.app)
  end
  -- A bad option value (empty task name, 41-byte queue, priority out of range) is a wrong command line.
  local valid, deferrer = pcall(app.configure_task, app, task_name, overrides)
  if not valid then usage_error("%s", tostring(deferrer)) end
  local ok, res = pcall(deferrer.defer, deferrer, args)
  if ok then
    print(string.format("deferred job %d: %s %s", res, task_name, tarry.json.encode(args)))
    return 0
  end
  if tarry.is_error(res) and res.code == "already_enqueued" and opts["ignore-already-enqueued"] then
    print(string.format("not deferred: a %s job with queueing lock %q is already waiting", task_name,
      tostring(overrides.queueing_lock)))
    return 0
  end
  error(res, 0)
end

local SCHEMA_SPEC = { apply = "flag", read = "flag" }

local function cmd_schema(argv, first, global)
  local opts = parse(argv, first, SCHEMA_SPEC)
  local schema = require "tarry.schema"
  if opts.apply == opts.read then usage_error("schema needs exactly one of --apply or --read") end
  if opts.read then io.write(schema.sql()); return 0 end
  local conn = tarry.SyncPgConnector{ conninfo = global.conninfo, max_size = 1 }
  local state, which = schema.apply(conn)
  conn:close()
  if state == "applied" then print("schema applied") else print("schema already present (" .. tostring(which) .. "): nothing changed") end
  return 0
end

local function cmd_healthchecks(argv, first, global)
  parse(argv, first, {})
  local conn = tarry.SyncPgConnector{ conninfo = global.conninfo, max_size = 1 }
  conn:execute("SELECT 1")
  print("Database connection: OK")
  local rows = conn:execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present")
  conn:close()
  if not rows[1].present then
    io.stderr:write("tarry: procrastinate_jobs table not found: apply the schema with `tarry schema --apply`\n")
    return 1
  end
  print("Found procrastinate_jobs table: OK")
  return 0
end

local function cmd_run(argv, first)
  local file = argv[first]
  if not file then usage_error("run needs a Lua file") end
  local chunk, err = loadfile(file)
  if not chunk then usage_error("cannot load %s: %s", file, err) end
  local script_arg = { [0] = file }
  for i = first + 1, #argv do script_arg[#script_arg + 1] = argv[i] end
  _G.arg = script_arg
  local rv = chunk(table.unpack(script_arg))
  if math.type(rv) == "integer" then return rv end
  return 0
end

local function cmd_worker(argv, first)
  return require("tarry.cli_worker").run(M, argv, first)
end

local COMMANDS = { worker = cmd_worker, defer = cmd_defer, schema = cmd_schema, healthchecks = cmd_healthchecks, run = cmd_run }

-- --conninfo may stand anywhere (before or after the command); take it out of argv.
local function take_conninfo(argv)
  local rest, conninfo, i = { [0] = argv[0] }, nil, 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i, #argv do rest[#rest + 1] = argv[j] end
      break
    elseif a == "--conninfo" then
      conninfo = argv[i + 1]
      if conninfo == nil then usage_error("--conninfo needs a value") end
      i = i + 1
    elseif a:match("^%-%-conninfo=") then
      conninfo = a:match("^%-%-conninfo=(.*)$")
    else
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  return rest, conninfo
end

-- The command argv names, after the global options: its name ("help" and "version" included; nil
-- when there is none), argv without --conninfo, the index of the name, and the global options.
local function find_command(argv)
  local global, i = {}, 1
  argv, global.conninfo = take_conninfo(argv)
  while argv[i] and argv[i]:sub(1, 1) == "-" do
    local a = argv[i]
    if a == "--help" or a == "-h" then return "help", argv, i, global end
    if a == "--version" then return "version", argv, i, global end
    usage_error("unknown option %s", a)
  end
  global.conninfo = global.conninfo or os.getenv("TARRY_CONNINFO")
  for j = i + 1, #argv do                  -- `tarry worker --help` and the like
    if argv[j] == "--" then break end
    if argv[j] == "--help" or argv[j] == "-h" then return "help", argv, i, global end
  end
  local name = argv[i]
  if name ~= nil and name ~= "help" and name ~= "version" and not COMMANDS[name] then
    usage_error("unknown command %q (try tarry --help)", name)
  end
  return name, argv, i, global
end

local function dispatch(argv)
  local name, rest, i, global = find_command(argv)
  if name == nil then io.stderr:write(USAGE); return 2 end
  if name == "help" then io.write(USAGE); return 0 end
  if name == "version" then print("tarry " .. tarry.version); return 0 end
  return COMMANDS[name](rest, i + 1, global)
end

--- Parse a command line without running anything (no database, no --app file is loaded):
-- returns { command = NAME (nil, "help", "version" or a command), conninfo = ..., opts = {...},
-- args = {...} } or raises a usage error (M.is_usage_error). The fuzz target feeds it argv.
function M.parse(argv)
  local name, rest, i, global = find_command(argv)
  local cmd = { command = name, conninfo = global.conninfo, opts = {}, args = {} }
  if name == "worker" then
    local w = require "tarry.cli_worker"
    cmd.opts, cmd.args = parse(rest, i + 1, w.SPEC, w.SHORT)
  elseif name == "defer" then
    local task, args
    cmd.opts, task, args, cmd.overrides = defer_request(rest, i + 1)
    cmd.args = { task, args }
  elseif name == "schema" or name == "healthchecks" then
    cmd.opts, cmd.args = parse(rest, i + 1, name == "schema" and SCHEMA_SPEC or {})
  elseif name == "run" then
    cmd.args = table.move(rest, i + 1, #rest, 1, {})
  end
  return cmd
end

--- Entry point of the executable: returns the exit code.
function M.main(argv)
  local ok, res = pcall(dispatch, argv)
  if ok then return res or 0 end
  if getmetatable(res) == UsageError then
    io.stderr:write("tarry: ", res.message, "\n")
    return 2
  end
  if tarry.is_error(res) then                -- one line, even for libpq's multi-line messages
    io.stderr:write((tostring(res):gsub("%s*\n%s*", " ")), "\n")
    return 1
  end
  error(res, 0)
end

return M
