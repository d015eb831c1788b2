-- The async pool when PostgreSQL drops a connection under a waiting coroutine: the coroutine is
-- resumed from the loop's ready queue, never from inside the pool's callback, so whatever it does
-- next (another query, a close) cannot free what the callback is still using. Under the Sanitize
-- build the first sequence was a use-after-free that killed workers during restarts (issue 6).
local tarry = require "tarry"
local db = require "support.db"

describe("PgConnector when the server closes a connection under a waiting coroutine", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  local function open_app(size)
    local connector = tarry.PgConnector{ conninfo = db.conninfo(name), min_size = size, max_size = size }
    local app = tarry.App{ connector = connector }
    app:open()
    return app, connector
  end

  -- While the loop is held (blocking calls in another coroutine), the victim's query completes on
  -- the server (its backend is idle again) and then its backend is terminated: the loop reads the
  -- result and the end of the stream in one go, so the query completes on a dead connection.
  local function result_then_close(app, pid, sql)
    return app:spawn(function()
      local state_sql = "SELECT state FROM pg_stat_activity WHERE pid = " .. pid .. " AND query = '" .. sql .. "'"
      local deadline = os.time() + 20
      repeat os.execute("sleep 0.05") until db.value(name, state_sql) == "idle" or os.time() > deadline
      db.psql(name, "SELECT pg_terminate_backend(" .. pid .. ")")
      local gone_sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = " .. pid
      repeat os.execute("sleep 0.05") until db.value(name, gone_sql) == "0" or os.time() > deadline
    end)
  end

  for _, case in ipairs {
    { "queries again as soon as it is resumed", function(c) return c:execute("SELECT 2 AS v")[1].v end },
    { "closes the connector as soon as it is resumed", function(c) c:close(); return "closed" end },
  } do
    it("survives a coroutine that " .. case[1], function()
      local app, connector = open_app(1)
      local h = app:spawn(function()
        local pid = connector:execute("SELECT pg_backend_pid() AS pid")[1].pid
        local holder = result_then_close(app, pid, "SELECT 1 AS v")
        local first = connector:execute("SELECT 1 AS v")[1].v
        local after = case[2](connector)
        holder:result()
        return first, after
      end)
      app:run()
      local first, after = h:result()
      assert.are.equal(1, first)
      assert.is_truthy(after)
      app:close()
    end)
  end

  it("gives the waiting query a connection error when its backend is terminated mid-query", function()
    local app, connector = open_app(1)
    local h = app:spawn(function()
      local pid = connector:execute("SELECT pg_backend_pid() AS pid")[1].pid
      app:spawn(function()
        tarry.sleep(0.2)
        db.psql(name, "SELECT pg_terminate_backend(" .. pid .. ")")
      end)
      local ok, err = pcall(connector.execute, connector, "SELECT pg_sleep(30)")
      return ok, err, connector:execute("SELECT 3 AS v")[1].v
    end)
    app:run()
    local ok, err, after = h:result()
    assert.is_false(ok)
    assert.is_true(tarry.is_error(err))
    assert.are.equal(3, after)
    app:close()
  end)

  it("serves the other waiting coroutines after one connection broke", function()
    local app, connector = open_app(2)
    local results = {}
    local victim = app:spawn(function()
      local pid = connector:execute("SELECT pg_backend_pid() AS pid")[1].pid
      result_then_close(app, pid, "SELECT 0 AS v")
      results[#results + 1] = connector:execute("SELECT 0 AS v")[1].v
      for i = 1, 5 do results[#results + 1] = connector:execute("SELECT $1::int AS v", i)[1].v end
    end)
    local others = {}
    for i = 1, 5 do
      others[i] = app:spawn(function() tarry.sleep(0.3); return connector:execute("SELECT $1::int AS v", i)[1].v end)
    end
    app:run()
    victim:result()
    assert.are.same({ 0, 1, 2, 3, 4, 5 }, results)
    for i = 1, 5 do assert.are.equal(i, others[i]:result()) end
    app:close()
  end)
end)
