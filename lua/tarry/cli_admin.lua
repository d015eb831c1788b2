--- The schema and healthchecks commands (`tarry schema --apply|--read`, `tarry healthchecks`).
-- @module tarry.cli_admin
local tarry = require "tarry"
local schema = require "tarry.schema"
local Output = require "tarry.cli_output"

local M = {}

local function connection(cmd)
  return tarry.SyncPgConnector{ conninfo = cmd.conninfo, max_size = 1 }
end

--- Run `tarry schema` for the parsed command `cmd`; returns the exit code.
function M.schema(cli, cmd)
  if cmd.read then io.write(schema.sql()); return 0 end
  local conn = connection(cmd)
  local ok, state, which, updated = pcall(schema.apply, conn)
  conn:close()
  if not ok then
    if type(state) == "string" then cli.failure("%s", (state:gsub("^tarry schema: ", "schema: "))) end
    error(state, 0)
  end
  if state == "applied" then print("schema applied")
  elseif updated and #updated > 0 then
    print("schema already present (" .. tostring(which) .. "): updated tarry's functions " .. table.concat(updated, ", "))
  else print("schema already present (" .. tostring(which) .. "): nothing changed") end
  return 0
end

--- Run `tarry healthchecks` for the parsed command `cmd`: the connection, then every object of
-- the schema (schema.inspect); exit 1 naming what is missing.
function M.healthchecks(cli, cmd)
  local out = Output.new(cmd.json)
  local conn = connection(cmd)
  conn:execute("SELECT 1")
  local state, missing = schema.inspect(conn)
  conn:close()
  local ok = state == "tarry" or state == "procrastinate"
  local value = { connection = "ok", schema = state, missing = tarry.array(missing or {}) }
  if cmd.json then
    out:result(value)
  else
    print("Database connection: OK")
    if ok then print("Schema: OK (" .. state .. ")") end
  end
  if ok then return 0 end
  if not cmd.json then
    if state == "absent" then
      cli.failure("schema: not found: apply it with `tarry schema --apply`")
    end
    cli.failure("schema: incomplete, missing: %s", table.concat(missing, ", "))
  end
  return 1
end

return M
