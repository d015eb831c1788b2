--- The definition of tarry's command line: one argparse parser with a command per verb, the
-- `TARRY_*` environment defaults, and the checks that turn words into a command table. Help,
-- usage and the shell completions (`tarry completion bash|zsh|fish`) all come from this parser.
-- @module tarry.cli_parser
local tarry = require "tarry"
local timeparse = require "tarry.timeparse"
local Store = require "tarry.store"

local M = {}

local MAX_TIME = 253402300799          -- 9999-12-31T23:59:59Z: PostgreSQL's timestamptz goes further,
                                       -- but nothing sensible is scheduled beyond it
local QUEUE_BYTES = 40                 -- a queue names a NOTIFY channel
local FINISHED_STATUSES = { "succeeded", "failed", "cancelled", "aborted" }

-- ---- converters: a word -> a value, or nil and the message of a usage error ----

local function whole(name, min)
  return function(s)
    local n = math.tointeger(tonumber(s))
    if not n or n < min then return nil, string.format("%s must be a whole number >= %d, got '%s'", name, min, s) end
    return n
  end
end

local function seconds(name)
  return function(s)
    local n = tonumber(s)
    if not n or n ~= n or n < 0 or n == math.huge then
      return nil, string.format("%s must be a number of seconds >= 0, got '%s'", name, s)
    end
    return n
  end
end

local function priority(s)
  local n = math.tointeger(tonumber(s))
  if not n or n < -2147483648 or n > 2147483647 then
    return nil, string.format("--priority must be a whole number from -2147483648 to 2147483647, got '%s'", s)
  end
  return n
end

local function queue_name(name)
  return function(s)
    if #s == 0 or #s > QUEUE_BYTES then
      return nil, string.format("%s: a queue name is 1 to %d bytes (it names a NOTIFY channel), got '%s'",
        name, QUEUE_BYTES, s)
    end
    return s
  end
end

local function queue_list(s)
  local list, check = {}, queue_name("--queues")
  for q in (s .. ","):gmatch("([^,]*),") do
    q = q:match("^%s*(.-)%s*$")
    if q ~= "" or #list > 0 or s:find("[^,%s]") then
      local ok, err = check(q)
      if not ok then return nil, err end
      list[#list + 1] = q
    end
  end
  if #list == 0 then return nil, "--queues needs at least one queue name (leave it out for every queue)" end
  return list
end

local function at_time(s)
  local t, err = timeparse.parse(s)
  if not t then return nil, "--at: " .. err end
  if t > MAX_TIME then return nil, string.format("--at: '%s' is after the year 9999", s) end
  return t
end

local function in_seconds(s)
  local n, err = seconds("--in")(s)
  if not n then return nil, err end
  if tarry.now() + n > MAX_TIME then return nil, string.format("--in: %s seconds from now is after the year 9999", s) end
  return n
end

-- JSON arguments: an object that PostgreSQL's jsonb can store (no NUL, valid UTF-8).
local function json_object(s)
  local ok, value = pcall(tarry.json.decode, s)
  if not ok then return nil, "JSON arguments are malformed: " .. tostring(value) end
  if type(value) ~= "table" or tarry.is_array(value) then
    return nil, "JSON arguments must be an object, like '{\"a\": 1}'"
  end
  local encodable, err = pcall(tarry.json.encode, value)
  if not encodable then return nil, "JSON arguments: " .. tostring(err):gsub("^value", "args") end
  return value
end
M.json_object = json_object

-- Statuses, comma-separated, each one of `allowed` (a list, in the enum's order).
local function status_list(name, allowed)
  local known = {}
  for _, st in ipairs(allowed) do known[st] = true end
  return function(s)
    local list = {}
    for w in s:gmatch("[^,%s]+") do
      if not known[w] then
        return nil, string.format("%s: '%s' is not one of %s", name, w, table.concat(allowed, ", "))
      end
      list[#list + 1] = w
    end
    if #list == 0 then return nil, string.format("%s needs at least one of %s", name, table.concat(allowed, ", ")) end
    return list
  end
end

local function hours(s)
  local n = tonumber(s)
  if not n or n ~= n or n < 0 or n == math.huge then
    return nil, string.format("--max-hours must be a number of hours >= 0, got '%s'", s)
  end
  return n
end

local function non_empty(name)
  return function(s)
    if s == "" then return nil, name .. " must not be empty" end
    return s
  end
end

-- ---- the parser ----

-- Every option that reads TARRY_<TARGET> when absent, per command ("" for the root).
local ENV = {}
-- Options that take a value, by alias (for `-c -3`: argparse takes -3 for an option).
local TAKES_VALUE = {}

local function option(p, command, names, description, props)
  props = props or {}
  local o = props.flag and p:flag(names, description) or p:option(names, description)
  local target = props.target or names:match("%-%-([%w-]+)"):gsub("-", "_")
  o:target(target)
  if props.argname then o:argname(props.argname) end
  if props.choices then o:choices(props.choices) end
  if props.convert then o:convert(props.convert) end
  for alias in names:gmatch("%S+") do TAKES_VALUE[alias] = not props.flag end
  if props.env ~= false then
    ENV[command] = ENV[command] or {}
    table.insert(ENV[command], { target = target, flag = props.flag, choices = props.choices,
      convert = props.convert, var = "TARRY_" .. target:upper() })
  end
  return o
end

local MAX_QUERY_TIMEOUT = 1e6          -- the connectors' own bound for query_timeout

local function query_timeout(s)
  local n, err = seconds("--query-timeout")(s)
  if n and n > MAX_QUERY_TIMEOUT then
    return nil, string.format("--query-timeout must be at most %d seconds, got '%s'", MAX_QUERY_TIMEOUT, s)
  end
  return n, err
end

-- --conninfo before the command or after it. (Two targets: argparse resets a target when a command
-- declares an option of the same name.) After it, --query-timeout too (tarry.cli sets it as the
-- default of every connector, the app's included).
-- `app`: whether the command takes --app (schema and healthchecks do not).
local function conninfo(p, command, app)
  local with_app = command == "" and " With a command's --app, it replaces the conninfo of the app's connector."
    or app and " With --app, it replaces the conninfo of the app's connector." or ""
  option(p, command, "--conninfo", "A libpq connection string (or URI); without it (or TARRY_CONNINFO), libpq's PG* variables "
    .. "apply."
    .. with_app,
    { argname = "CONNINFO", target = command == "" and "root_conninfo" or "conninfo", env = command ~= "" })
  if command == "" then return end
  option(p, command, "--query-timeout", "Seconds a database query may wait for its answer before its connection "
    .. "is dropped and it fails (default 30; 0: no limit)" .. (app and "; for every connector that does not set "
    .. "query_timeout, --app's included." or "."), { argname = "S", convert = query_timeout })
end

local function help_flag(p, on_help)
  p:add_help { action = function() on_help(p) end, description = "Show this help and exit." }
end

local function define_worker(p, on_help)
  local c = p:command("worker", "Run the jobs of an app: fetch, run up to --concurrency at once, record "
    .. "their outcomes; until SIGINT/SIGTERM (or, with --one-shot, until nothing is left).")
  help_flag(c, on_help)
  option(c, "worker", "--app", "A Lua file that returns the tarry.App (its directory goes on package.path).",
    { argname = "FILE" })
  option(c, "worker", "-q --queues", "Comma-separated queues to take jobs from (default: every queue).",
    { argname = "Q1,Q2", convert = queue_list })
  option(c, "worker", "-c --concurrency", "Jobs run at once (default 1).", { argname = "N", convert = whole("--concurrency", 1) })
  option(c, "worker", "--prefetch", "Jobs held, running and taken ahead, while recent jobs are short: only what "
    .. "starts within about 50 ms (default: --concurrency + 256; at most --concurrency: none ahead).",
    { argname = "N", convert = whole("--prefetch", 0) })
  option(c, "worker", "--prefetch-hold", "Seconds taken-ahead jobs may wait while every slot runs a long job; then "
    .. "they go back for other workers (default 1).", { argname = "S", convert = seconds("--prefetch-hold") })
  option(c, "worker", "--lean", "Write no procrastinate_events rows for fetches and outcomes (event history "
    .. "only; needs tarry's schema).", { flag = true })
  option(c, "worker", "--blocking-threads", "Threads for the bodies of blocking tasks (default: the number of "
    .. "cores; 0 refuses an app with blocking tasks).", { argname = "N", convert = whole("--blocking-threads", 0) })
  option(c, "worker", "--blocking-abort-hook", "Raise an abort or timeout inside a blocking task's pure-Lua "
    .. "loops (an instruction hook; off by default).", { flag = true })
  option(c, "worker", "--one-shot", "Stop when no job is left to fetch.", { flag = true })
  option(c, "worker", "--name", "The worker's name in logs and ctx.worker_name (default worker).", { argname = "W" })
  option(c, "worker", "--no-listen-notify", "Do not LISTEN for new jobs; poll only.", { flag = true })
  option(c, "worker", "--fetch-job-polling-interval", "Seconds between polls when no NOTIFY comes (default 5).",
    { argname = "S", convert = seconds("--fetch-job-polling-interval") })
  option(c, "worker", "--delete-jobs", "Delete finished jobs: never (default), successful or always.",
    { choices = { "never", "successful", "always" } })
  option(c, "worker", "--shutdown-graceful-timeout", "Seconds running jobs get to finish after the first signal "
    .. "(default: no limit).", { argname = "S", convert = seconds("--shutdown-graceful-timeout") })
  option(c, "worker", "--update-heartbeat-interval", "Seconds between two heartbeats (default 10).",
    { argname = "S", convert = seconds("--update-heartbeat-interval") })
  option(c, "worker", "--stalled-worker-timeout", "Seconds without a heartbeat after which a worker counts as "
    .. "dead and the jobs it left running are recovered (default 30).",
    { argname = "S", convert = seconds("--stalled-worker-timeout") })
  option(c, "worker", "--no-recover-stalled", "Do not recover the jobs dead workers left running (retried or "
    .. "failed by their task's retry rule).", { flag = true })
  option(c, "worker", "--no-periodic", "Do not defer the app's periodic (cron) tasks.", { flag = true })
  option(c, "worker", "--periodic-max-delay", "Catch up periodic ticks missed up to S seconds ago (default 600); "
    .. "older ones are skipped.", { argname = "S", convert = seconds("--periodic-max-delay") })
  option(c, "worker", "--log-format", "human (default) or json (one object per line).", { choices = { "human", "json" } })
  option(c, "worker", "--log-level", "debug, info (default), warning or error.",
    { choices = { "debug", "info", "warning", "error" } })
  option(c, "worker", "-v --verbose", "Same as --log-level debug.", { flag = true })
  option(c, "worker", "--dashboard", "Also serve the web dashboard on [HOST:]PORT (as `tarry dashboard`).",
    { argname = "[H:]P", convert = function(s)
        local host, port = require("tarry.cli_dashboard").parse_address(s)
        if not host then return nil, port end
        return { host = host, port = port }
      end })
  conninfo(c, "worker", true)
end

local function define_defer(p, on_help)
  local c = p:command("defer", "Defer one job of TASK with JSON-object arguments, or one job per line of "
    .. "--from FILE (- for stdin), in batches.")
  help_flag(c, on_help)
  c:argument("TASK", "The task name."):target "task"
  c:argument("JSON", "The arguments, a JSON object (default {})."):target("args"):args "?"
  option(c, "defer", "--from", "Defer one job per line of FILE (- for stdin), each line a JSON object; in "
    .. "batches, with a progress bar on a terminal. A bad line stops it, naming the line; nothing of its "
    .. "batch is inserted.", { argname = "FILE", env = false })
  option(c, "defer", "--batch-size", "Jobs per statement with --from (default 1000).",
    { argname = "N", convert = whole("--batch-size", 1) })
  option(c, "defer", "--app", "A Lua file that returns the tarry.App: the task's options apply, through the "
    .. "app's connector.", { argname = "FILE" })
  option(c, "defer", "--queue", "The queue (default: the task's, or default).", { argname = "Q", convert = queue_name("--queue") })
  option(c, "defer", "--lock", "Jobs sharing a lock run one at a time, in order.", { argname = "L" })
  option(c, "defer", "--queueing-lock", "At most one waiting job holds it.", { argname = "QL" })
  option(c, "defer", "--priority", "Higher runs first (default 0).", { argname = "N", convert = priority })
  option(c, "defer", "--at", "When to run it: an ISO 8601 date-time (local time unless it ends with Z or an "
    .. "offset) or a unix time (@1893456000 or 1893456000).", { argname = "TIME", convert = at_time })
  option(c, "defer", "--in", "Run it in SECONDS (>= 0).", { argname = "SECONDS", convert = in_seconds })
  option(c, "defer", "--ignore-already-enqueued", "Exit 0, deferring nothing, when the queueing lock is taken.",
    { flag = true })
  option(c, "defer", "--unknown", "With --app, defer a task the app does not define.", { flag = true })
  option(c, "defer", "--json", "Print the result as JSON: the job, or with --from a summary with the ids.",
    { flag = true })
  conninfo(c, "defer", true)
end

local function define_admin(p, on_help)
  local c = p:command("schema", "Create tarry's schema (Procrastinate 3.9's) in an empty database, or print its SQL.")
  help_flag(c, on_help)
  option(c, "schema", "--apply", "Create it; when it is complete already, report it (on tarry's schema, updating tarry's own "
    .. "functions that differ from this version's).",
    { flag = true, env = false })
  option(c, "schema", "--read", "Print its SQL.", { flag = true, env = false })
  conninfo(c, "schema")
  c = p:command("healthchecks", "Check the database connection and every object of the schema tarry needs.")
  help_flag(c, on_help)
  option(c, "healthchecks", "--json", "Print the result as a JSON object.", { flag = true })
  conninfo(c, "healthchecks")
end

-- The options of the commands that work on app.jobs: --app, --json and --conninfo.
local function manager_options(c, scope, json_text)
  option(c, scope, "--app", "A Lua file that returns the tarry.App (default: an app on a PgConnector of "
    .. "--conninfo, or of libpq's PG* variables).", { argname = "FILE" })
  option(c, scope, "--json", json_text or "Print the result as JSON (a listing: an array).", { flag = true })
  conninfo(c, scope, true)
end

-- The filters of jobs:list, jobs:queues and the like.
local function filters(c, scope, which)
  local texts = { queue = "Only jobs of this queue.", task = "Only jobs of this task.",
    status = "Only jobs in these statuses (comma-separated: " .. table.concat(Store.STATUSES, ",") .. ").",
    lock = "Only jobs holding this lock." }
  local props = { queue = { argname = "Q", convert = non_empty("--queue") },
    task = { argname = "TASK", convert = non_empty("--task") },
    status = { argname = "S1,S2", convert = status_list("--status", Store.STATUSES) },
    lock = { argname = "L", convert = non_empty("--lock") } }
  for _, name in ipairs(which) do option(c, scope, "--" .. name, texts[name], props[name]) end
end

local function job_id(c)
  c:argument("ID", "The job's id."):target("id"):convert(whole("ID", 1))
end

local function define_jobs_lookups(jobs, on_help)
  local c = jobs:command("list", "List jobs in id order, filtered; --limit per page, --after-id for the next.")
  help_flag(c, on_help)
  filters(c, "jobs list", { "queue", "task", "status", "lock" })
  option(c, "jobs list", "--queueing-lock", "Only jobs holding this queueing lock.",
    { argname = "QL", convert = non_empty("--queueing-lock") })
  option(c, "jobs list", "--worker-id", "Only jobs run by this worker (see `tarry workers`).",
    { argname = "ID", convert = whole("--worker-id", 1) })
  option(c, "jobs list", "--limit", "At most N jobs (default 100).", { argname = "N", convert = whole("--limit", 1) })
  option(c, "jobs list", "--after-id", "Only jobs whose id is greater (the next page).",
    { argname = "ID", convert = whole("--after-id", 0) })
  manager_options(c, "jobs list")
  c = jobs:command("show", "Show one job: its fields and its events.")
  help_flag(c, on_help)
  job_id(c)
  manager_options(c, "jobs show", "Print the job as a JSON object, with its events.")
  c = jobs:command("stalled", "List the running jobs whose worker sent no heartbeat for --seconds (or is gone).")
  help_flag(c, on_help)
  option(c, "jobs stalled", "--seconds", "Heartbeat age in seconds (default 30).",
    { argname = "S", convert = seconds("--seconds") })
  filters(c, "jobs stalled", { "queue", "task" })
  manager_options(c, "jobs stalled")
end

local function define_jobs_changes(jobs, on_help)
  local c = jobs:command("cancel", "Cancel a job that has not started (todo -> cancelled).")
  help_flag(c, on_help)
  job_id(c)
  option(c, "jobs cancel", "--delete", "Delete the job instead of keeping it cancelled.", { flag = true, env = false })
  manager_options(c, "jobs cancel", "Print the outcome as a JSON object.")
  c = jobs:command("abort", "Abort a job: a running one is stopped by its worker at its next yield point and "
    .. "ends aborted; one that has not started is cancelled.")
  help_flag(c, on_help)
  job_id(c)
  manager_options(c, "jobs abort", "Print the outcome as a JSON object.")
  c = jobs:command("retry", "Put a failed job (or a running one whose worker died) back to todo.")
  help_flag(c, on_help)
  job_id(c)
  option(c, "jobs retry", "--at", "When to run it (as for defer; default now).", { argname = "TIME", convert = at_time })
  option(c, "jobs retry", "--in", "Run it in SECONDS.", { argname = "SECONDS", convert = in_seconds })
  option(c, "jobs retry", "--priority", "Its new priority.", { argname = "N", convert = priority })
  option(c, "jobs retry", "--queue", "Its new queue.", { argname = "Q", convert = queue_name("--queue") })
  option(c, "jobs retry", "--lock", "Its new lock.", { argname = "L", convert = non_empty("--lock") })
  manager_options(c, "jobs retry", "Print the job, retried, as a JSON object.")
  c = jobs:command("delete-old", "Delete the finished jobs (and their events) whose latest event is older than "
    .. "--max-hours; print how many.")
  help_flag(c, on_help)
  option(c, "jobs delete-old", "--max-hours", "The age in hours (required).", { argname = "H", convert = hours })
  option(c, "jobs delete-old", "--queue", "Only jobs of this queue.", { argname = "Q", convert = non_empty("--queue") })
  option(c, "jobs delete-old", "--status", "Statuses to delete (comma-separated: succeeded,failed,cancelled,aborted; "
    .. "default succeeded).", { argname = "S1,S2", convert = status_list("--status", FINISHED_STATUSES) })
  manager_options(c, "jobs delete-old", "Print the count as a JSON object.")
end

local function define_jobs(p, on_help)
  local jobs = p:command("jobs", "Look at and act on jobs: list, show, cancel, abort, retry, stalled, delete-old "
    .. "(`tarry jobs ACTION --help`).")
  jobs:command_target("action"):require_command(false)    -- FINISH.jobs names the actions instead
    :usage("Usage: tarry jobs [-h] <command> ...")
  help_flag(jobs, on_help)
  define_jobs_lookups(jobs, on_help)
  define_jobs_changes(jobs, on_help)
  for _, what in ipairs { "queues", "tasks", "locks" } do
    local c = p:command(what, string.format("Count the jobs of each %s per status.", what:sub(1, -2)))
    help_flag(c, on_help)
    filters(c, what, { "queue", "task", "status", "lock" })
    manager_options(c, what)
  end
  local c = p:command("workers", "List the registered workers: last heartbeat and jobs running.")
  help_flag(c, on_help)
  manager_options(c, "workers")
  c = p:command("shell", "A Lua REPL with `app` (from --app), `jobs` (app.jobs) and `tarry` preloaded; reads "
    .. "stdin (a terminal or a pipe) until end of input.")
  help_flag(c, on_help)
  option(c, "shell", "--app", "A Lua file that returns the tarry.App (default: an app on a PgConnector of "
    .. "--conninfo, or of libpq's PG* variables).", { argname = "FILE" })
  conninfo(c, "shell", true)
end

-- tarry dashboard (tarry/cli_dashboard.lua, tarry/dashboard/).
local function define_dashboard(p, on_help)
  local c = p:command("dashboard", "Serve the web dashboard: jobs, queues, workers, schedules, throughput; "
    .. "actions on jobs (until SIGINT/SIGTERM).")
  help_flag(c, on_help)
  option(c, "dashboard", "--app", "A Lua file that returns the tarry.App (default: an app on a PgConnector of "
    .. "--conninfo, or of libpq's PG* variables); its periodic tasks show up.", { argname = "FILE" })
  option(c, "dashboard", "--host", "Address to listen on (default 127.0.0.1).", { argname = "H" })
  option(c, "dashboard", "--port", "Port to listen on (default 8470; 0: any free port).",
    { argname = "P", convert = function(s)
        local n = math.tointeger(tonumber(s))
        if not n or n < 0 or n > 65535 then return nil, "--port must be from 0 to 65535, got '" .. s .. "'" end
        return n
      end })
  option(c, "dashboard", "--read-only", "Refuse every action (403): look, do not touch.", { flag = true })
  option(c, "dashboard", "--auth", "Ask for HTTP basic auth with these credentials.", { argname = "USER:PASSWORD",
    convert = function(s)
      if not s:find(":", 1, true) then return nil, "--auth must be USER:PASSWORD" end
      return s
    end })
  option(c, "dashboard", "--base-path", "Serve under this path (default /), e.g. /jobs behind a proxy.",
    { argname = "PATH", convert = function(s) return require("tarry.dashboard.server").base_path(s) end })
  conninfo(c, "dashboard", true)
end

local function define_misc(p, on_help, names)
  local c = p:command("run", "Run a Lua script inside tarry's runtime (require \"tarry\" works). Every word "
    .. "after SCRIPT is the script's, in arg and ...; its directory goes on package.path.")
  help_flag(c, on_help)
  c:argument("SCRIPT", "The Lua file."):target "script"
  c:argument("ARGS", "Its arguments (every word after SCRIPT)."):target("script_words"):args "*"
  c = p:command("help", "Show the help of tarry or of one command.")
  help_flag(c, on_help)
  c:argument("COMMAND", "A command."):target("topic"):args("?"):choices(names)
  c = p:command("version", "Print tarry's version.")
  help_flag(c, on_help)
  c = p:command("completion", "Print a shell completion script (cmake --install puts them in place).")
  help_flag(c, on_help)
  c:argument("SHELL", "bash, zsh or fish."):target("shell"):choices { "bash", "zsh", "fish" }
end

--- The top-level commands, in the order of the help.
M.COMMANDS = { "worker", "defer", "schema", "healthchecks", "jobs", "queues", "tasks", "locks", "workers", "shell",
  "dashboard", "run", "help", "version", "completion" }

--- The parser. `on_help(p)` runs when -h/--help is met for (sub)parser p, and must raise.
function M.build(argparse, on_help)
  ENV = {}
  local p = argparse("tarry", "A job runner for Lua 5.4 speaking Procrastinate 3.9's PostgreSQL protocol.")
    :epilog(table.concat({
      "Each option also reads TARRY_<OPTION> when it is not given (--queueing-lock: TARRY_QUEUEING_LOCK);",
      "the command line wins. Exit codes: 0 done, 1 the work failed (database down, job already",
      "enqueued, an error raised by your app or script), 2 the command line or its input is wrong.",
      "`tarry help COMMAND` or `tarry COMMAND --help` shows a command's options." }, "\n"))
    :command_target("command")
    :require_command(false)
    :help_max_width(100)
  help_flag(p, on_help)
  option(p, "", "--version", "Print tarry's version and exit.", { flag = true, env = false })
  conninfo(p, "")
  define_worker(p, on_help)
  define_defer(p, on_help)
  define_admin(p, on_help)
  define_jobs(p, on_help)
  define_dashboard(p, on_help)
  define_misc(p, on_help, M.COMMANDS)
  return p
end

--- The command a (sub)parser stands for ("defer", "jobs list"), or nil for the root.
function M.topic_of(p)
  if not p._parent then return nil end
  local parent = M.topic_of(p._parent)
  return parent and (parent .. " " .. p._name) or p._name
end

--- `-c -3`, `--priority -2`: argparse reads a word starting with "-" as an option, so a
-- negative number after an option that takes a value is joined to it (`-c-3`, `--priority=-2`).
function M.join_negative(words)
  local out, i = {}, 1
  while i <= #words do
    local w, nxt = words[i], words[i + 1]
    if w == "--" then
      table.move(words, i, #words, #out + 1, out)
      break
    end
    if TAKES_VALUE[w] and nxt and nxt:match("^%-%.?%d") then
      out[#out + 1] = w:sub(1, 2) == "--" and (w .. "=" .. nxt) or (w .. nxt)
      i = i + 2
    else
      out[#out + 1] = w
      i = i + 1
    end
  end
  return out
end

--- true when v is one of the strings of list.
function M.is_one_of(v, list)
  for _, c in ipairs(list) do if c == v then return true end end
  return false
end

local FALSE = { ["0"] = true, ["false"] = true, ["no"] = true, ["off"] = true }

-- TARRY_<OPTION> for every option of the command (and the root's) the command line left out.
local function fill_from_env(r, usage_error)
  for _, scope in ipairs { "", r.command, r.action and (r.command .. " " .. r.action) or nil } do
    for _, o in ipairs(ENV[scope] or {}) do
      local v = os.getenv(o.var)
      if r[o.target] == nil and v and v ~= "" then
        if o.flag then
          r[o.target] = not FALSE[v:lower()]
        else
          if o.choices and not M.is_one_of(v, o.choices) then
            usage_error("%s must be one of %s, got '%s'", o.var, table.concat(o.choices, ", "), v)
          end
          local value, err = v, nil
          if o.convert then value, err = o.convert(v) end
          if value == nil then usage_error("%s: %s", o.var, err) end
          r[o.target] = value
        end
        r[o.target .. "_from"] = o.var
      end
    end
  end
end

local FINISH = {}

function FINISH.defer(r, usage_error)
  if r.at and r["in"] then usage_error("give --at or --in, not both") end
  if r.from and r.args then usage_error("give JSON arguments or --from FILE, not both") end
  if not r.from then
    local args, err = json_object(r.args or "{}")
    if not args then usage_error("%s", err) end
    r.args = args
  end
  r.schedule_at, r.schedule_in, r.at, r["in"] = r.at, r["in"], nil, nil
end

function FINISH.worker(r, usage_error)
  if not r.app then usage_error("worker needs --app FILE (or TARRY_APP)") end
  if r.log_level == nil and r.verbose then r.log_level = "debug" end
end

function FINISH.schema(r, usage_error)
  if (r.apply or false) == (r.read or false) then usage_error("schema needs exactly one of --apply or --read") end
end

M.JOB_ACTIONS = { "list", "show", "stalled", "cancel", "abort", "retry", "delete-old" }

function FINISH.jobs(r, usage_error)
  if not r.action then usage_error("jobs needs an action: %s", table.concat(M.JOB_ACTIONS, ", ")) end
end

FINISH["jobs retry"] = function(r, usage_error)
  if r.at and r["in"] then usage_error("give --at or --in, not both") end
end

FINISH["jobs delete-old"] = function(r, usage_error)
  if r.max_hours == nil then
    usage_error("jobs delete-old needs --max-hours H (or TARRY_MAX_HOURS): the age of the jobs to delete")
  end
end

--- Complete a parse result: TARRY_* defaults, the checks across options, the command's name.
function M.finish(r, usage_error)
  if r.version then return { command = "version" } end
  if not r.command then return { command = "help", missing = true } end
  if r.conninfo == nil then r.conninfo = r.root_conninfo end
  r.root_conninfo = nil
  if r.conninfo ~= nil then r.conninfo_from = "--conninfo" end
  fill_from_env(r, usage_error)
  r[r.command] = nil                      -- argparse's `result.<command> = true`
  if r.action then r[r.action] = nil end  -- and `result.<action> = true` (tarry jobs ACTION)
  if FINISH[r.command] then FINISH[r.command](r, usage_error) end
  local action = r.action and (r.command .. " " .. r.action)
  if FINISH[action] then FINISH[action](r, usage_error) end
  return r
end

return M
