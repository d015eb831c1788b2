-- The worker next to Procrastinate: jobs Procrastinate deferred, a schema with Procrastinate's
-- row-level triggers, the rows left the way Procrastinate expects them. Then the same worker on
-- a MemoryConnector (no database), and the options it refuses.
local tarry = require "tarry"
local db = require "support.db"
local W = require "support.worker"

local PROCRASTINATE_TRIGGERS = "spec/fixtures/procrastinate_triggers.sql"

local function with_database(opts) return W.with_database(before_each, after_each, opts) end

--- Defer a job with the statement Procrastinate's defer issues.
local function procrastinate_defer(name, queue, task, args_json, lock, queueing_lock)
  local function lit(v) return v and ("'" .. v .. "'") or "NULL" end
  return tonumber(db.value(name, string.format("SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(%s,%s,0,%s,%s," ..
    "%s::jsonb,NULL)::procrastinate_job_to_defer_v1]))", lit(queue), lit(task), lit(lock), lit(queueing_lock),
    lit(args_json))))
end

describe("jobs deferred by Procrastinate", function()
  local t = with_database()

  it("are run by tarry and left as Procrastinate expects: succeeded, attempts 1, unlinked worker", function()
    local sums = {}
    t.app:task("add", function(args) sums[#sums + 1] = args.a + args.b end)
    local first = procrastinate_defer(t.name, "default", "add", '{"a":1,"b":2}')
    local second = procrastinate_defer(t.name, "default", "add", '{"a":10,"b":20}', "lock", "qlock")
    W.run(t.app)
    assert.are.same({ 3, 30 }, sums)
    for _, id in ipairs { first, second } do
      assert.are.same({ "succeeded", 1 }, W.state(t.name, id))
      assert.are.equal("deferred,started,succeeded", W.events(t.name, id))
    end
    assert.are.equal(2, W.count(t.name, "FROM procrastinate_jobs WHERE worker_id IS NULL AND abort_requested = false"))
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_workers"))
  end)
end)

describe("a database with Procrastinate's row-level triggers", function()
  local t = with_database{ schema_file = PROCRASTINATE_TRIGGERS }

  it("is the schema under test (tarry's statement-level triggers are gone)", function()
    assert.are.equal(0, W.count(t.name, "FROM pg_trigger WHERE tgname LIKE 'tarry%'"))
    assert.are.equal(7, W.count(t.name, "FROM pg_trigger WHERE tgname LIKE 'procrastinate%'"))
  end)

  it("runs jobs to the same outcome: succeeded, attempts 1, events deferred, started, succeeded", function()
    local ran = {}
    t.app:task("add", { queue = "math" }, function(args) ran[#ran + 1] = args.a + args.b end)
    t.app:task("greet", function(args) ran[#ran + 1] = "hello " .. args.who end)
    local ids = { t.app.tasks.add:defer{ a = 1, b = 2 }, t.app.tasks.greet:defer{ who = "you" },
      procrastinate_defer(t.name, "math", "add", '{"a":3,"b":4}') }
    W.run(t.app, { concurrency = 3 })
    table.sort(ran, function(x, y) return tostring(x) < tostring(y) end)
    assert.are.same({ 3, 7, "hello you" }, ran)
    for _, id in ipairs(ids) do
      assert.are.same({ "succeeded", 1 }, W.state(t.name, id))
      assert.are.equal("deferred,started,succeeded", W.events(t.name, id))
    end
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_workers"))
  end)

  it("logs the same events for retries, failures and unknown tasks as tarry's own triggers", function()
    t.app:task("flaky", { retry = { max_attempts = 1, wait = 0 } }, function() error("no") end)
    t.app:task("later", { retry = { max_attempts = 1, wait = 3600 } }, function() error("no") end)
    local flaky = t.app.tasks.flaky:defer{}
    local later = t.app.tasks.later:defer{}
    local unknown = t.app:defer("nobody.knows", {})
    W.run(t.app, { log_level = "error", log_stream = io.tmpfile() })
    assert.are.same({ "failed", 2 }, W.state(t.name, flaky))
    assert.are.equal("deferred,started,scheduled,deferred_for_retry,started,failed", W.events(t.name, flaky))
    assert.are.same({ "todo", 1 }, W.state(t.name, later))
    -- The retry cleared the job's worker_id: unregistering the worker does not update the row. (With
    -- Procrastinate's functions it keeps it, and the FK's SET NULL on unregister is an update the
    -- scheduled trigger logs: one more `scheduled` event.)
    assert.are.equal("deferred,started,scheduled,deferred_for_retry", W.events(t.name, later))
    assert.are.same({ "failed", 1 }, W.state(t.name, unknown))
    assert.are.equal("deferred,started,failed", W.events(t.name, unknown))
  end)

  it("keeps same-lock jobs in order and deletes finished jobs with delete_jobs = \"always\"", function()
    local journal = W.journal()
    t.app:task("locked", { lock = "L" }, function(args, ctx)
      journal:add("start", args.n)
      ctx:sleep(0.02)
      journal:add("end", args.n)
    end)
    t.app.tasks.locked:configure{ priority = 0 }:defer{ n = "p0" }
    t.app.tasks.locked:configure{ priority = 5 }:defer{ n = "p5" }
    W.run(t.app, { concurrency = 10, delete_jobs = "always" })
    assert.are.same({ "start p5", "end p5", "start p0", "end p0" }, journal)
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_jobs"))
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_events"))
  end)
end)

--- An app on a MemoryConnector (its PgConnector is never used) and the memory connector.
local function memory_app()
  local app = tarry.App{ connector = tarry.PgConnector{ conninfo = "dbname=never_used" } }
  local memory = tarry.MemoryConnector()
  return app:with_connector(memory), memory
end

local function statuses(memory)
  local out = {}
  for _, j in ipairs(memory:list_jobs()) do out[#out + 1] = { j.id, j.status, j.attempts } end
  return out
end

describe("a worker on a MemoryConnector", function()
  it("runs the jobs in memory, with ids, statuses and attempts as PostgreSQL would record them", function()
    local app, memory = memory_app()
    local seen = {}
    app:task("add", { queue = "math" }, function(args, ctx)
      seen[#seen + 1] = { ctx.job.id, ctx.job.queue, args.a + args.b, ctx.worker_id }
    end)
    app:task("boom", function() error("no") end)
    app.tasks.add:defer{ a = 1, b = 2 }
    app.tasks.boom:defer{}
    app.tasks.add:defer{ a = 3, b = 4 }
    W.run(app, { log_level = "error", log_stream = io.tmpfile() })
    assert.are.same({ { 1, "math", 3, 1 }, { 3, "math", 7, 1 } }, seen)
    assert.are.same({ { 1, "succeeded", 1 }, { 2, "failed", 1 }, { 3, "succeeded", 1 } }, statuses(memory))
  end)

  it("retries, leaves future jobs todo, and fails unknown tasks without retrying", function()
    local app, memory = memory_app()
    local tries = 0
    app:task("flaky", { retry = { max_attempts = 2, wait = 0 } }, function() tries = tries + 1; error("no") end)
    app:task("noop", function() end)
    app.tasks.flaky:defer{}
    app.tasks.noop:configure{ schedule_in = 3600 }:defer{}
    app:defer("nobody.knows", {})
    W.run(app, { log_level = "error", log_stream = io.tmpfile() })
    assert.are.equal(3, tries)
    assert.are.same({ { 1, "failed", 3 }, { 2, "todo", 0 }, { 3, "failed", 1 } }, statuses(memory))
  end)

  it("runs same-lock jobs one at a time in priority then id order, and only the queues asked for", function()
    local app, memory = memory_app()
    local journal = W.journal()
    app:task("locked", { lock = "L" }, function(args, ctx)
      journal:add("start", args.n)
      ctx:sleep(0.01)
      journal:add("end", args.n)
    end)
    local locked = app.tasks.locked
    locked:configure{ priority = 0 }:defer{ n = "p0" }
    locked:configure{ priority = 5 }:defer{ n = "p5 lower id" }
    locked:configure{ priority = 5 }:defer{ n = "p5 higher id" }
    locked:configure{ queue = "elsewhere", lock = "other" }:defer{ n = "elsewhere" }
    W.run(app, { concurrency = 10, queues = { "default" } })
    assert.are.same({ "start p5 lower id", "end p5 lower id", "start p5 higher id", "end p5 higher id",
      "start p0", "end p0" }, journal)
    assert.are.same({ 4, "todo", 0 }, statuses(memory)[4])
  end)

  it("deletes finished jobs as delete_jobs says", function()
    local app, memory = memory_app()
    app:task("ok", function() end)
    app:task("boom", function() error("no") end)
    app.tasks.ok:defer{}
    app.tasks.boom:defer{}
    W.run(app, { delete_jobs = "successful", log_level = "error", log_stream = io.tmpfile() })
    assert.are.same({ { 2, "failed", 1 } }, statuses(memory))
  end)
end)

describe("run_worker's options", function()
  local function message_of(app, opts)
    local ok, err = pcall(app.run_worker, app, opts)
    assert(not ok, "expected an error")
    return tostring(err)
  end

  it("refuse unknown options and out-of-range values, with a message naming the option", function()
    local app = memory_app()
    app:task("noop", function() end)
    assert.matches("run_worker: unknown option 'colour'", message_of(app, { colour = "red" }), 1, true)
    assert.matches("run_worker: concurrency must be an integer >= 1", message_of(app, { concurrency = 0 }), 1, true)
    assert.matches("run_worker: concurrency must be an integer >= 1", message_of(app, { concurrency = 1.5 }), 1, true)
    assert.matches('run_worker: delete_jobs must be "never", "successful" or "always"',
      message_of(app, { delete_jobs = "sometimes" }), 1, true)
    assert.matches("run_worker: queue names must be strings of 1 to 40 bytes",
      message_of(app, { queues = { string.rep("q", 41) } }), 1, true)
    assert.matches("run_worker: fetch_job_polling_interval must be a number of seconds >= 0",
      message_of(app, { fetch_job_polling_interval = -1 }), 1, true)
    assert.matches('run_worker: log_level must be "debug", "info", "warning" or "error"',
      message_of(app, { log_level = "loud" }), 1, true)
    assert.matches('run_worker: log_format must be "human" or "json"', message_of(app, { log_format = "xml" }), 1, true)
  end)

  it("blame the caller's line", function()
    local app = memory_app()
    for _, opts in ipairs { { colour = "red" }, { concurrency = 0 }, { log_level = "loud" } } do
      local ok, err = pcall(function() app:run_worker(opts) end)
      assert.is_false(ok)
      assert.matches("^spec/worker_interop_spec%.lua:%d+: run_worker: ", err)
    end
    local sync_app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = "dbname=never_used" } }
    local ok, err = pcall(function() sync_app:run_worker{ wait = false } end)
    assert.is_false(ok)
    assert.matches("^spec/worker_interop_spec%.lua:%d+: run_worker needs", err)
  end)

  it("accept a 40-byte queue name", function()
    local app, memory = memory_app()
    app:task("noop", { queue = string.rep("q", 40) }, function() end)
    app.tasks.noop:defer{}
    W.run(app, { queues = { string.rep("q", 40) } })
    assert.are.same({ { 1, "succeeded", 1 } }, statuses(memory))
  end)
end)

describe("run_worker on an app that cannot run a worker", function()
  it("says to use the async PgConnector when the app has a SyncPgConnector", function()
    local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = "dbname=never_used" } }
    local ok, err = pcall(app.run_worker, app, { wait = false })
    assert.is_false(ok)
    assert.matches("run_worker needs the async tarry.PgConnector", tostring(err), 1, true)
  end)

  it("refuses to run inside a tarry coroutine", function()
    local app = memory_app()
    local h = app:spawn(function() return pcall(app.run_worker, app, { wait = false }) end)
    app:run()
    local ok, err = h:result()
    assert.is_false(ok)
    assert.matches("run_worker cannot be called from a tarry coroutine", tostring(err), 1, true)
  end)
end)
