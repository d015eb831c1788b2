-- tarry.HostConnector: a defer on the application's own connection is part of its transaction.
-- Against a real PostgreSQL, through LuaSQL (lua-sql-postgres), with a real `tarry worker`.
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"
local luasql = require "luasql.postgres"
local Literal = require "tarry.sql_literal"

local env = assert(luasql.postgres())

local function connect(name)
  return assert(env:connect(db.conninfo(name)))
end

-- Rows of sql on LuaSQL connection conn, each an array of strings (nil for NULL).
local function rows(conn, sql)
  local cur = assert(conn:execute(sql))
  local out = {}
  for row in function() return cur:fetch({}, "n") end do out[#out + 1] = row end
  cur:close()
  return out
end

local function count(name, sql) return tonumber(db.value(name, sql)) end
local function jobs(name) return count(name, "SELECT count(*) FROM procrastinate_jobs") end

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

describe("tarry.HostConnector.luasql: a defer inside the host's transaction", function()
  local name, conn, app, welcome
  before_each(function()
    name = db.fresh()
    conn = connect(name)
    assert(conn:execute("CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL)"))
    app = tarry.App{ connector = tarry.HostConnector.luasql(conn) }
    welcome = app:task("send_welcome", function() end)
  end)
  after_each(function() proc.kill_all(); conn:close(); db.drop(name) end)

  local function sign_up(email, finish)
    assert(conn:execute("BEGIN"))
    assert(conn:execute("INSERT INTO users (email) VALUES ('" .. email .. "')"))
    local id = welcome:defer{ email = email }
    -- inside the transaction both are there; outside (another session, psql) neither is yet
    assert.are.same({ { "1" } }, rows(conn, "SELECT count(*) FROM procrastinate_jobs WHERE id = " .. id))
    assert.are.equal(0, jobs(name))
    assert.are.equal(0, count(name, "SELECT count(*) FROM users"))
    assert(conn:execute(finish))
    return id
  end

  it("ROLLBACK: neither the business row nor the job exists", function()
    sign_up("ada@example.com", "ROLLBACK")
    assert.are.equal(0, count(name, "SELECT count(*) FROM users"))
    assert.are.equal(0, jobs(name))
    assert.are.equal(0, count(name, "SELECT count(*) FROM procrastinate_events"))
  end)

  it("COMMIT: both exist, the job todo with its arguments", function()
    local id = sign_up("ada@example.com", "COMMIT")
    assert.are.same({ { "ada@example.com" } }, db.rows(name, "SELECT email FROM users"))
    assert.are.same({ { tostring(id), "send_welcome", "todo", "ada@example.com" } },
      db.rows(name, "SELECT id, task_name, status, args->>'email' FROM procrastinate_jobs"))
  end)

  it("a running worker picks the job up only after the COMMIT", function()
    local appfile = proc.app_file(name, [[
app:task("send_welcome", function() end)
app:task("probe", function() end)
]])
    local w = proc.start("worker --app " .. appfile .. " --concurrency 1 --fetch-job-polling-interval 0.1")
    assert(conn:execute("BEGIN"))
    assert(conn:execute("INSERT INTO users (email) VALUES ('ada@example.com')"))
    local id = welcome:defer{ email = "ada@example.com" }
    -- A probe job, committed by another session after our defer (a higher id, which a worker with
    -- one slot fetches after every lower one it can see): once the worker has run it, it has
    -- fetched while our transaction was open, and our job was not among what it could see.
    local probe = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = db.conninfo(name) } }
    local probe_id = probe:configure_task("probe"):defer{}
    assert.is_true(probe_id > id)
    proc.until_true_while({ w }, function()
      return db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = " .. probe_id) == "succeeded"
    end, 60, "the probe job to run")
    assert.are.same({ { "1", "todo", "0" } },
      rows(conn, "SELECT count(*), min(status::text), min(attempts) FROM procrastinate_jobs WHERE id = " .. id))
    assert.are.equal(0, count(name, "SELECT count(*) FROM procrastinate_jobs WHERE id = " .. id))
    assert(conn:execute("COMMIT"))
    proc.until_true_while({ w }, function()
      return db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = " .. id) == "succeeded"
    end, 60, "the committed job to run")
    -- it started after the probe had finished: the worker ran it only once it was committed
    assert.is_true(count(name, string.format([[SELECT count(*) FROM procrastinate_events a, procrastinate_events b
      WHERE a.job_id = %d AND a.type = 'started' AND b.job_id = %d AND b.type = 'succeeded' AND a.id > b.id]],
      id, probe_id)) == 1)
    w:signal("TERM")
    assert.are.equal(0, w:wait(30), w:output())
    probe:close()
  end)

  it("batch defers and configure{...}:defer go through the same transaction", function()
    assert(conn:execute("BEGIN"))
    local ids = welcome:batch_defer{ { n = 1 }, { n = 2 }, { n = 3 } }
    local later = welcome:configure{ queue = "mail", lock = "user-1", priority = 5, schedule_in = 3600 }:defer{ n = 4 }
    assert.are.same({ ids[1] + 1, ids[1] + 2 }, { ids[2], ids[3] })
    assert(conn:execute("ROLLBACK"))
    assert.are.equal(0, jobs(name))
    assert(conn:execute("BEGIN"))
    welcome:batch_defer{ { n = 1 }, { n = 2 } }
    later = welcome:configure{ queue = "mail", lock = "user-1", priority = 5, schedule_in = 3600 }:defer{ n = 4 }
    assert(conn:execute("COMMIT"))
    assert.are.equal(3, jobs(name))
    assert.are.same({ { "mail", "user-1", "5", "4", "t" } }, db.rows(name, "SELECT queue_name, lock, priority, "
      .. "args->>'n', scheduled_at > now() + interval '50 minutes' FROM procrastinate_jobs WHERE id = " .. later))
  end)

  it("a queueing-lock conflict is the PgConnector's already_enqueued error object, and nothing is inserted", function()
    local pg = app:with_connector(tarry.SyncPgConnector{ conninfo = db.conninfo(name) })
    pg.tasks.send_welcome:configure{ queueing_lock = "ada" }:defer{}
    local ok, host_err = pcall(function() return welcome:configure{ queueing_lock = "ada" }:defer{} end)
    assert.is_false(ok)
    local ok2, pg_err = pcall(function() return pg.tasks.send_welcome:configure{ queueing_lock = "ada" }:defer{} end)
    assert.is_false(ok2)
    assert.is_true(tarry.is_error(host_err))
    for _, field in ipairs { "code", "sqlstate", "constraint", "message", "detail" } do
      assert.are.equal(pg_err[field], host_err[field], field)
    end
    assert.are.equal("already_enqueued", host_err.code)
    assert.are.equal(tostring(pg_err), tostring(host_err))
    assert.are.equal(1, jobs(name))
    pg.connector:close()
  end)

  it("a connection the server ended is a connection error", function()
    local pid = rows(conn, "SELECT pg_backend_pid()")[1][1]
    db.superuser_psql(name, "SELECT pg_terminate_backend(" .. pid .. ")")
    proc.until_true(function() return count(name, "SELECT count(*) FROM pg_stat_activity WHERE pid = " .. pid) == 0 end,
      30, "the backend to exit")
    local ok, err = pcall(welcome.defer, welcome, {})
    assert.is_false(ok)
    assert.is_true(tarry.is_error(err))
    assert.are.equal("connection", err.code)
    assert.matches("terminating connection", err.message)
    assert.are.equal(0, jobs(name))
  end)

  it("the same validation as a PgConnector: bad input raises the same error object before any SQL", function()
    local pg = app:with_connector(tarry.SyncPgConnector{ conninfo = db.conninfo(name) })
    local cases = {
      function(a) return a.tasks.send_welcome:defer{ s = "a\xffb" } end,
      function(a) return a.tasks.send_welcome:configure{ lock = "a\xc3(" }:defer{} end,
      function(a) return a.tasks.send_welcome:configure{ queueing_lock = "\xed\xa0\x80" }:defer{} end,
      function(a) return a.tasks.send_welcome:configure{ lock = "a\0b" }:defer{} end,
      function(a) return a.tasks.send_welcome:configure{ lock = string.rep("x", 1001) }:defer{} end,
      function(a) return a.tasks.send_welcome:defer{ f = print } end,
      function(a) return a.tasks.send_welcome:batch_defer{ {}, { s = "\xc0\xaf" } } end,
    }
    for i, case in ipairs(cases) do
      local ok, host_err = pcall(case, app)
      local ok2, pg_err = pcall(case, pg)
      assert.is_false(ok, i)
      assert.is_false(ok2, i)
      assert.are.equal(tostring(pg_err), tostring(host_err), i)
      assert.is_true(tarry.is_error(host_err), i)
    end
    assert.are.equal(0, jobs(name))
    pg.connector:close()
  end)
end)

describe("tarry.HostConnector.luasql with hostile strings", function()
  local name, conn, app
  before_each(function()
    name = db.fresh()
    conn = connect(name)
    app = tarry.App{ connector = tarry.HostConnector.luasql(conn) }
  end)
  after_each(function() conn:close(); db.drop(name) end)

  local HOSTILE = {
    "it's", "''", "'", "\\", "\\'", "'\\", "\\\\''\\'", "'; DROP TABLE procrastinate_jobs; --",
    "$$", "$1", "$2::int", "$tag$ x $tag$", "--", "/* x */", ";", "E'\\x41'", "\\x00", "\\0", "\\u0000",
    "a\nb\r\tc", "é☃𝄞", '"\\"', "\\n", "%", "%1", "?", ":name",
  }

  -- Each column of the job, as hex of its UTF-8 bytes (read back without tarry's quoting).
  local function stored(id)
    return rows(conn, "SELECT encode(convert_to(task_name, 'UTF8'), 'hex'), encode(convert_to(queue_name, 'UTF8'), 'hex'), "
      .. "encode(convert_to(lock, 'UTF8'), 'hex'), encode(convert_to(queueing_lock, 'UTF8'), 'hex'), "
      .. "encode(convert_to(args->>'s', 'UTF8'), 'hex') FROM procrastinate_jobs WHERE id = " .. id)[1]
  end

  local function check_all()
    for i, s in ipairs(HOSTILE) do
      local task, queue = s .. " task", (s .. " q"):sub(1, 40)
      local id = app:configure_task(task, { queue = queue, lock = s .. "L", queueing_lock = s .. i }):defer{ s = s }
      assert.are.same({ hex(task), hex(queue), hex(s .. "L"), hex(s .. i), hex(s) }, stored(id), s)
    end
    assert.are.equal(#HOSTILE, jobs(name))
  end

  it("stores quotes, backslashes, $$, --, ; byte for byte in args, queue names, locks and task names", function()
    check_all()
  end)

  it("stores them byte for byte with standard_conforming_strings off on the host's connection", function()
    assert(conn:execute("SET standard_conforming_strings = off"))
    assert(conn:execute("SET escape_string_warning = off"))
    check_all()
  end)

  it("stores very long strings byte for byte (1 MiB of quotes and backslashes in args, 1000-byte locks)", function()
    local big = string.rep("'\\$$--;", 150000)
    local lock = string.rep("'\\", 500)
    local id = app:configure_task("t", { lock = lock, queueing_lock = lock }):defer{ s = big }
    assert.are.same({ hex("t"), hex("default"), hex(lock), hex(lock), hex(big) }, stored(id))
  end)

  it("refuses invalid UTF-8 and NUL bytes with a clear error, and inserts nothing", function()
    for _, bad in ipairs { "\xff", "a\xc3(", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "'\xff'" } do
      for _, defer in ipairs {
        function() return app:configure_task("t"):defer{ s = bad } end,
        function() return app:configure_task("t", { lock = bad }):defer{} end,
        function() return app:configure_task("t", { queueing_lock = bad }):defer{} end,
      } do
        local ok, err = pcall(defer)
        assert.is_false(ok)
        assert.is_true(tarry.is_error(err))
        assert.matches("UTF%-8", err.message)
      end
      assert.has_error(function() app:configure_task("t" .. bad):defer{} end)
      assert.has_error(function() app:configure_task("t", { queue = bad }):defer{} end)
    end
    local ok, err = pcall(function() return app:configure_task("t", { lock = "a\0b" }):defer{} end)
    assert.is_false(ok)
    assert.are.equal("tarry: invalid_job: lock has a NUL byte at byte 2 (PostgreSQL cannot store it)", tostring(err))
    assert.are.equal(0, jobs(name))
  end)

  it("writes any value as a literal PostgreSQL reads back exactly, and refuses NUL and invalid UTF-8", function()
    local many = {}
    for _, s in ipairs(HOSTILE) do many[#many + 1] = s; many[#many + 1] = s .. "'" .. s .. "\\" end
    for b = 1, 127 do many[#many + 1] = string.char(b) .. "\\'" .. string.char(b) end
    for _, scs in ipairs { "on", "off" } do
      assert(conn:execute("SET standard_conforming_strings = " .. scs))
      for _, s in ipairs(many) do
        local sql = Literal.interpolate("SELECT encode(convert_to($1::text, 'UTF8'), 'hex'), $2::text IS NULL", { s, tarry.null })
        assert.are.same({ { hex(s), "t" } }, rows(conn, sql), s)
      end
    end
    for _, bad in ipairs { "a\0b", "\xff", "\xed\xb0\x80" } do
      local ok, err = pcall(Literal.interpolate, "SELECT $1::text", { bad })
      assert.is_false(ok)
      assert.are.equal("invalid_job", err.code)
      assert.matches("^%$1 ", err.message)
    end
  end)

  it("refuses a connection whose client_encoding is not UTF8", function()
    assert(conn:execute("SET client_encoding = 'LATIN1'"))
    assert.has_error(function() tarry.HostConnector.luasql(conn) end,
      "tarry.HostConnector.luasql: the connection's client_encoding is LATIN1; tarry writes UTF-8 and needs "
      .. "UTF8 (SET client_encoding = 'UTF8' on it first, and keep it)")
    assert.has_error(function() tarry.HostConnector.luasql({}) end)
  end)
end)

describe("tarry.HostConnector{ execute = fn }", function()
  local name, sync
  before_each(function()
    name = db.fresh()
    sync = tarry.SyncPgConnector{ conninfo = db.conninfo(name) }
  end)
  after_each(function() sync:close(); db.drop(name) end)

  -- A host "driver": tarry's own SyncPgConnector (on `conn`, default the spec's), its errors
  -- reshaped by `reshape` as another driver would give them, its rows as arrays of strings.
  local function host_app(reshape, conn)
    local seen = {}
    conn = conn or sync
    local c = tarry.HostConnector{ execute = function(sql, params)
      seen[#seen + 1] = { sql = sql, params = params }
      local ok, res = pcall(conn.execute, conn, sql, table.unpack(params))
      if not ok then error(reshape and reshape(res) or res, 0) end
      local out = {}
      for i, r in ipairs(res) do out[i] = { tostring(r.id) } end
      return out
    end }
    local app = tarry.App{ connector = c }
    app:task("t", function() end)
    return app, seen
  end

  it("runs the PgConnector's statement with one JSON parameter, and prints and types itself", function()
    local app, seen = host_app()
    local id = app.tasks.t:configure{ lock = "l" }:defer{ a = 1 }
    assert.are.equal(1, #seen)
    assert.are.equal(require("tarry.core").DEFER_SQL, seen[1].sql)
    assert.are.equal(1, #seen[1].params)
    assert.are.same({ a = 1 }, tarry.json.decode(db.value(name, "SELECT args FROM procrastinate_jobs WHERE id = " .. id)))
    assert.are.equal("HostConnector", tarry.type(app.connector))
    assert.matches("^<tarry.HostConnector function: 0x%x+, 1 job deferred>$", tostring(app.connector))
    assert.are.equal(app.connector, app.connector:get_sync_connector())
    -- an app on another connector hands its tasks to one on the host's connection
    local memory_app = tarry.App{ connector = tarry.MemoryConnector() }
    memory_app:task("m", function() end)
    local on_host = memory_app:with_connector(app.connector)
    assert.are.equal(id + 1, on_host.tasks.m:defer{})
    assert.are.equal(0, #memory_app.connector:list_jobs())
  end)

  -- PostgreSQL's primary message for the conflict, as a driver passes it on.
  local function primary(e) return string.format('duplicate key value violates unique constraint "%s"', e.constraint) end
  for _, shape in ipairs {
    { "a table with sqlstate and constraint",
      function(e) return { sqlstate = e.sqlstate, constraint = e.constraint, detail = e.detail, message = primary(e) } end },
    { "a table with sqlstate alone", function(e) return { sqlstate = e.sqlstate, message = primary(e), detail = e.detail } end },
    { "a string with a SQLSTATE",
      function(e) return "ERROR:  " .. primary(e) .. " (SQLSTATE " .. e.sqlstate .. ")\nDETAIL:  " .. e.detail end },
    { "a string in libpq's verbose form",
      function(e) return "ERROR:  " .. e.sqlstate .. ": " .. primary(e) .. "\nDETAIL:  " .. e.detail end },
  } do
    it("maps " .. shape[1] .. " for a queueing-lock conflict to already_enqueued", function()
      local app = host_app(shape[2])
      app.tasks.t:configure{ queueing_lock = "x" }:defer{}
      local ok, err = pcall(function() return app.tasks.t:configure{ queueing_lock = "x" }:defer{} end)
      assert.is_false(ok)
      assert.is_true(tarry.is_error(err))
      assert.are.equal("tarry: already_enqueued: a job with the same queueing lock is already waiting "
        .. "(Key (queueing_lock)=(x) already exists.) (SQLSTATE 23505)", tostring(err))
      assert.are.equal("procrastinate_jobs_queueing_lock_idx_v1", err.constraint)
      assert.are.equal(1, tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs")))
    end)
  end

  it("maps another database error to code database with its SQLSTATE", function()
    local bare = db.fresh{ schema = false }
    local bare_conn = tarry.SyncPgConnector{ conninfo = db.conninfo(bare) }
    local app = host_app(function(e) return "ERROR:  " .. e.message .. " (SQLSTATE " .. e.sqlstate .. ")" end, bare_conn)
    local ok, err = pcall(app.tasks.t.defer, app.tasks.t, {})
    local direct = app:with_connector(bare_conn)
    local ok2, pg_err = pcall(direct.tasks.t.defer, direct.tasks.t, {})
    bare_conn:close()
    db.drop(bare)
    assert.is_false(ok)
    assert.is_false(ok2)
    assert.are.equal("database", err.code)
    assert.are.equal("42P01", err.sqlstate)      -- relation procrastinate_jobs does not exist
    assert.are.equal(pg_err.message, err.message)
    assert.are.equal(tostring(pg_err), tostring(err))
    assert.are.equal(1, select(2, tostring(err):gsub("SQLSTATE", "")))
  end)

  it("says a worker, LISTEN and app.jobs need a PgConnector", function()
    local app = host_app()
    local needs = "a tarry.HostConnector only defers jobs: LISTEN, a worker and app.jobs need a tarry.PgConnector"
    local ok, err = pcall(app.run_worker, app, { wait = false })
    assert.is_false(ok)
    assert.matches(needs, err, 1, true)
    ok, err = pcall(function() return app.jobs:list{} end)
    assert.is_false(ok)
    assert.matches("host_connector_spec.lua:%d+: " .. needs:gsub("%p", "%%%0"), err)
    assert.has_error(function() app.connector:execute("SELECT 1") end)
  end)

  it("refuses a bad execute function or option, and rows that are not one id per job", function()
    assert.has_error(function() tarry.HostConnector{} end)
    assert.has_error(function() tarry.HostConnector{ execute = function() end, exec = 1 } end,
      "tarry.HostConnector: unknown option 'exec' (known: execute, name)")
    local app = tarry.App{ connector = tarry.HostConnector{ execute = function() return {} end } }
    assert.has_error(function() app:defer("t", {}) end, "tarry.HostConnector: the execute function returned 0 "
      .. "row(s) for 1 job: expected an array of rows, one per job, each { id }")
  end)
end)
