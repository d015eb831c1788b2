-- A stand-in for tarry's database connection in specs, built on psql (spec/support/db.lua):
-- conn:execute(sql, ...) runs SQL on one database and returns its rows as an array of tables
-- keyed by column name, with integers, booleans and nil for NULL (via row_to_json); it raises on
-- a database error.  Every call is a separate psql session, so a multi-statement string is the
-- only way to keep a transaction open across statements.
local db = require("support.db")
local json = require("dkjson")

local psql_conn = {}
psql_conn.__index = psql_conn

--- A connection to database `name`.  conn.statements records every SQL text it ran.
function psql_conn.new(name)
  return setmetatable({ name = name, statements = {} }, psql_conn)
end

local function literal(value)
  if value == nil then return "NULL" end
  if type(value) == "boolean" then return value and "true" or "false" end
  if type(value) == "number" then return tostring(value) end
  return "'" .. tostring(value):gsub("'", "''") .. "'"
end

-- $1.. become quoted literals (the real connector sends them as parameters instead).
local function substitute(sql, params, n)
  return (sql:gsub("%$(%d+)", function(i)
    i = tonumber(i)
    assert(i >= 1 and i <= n, "no value for $" .. i)
    return literal(params[i])
  end))
end

-- Row-returning single statements get wrapped so that their rows come back as JSON; anything
-- else (DDL, multi-statement scripts, DML without RETURNING) runs as it is and yields no rows.
local function returns_rows(sql)
  local body = sql:gsub("%-%-[^\n]*", ""):gsub("^%s+", ""):gsub("[%s;]+$", "")
  if body:find(";", 1, true) then return false, body end
  local first = body:match("^(%a+)") or ""
  first = first:upper()
  if first == "SELECT" or first == "VALUES" or first == "TABLE" or first == "WITH" then
    return true, body
  end
  if body:upper():find("RETURNING", 1, true) then return true, body end
  return false, body
end

function psql_conn:execute(sql, ...)
  local n = select("#", ...)
  if n > 0 then sql = substitute(sql, { ... }, n) end
  self.statements[#self.statements + 1] = sql
  local rows, body = returns_rows(sql)
  if not rows then
    db.psql(self.name, sql)
    return {}
  end
  local out = db.psql(self.name,
    "WITH q AS (" .. body .. "\n) SELECT coalesce(json_agg(q), '[]'::json) FROM q")
  local decoded, _, err = json.decode(out)
  if decoded == nil then error("psql_conn: cannot decode " .. tostring(err) .. ": " .. out) end
  return decoded
end

--- Runs a psql script (several statements, each its own transaction unless the script says
--- otherwise, psql meta-commands allowed) on database `name` in ONE session and returns
--- everything psql printed, stdout and stderr together (NOTIFYs received show up as
--- `Asynchronous notification "chan" with payload "..." received ...` lines).
function psql_conn.script(name, text)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(text)
  f:close()
  local p = assert(io.popen(string.format("psql -X -q -At -v ON_ERROR_STOP=1 -d %s -f %s 2>&1",
    db.shell_quote(name), db.shell_quote(file))))
  local out = p:read("a")
  local ok = p:close()
  os.remove(file)
  if not ok then error("psql script failed: " .. out, 2) end
  return out
end

return psql_conn
