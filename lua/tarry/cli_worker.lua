--- `tarry worker`: run a worker for the app a Lua file returns.
--   tarry worker --app FILE [-q a,b] [-c N] [--one-shot] [--name W] [--no-listen-notify]
--                [--delete-jobs never|successful|always] [--shutdown-graceful-timeout S]
--                [--fetch-job-polling-interval S] [--log-format human|json] [-v] [--log-level L]
-- Each option also reads TARRY_<OPTION> (TARRY_QUEUES, TARRY_CONCURRENCY, ...).
local M = {}

M.SPEC = { app = "value", queues = "value", concurrency = "value", ["one-shot"] = "flag", name = "value",
  ["no-listen-notify"] = "flag", ["delete-jobs"] = "value", ["shutdown-graceful-timeout"] = "value",
  ["fetch-job-polling-interval"] = "value", ["log-format"] = "value", ["log-level"] = "value",
  verbose = "flag" }
M.SHORT = { q = "queues", c = "concurrency", v = "verbose" }

local function number(cli, opts, name, integer)
  local v = opts[name]
  if v == nil then return nil end
  local n = tonumber(v)
  if integer then n = n and math.tointeger(n) end
  if not n or n < 0 then cli.usage_error("--%s must be a %s >= 0, got %q", name, integer and "whole number" or "number", v) end
  return n
end

function M.run(cli, argv, first)
  local opts, pos = cli.parse_options(argv, first, M.SPEC, M.SHORT)
  if #pos > 0 then cli.usage_error("worker takes no positional argument (got %q)", pos[1]) end
  if not opts.app then cli.usage_error("worker needs --app FILE (or TARRY_APP)") end
  local queues
  if opts.queues then
    queues = {}
    for q in opts.queues:gmatch("[^,%s]+") do queues[#queues + 1] = q end
  end
  local level = opts["log-level"] or (opts.verbose and "debug") or "info"
  local levels = { debug = true, info = true, warning = true, error = true }
  if not levels[level] then cli.usage_error("--log-level must be debug, info, warning or error") end
  local format = opts["log-format"] or "human"
  if format ~= "human" and format ~= "json" then cli.usage_error("--log-format must be human or json") end
  local delete = opts["delete-jobs"]
  if delete and delete ~= "never" and delete ~= "successful" and delete ~= "always" then
    cli.usage_error("--delete-jobs must be never, successful or always")
  end
  local concurrency = number(cli, opts, "concurrency", true)
  if concurrency == 0 then cli.usage_error("--concurrency must be at least 1") end
  local app = cli.load_app(opts.app)
  app:run_worker{
    queues = queues, concurrency = concurrency, wait = not opts["one-shot"], name = opts.name,
    listen_notify = not opts["no-listen-notify"], delete_jobs = delete,
    shutdown_graceful_timeout = number(cli, opts, "shutdown-graceful-timeout"),
    fetch_job_polling_interval = number(cli, opts, "fetch-job-polling-interval"),
    log_format = format, log_level = level,
  }
  return 0
end

return M
