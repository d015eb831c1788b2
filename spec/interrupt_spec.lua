-- handle:interrupt(err): the error is raised inside the coroutine at its next yield point, as if
-- the call it waits in raised it; the coroutine may catch it and clean up.
local tarry = require "tarry"
local core = require "tarry.core"
local db = require "support.db"

local function memory_app() return tarry.App{ connector = tarry.MemoryConnector() } end

local function stop_error() return core.error("stop", "asked to stop") end

-- Run fn in a coroutine under pcall; returns its handle. The coroutine returns "caught", err
-- when interrupted, or "finished" when its wait ended normally.
local function catching(app, fn)
  return app:spawn(function()
    local ok, err = pcall(fn)
    if ok then return "finished" end
    return "caught", err
  end)
end

describe("handle:interrupt at a wait", function()
  it("raises the error at tarry.sleep (the timer is undone: the run does not wait 30 s)", function()
    local app = memory_app()
    local err = stop_error()
    local victim = catching(app, function() tarry.sleep(30) end)
    app:spawn(function() victim:interrupt(err) end)
    app:run()
    local what, got = victim:result()
    assert.are.equal("caught", what)
    assert.are.equal(err, got)                      -- the very object, not a copy or a message
  end)

  it("raises it at an Event wait, and the event forgets the waiter", function()
    local app = memory_app()
    local ev = tarry.Event()
    local victim = catching(app, function() ev:wait() end)
    local after
    app:spawn(function()
      victim:interrupt(stop_error())
      tarry.sleep(0)
      after = tostring(ev)                          -- no one waits on it any more
      ev:set()                                      -- latches: nobody is woken
    end)
    app:run()
    assert.are.equal("caught", (victim:result()))
    assert.are.equal("<tarry.Event clear>", after)
    assert.are.equal("<tarry.Event set>", tostring(ev))
  end)

  it("gives a coroutine woken but not yet resumed the error, not the wake's results", function()
    local app = memory_app()
    local ev = tarry.Event()
    local victim = catching(app, function() return ev:wait() end)
    app:spawn(function()
      ev:set()                                      -- the victim is woken with `true` on its stack ...
      victim:interrupt(stop_error())                -- ... and interrupted before it runs again
    end)
    app:run()
    local what, err = victim:result()
    assert.are.equal("caught", what)
    assert.are.equal("stop", err.code)
  end)

  it("raises it at handle:result(); the awaited coroutine's end does not wake the interrupted one later", function()
    local app = memory_app()
    local slow = app:spawn(function() tarry.sleep(0.2); return "slow done" end)
    local ev = tarry.Event()
    local second
    local victim = app:spawn(function()
      local ok, err = pcall(slow.result, slow)
      second = { ev:wait(0.5) }                     -- must time out: `slow` ending is not for this wait
      return ok, err
    end)
    app:spawn(function() victim:interrupt(stop_error()) end)
    app:run()
    local ok, err = victim:result()
    assert.is_false(ok)
    assert.are.equal("stop", err.code)
    assert.are.same({ false }, second)
    assert.are.equal("slow done", slow:result())
  end)

  it("raises it in a coroutine that never ran yet, at its first instruction", function()
    local app = memory_app()
    local ran = false
    local victim = app:spawn(function() ran = true end)
    victim:interrupt(stop_error())
    local ok, err = pcall(app.run, app)
    assert.is_false(ok)                             -- run() raises the failure nobody looked at
    assert.are.equal("stop", err.code)
    assert.is_false(ran)
    assert.are.equal("failed", victim:status())
  end)

  it("defaults to the error object code 'interrupted'", function()
    local app = memory_app()
    local victim = catching(app, function() tarry.sleep(30) end)
    app:spawn(function() victim:interrupt() end)
    app:run()
    local _, err = victim:result()
    assert.is_true(tarry.is_error(err))
    assert.are.equal("interrupted", err.code)
  end)

  it("is a no-op on a finished coroutine, and keeps the first of two interrupts not yet delivered", function()
    local app = memory_app()
    local done = app:spawn(function() return 1 end)
    local victim = catching(app, function() tarry.sleep(30) end)
    app:spawn(function()
      victim:interrupt(core.error("first", "one"))
      victim:interrupt(core.error("second", "two"))
    end)
    app:run()
    done:interrupt(stop_error())
    assert.are.equal(1, done:result())
    local _, err = victim:result()
    assert.are.equal("first", err.code)
  end)

  it("leaves nothing behind when the coroutine is cancelled with an interrupt pending", function()
    local app = memory_app()
    local victim = app:spawn(function() while true do coroutine.yield() end end)
    app:spawn(function()
      coroutine.yield()
      victim:interrupt(stop_error())                -- the victim is ready: pending, hook not yet armed
      victim:cancel()
    end)
    app:run()
    assert.are.equal("<tarry.Coroutine cancelled", tostring(victim):match("^<tarry.Coroutine %a+"))
  end)
end)

describe("handle:interrupt of a coroutine that is ready or running", function()
  it("raises the error as a plain coroutine.yield() returns", function()
    local app = memory_app()
    local spins = 0
    local victim = catching(app, function() while true do coroutine.yield(); spins = spins + 1 end end)
    app:spawn(function()
      for _ = 1, 3 do coroutine.yield() end
      victim:interrupt(stop_error())
    end)
    app:run()
    local what, err = victim:result()
    assert.are.equal("caught", what)
    assert.are.equal("stop", err.code)
    assert.is_true(spins >= 1)
  end)

  it("raises it inside a pure-Lua busy loop that yields now and then (the count hook)", function()
    local app = memory_app()
    local x = 0
    local victim = catching(app, function()
      while true do
        x = x + 1
        if x % 1000 == 0 then coroutine.yield() end
      end
    end)
    app:spawn(function() coroutine.yield(); coroutine.yield(); victim:interrupt(stop_error()) end)
    app:run()
    assert.are.equal("caught", (victim:result()))
    assert.are.equal(0, x % 1000)                   -- raised at the first instruction after the yield
  end)

  it("raises it in the running coroutine itself at its next instruction", function()
    local app = memory_app()
    local after = false
    local me
    me = catching(app, function()
      me:interrupt(stop_error())
      after = true                                  -- never reached
    end)
    app:run()
    assert.are.equal("caught", (me:result()))
    assert.is_false(after)
  end)

  it("gives the thread its own debug hook back once the error is raised", function()
    local app = memory_app()
    local counted = 0
    local victim = app:spawn(function()
      debug.sethook(function() counted = counted + 1 end, "", 10)
      local ok = pcall(function() while true do coroutine.yield() end end)
      local before = counted
      for _ = 1, 1000 do local _ = before * 2 end   -- the user's hook runs again
      return ok, counted > before
    end)
    app:spawn(function() coroutine.yield(); victim:interrupt(stop_error()) end)
    app:run()
    local ok, hook_back = victim:result()
    assert.is_false(ok)
    assert.is_true(hook_back)
  end)
end)

describe("a task interrupted while it holds resources", function()
  it("may catch the error, clean up and go on", function()
    local app = memory_app()
    local log = {}
    local victim = app:spawn(function()
      local ok, err = pcall(function() tarry.sleep(30) end)
      log[#log + 1] = "cleanup after " .. err.code
      tarry.sleep(0.01)                             -- later waits work as usual
      log[#log + 1] = "went on"
      return ok
    end)
    app:spawn(function() victim:interrupt(stop_error()) end)
    app:run()
    assert.is_false(victim:result())
    assert.are.same({ "cleanup after stop", "went on" }, log)
  end)

  it("runs its <close> variables, caught or not", function()
    local app = memory_app()
    local closed = {}
    local function guard(name) return setmetatable({}, { __close = function() closed[#closed + 1] = name end }) end
    local inner = app:spawn(function()
      pcall(function()
        local g <close> = guard("inside pcall")
        tarry.sleep(30)
      end)
    end)
    local outer = app:spawn(function()
      local g <close> = guard("uncaught")
      tarry.sleep(30)
    end)
    app:spawn(function() inner:interrupt(stop_error()); outer:interrupt(stop_error()) end)
    local ok, err = pcall(app.run, app)
    assert.is_false(ok)
    assert.are.equal("stop", err.code)
    table.sort(closed)
    assert.are.same({ "inside pcall", "uncaught" }, closed)
    assert.are.equal("failed", outer:status())
  end)
end)

describe("handle:interrupt at a PostgreSQL wait", function()
  local name, conn
  before_each(function()
    name = db.fresh()
    conn = tarry.PgConnector{ conninfo = db.conninfo(name), min_size = 1, max_size = 1 }:open()
  end)
  after_each(function()
    conn:close()
    db.drop(name)
  end)

  local function sleeping_backends()
    return tonumber(db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " ..
      "AND query LIKE 'SELECT pg_sleep(5)%' AND state = 'active'"))
  end

  it("raises it at a query in flight; the connection is dropped and the pool stays usable", function()
    local app = tarry.App{ connector = conn }
    local pids = {}
    local victim = catching(app, function()
      pids[1] = conn:execute("SELECT pg_backend_pid() AS pid")[1].pid
      conn:execute("SELECT pg_sleep(5)")
    end)
    local after
    app:spawn(function()
      local deadline = tarry.now() + 30
      while sleeping_backends() == 0 and tarry.now() < deadline do tarry.sleep(0.02) end
      victim:interrupt(stop_error())
      tarry.sleep(0)
      after = conn:execute("SELECT pg_backend_pid() AS pid, 41 + 1 AS n")[1]   -- max_size 1: needs the slot
    end)
    app:run()
    local what, err = victim:result()
    assert.are.equal("caught", what)
    assert.are.equal("stop", err.code)
    assert.are.equal(42, after.n)
    assert.are_not.equal(pids[1], after.pid)       -- a new connection: the interrupted one was closed
  end)

  it("raises it at a query still queued for a connection; the query before it is unaffected", function()
    local app = tarry.App{ connector = conn }
    local first = app:spawn(function() return conn:execute("SELECT pg_sleep(0.3), 1 AS n")[1].n end)
    local queued = catching(app, function() conn:execute("SELECT 2 AS n") end)
    app:spawn(function() queued:interrupt(stop_error()) end)
    app:run()
    assert.are.equal(1, first:result())
    assert.are.equal("caught", (queued:result()))
    assert.are.equal(3, conn:execute("SELECT 3 AS n")[1].n)
  end)

  it("raises it at a Listener wait; the listener keeps working", function()
    local app = tarry.App{ connector = conn }
    local got, listening
    local victim = app:spawn(function()
      local l = conn:listen{ "chan" }
      listening = true
      local ok, err = pcall(l.wait, l)
      conn:execute("NOTIFY chan, 'after'")
      got = l:wait(30)
      l:close()
      return ok, err
    end)
    app:spawn(function()
      while not listening do tarry.sleep(0.01) end  -- then the victim parked in l:wait()
      victim:interrupt(stop_error())
    end)
    app:run()
    local ok, err = victim:result()
    assert.is_false(ok)
    assert.are.equal("stop", err.code)
    assert.are.equal("after", got.payload)
  end)
end)
