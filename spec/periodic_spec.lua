-- Periodic tasks: registering schedules on an app, which ticks are due, and deferring a tick at
-- most once across every worker (store:defer_periodic through procrastinate_defer_periodic_job_v2),
-- on PostgreSQL (with and without tarry's serialising function) and on the MemoryConnector.
-- Here the worker's entry point is called directly; spec/worker_periodic_spec.lua has the
-- workers that call it.
local tarry = require "tarry"
local Periodic = require "tarry.periodic"
local Store = require "tarry.store"
local cron = require "tarry.cron"
local db = require "support.db"
local W = require "support.worker"
local error_of = require("support.expect").error_of

local HERE = "periodic_spec%.lua:%d+: "
local T0 = 1704067200                 -- 2024-01-01 00:00:00 UTC

local function new_app()
  local app = tarry.App{ connector = tarry.MemoryConnector() }
  app:task("report", { queue = "reports", priority = 2, lock = "r" }, function() end)
  return app
end

describe("app:periodic", function()
  it("registers a schedule with the task's options, its own where given, and lists it", function()
    local app = new_app()
    local e = app:periodic("*/5 * * * *", "report")
    local f = app:periodic("0 9 * * mon-fri", "report", { periodic_id = "weekday", args = { kind = "daily" },
      queue = "urgent", priority = 7, lock = "x", queueing_lock = "one" })
    assert.are.same({ "*/5 * * * *", "report", "", {}, "reports", 2, "r" },
      { e.cron, e.task_name, e.periodic_id, e.args, e.queue, e.priority, e.lock })
    assert.are.same({ "weekday", { kind = "daily" }, "urgent", 7, "x", "one" },
      { f.periodic_id, f.args, f.queue, f.priority, f.lock, f.queueing_lock })
    assert.are.same({ e, f }, app:periodic_tasks())
    assert.are.equal("<tarry.CronSchedule */5 * * * *>", tostring(e.schedule))
  end)

  it("is shared by the apps over the same tasks", function()
    local app = new_app()
    app:periodic("@hourly", "report")
    assert.are.equal(1, #app:with_connector(tarry.MemoryConnector()):periodic_tasks())
  end)

  it("accepts the builtin retention task", function()
    local app = new_app()
    local e = app:periodic("0 3 * * *", "procrastinate.builtin_tasks.remove_old_jobs", { args = { max_hours = 72 } })
    assert.are.same({ "builtin:procrastinate.builtin_tasks.remove_old_jobs", "builtin" }, { e.task_name, e.queue })
  end)

  it("refuses, at the caller's line, what could not be deferred", function()
    local app = new_app()
    app:periodic("@daily", "report")
    local cases = {
      { function() app:periodic("61 * * * *", "report") end,
        'cron: field 1 %(minute%), character 1 of "61 %* %* %* %*": 61 is out of range %(0%-59%)' },
      { function() app:periodic("@daily", "nope") end, 'app:periodic: no task named "nope" is registered' },
      { function() app:periodic("@daily", "report") end,
        'task "report" already has a schedule with periodic_id "" %(give each schedule of one task its own periodic_id%)' },
      { function() app:periodic("@daily", "report", { periodic_id = "x", args = { timestamp = 1 } }) end,
        "args must not hold 'timestamp': each job receives its tick there" },
      { function() app:periodic("@daily", "report", { periodic_id = "x", args = { f = print } }) end,
        "args cannot be stored as JSON: args.f: cannot encode a function" },
      { function() app:periodic("@daily", "report", { periodic_id = "x", args = { 1, 2 } }) end,
        "args must be a table of named arguments" },
      { function() app:periodic("@daily", "report", { periodic_id = 3 }) end,
        "periodic_id must be a string of at most 128 characters" },
      { function() app:periodic("@daily", "report", { periodic_id = "x", queue = "" }) end, "queue must be a string" },
      { function() app:periodic("@daily", "report", { periodic_id = "x", priority = "high" }) end,
        "priority must be a 32%-bit integer" },
      { function() app:periodic("@daily", "report", { periodic_id = "x", cron = "1" }) end, "unknown option 'cron'" },
    }
    for _, c in ipairs(cases) do assert.matches(HERE .. ".-" .. c[2], error_of(c[1])) end
    assert.are.equal(1, #app:periodic_tasks())
  end)
end)

describe("the task option cron", function()
  it("registers the task's schedule with periodic_id ''", function()
    local app = new_app()
    app:task("tick", { cron = "* * * * * */10", queue = "clock" }, function() end)
    local e = app:periodic_tasks()[1]
    assert.are.same({ "* * * * * */10", "tick", "", "clock" }, { e.cron, e.task_name, e.periodic_id, e.queue })
    assert.are.equal("* * * * * */10", app.tasks.tick.cron)
  end)

  it("refuses a malformed schedule at registration, naming the place, and registers nothing", function()
    local app = new_app()
    assert.matches(HERE .. 'cron: field 2 %(hour%), character 5 of "0 9%-x %* %* %*": expected a number, got "x"',
      error_of(function() app:task("tick", { cron = "0 9-x * * *" }, function() end) end))
    assert.is_nil(app.tasks.tick)
    assert.are.same({}, app:periodic_tasks())
  end)
end)

describe("Periodic.due(schedule, now, last, max_delay)", function()
  local every_minute, every_5 = cron.parse("* * * * *"), cron.parse("*/5 * * * *")
  local now = T0 + 7 * 60 + 30                  -- 00:07:30

  it("with nothing deferred yet, gives only the latest past tick, if it is recent enough", function()
    assert.are.same({ { T0 + 300 }, nil }, { Periodic.due(every_5, now, nil) })
    assert.are.same({ {}, nil }, { Periodic.due(every_5, now, nil, 60) })
    assert.are.same({ {} }, { Periodic.due(cron.parse("0 12 * * *"), now, nil) })
  end)

  it("catches up every tick after the last one", function()
    local ticks = Periodic.due(every_minute, now, T0)
    assert.are.same({ T0 + 60, T0 + 120, T0 + 180, T0 + 240, T0 + 300, T0 + 360, T0 + 420 }, ticks)
    assert.are.same({ {}, nil }, { Periodic.due(every_minute, now, T0 + 420) })
  end)

  it("skips the ticks older than max_delay, and says from which one", function()
    local ticks, skipped = Periodic.due(every_minute, now, T0 - 3600, 600)
    assert.are.equal(T0 - 3540, skipped)
    assert.are.equal(10, #ticks)                  -- 23:58 ... 00:07: those after now - 600 s
    assert.are.same({ T0 - 120, T0 + 420 }, { ticks[1], ticks[#ticks] })
  end)

  it("ignores a last tick far in the future (a fast clock elsewhere) instead of waiting for it", function()
    assert.are.same({ { T0 + 420 }, nil }, { Periodic.due(every_minute, now, T0 + 86400) })
  end)
end)

-- Both stores: PostgreSQL with tarry's function, PostgreSQL with only the protocol's (a schema
-- Procrastinate applied), and the MemoryConnector.
local function pg_store(name, without_tarry_function)
  if without_tarry_function then
    db.psql(name, "DROP FUNCTION tarry_defer_periodic_job_v1(varchar, varchar, varchar, varchar, integer, varchar, "
      .. "bigint, jsonb)")
  end
  return Store.of(tarry.SyncPgConnector{ conninfo = db.conninfo(name) })
end

local JOB = { task_name = "report", queue = "reports", priority = 2, args = { kind = "daily" } }

local function story(store)
  local out = {}
  local function defer(tick, job) return { store:defer_periodic(job or JOB, "", tick) } end
  out.first = defer(T0 + 60)
  out.job = store:get_job(out.first[1])
  out.again = defer(T0 + 60)
  out.second = defer(T0 + 120)
  out.older = defer(T0 + 60)                    -- older than the newest marker: never again
  out.other_id = { store:defer_periodic(JOB, "weekday", T0 + 60) }
  out.last = { store:last_tick("report", ""), store:last_tick("report", "weekday"), store:last_tick("nope", "") }
  local locked = { task_name = "report", queue = "reports", queueing_lock = "one", args = {} }
  out.locked = defer(T0 + 180, locked)
  out.conflict = defer(T0 + 240, locked)        -- the first one still waits: skipped, no marker
  out.last_after_conflict = store:last_tick("report", "")
  store:cancel_job(out.locked[1], false, false)
  out.retried_later = defer(T0 + 240, locked)   -- the lock is free: that tick can be deferred now
  return out
end

describe("store:defer_periodic", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  local function check(s)
    assert.are.equal("number", type(s.first[1]))
    assert.are.same({ "report", "reports", 2, { kind = "daily", timestamp = T0 + 60 }, "todo" },
      { s.job.task_name, s.job.queue, s.job.priority, s.job.args, s.job.status })
    assert.are.same({ nil, "already_deferred" }, s.again)
    assert.are.equal(s.first[1] + 1, s.second[1])
    assert.are.same({ nil, "already_deferred" }, s.older)
    assert.are.equal("number", type(s.other_id[1]))
    assert.are.same({ T0 + 120, T0 + 60, nil }, s.last)
    assert.are.same({ nil, "already_enqueued" }, s.conflict)
    assert.are.equal(T0 + 180, s.last_after_conflict)
    assert.are.equal("number", type(s.retried_later[1]))
  end

  it("defers each tick once, skips older ticks and queueing-lock conflicts (PostgreSQL)", function()
    local s = story(pg_store(name))
    check(s)
    -- the protocol's markers: only the newest per (task, periodic id), linked to its job
    assert.are.same({ { "report", "", tostring(T0 + 240), tostring(s.retried_later[1]) },
      { "report", "weekday", tostring(T0 + 60), tostring(s.other_id[1]) } },
      db.rows(name, "SELECT task_name, periodic_id, defer_timestamp, job_id FROM procrastinate_periodic_defers "
        .. "ORDER BY periodic_id"))
  end)

  it("behaves the same with only the protocol's function (a schema Procrastinate applied)", function()
    check(story(pg_store(name, true)))
  end)

  it("behaves the same on the MemoryConnector", function()
    local memory = tarry.MemoryConnector()
    local s = story(Store.of(memory))
    check(s)
    assert.are.same({ T0 + 60, T0 + 240 }, { memory.markers[1].defer_timestamp, memory.markers[2].defer_timestamp })
  end)

  -- Three connections deferring ticks 1..20 at once: each call returns when its statement did, so
  -- the three drift apart and race on neighbouring ticks too.
  local function race(store, app, rounds_in_step)
    local results = {}
    local function worker(from, to)
      for tick = from, to do
        local id, why = store:defer_periodic(JOB, "", T0 + tick)
        results[#results + 1] = id and "deferred" or why
      end
    end
    if rounds_in_step then            -- all three on the same tick, one tick after the other
      for tick = 1, 20 do
        for _ = 1, 3 do app:spawn(worker, tick, tick) end
        app:run()
      end
    else
      for _ = 1, 3 do app:spawn(worker, 1, 20) end
      app:run()
    end
    local counts = {}
    for _, r in ipairs(results) do counts[r] = (counts[r] or 0) + 1 end
    return counts
  end

  local function pool(without_tarry_function)
    if without_tarry_function then pg_store(name, true) end
    return tarry.App{ connector = tarry.PgConnector{ conninfo = db.conninfo(name), min_size = 3, max_size = 3 } }
  end

  local function one_job_per_tick()
    assert.are.same({ { "20", "20" } }, db.rows(name, "SELECT count(*), count(DISTINCT (args->>'timestamp')) "
      .. "FROM procrastinate_jobs"))
  end

  it("yields one job per tick when 3 connections defer the same ticks at once", function()
    local app = pool()
    local opened <close> = app:open()
    assert.are.equal("3", db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
      .. "current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()"))
    assert.are.same({ deferred = 20, already_deferred = 40 }, race(Store.of(app.connector), app))
    one_job_per_tick()
  end)

  -- Without tarry_defer_periodic_job_v1 a worker late on tick k can find k's marker already
  -- removed by tick k+1 and defer k again (Procrastinate's deferrer has the same window): only
  -- concurrent defers of one tick are guaranteed to give one job.
  it("yields one job per tick with only the protocol's function when the callers share the tick", function()
    local app = pool(true)
    local opened <close> = app:open()
    assert.are.same({ deferred = 20, already_deferred = 40 }, race(Store.of(app.connector), app, true))
    one_job_per_tick()
  end)
end)

describe("Periodic.defer_due, the worker's entry point", function()
  local t = W.with_database(before_each, after_each)

  local function run(app)
    local store, state = Store.of(app.connector), {}
    local entries = app:periodic_tasks()
    local function pass(now)
      local out = {}
      for i, r in ipairs(Periodic.defer_due(store, entries, state, now)) do
        out[i] = string.format("%s/%s %d %s", r.entry.task_name, r.entry.periodic_id, r.tick - T0,
          r.late and "late" or r.id and "deferred" or r.skipped)
      end
      return out
    end
    local first = pass(T0 + 125)            -- a fresh database: the latest past tick only
    local second = pass(T0 + 190)           -- then every tick since
    local again = pass(T0 + 190)
    -- a worker starting later reads the newest tick from the store, and catches up from there
    local fresh_state = {}
    state = fresh_state
    local restart = pass(T0 + 1000)
    return { first, second, again, restart, Periodic.next_tick(entries, T0 + 1000) - T0 }
  end

  it("defers each due tick once, reading where to go on from the store", function()
    t.app:task("report", function() end)
    t.app:periodic("* * * * *", "report")
    t.app:periodic("*/2 * * * *", "report", { periodic_id = "even", args = { n = 1 } })
    local pg = run(t.app)
    assert.are.same({
      { "report/ 120 deferred", "report/even 120 deferred" },
      { "report/ 180 deferred" },
      {},
      { "report/ 240 late", "report/ 420 deferred", "report/ 480 deferred", "report/ 540 deferred",
        "report/ 600 deferred", "report/ 660 deferred", "report/ 720 deferred", "report/ 780 deferred",
        "report/ 840 deferred", "report/ 900 deferred", "report/ 960 deferred",
        "report/even 240 late", "report/even 480 deferred", "report/even 600 deferred", "report/even 720 deferred",
        "report/even 840 deferred", "report/even 960 deferred" },
      1020,
    }, pg)
    assert.are.same(pg, run(t.app:with_connector(tarry.MemoryConnector())))
    assert.are.equal(18, W.count(t.name, "FROM procrastinate_jobs WHERE task_name = 'report'"))
  end)
end)
