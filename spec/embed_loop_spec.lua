-- Driving tarry from a host's own loop: app:pollfd() / app:events() / app:timeout() tell a host
-- when tarry has work, app:step(0) runs it without ever blocking, and app:start_worker() runs a
-- worker on the app's loop while the host keeps the loop (and its signals). The fd is watched
-- here with luv (lua-luv), as a host would.
local tarry = require "tarry"
local uv = require "luv"
local db = require "support.db"
local W = require "support.worker"

local function with_database() return W.with_database(before_each, after_each) end

-- Whether fd is readable now (a poll with no wait).
local function readable_now(fd)
  local got = false
  local p = uv.new_poll(fd)
  p:start("r", function() got = true end)
  uv.run("nowait")
  p:stop()
  p:close()
  uv.run("nowait")
  return got
end

-- Wait at most `seconds` for fd to become readable; true if it did.
local function readable_within(fd, seconds)
  local got = false
  local p, t = uv.new_poll(fd), uv.new_timer()
  p:start("r", function() got = true; p:stop(); t:stop() end)
  t:start(math.floor(seconds * 1000), 0, function() p:stop() end)
  uv.run("default")
  p:close()
  t:close()
  uv.run("nowait")
  return got
end

-- Step (waiting at most 50 ms each time) until done() or `seconds` pass; returns done().
local function step_until(app, done, seconds)
  local deadline = tarry.now() + (seconds or 20)
  while not done() and tarry.now() < deadline do app:step(0.05) end
  return done()
end

-- Step until the pollfd is quiet (nothing left to do now); bounded.
local function settle(app)
  for _ = 1, 1000 do
    if not readable_now(app:pollfd()) and app:timeout() ~= 0 then return end
    app:step(0)
  end
  error("the pollfd never went quiet")
end

describe("app:step(0)", function()
  local t = with_database()

  it("returns while a query is in flight, and later delivers its result", function()
    t.app:open()
    local holder = tarry.SyncPgConnector{ conninfo = db.conninfo(t.name) }
    holder:execute("SELECT pg_advisory_lock(42)")          -- the query below waits for this lock
    local h = t.app:spawn(function()
      return t.app.connector:execute("SELECT pg_advisory_lock(42), 'got it' AS answer")[1].answer
    end)
    for _ = 1, 20 do t.app:step(0) end
    assert.are.equal("running", h:status())                -- the query is still out; step returned
    holder:execute("SELECT pg_advisory_unlock(42)")
    assert.is_true(step_until(t.app, function() return h:status() ~= "running" end))
    assert.are.equal("got it", h:result())
    holder:close()
  end)

  it("returns the number of coroutines it resumed, and 0 when nothing was ready", function()
    local a = t.app:spawn(function() end)
    local b = t.app:spawn(function() end)
    assert.are.equal(2, t.app:step(0))
    assert.are.same({ "succeeded", "succeeded" }, { a:status(), b:status() })
    assert.are.equal(0, t.app:step(0))
  end)

  it("returns even when a coroutine yields for ever, leaving it ready for the next step", function()
    local turns = 0
    local h = t.app:spawn(function() while true do turns = turns + 1; coroutine.yield() end end)
    local n = t.app:step(0)
    assert.is_true(n >= 1)
    assert.are.equal(n, turns)
    assert.are.equal(0, t.app:timeout())
    assert.is_true(readable_now(t.app:pollfd()))
    h:cancel()
    assert.are.equal("cancelled", tostring(h):match("^<tarry.Coroutine (%a+)"))
  end)

  it("raises the error of a spawned coroutine whose result nobody asked for, once", function()
    t.app:spawn(function() error({ code = "boom" }) end)
    local ok, err = pcall(t.app.step, t.app, 0)
    assert.is_false(ok)
    assert.are.equal("boom", err.code)
    assert.are.equal(0, t.app:step(0))
  end)

  it("cannot be called from inside a tarry coroutine", function()
    local h = t.app:spawn(function() return pcall(t.app.step, t.app, 0) end)
    t.app:step(0)
    local ok, err = h:result()
    assert.is_false(ok)
    assert.matches("step%(%) cannot be called from inside a tarry coroutine", err)
  end)

  it("refuses a negative timeout", function()
    assert.has_error(function() t.app:step(-1) end, "bad argument #1 to 'step' (must be a number of seconds >= 0)")
  end)
end)

describe("app:timeout()", function()
  local t = with_database()

  it("is 0 while coroutines are ready, the seconds to the next timer, nil with none", function()
    collectgarbage()
    assert.is_nil(t.app:timeout())
    local h = t.app:spawn(function() tarry.sleep(30) end)
    assert.are.equal(0, t.app:timeout())                   -- spawned: ready to run
    t.app:step(0)                                          -- now it sleeps
    local left = t.app:timeout()
    assert.is_true(left > 0 and left <= 30)
    h:cancel()
    assert.is_nil(t.app:timeout())
  end)

  it("counts an Event wait's timeout, and the pollfd turns readable when that timer is due", function()
    local ev = tarry.Event()
    local h = t.app:spawn(function() return ev:wait(0.2) end)
    t.app:step(0)
    assert.is_true(t.app:timeout() <= 0.2)
    assert.is_true(readable_within(t.app:pollfd(), 10))    -- the timer, not a busy loop
    assert.is_true(step_until(t.app, function() return h:status() ~= "running" end))
    assert.is_false(h:result())                            -- it timed out
  end)
end)

describe("app:pollfd()", function()
  local t = with_database()

  it("is one fd, watched for reading (events() is \"r\"), the same for every app of the state", function()
    local fd = t.app:pollfd()
    assert.are.equal("integer", math.type(fd))
    assert.are.equal("r", t.app:events())
    local other = tarry.App{ connector = tarry.MemoryConnector() }
    assert.are.equal(fd, other:pollfd())
  end)

  it("becomes readable when host code makes a coroutine ready, and quiet once it ran", function()
    local ev = tarry.Event()
    local h = t.app:spawn(function() return ev:wait() end)
    settle(t.app)
    assert.are.equal("running", h:status())
    assert.is_false(readable_now(t.app:pollfd()))
    ev:set()                                               -- from the host, outside any step
    assert.is_true(readable_now(t.app:pollfd()))
    assert.are.equal(1, t.app:step(0))
    assert.are.equal("succeeded", h:status())
    assert.is_false(readable_now(t.app:pollfd()))
  end)

  it("becomes readable when the result of a query in flight arrives", function()
    t.app:open()
    local holder = tarry.SyncPgConnector{ conninfo = db.conninfo(t.name) }
    holder:execute("SELECT pg_advisory_lock(7)")
    local h = t.app:spawn(function() return t.app.connector:execute("SELECT pg_advisory_lock(7), 1 AS n")[1].n end)
    settle(t.app)                                          -- sent; its answer waits for the lock
    assert.are.equal("running", h:status())
    assert.is_false(readable_now(t.app:pollfd()))
    holder:execute("SELECT pg_advisory_unlock(7)")
    assert.is_true(readable_within(t.app:pollfd(), 20))
    assert.is_true(step_until(t.app, function() return h:status() ~= "running" end))
    assert.are.equal(1, h:result())
    holder:close()
  end)

  it("becomes readable when another process defers a job for a listening worker", function()
    local ran = false
    t.app:task("hello", function() ran = true end)
    local w = t.app:start_worker{ concurrency = 2, log_level = "warning", fetch_job_polling_interval = 60,
      abort_job_polling_interval = 60, update_heartbeat_interval = 60 }
    assert.is_true(step_until(t.app, function() return w.notifier.listener ~= nil end))
    settle(t.app)
    local fd = t.app:pollfd()
    assert.is_false(readable_now(fd))                      -- a worker with nothing to do is quiet
    assert.is_true(t.app:timeout() > 1)                    -- and needs no step soon
    db.psql(t.name, [[SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'hello', 0, NULL, NULL,
      '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])]])   -- psql: another process; its NOTIFY wakes us
    assert.is_true(readable_within(fd, 20))
    assert.is_true(step_until(t.app, function() return w:stats().succeeded == 1 end))
    assert.is_true(ran)
    w:stop()
    assert.is_true(step_until(t.app, function() return w:stopped() end))
  end)
end)

describe("the runtime's watchers", function()
  -- The pollfd and timeout() see only what goes through tarry's helpers (runtime/pollfd.c).
  it("are all started and stopped through tarry_io_*, tarry_timer_* and tarry_rt_async_send", function()
    local raw = {}
    for path in io.popen("find runtime -name '*.c' | sort"):lines() do
      if path ~= "runtime/pollfd.c" then
        local n = 0
        for line in io.lines(path) do
          n = n + 1
          if line:match("ev_io_start%s*%(") or line:match("ev_io_stop%s*%(") or line:match("ev_timer_start%s*%(")
            or line:match("ev_timer_stop%s*%(") or line:match("ev_timer_again%s*%(") or line:match("ev_async_send%s*%(") then
            raw[#raw + 1] = path .. ":" .. n .. ": " .. line
          end
        end
      end
    end
    assert.are.same({}, raw)
  end)
end)

describe("app:start_worker()", function()
  local t = with_database()

  it("returns at once, runs the jobs while the host steps, and stops gracefully on w:stop()", function()
    local log = W.journal()
    t.app:task("work", function(args, ctx) log:add("start", args.n); ctx:sleep(0.05); log:add("end", args.n) end)
    local ids = {}
    for n = 1, 5 do ids[n] = t.app.tasks.work:defer{ n = n } end
    local w = t.app:start_worker{ concurrency = 10, log_level = "warning" }
    assert.is_false(w:stopped())
    assert.is_true(step_until(t.app, function() return w:stats().running > 0 end))
    w:stop()                                               -- while jobs run: they finish
    assert.is_true(step_until(t.app, function() return w:stopped() end))
    assert.are.equal(5, w:stats().succeeded)
    assert.are.equal(10, #log)
    for _, id in ipairs(ids) do assert.are.same({ "succeeded", 1 }, W.state(t.name, id)) end
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_workers"))   -- it unregistered
    assert.is_false(t.app.connector:is_open())            -- it opened the connector, and closed it
  end)

  it("counts outcomes in w:stats() and prints them", function()
    t.app:task("ok", function() end)
    t.app:task("bad", function() error("no") end)
    t.app:task("flaky", { retry = { max_attempts = 1, wait = 0 } }, function() error("not yet") end)
    t.app.tasks.ok:defer{}
    t.app.tasks.ok:defer{}
    t.app.tasks.bad:defer{}
    t.app.tasks.flaky:defer{}
    local w = t.app:start_worker{ concurrency = 10, log_level = "error", log_stream = io.open("/dev/null", "w"),
      name = "host" }
    assert.are.equal(tarry.type(w), "Worker")
    assert.is_true(step_until(t.app, function()
      local s = w:stats()
      return s.succeeded == 2 and s.failed == 2 and s.retried == 1
    end))
    assert.are.same({ running = 0, succeeded = 2, failed = 2, retried = 1, aborted = 0 }, w:stats())
    assert.are.equal('<tarry.Worker "host" running: 0 running, 2 succeeded, 2 failed, 1 retried>', tostring(w))
    w:stop()
    assert.are.equal('<tarry.Worker "host" stopping: 0 running, 2 succeeded, 2 failed, 1 retried>', tostring(w))
    assert.is_true(step_until(t.app, function() return w:stopped() end))
    assert.matches('^<tarry.Worker "host" stopped', tostring(w))
  end)

  it("raises the worker's failure from app:step()", function()
    db.psql(t.name, "DROP FUNCTION procrastinate_fetch_job_v2")
    local w = t.app:start_worker{ log_level = "error", log_stream = io.open("/dev/null", "w") }
    local ok, err
    local deadline = tarry.now() + 20
    repeat ok, err = pcall(t.app.step, t.app, 0.05) until not ok or tarry.now() > deadline
    assert.is_false(ok)
    assert.are.equal("schema", err.code)
    assert.is_true(w:stopped())
  end)

  it("refuses signal handling, which stays the host's, and names itself in errors", function()
    assert.has_error(function() t.app:start_worker{ install_signal_handlers = true } end,
      "start_worker: install_signal_handlers is not an option here: signals stay the host's (call w:stop() from its handler)")
    assert.has_error(function() t.app:start_worker{ concurency = 2 } end, "start_worker: unknown option 'concurency'")
    local sync = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = db.conninfo(t.name) } }
    local ok, err = pcall(sync.start_worker, sync, {})
    assert.is_false(ok)
    assert.matches("start_worker needs the async tarry.PgConnector", err)
  end)
end)

describe("app:start_worker() on a MemoryConnector", function()
  it("runs the jobs while the host steps, with no database", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local sum = 0
    app:task("add", function(args) sum = sum + args.n end)
    for n = 1, 10 do app.tasks.add:defer{ n = n } end
    local w = app:start_worker{ concurrency = 3, log_level = "warning" }
    assert.is_true(step_until(app, function() return w:stats().succeeded == 10 end))
    assert.are.equal(55, sum)
    w:stop()
    assert.is_true(step_until(app, function() return w:stopped() end))
    assert.are.same({ running = 0, succeeded = 10, failed = 0, retried = 0, aborted = 0 }, w:stats())
  end)
end)
