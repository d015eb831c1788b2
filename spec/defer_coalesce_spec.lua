-- Many tarry coroutines deferring at once on an open PgConnector: the pool sends the defers that
-- wait while one is in flight as one statement, and each caller still gets its own outcome.
-- A statement's rows share one transaction id (xmin), which shows the coalescing.
local tarry = require "tarry"
local db = require "support.db"

local function open_app(name, opts)
  opts = opts or {}
  opts.conninfo = db.conninfo(name)
  local app = tarry.App{ connector = tarry.PgConnector(opts) }
  app:task("add", function() end)
  app:open()
  return app
end

-- Spawn one coroutine per entry of `defers` ({ configure-overrides, args }), all at once; run
-- the loop; return each caller's { id = } or { err = }, in order.
local function defer_all(app, defers)
  local out = {}
  for i, d in ipairs(defers) do
    app:spawn(function()
      local ok, v = pcall(function() return app.tasks.add:configure(d[1]):defer(d[2]) end)
      out[i] = ok and { id = v } or { err = v }
    end)
  end
  app:run()
  return out
end

local function args_of(name, id)
  return db.value(name, "SELECT args->>'i' FROM procrastinate_jobs WHERE id = " .. id)
end

describe("coalesced defers on the async pool", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("give each of 20 coroutines deferring at once its own id, in fewer statements", function()
    local app = open_app(name)
    local defers = {}
    for i = 1, 20 do defers[i] = { {}, { i = i } } end
    local out = defer_all(app, defers)
    local seen = {}
    for i = 1, 20 do
      assert.is_number(out[i].id)
      assert.is_nil(seen[out[i].id])
      seen[out[i].id] = true
      assert.are.equal(tostring(i), args_of(name, out[i].id))      -- the caller's own job
    end
    assert.are.equal("20", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
    local statements = tonumber(db.value(name, "SELECT count(DISTINCT xmin::text) FROM procrastinate_jobs"))
    assert.is_true(statements < 20, "expected coalesced inserts, got " .. statements .. " transactions")
    app:close()
  end)

  it("send the defers of the coroutines resumed together as one statement, round after round", function()
    -- Each round's batch wakes its ten callers in one pass over the ready coroutines; each defers
    -- again, and the pool sends at the end of the pass: ten jobs a statement, five statements.
    local app = open_app(name)
    for c = 1, 10 do
      app:spawn(function() for r = 1, 5 do app.tasks.add:defer{ i = r * 100 + c } end end)
    end
    app:run()
    assert.are.equal("50", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
    assert.are.equal("5", db.value(name, "SELECT count(DISTINCT xmin::text) FROM procrastinate_jobs"))
    for r = 1, 5 do   -- each statement holds one round
      assert.are.equal("1", db.value(name, "SELECT count(DISTINCT xmin::text) FROM procrastinate_jobs"
        .. " WHERE (args->>'i')::int / 100 = " .. r))
    end
    app:close()
  end)

  it("fail a defer still waiting for its pass's end when a coroutine of that pass closes the connector", function()
    -- The pool goes away while its send is due at the pass's end: the caller gets the closed
    -- connector's error, nothing is inserted, and the runtime does not call into the freed pool
    -- (the AddressSanitizer build would stop on it).
    local app = open_app(name)
    local out = {}
    app:spawn(function()
      local ok, e = pcall(function() return app.tasks.add:defer{ i = 1 } end)
      out.code, out.message = not ok and e.code, not ok and e.message
    end)
    app:spawn(function() app.connector:close() end)
    app:run()
    assert.are.equal("connection", out.code)
    assert.matches("the connector was closed", out.message)
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
  end)

  it("give a batch_defer in a coalesced statement its ids in order", function()
    local app = open_app(name)
    local ids = {}
    for c = 1, 3 do
      app:spawn(function()
        ids[c] = app.tasks.add:batch_defer{ { i = c * 10 + 1 }, { i = c * 10 + 2 }, { i = c * 10 + 3 } }
      end)
    end
    app:run()
    for c = 1, 3 do
      for k = 1, 3 do assert.are.equal(tostring(c * 10 + k), args_of(name, ids[c][k])) end
    end
    app:close()
  end)

  it("fail only the caller whose queueing lock is taken, with already_enqueued", function()
    local app = open_app(name)
    app.tasks.add:configure{ queueing_lock = "busy" }:defer{ i = 0 }
    local defers = {}
    for i = 1, 6 do defers[i] = { {}, { i = i } } end
    defers[4][1] = { queueing_lock = "busy" }                  -- waits behind the first, in the batch
    local out = defer_all(app, defers)
    for i = 1, 6 do
      if i == 4 then
        assert.are.equal("already_enqueued", out[i].err.code)
        assert.are.equal("23505", out[i].err.sqlstate)
      else
        assert.are.equal(tostring(i), args_of(name, out[i].id))
      end
    end
    assert.are.equal("6", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))   -- 0 and 5 others
    app:close()
  end)

  it("fail the second of two callers taking the same new queueing lock in one batch", function()
    local app = open_app(name)
    local out = defer_all(app, { { {}, { i = 1 } }, { { queueing_lock = "q" }, { i = 2 } },
      { {}, { i = 3 } }, { { queueing_lock = "q" }, { i = 4 } } })
    assert.are.equal("2", args_of(name, out[2].id))
    assert.are.equal("already_enqueued", out[4].err.code)
    assert.are.equal("1", args_of(name, out[1].id))
    assert.are.equal("3", args_of(name, out[3].id))
    assert.are.equal("3", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
    app:close()
  end)

  it("go on for the others when one caller stops waiting (interrupted) while its batch is out", function()
    local app = open_app(name)
    local hs, out = {}, {}
    local function defer(i) return function() out[i] = app.tasks.add:defer{ i = i } end end
    -- The first defer goes alone, at the end of the first pass over the ready coroutines; the
    -- other four, spawned in that pass, defer in the next one and wait for it. When it is
    -- answered they go as one batch; the first one's end wakes the last coroutine, which then
    -- interrupts the third while its batch is in flight.
    hs[1] = app:spawn(defer(1))
    app:spawn(function() for i = 2, 5 do hs[i] = app:spawn(defer(i)) end end)
    app:spawn(function() hs[1]:result(); hs[3]:interrupt() end)
    local ok, err = pcall(app.run, app)
    assert.is_false(ok)
    assert.are.equal("interrupted", err.code)
    for _, i in ipairs { 1, 2, 4, 5 } do assert.are.equal(tostring(i), args_of(name, out[i])) end
    assert.is_nil(out[3])
    app:close()
  end)

  it("fail every caller with a connection error when the connection is lost, losing no job silently", function()
    local app = open_app(name, { max_size = 1 })
    local pid = app.connector:execute("SELECT pg_backend_pid() AS pid")[1].pid
    local out = {}
    app:spawn(function()
      local ok, e = pcall(app.connector.execute, app.connector, "SELECT pg_sleep(30)")
      out.sleeper = ok or e.code
    end)
    for i = 1, 4 do
      app:spawn(function()
        local ok, e = pcall(function() return app.tasks.add:defer{ i = i } end)
        out[i] = ok and "ok" or e.code
      end)
    end
    app:spawn(function()                -- the four defers wait behind the sleep on the one connection
      tarry.sleep(0.2)
      db.superuser_psql(name, "SELECT pg_terminate_backend(" .. pid .. ")")
    end)
    app:run()
    assert.are.equal("connection", out.sleeper)
    -- the pool opens a new connection for the waiting defers: they all go through
    for i = 1, 4 do assert.are.equal("ok", out[i]) end
    assert.are.equal("4", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
    app:close()
  end)
end)

describe("prepared statements", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  -- pg_prepared_statements is per session: ask on the connector's only connection.
  local PREPARED = "SELECT count(*) AS n FROM pg_prepared_statements WHERE name LIKE 'tarry\\_%'"

  local function defer_some(app)
    app.tasks.add:defer{ i = 1 }
    app.tasks.add:configure{ queue = "q2", priority = 3, lock = "l", queueing_lock = "ql" }:defer{ i = 2 }
    app.tasks.add:batch_defer{ { i = 3 }, { i = 4 } }
    return app.connector:execute(PREPARED)[1].n
  end

  local ROWS = [[SELECT id, queue_name, task_name, priority, lock, queueing_lock, args, status, attempts
    FROM procrastinate_jobs ORDER BY id]]

  for _, kind in ipairs { "SyncPgConnector", "PgConnector" } do
    it("are used by the defer on a " .. kind .. " by default, and none with prepared_statements = false", function()
      local rows = {}
      for _, on in ipairs { true, false } do
        local c = tarry[kind]{ conninfo = db.conninfo(name), max_size = 1, prepared_statements = on }
        local app = tarry.App{ connector = c }
        app:task("add", function() end)
        local n
        if kind == "PgConnector" then
          app:open()
          n = app:spawn(function() return defer_some(app) end):result()  -- on the async pool
        else
          n = defer_some(app)
        end
        if on then assert.is_true(n >= 1) else assert.are.equal(0, n) end
        rows[#rows + 1] = db.psql(name, ROWS)
        db.psql(name, "TRUNCATE procrastinate_jobs CASCADE; "
          .. "ALTER SEQUENCE procrastinate_jobs_id_seq RESTART")
        app:close()
      end
      assert.are.equal(rows[1], rows[2])                       -- the same rows either way
      assert.matches("q2\tadd\t3\tl\tql", rows[1])
    end)
  end

  it("are used by the worker's fetch and finish, which run the same jobs either way", function()
    for _, on in ipairs { true, false } do
      -- max_size = 1: the task's query runs on the connection that fetched it
      local c = tarry.PgConnector{ conninfo = db.conninfo(name), max_size = 1, prepared_statements = on }
      local app = tarry.App{ connector = c }
      local ran, prepared = {}, {}
      app:task("add", function(a)
        ran[#ran + 1] = a.i
        prepared[#prepared + 1] = c:execute(PREPARED)[1].n
      end)
      app.tasks.add:batch_defer{ { i = 1 }, { i = 2 }, { i = 3 } }
      app:run_worker{ wait = false, concurrency = 1, log_level = "warning" }
      table.sort(ran)
      assert.are.same({ 1, 2, 3 }, ran)
      if on then assert.is_true(prepared[1] >= 1) else assert.are.same({ 0, 0, 0 }, prepared) end
      assert.are.equal("3", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"))
      db.psql(name, "TRUNCATE procrastinate_jobs CASCADE")
      app:close()
    end
  end)

  it("default to off with TARRY_PREPARED_STATEMENTS=0 (for the connectors the CLI makes)", function()
    local cli = require "support.cli"
    local script = cli.write_file(os.tmpname() .. ".lua", [[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = os.getenv("TARRY_CONNINFO"), max_size = 1 } }
      app:task("add", function() end)
      app.tasks.add:defer{}
      io.write(app.connector:execute("SELECT count(*) AS n FROM pg_prepared_statements")[1].n)
    ]])
    for env, want in pairs { ["0"] = "0", off = "0", ["1"] = "1" } do
      local r = cli.run({ "run", script }, { TARRY_CONNINFO = db.conninfo(name), TARRY_PREPARED_STATEMENTS = env })
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(want, r.out)
    end
    os.remove(script)
  end)

  it("is an option of both connectors that must be a boolean", function()
    for _, kind in ipairs { "PgConnector", "SyncPgConnector" } do
      local ok, err = pcall(tarry[kind], { conninfo = "dbname=x", prepared_statements = "no" })
      assert.is_false(ok)
      assert.matches("option 'prepared_statements' must be true or false", err)
    end
  end)
end)
