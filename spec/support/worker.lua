-- Helpers for the worker specs: an app on a test database, a one-shot worker run with quiet
-- in-process defaults, what a job left behind in procrastinate_jobs / procrastinate_events,
-- and a log of what the tasks did, in the order they did it.
local tarry = require "tarry"
local db = require "support.db"

local W = {}

--- An app whose PgConnector points at the test database `name`.
function W.app(name)
  return tarry.App{ connector = tarry.PgConnector{ conninfo = db.conninfo(name) } }
end

--- A fresh database (with tarry's schema, plus opts.schema_file applied on top) and an app on
--- it: returns { name =, app = }. W.cleanup(t) closes the app and drops the database.
function W.fresh(opts)
  opts = opts or {}
  local name = db.fresh()
  if opts.schema_file then db.apply_schema_file(name, opts.schema_file) end
  return { name = name, app = W.app(name) }
end

function W.cleanup(t)
  t.app:close()
  db.drop(t.name)
end

--- app:run_worker as the specs run it: one-shot (wait = false), in-process (no signal
--- handlers), warnings and errors only; `opts` adds or overrides options.
function W.run(app, opts)
  local o = { wait = false, install_signal_handlers = false, log_level = "warning" }
  for k, v in pairs(opts or {}) do o[k] = v end
  return app:run_worker(o)
end

--- The job's status and attempts, as { "succeeded", 1 } (nil when the row is gone).
function W.state(name, id)
  local row = db.rows(name, "SELECT status, attempts FROM procrastinate_jobs WHERE id = " .. id)[1]
  return row and { row[1], tonumber(row[2]) }
end

--- The job's event types in id order, as "deferred,started,succeeded".
function W.events(name, id)
  return db.value(name, "SELECT string_agg(type::text, ',' ORDER BY id) FROM procrastinate_events " ..
    "WHERE job_id = " .. id)
end

--- The number of rows `sql` (a FROM ... WHERE ... clause) selects.
function W.count(name, from_where)
  return tonumber(db.value(name, "SELECT count(*) " .. from_where))
end

--- A shared, ordered log for tasks to write "start 3" / "end 3" lines into.
-- (A plain list, so that assert.are.same can compare it with one; add() is on its metatable.)
local Journal = {}
Journal.__index = Journal
function Journal:add(...) self[#self + 1] = table.concat({ ... }, " ") end

function W.journal()
  return setmetatable({}, Journal)
end

--- The lines of a log file written by the worker with log_format = "json", decoded.
function W.json_lines(stream)
  stream:seek("set")
  local out = {}
  for line in stream:lines() do out[#out + 1] = tarry.json.decode(line) end
  return out
end

--- In a describe: each of its tests gets its own database and an app on it (t.name, t.app).
--- busted's before_each/after_each are passed in: a required module does not see the spec's environment.
function W.with_database(before_each, after_each, opts)
  local t = {}
  before_each(function()
    local fresh = W.fresh(opts)
    t.name, t.app = fresh.name, fresh.app
  end)
  after_each(function() W.cleanup(t) end)
  return t
end

return W
