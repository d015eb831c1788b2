--- tarry.HostConnector: defer on the host's own database connection, inside whatever transaction
-- it has open, so a job and the application's rows commit or roll back together (Procrastinate's
-- SQLAlchemy connector). tarry runs its defer statement (the PgConnector's own, core.DEFER_SQL)
-- through a function the host gives:
--
--     execute(sql, params) -> rows
--
-- `sql` uses $1, $2, ... with explicit casts; `params` is an array of strings or tarry.null (for
-- SQL NULL); `rows` is an array of rows, each an array of column values as strings (or integers),
-- NULL as nil or tarry.null. tarry reads the first column only. The function raises on failure:
--
-- * a tarry error object: raised again as it is;
-- * a table { sqlstate=, message=, constraint=, detail= } (the fields a driver such as pgmoon or
--   luapgsql gives; `code = "connection"` says the connection itself is broken): an error object
--   with those fields and its `code` by the PgConnector's rule (23505 on the queueing-lock index:
--   already_enqueued; 08xxx but 08P01, 57P0x: connection; any other: database);
-- * a string: its SQLSTATE read from "SQLSTATE xxxxx" (or libpq's verbose "ERROR:  xxxxx: ..."),
--   and a primary message naming procrastinate_jobs_queueing_lock_idx_v1 is a queueing-lock conflict
--   (already_enqueued, sqlstate 23505) even without one, in any server language; else database.
--
-- Arguments, names and locks are validated before the host's function is called, by the same code
-- as on a PgConnector (runtime/app.c), with the same error objects. A refused statement leaves the
-- host's transaction aborted, as any failed statement does: the host rolls back (or wraps the defer
-- in a SAVEPOINT). Only defers run here: LISTEN, a worker and app.jobs need a tarry.PgConnector.
--
-- `tarry.HostConnector.luasql(conn)` is this connector over a LuaSQL PostgreSQL connection, which
-- has no bind parameters: values are written as literals by tarry/sql_literal.lua.
-- @module tarry.host_connector
local core = require "tarry.core"
local Literal = require "tarry.sql_literal"

local Host = core.newmetatable("tarry.HostConnector")
Host.__index = Host

local M = {}

local NEEDS_PG = "a tarry.HostConnector only defers jobs: LISTEN, a worker and app.jobs need a "
  .. "tarry.PgConnector (app:with_connector(tarry.PgConnector{ conninfo = ... }))"
local QUEUEING_LOCK_INDEX = "procrastinate_jobs_queueing_lock_idx_v1"
local USAGE = "tarry.HostConnector{ execute = function(sql, params) ... return rows end }"

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

--- tarry.HostConnector{ execute = fn } -> a connector that runs tarry's statements through fn.
function M.new(opts)
  if type(opts) ~= "table" then error(USAGE .. ": expects a table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if k ~= "execute" and k ~= "name" then
      error(string.format("tarry.HostConnector: unknown option '%s' (known: execute, name)", tostring(k)), 2)
    end
  end
  if not callable(opts.execute) then error(USAGE .. ": execute must be a function, got " .. type(opts.execute), 2) end
  if opts.name ~= nil and type(opts.name) ~= "string" then error("tarry.HostConnector: name must be a string", 2) end
  return setmetatable({ host_execute = opts.execute, name = opts.name or tostring(opts.execute), deferred = 0 }, Host)
end

-- ---- the host's errors as tarry's error objects ----

local function code_of(sqlstate, constraint)
  if sqlstate == "23505" and constraint == QUEUEING_LOCK_INDEX then return "already_enqueued" end
  if sqlstate and ((sqlstate:find("^08") and sqlstate ~= "08P01") or sqlstate:find("^57P0")) then
    return "connection"
  end
  return "database"
end

local SQLSTATE = "[%dA-Z][%dA-Z][%dA-Z][%dA-Z][%dA-Z]"

-- The fields of an error the host raised as a string (a driver's message).
local function fields_of_text(s)
  local f = {
    sqlstate = s:match("SQLSTATE[%s:=]*(" .. SQLSTATE .. ")%f[^%dA-Z]") or s:match("%u+:%s+(" .. SQLSTATE .. "):%s"),
    detail = s:match("DETAIL:%s+([^\n]*)"),
    message = s:match("ERROR:%s+([^\n]*)") or s:match("^[^\n]*"),
  }
  if f.message:find(QUEUEING_LOCK_INDEX, 1, true) then   -- the primary message, not a value in DETAIL
    f.constraint, f.sqlstate = QUEUEING_LOCK_INDEX, f.sqlstate or "23505"
  end
  if f.sqlstate then      -- the SQLSTATE has its own field: not twice in tostring(err)
    f.message = f.message:gsub("^" .. f.sqlstate .. ":%s*", ""):gsub("%s*%(SQLSTATE[%s:=]*" .. f.sqlstate .. "%)", "")
  end
  return f
end

local function fields_of_table(t)
  local f = { sqlstate = t.sqlstate, constraint = t.constraint, detail = t.detail, message = t.message, code = t.code }
  if f.constraint == nil and f.message and tostring(f.message):find(QUEUEING_LOCK_INDEX, 1, true) then
    f.constraint = QUEUEING_LOCK_INDEX
  end
  return f
end

--- The error object for what the host's execute function raised (see the module's comment).
function M.error_of(e)
  if core.is_error(e) then return e end
  local f = type(e) == "table" and fields_of_table(e)
    or fields_of_text(type(e) == "string" and e or ("the host's execute function raised " .. tostring(e)))
  local code = f.code == "connection" and "connection" or code_of(f.sqlstate, f.constraint)
  local message = code == "already_enqueued"
    and string.format("a job with the same queueing lock is already waiting (%s)", f.detail or f.constraint)
    or tostring(f.message or "the host's execute function failed")
  local err = core.error(code, message)
  err.sqlstate, err.constraint, err.detail = f.sqlstate, f.constraint, f.detail
  return err
end

-- ---- deferring ----

-- Run sql through the host's function; its failure raised as an error object.
function Host:run(sql, params)
  local ok, rows = pcall(self.host_execute, sql, params)
  if not ok then error(M.error_of(rows), 0) end
  return rows
end

local function json_or_null(s) return s == nil and "null" or core.json_encode(s) end

-- One job as the PgConnector's statement reads it (runtime/app.c's put_job and DEFER_SQL): the array
-- [task, queue, lock, queueing_lock, priority, at, args]; args is JSON text.
local function job_json(j)
  return string.format('[%s,%s,%s,%s,%d,%s,%s]',
    core.json_encode(j.task_name), core.json_encode(j.queue_name), json_or_null(j.lock),
    json_or_null(j.queueing_lock), j.priority, j.scheduled_at and string.format("%.17g", j.scheduled_at) or "null",
    j.args)
end

local function ids_of(rows, n)
  local got = type(rows) == "table" and #rows
  local ids = {}
  for i = 1, got == n and n or 0 do
    local row = rows[i]
    ids[i] = type(row) == "table" and math.tointeger(tonumber(row[1]))
    if not ids[i] then break end
  end
  if #ids ~= n then
    error(string.format("tarry.HostConnector: the execute function returned %s for %d job%s: expected an "
      .. "array of rows, one per job, each { id }", got and (got .. " row(s)") or type(rows), n, n == 1 and "" or "s"), 0)
  end
  return ids
end

--- connector:defer_jobs(jobs) -> ids (the app calls it, with every job validated and encoded:
-- see runtime/app.c): the PgConnector's one statement, $1 the JSON array of the jobs.
function Host:defer_jobs(jobs)
  local parts = {}
  for i, j in ipairs(jobs) do parts[i] = job_json(j) end
  local ids = ids_of(self:run(core.DEFER_SQL, { "[" .. table.concat(parts, ",") .. "]" }), #jobs)
  self.deferred = self.deferred + #ids
  return ids
end

--- Nothing to open: the host owns the connection. Returns the connector.
function Host:open() return self end
--- Nothing to close: the host owns the connection.
function Host:close() end
--- The connector itself (every defer is synchronous, on the host's connection).
function Host:get_sync_connector() return self end

-- tarry's modules are this file's siblings: "@lua/tarry/", "@/usr/share/lua/5.4/tarry/".
local OWN_DIR = debug.getinfo(1, "S").source:match("^(.*[/\\])") or "\0"

-- Raise msg at the first Lua frame outside tarry's own modules (the user's run_worker, app.jobs:list).
local function refuse(msg)
  for level = 2, 100 do
    local info = debug.getinfo(level, "S")
    if not info then break end
    if info.what ~= "C" and info.source:sub(1, #OWN_DIR) ~= OWN_DIR then error(msg, level) end
  end
  error(msg, 0)
end

--- Refused: no job store, no LISTEN, no SQL of the caller's (see NEEDS_PG).
function Host:job_store() refuse(NEEDS_PG) end
function Host:listen() refuse(NEEDS_PG) end
function Host:execute()
  refuse("a tarry.HostConnector runs only tarry's defer statement: run your own SQL on your own connection, "
    .. "or use a tarry.PgConnector")
end

--- `<tarry.HostConnector luasql PostgreSQL connection (0x...), 3 jobs deferred>`.
function Host:__tostring()
  return string.format("<tarry.HostConnector %s, %d job%s deferred>", self.name, self.deferred,
    self.deferred == 1 and "" or "s")
end

-- ---- LuaSQL ----

-- LuaSQL's message: "LuaSQL: error executing statement. PostgreSQL: " then libpq's. The server's
-- errors start with their severity ERROR; anything else (FATAL, libpq's own "server closed the
-- connection unexpectedly", "no connection to the server") means the connection is gone.
local function luasql_error(msg)
  local body = tostring(msg):match("^LuaSQL: [^.]*%.%s*PostgreSQL:%s*(.*)$") or tostring(msg)
  if body:find("^ERROR:") then return body end
  return { code = "connection", message = body:match("^%u+:%s+([^\n]*)") or body:match("^[^\n]*") }
end

local function query(conn, sql)
  local cur, err = conn:execute(sql)
  if not cur then error(luasql_error(err), 0) end
  if type(cur) ~= "userdata" then return {} end     -- a statement without rows: the rows it changed
  local rows = {}
  for row in function() return cur:fetch({}, "n") end do rows[#rows + 1] = row end
  cur:close()
  return rows
end

-- tarry writes UTF-8: the connection must read it as UTF-8 (see tarry/sql_literal.lua).
local function check_encoding(conn)
  local ok, rows = pcall(query, conn, "SHOW client_encoding")
  if not ok then error(M.error_of(rows), 3) end
  local enc = rows[1] and rows[1][1]
  if enc ~= "UTF8" then
    error(string.format("tarry.HostConnector.luasql: the connection's client_encoding is %s; tarry writes "
      .. "UTF-8 and needs UTF8 (SET client_encoding = 'UTF8' on it first, and keep it)", tostring(enc)), 3)
  end
end

--- tarry.HostConnector.luasql(conn) -> a HostConnector over a LuaSQL PostgreSQL connection
-- (`require("luasql.postgres").postgres():connect(...)`). Asks the connection once for its
-- client_encoding (it must be UTF8). Values travel as E'...' literals (tarry/sql_literal.lua).
function M.luasql(conn)
  if not tostring(conn):find("^PostgreSQL connection %(0x") then
    error("tarry.HostConnector.luasql expects an open LuaSQL PostgreSQL connection "
      .. "(require('luasql.postgres').postgres():connect(...)), got " .. tostring(conn), 2)
  end
  check_encoding(conn)
  return M.new{ name = "luasql " .. tostring(conn), execute = function(sql, params)
    return query(conn, Literal.interpolate(sql, params))
  end }
end

return M
