-- The connectors and the synchronous-defer contract, against a real PostgreSQL.
local tarry = require "tarry"
local db = require "support.db"

local function new_app(name, connector)
  local app = tarry.App{ connector = connector or tarry.PgConnector{ conninfo = db.conninfo(name) } }
  app:task("add", { queue = "math" }, function(args) return args.a + args.b end)
  return app
end

local function count_jobs(name)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
end

local function backend_pids(name)
  return tonumber(db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE datname = '" .. name ..
    "' AND pid <> pg_backend_pid()"))
end

describe("SyncPgConnector", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("defers and batch-defers through blocking connections", function()
    local app = new_app(name, tarry.SyncPgConnector{ conninfo = db.conninfo(name), max_size = 4 })
    local id = app.tasks.add:defer{ a = 1, b = 2 }
    local ids = app.tasks.add:batch_defer{ { a = 1 }, { a = 2 }, { a = 3 } }
    assert.are.same({ id + 1, id + 2, id + 3 }, ids)
    assert.are.equal(4, count_jobs(name))
    app:close()
  end)

  it("reuses one connection for consecutive queries", function()
    local c = tarry.SyncPgConnector{ conninfo = db.conninfo(name) }
    local pid1 = c:execute("SELECT pg_backend_pid() AS pid")[1].pid
    local pid2 = c:execute("SELECT pg_backend_pid() AS pid")[1].pid
    assert.are.equal(pid1, pid2)
    assert.are.equal(1, backend_pids(name))
    c:close()
    assert.are.equal(0, backend_pids(name))
  end)

  it("replaces a broken connection instead of reusing it", function()
    local c = tarry.SyncPgConnector{ conninfo = db.conninfo(name) }
    local pid1 = c:execute("SELECT pg_backend_pid() AS pid")[1].pid
    db.psql(name, "SELECT pg_terminate_backend(" .. pid1 .. ")")
    repeat until db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE pid = " .. pid1) == "0"
    local pid2 = c:execute("SELECT pg_backend_pid() AS pid")[1].pid
    assert.are_not.equal(pid1, pid2)
    c:close()
  end)

  it("opens min_size connections on open() and never more than max_size", function()
    local c = tarry.SyncPgConnector{ conninfo = db.conninfo(name), min_size = 3, max_size = 3 }
    c:open()
    assert.are.equal(3, backend_pids(name))
    c:close()
    assert.has_error(function() tarry.SyncPgConnector{ min_size = 5, max_size = 2 } end)
    assert.has_error(function() tarry.SyncPgConnector{ max_size = 0 } end)
  end)

  it("passes parameters and converts result types", function()
    local c = tarry.SyncPgConnector{ conninfo = db.conninfo(name) }
    local row = c:execute("SELECT $1::bigint AS i, $2::float8 AS f, $3::text AS s, $4::boolean AS b, " ..
      "$5::jsonb AS j, $6::text AS n", math.maxinteger, 0.1, "héllo", true, { k = { 1, 2 } }, nil)[1]
    assert.are.equal(math.maxinteger, row.i)
    assert.are.equal(0.1, row.f)
    assert.are.equal("héllo", row.s)
    assert.are.equal(true, row.b)
    assert.are.same({ 1, 2 }, { row.j.k[1], row.j.k[2] })
    assert.is_nil(row.n)
    c:close()
  end)
end)

describe("PgConnector before open()", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("defers through get_sync_connector(), created once and reused; open() closes it", function()
    local app = new_app(name)
    local sync = app.connector:get_sync_connector()
    assert.are.equal(sync, app.connector:get_sync_connector())
    assert.matches("SyncPgConnector", tostring(sync))
    app.tasks.add:defer{ a = 1, b = 2 }
    app.tasks.add:defer{ a = 1, b = 2 }
    assert.are.equal(1, backend_pids(name))        -- one blocking connection, reused
    assert.matches("1/10 connections", tostring(sync))
    app:open()
    assert.matches("0/10 connections", tostring(sync))
    assert.are.equal(app.connector, app.connector:get_sync_connector())   -- the connector itself now
    app:close()
    assert.are.equal(0, backend_pids(name))
  end)
end)

describe("PgConnector after open()", function()
  local name, app
  before_each(function()
    name = db.fresh()
    app = new_app(name)
    app:open()
  end)
  after_each(function()
    app:close()
    db.drop(name)
  end)

  it("defers inside a tarry coroutine without blocking the others", function()
    -- A second session (psql, fed through a pipe) holds a lock that blocks every insert.
    local locker = assert(io.popen("psql -X -q -d " .. name .. " >/dev/null", "w"))
    locker:write("BEGIN; LOCK TABLE procrastinate_jobs IN EXCLUSIVE MODE;\n")
    locker:flush()
    repeat until db.value(name, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation " ..
      "WHERE c.relname = 'procrastinate_jobs' AND l.mode = 'ExclusiveLock' AND l.granted") == "1"
    local events = {}
    local deferrer = app:spawn(function()
      local id = app.tasks.add:defer{ a = 1, b = 2 }
      events[#events + 1] = "deferred"
      return id
    end)
    app:spawn(function()
      -- Wait, on the database's own word, until the insert is stuck on the lock; then keep working.
      repeat
        tarry.sleep(0.005)
        local waiting = app.connector:execute("SELECT count(*) AS n FROM pg_stat_activity " ..
          "WHERE datname = $1 AND wait_event_type = 'Lock'", name)[1].n
      until waiting > 0
      for i = 1, 3 do
        events[#events + 1] = "tick " .. i
        tarry.sleep(0.001)
      end
      locker:write("COMMIT;\n")
      locker:flush()
      events[#events + 1] = "released"
    end)
    app:run()
    locker:close()
    assert.are.same({ "tick 1", "tick 2", "tick 3", "released", "deferred" }, events)
    assert.are.equal("integer", math.type(deferrer:result()))
    assert.are.equal(1, count_jobs(name))
  end)

  it("lets go of an idle pooled connection the server ends, while the loop turns, and defers on a new one", function()
    local pid = app:spawn(function() return app.connector:execute("SELECT pg_backend_pid() AS pid")[1].pid end)
    app:run()
    pid = pid:result()
    assert.matches(", 1/10 connections", tostring(app.connector))
    db.psql(name, "SELECT pg_terminate_backend(" .. pid .. ")")
    -- Nothing is sent meanwhile: the pool notices the closed socket by itself.
    local waited = app:spawn(function()
      for _ = 1, 400 do
        if tostring(app.connector):match(", 0/10 connections") then return true end
        tarry.sleep(0.025)
      end
      return false
    end)
    app:run()
    assert.is_true(waited:result(), tostring(app.connector))
    local h = app:spawn(function() return app.tasks.add:defer{ a = 1, b = 2 } end)
    app:run()
    assert.are.equal("integer", math.type(h:result()))
    assert.are.equal(1, count_jobs(name))
  end)

  it("sends concurrent queries on several pooled connections", function()
    -- A barrier: each query returns only once four sessions have started it, so the four
    -- must be in flight at the same time, each on its own connection.
    db.psql(name, [[
      CREATE FUNCTION wait_for_peers(n int) RETURNS int LANGUAGE plpgsql AS $$
      BEGIN
        FOR i IN 1..1000 LOOP
          PERFORM pg_stat_clear_snapshot();
          IF (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
              AND query LIKE 'SELECT wait_for_peers%') >= n THEN
            RETURN pg_backend_pid();
          END IF;
          PERFORM pg_sleep(0.01);
        END LOOP;
        RETURN NULL;
      END $$]])
    local handles, pids, n = {}, {}, 0
    for i = 1, 4 do
      handles[i] = app:spawn(function() return app.connector:execute("SELECT wait_for_peers(4) AS pid")[1].pid end)
    end
    app:run()
    for i = 1, 4 do
      local pid = handles[i]:result()
      assert.is_not_nil(pid)
      if not pids[pid] then n = n + 1 end
      pids[pid] = true
    end
    assert.are.equal(4, n)
  end)

  it("defers where tarry cannot yield: main thread, a C call, a coroutine of the user's", function()
    local ids = {}
    ids[1] = app.tasks.add:defer{ a = 1, b = 1 }                       -- main thread
    local h = app:spawn(function()
      local list = { 3, 1, 2 }
      table.sort(list, function(x, y)                                  -- inside a C call
        if not ids[2] then ids[2] = app.tasks.add:defer{ a = 2, b = 2 } end
        return x < y
      end)
      local co = coroutine.wrap(function()                             -- the user's coroutine
        ids[3] = app.tasks.add:defer{ a = 3, b = 3 }
        coroutine.yield("mine")
        return "done"
      end)
      assert.are.equal("mine", co())
      ids[4] = app.tasks.add:defer{ a = 4, b = 4 }                     -- the tarry coroutine itself
      return co()
    end)
    app:run()
    assert.are.equal("done", h:result())
    for i = 1, 4 do assert.are.equal("integer", math.type(ids[i])) end
    assert.are.equal(4, count_jobs(name))
  end)

  it("spawned coroutines return results and raise errors through their handle", function()
    local ok = app:spawn(function(a, b) return a + b, "x" end, 2, 3)
    local bad = app:spawn(function() error({ code = "mine" }) end)
    assert.has_error(function() app:run() end)   -- run() reports a failure nobody looked at
    local s, x = ok:result()
    assert.are.equal(5, s)
    assert.are.equal("x", x)
    local okc, err = pcall(bad.result, bad)
    assert.is_false(okc)
    assert.are.equal("mine", err.code)
  end)

  it("a handle's result() waits for the coroutine, parking a tarry caller", function()
    local inner
    local outer = app:spawn(function()
      inner = app:spawn(function() tarry.sleep(0.01); return app.tasks.add:defer{ a = 1, b = 1 } end)
      return inner:result() + 1000
    end)
    local v = outer:result()                      -- from the main thread: drives the loop
    assert.are.equal(inner:result() + 1000, v)
  end)
end)

describe("app:with_connector", function()
  local a, b
  before_each(function() a = db.fresh(); b = db.fresh() end)
  after_each(function() db.drop(a); db.drop(b) end)

  it("shares the task registry and defers through the other connector only", function()
    local app = new_app(a)
    local other = app:with_connector(tarry.SyncPgConnector{ conninfo = db.conninfo(b), max_size = 4 })
    app:task("later", function() end)              -- registered after with_connector, on the original
    other:task("from_other", function() end)        -- registered on the copy
    assert.is_not_nil(other.tasks.later)
    assert.is_not_nil(app.tasks.from_other)
    other.tasks.add:defer{ a = 1, b = 2 }
    other.tasks.later:defer{}
    assert.are.equal(0, count_jobs(a))
    assert.are.equal(2, count_jobs(b))
    assert.is_false(app.connector:is_open())
    assert.matches("0/10 connections", tostring(app.connector:get_sync_connector()))
    assert.has_error(function() other:task("add", function() end) end, nil)
  end)
end)

describe("a database that is down", function()
  it("gives the connection error promptly, for a server nobody listens on", function()
    local app = new_app(nil, tarry.PgConnector{ conninfo = "host=127.0.0.1 port=1 dbname=x connect_timeout=2" })
    local ok, err = pcall(app.tasks.add.defer, app.tasks.add, { a = 1, b = 2 })
    assert.is_false(ok)
    assert.are.equal("connection", err.code)
    assert.matches("cannot connect", tostring(err))
    local ok2, err2 = pcall(app.open, app)
    assert.is_false(ok2)
    assert.are.equal("connection", err2.code)
  end)

  it("recovers once the server is back, on the blocking and the async path", function()
    local name = db.fresh()
    local app = new_app(name)
    app.tasks.add:defer{ a = 1, b = 1 }
    local opened = new_app(name)
    opened:open()
    db.server("stop")
    local ok, err = pcall(app.tasks.add.defer, app.tasks.add, { a = 1, b = 2 })
    assert.is_false(ok)
    assert.are.equal("connection", err.code)
    local h = opened:spawn(function() return opened.tasks.add:defer{ a = 1, b = 3 } end)
    local okh, errh = pcall(function() opened:run() end)
    assert.is_false(okh)
    assert.are.equal("connection", errh.code)
    assert.is_false(pcall(h.result, h))
    db.server("start")
    assert.are.equal("integer", math.type(app.tasks.add:defer{ a = 1, b = 4 }))
    local h2 = opened:spawn(function() return opened.tasks.add:defer{ a = 1, b = 5 } end)
    opened:run()
    assert.are.equal("integer", math.type(h2:result()))
    assert.are.equal(3, count_jobs(name))
    opened:close()
    app:close()
    db.drop(name)
  end)
end)
