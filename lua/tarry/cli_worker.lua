--- The worker command: run a worker for the app a Lua file returns (the options are
-- checked by tarry.cli_parser; this runs them).
-- @module tarry.cli_worker
local Log = require "tarry.log"

local M = {}

-- The connectors a worker can run on.
local WORKS = { ["tarry.PgConnector"] = true, ["tarry.MemoryConnector"] = true }

--- Run `tarry worker` for the parsed command `cmd` (see tarry.cli.parse); returns the exit code.
function M.run(cli, cmd)
  local log = Log.new{ format = cmd.log_format, level = cmd.log_level }
  local app = cli.app_for(cmd, function(text) log:info("conninfo_replaced", text) end)
  local kind = cli.connector_type(app.connector)
  if not WORKS[kind] then
    cli.usage_error("a worker needs an app on a tarry.PgConnector (or a tarry.MemoryConnector); the connector "
      .. "of --app %s is %s", cmd.app, tostring(app.connector))
  end
  local stop_dashboard = cmd.dashboard and require("tarry.cli_dashboard").in_worker(cli, app, cmd.dashboard)
  app:run_worker{
    queues = cmd.queues, concurrency = cmd.concurrency, wait = not cmd.one_shot, name = cmd.name,
    prefetch = cmd.prefetch, prefetch_hold = cmd.prefetch_hold, lean = cmd.lean and true or false,
    listen_notify = not cmd.no_listen_notify, delete_jobs = cmd.delete_jobs,
    shutdown_graceful_timeout = cmd.shutdown_graceful_timeout,
    fetch_job_polling_interval = cmd.fetch_job_polling_interval,
    update_heartbeat_interval = cmd.update_heartbeat_interval,
    stalled_worker_timeout = cmd.stalled_worker_timeout, recover_stalled = not cmd.no_recover_stalled,
    periodic = not cmd.no_periodic, periodic_max_delay = cmd.periodic_max_delay,
    log_format = cmd.log_format, log_level = cmd.log_level,
    blocking_threads = cmd.blocking_threads, app_file = cmd.app, app_conninfo = cmd.conninfo,
    blocking_abort_hook = cmd.blocking_abort_hook or nil,
  }
  if stop_dashboard then stop_dashboard() end
  return 0
end

return M
