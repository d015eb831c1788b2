-- Fault injection: the server ends a session while a connection of tarry's sits idle in its
-- pool (pg_terminate_backend from another session, a restart). The next query must go on a fresh
-- connection, not fail on the dead one, and nothing may be lost.
--
-- A terminated backend sends its FATAL, then exits, and only then does its end of the socket close.
-- The proxy (spec/support/tcp_proxy.c --withhold-server-fin) keeps that close from arriving at all,
-- so the FATAL alone must tell the pool that the session is over.
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"
local proxy = require "support.proxy"

local function new_app(connector)
  local app = tarry.App{ connector = connector }
  app:task("add", function(args) return args.a + args.b end)
  return app
end

local function count_jobs(name)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
end

local function tarry_backends(name)
  return db.value(name, "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity " ..
    "WHERE datname = current_database() AND application_name = 'tarry'")
end

-- Terminate every backend tarry opened on `name` and wait until each has exited (so its FATAL has
-- been sent); returns how many there were.
local function terminate_tarry_backends(name)
  return tonumber(db.value(name, "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) " ..
    "FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tarry'"))
end

describe("a pooled connection whose session the server ended while it was idle", function()
  local name, p
  before_each(function()
    name = db.fresh()
    p = proxy.start(nil, { withhold_server_fin = true })
  end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("is replaced before a SyncPgConnector's next execute, though its close has not arrived", function()
    local c = tarry.SyncPgConnector{ conninfo = p:conninfo(name), max_size = 1 }
    assert.is_nil(tarry_backends(name))
    local before = c:execute("SELECT pg_backend_pid()::text AS pid")[1].pid
    assert.are.equal(before, tarry_backends(name))
    assert.are.equal(1, terminate_tarry_backends(name))
    p:wait_for("withheld", 1, 10)                   -- the FATAL came through, the close did not
    local after = c:execute("SELECT pg_backend_pid()::text AS pid")[1].pid
    assert.are_not.equal(before, after)
    assert.are.equal(after, tarry_backends(name))
    assert.matches("1/1 connections", tostring(c))
    c:close()
  end)

  it("is replaced before a SyncPgConnector's next defer; each defer leaves its one row", function()
    local app = new_app(tarry.SyncPgConnector{ conninfo = p:conninfo(name), max_size = 2 })
    local first = app.tasks.add:defer{ a = 1, b = 1 }
    assert.are.equal(1, terminate_tarry_backends(name))
    p:wait_for("withheld", 1, 10)
    local second = app.tasks.add:defer{ a = 1, b = 2 }
    assert.are.equal(first + 1, second)
    assert.are.same({ { tostring(first), "1" }, { tostring(second), "2" } },
      db.rows(name, "SELECT id, args->>'b' FROM procrastinate_jobs ORDER BY id"))
    app:close()
  end)

  it("is replaced before the next defer of a closed PgConnector (its synchronous connector)", function()
    local app = new_app(tarry.PgConnector{ conninfo = p:conninfo(name), max_size = 2 })
    app:open()
    app:close()
    local first = app.tasks.add:defer{ a = 1, b = 1 }          -- closed: the blocking path
    assert.matches("^<tarry.SyncPgConnector", tostring(app.connector:get_sync_connector()))
    assert.are.equal(1, terminate_tarry_backends(name))
    p:wait_for("withheld", 1, 10)
    local second = app.tasks.add:defer{ a = 1, b = 2 }
    assert.are.equal(first + 1, second)
    assert.are.equal(2, count_jobs(name))
    app:close()
  end)

  it("is replaced before an open PgConnector's next defer", function()
    local app = new_app(tarry.PgConnector{ conninfo = p:conninfo(name), min_size = 1, max_size = 1 })
    app:open()
    local first = app:spawn(function() return app.tasks.add:defer{ a = 1, b = 1 } end)
    app:run()
    assert.are.equal(1, terminate_tarry_backends(name))
    p:wait_for("withheld", 1, 10)
    local second = app:spawn(function() return app.tasks.add:defer{ a = 1, b = 2 } end)
    app:run()
    assert.are.equal(first:result() + 1, second:result())
    assert.are.equal(2, count_jobs(name))
    app:close()
  end)
end)

describe("a SyncPgConnector across a restart of the server", function()
  local name, down
  before_each(function() name = db.fresh() end)
  after_each(function()
    if down then db.server("start"); down = false end
    db.drop(name)
  end)

  it("defers on a fresh connection once the server is back, and gives the connection error while it is down",
     function()
    local c = tarry.SyncPgConnector{ conninfo = db.conninfo(name), max_size = 1 }
    local app = new_app(c)
    local first = app.tasks.add:defer{ a = 1, b = 1 }
    db.server("stop")                               -- the idle session gets its FATAL, then the server goes
    down = true
    local ok, err = pcall(app.tasks.add.defer, app.tasks.add, { a = 1, b = 2 })
    assert.is_false(ok)
    assert.are.equal("connection", err.code)
    assert.matches("^tarry: connection: cannot connect to PostgreSQL: ", tostring(err))
    db.server("start")
    down = false
    local second = app.tasks.add:defer{ a = 1, b = 3 }
    db.server("restart")                            -- down and up again while the connection idles
    local third = app.tasks.add:defer{ a = 1, b = 4 }
    assert.are.same({ { tostring(first), "1" }, { tostring(second), "3" }, { tostring(third), "4" } },
      db.rows(name, "SELECT id, args->>'b' FROM procrastinate_jobs ORDER BY id"))  -- the failed defer left none
    app:close()
  end)
end)
