--- The dashboard command: `tarry dashboard [--app FILE] [--host H] [--port P] [--read-only]
-- [--auth USER:PASSWORD] [--base-path /jobs]` serves the web dashboard (tarry/dashboard/) until
-- SIGINT or SIGTERM; and `tarry worker --dashboard [H:]P` serves it from inside a worker.
-- @module tarry.cli_dashboard
local core = require "tarry.core"
local Server = require "tarry.dashboard.server"

local M = {}

--- "[H:]P" -> host, port; nil and a message when it is neither.
function M.parse_address(s)
  local host, port = s:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = s:match("^(.+):(%d+)$") end
  if not host then host, port = nil, s:match("^(%d+)$") end
  port = math.tointeger(tonumber(port))
  if not port or port > 65535 then return nil, "--dashboard must be [HOST:]PORT, got '" .. s .. "'" end
  return host or "127.0.0.1", port
end

local function warn_exposed(host, auth)
  if not auth and not Server.is_loopback(host) then
    io.stderr:write(string.format("tarry dashboard: WARNING: listening on %s without --auth: anyone who can reach "
      .. "this address can see and change your jobs\n", host))
  end
end

--- Start the dashboard of `app` for the parsed command `cmd` (its listening line printed).
function M.start(cli, app, cmd)
  local ok, d = pcall(Server.start, app, { host = cmd.host, port = cmd.port, base_path = cmd.base_path,
    read_only = cmd.read_only, auth = cmd.auth, app_name = cmd.app })
  if not ok then
    if core.is_error(d) and d.code == "listen" then cli.failure("%s", d.message) end
    error(d, 0)
  end
  warn_exposed(cmd.host or "127.0.0.1", cmd.auth)
  io.stdout:write(string.format("tarry dashboard: listening on %s%s\n", d.url, cmd.read_only and " (read-only)" or ""))
  io.stdout:flush()
  return d
end

--- `tarry worker --dashboard [H:]P`: the dashboard served by the worker's loop (it keeps no
-- coroutine of its own, so the worker's end ends it). Returns a function that stops it.
function M.in_worker(cli, app, address)
  if cli.connector_type(app.connector) ~= "tarry.PgConnector" then
    cli.usage_error("--dashboard needs an app on a tarry.PgConnector, not %s", tostring(app.connector))
  end
  local opened = app.connector.is_open and not app.connector:is_open()
  if opened then app:open() end      -- before run_worker, which then leaves it open
  local d = M.start(cli, app, { host = address.host, port = address.port })
  return function()
    d:close()
    if opened then app:close() end
  end
end

--- Run `tarry dashboard`; returns the exit code (0 after SIGINT/SIGTERM).
function M.run(cli, cmd)
  local app = cli.app_for(cmd, function(text) io.stderr:write("tarry dashboard: ", text, "\n") end)
  if cli.connector_type(app.connector) ~= "tarry.PgConnector" then
    cli.usage_error("the dashboard needs an app on a tarry.PgConnector; the connector of --app %s is %s", cmd.app,
      tostring(app.connector))
  end
  app:open()                         -- requests use the async pool: the loop never waits on the database
  local d = M.start(cli, app, cmd)
  local signals = core.Signals { "INT", "TERM" }
  app:spawn(function()
    local name = signals:wait()
    io.stdout:write(string.format("tarry dashboard: SIG%s received, stopping\n", name))
    io.stdout:flush()
    d:close()
    signals:close()
  end)
  local ok, err = pcall(app.run, app)
  app:close()
  if not ok then error(err, 0) end
  return 0
end

return M
