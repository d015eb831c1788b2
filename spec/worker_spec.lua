-- The worker running jobs from PostgreSQL: what each job sees, the order jobs run in (priority,
-- locks, queues, schedules), how many run at once, and when a one-shot worker stops.
-- Outcomes (retries, unknown tasks, delete_jobs) are in worker_outcomes_spec.lua; Procrastinate
-- interop, the MemoryConnector and bad options in worker_interop_spec.lua.
local tarry = require "tarry"
local db = require "support.db"
local W = require "support.worker"

local function with_database(opts) return W.with_database(before_each, after_each, opts) end

describe("a worker running jobs", function()
  local t = with_database()

  it("runs every job once: succeeded, attempts 1, events deferred, started, succeeded", function()
    local results = {}
    t.app:task("add", { queue = "math" }, function(args) results[#results + 1] = args.a + args.b end)
    t.app:task("greet", function(args) results[#results + 1] = "hello " .. args.who end)
    local ids = { t.app.tasks.add:defer{ a = 1, b = 2 }, t.app.tasks.greet:defer{ who = "you" },
      t.app.tasks.add:defer{ a = 3, b = 4 } }
    W.run(t.app)
    assert.are.same({ 3, "hello you", 7 }, results)
    for _, id in ipairs(ids) do
      assert.are.same({ "succeeded", 1 }, W.state(t.name, id))
      assert.are.equal("deferred,started,succeeded", W.events(t.name, id))
    end
  end)

  it("gives the task its job, the app and the worker's name and registered id", function()
    local seen
    t.app:task("inspect", { queue = "q", priority = 3 }, function(args, ctx)
      local conn = ctx.app.connector
      seen = {
        job = ctx.job, args = args, app = ctx.app, worker_name = ctx.worker_name, worker_id = ctx.worker_id,
        registered = conn:execute("SELECT count(*) AS n FROM procrastinate_workers WHERE id = $1", ctx.worker_id)[1].n,
        job_worker_id = conn:execute("SELECT worker_id FROM procrastinate_jobs WHERE id = $1", ctx.job.id)[1].worker_id,
      }
    end)
    local id = t.app.tasks.inspect:configure{ lock = "L", queueing_lock = "QL" }:defer{ n = 7, list = { "x" } }
    W.run(t.app, { name = "w1" })
    local j = seen.job
    assert.are.same({ id, "inspect", "q", 3, "L", "QL", 0 },
      { j.id, j.task_name, j.queue, j.priority, j.lock, j.queueing_lock, j.attempts })
    assert.is_nil(j.scheduled_at)
    assert.are.equal(seen.args, j.args)
    assert.are.same({ 7, "x" }, { j.args.n, j.args.list[1] })
    assert.are.equal(t.app, seen.app)
    assert.are.equal("w1", seen.worker_name)
    assert.are.equal("integer", math.type(seen.worker_id))
    assert.are.equal(1, seen.registered)
    assert.are.equal(seen.worker_id, seen.job_worker_id)
  end)

  it("unregisters when it stops, which unlinks its jobs from it", function()
    local worker_id
    t.app:task("note", function(_, ctx) worker_id = ctx.worker_id end)
    local id = t.app.tasks.note:defer{}
    W.run(t.app)
    assert.are.equal("integer", math.type(worker_id))
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_workers"))
    assert.are.equal(1, W.count(t.name, "FROM procrastinate_jobs WHERE worker_id IS NULL AND id = " .. id))
  end)
end)

describe("the order jobs run in", function()
  local t = with_database()

  it("is priority DESC, then id ASC, one at a time with concurrency 1", function()
    local order = {}
    t.app:task("job", function(args) order[#order + 1] = args.n end)
    local job = t.app.tasks.job
    job:configure{ priority = 0 }:defer{ n = "p0 first" }
    job:configure{ priority = 5 }:defer{ n = "p5 first" }
    job:configure{ priority = -1 }:defer{ n = "p-1" }
    job:configure{ priority = 5 }:defer{ n = "p5 second" }
    job:configure{ priority = 0 }:defer{ n = "p0 second" }
    W.run(t.app, { concurrency = 1 })
    assert.are.same({ "p5 first", "p5 second", "p0 first", "p0 second", "p-1" }, order)
  end)

  it("runs same-lock jobs one at a time, in priority then id order, even with concurrency 10", function()
    local journal = W.journal()
    t.app:task("locked", { lock = "the-lock" }, function(args, ctx)
      journal:add("start", args.n)
      ctx:sleep(0.05)
      journal:add("end", args.n)
    end)
    local locked = t.app.tasks.locked
    locked:configure{ priority = 0 }:defer{ n = "p0" }
    locked:configure{ priority = 5 }:defer{ n = "p5 lower id" }
    locked:configure{ priority = 5 }:defer{ n = "p5 higher id" }
    W.run(t.app, { concurrency = 10 })
    assert.are.same({ "start p5 lower id", "end p5 lower id", "start p5 higher id", "end p5 higher id",
      "start p0", "end p0" }, journal)
  end)

  it("lets jobs without the lock run alongside a locked one", function()
    local journal = W.journal()
    t.app:task("locked", { lock = "L" }, function(args, ctx)
      journal:add("start", args.n)
      ctx:sleep(0.05)
      journal:add("end", args.n)
    end)
    t.app.tasks.locked:defer{ n = "locked 1" }
    t.app.tasks.locked:defer{ n = "locked 2" }
    t.app.tasks.locked:configure{ lock = "other" }:defer{ n = "other" }
    W.run(t.app, { concurrency = 10 })
    assert.are.same({ "start locked 1", "start other" }, { journal[1], journal[2] })
    assert.are.equal(6, #journal)
  end)
end)

describe("queueing locks", function()
  local t = with_database()

  local function error_of(f, ...)
    local ok, err = pcall(f, ...)
    assert(not ok, "expected an error")
    return err
  end

  it("refuse a second todo job with the same queueing lock, and accept one once the first is doing", function()
    local inside = {}
    t.app:task("refresh", { queueing_lock = "refresh" }, function(args, ctx)
      if args.first then
        local task = ctx.app.tasks.refresh
        inside.again = task:defer{}                                     -- this job is doing: accepted
        inside.third = error_of(task.defer, task, {})                   -- the one just deferred is todo
      end
    end)
    local first = t.app.tasks.refresh:defer{ first = true }
    local err = error_of(t.app.tasks.refresh.defer, t.app.tasks.refresh, {})
    assert.are.equal("already_enqueued", err.code)
    W.run(t.app)
    assert.are.equal("integer", math.type(inside.again))
    assert.are.equal("already_enqueued", inside.third.code)
    assert.are.same({ "succeeded", 1 }, W.state(t.name, first))
    assert.are.same({ "succeeded", 1 }, W.state(t.name, inside.again))
    assert.are.equal(2, W.count(t.name, "FROM procrastinate_jobs"))
  end)
end)

describe("scheduled jobs", function()
  local t = with_database()

  it("are left todo by a one-shot worker while their time is in the future; past ones run", function()
    local ran = {}
    t.app:task("later", function(args) ran[#ran + 1] = args.n end)
    local future = t.app.tasks.later:configure{ schedule_in = 3600 }:defer{ n = "future" }
    local past = t.app.tasks.later:configure{ schedule_at = tarry.now() - 60 }:defer{ n = "past" }
    W.run(t.app)
    assert.are.same({ "past" }, ran)
    assert.are.same({ "todo", 0 }, W.state(t.name, future))
    assert.are.equal("scheduled,deferred", W.events(t.name, future))
    assert.are.same({ "succeeded", 1 }, W.state(t.name, past))
  end)
end)

describe("the queues option", function()
  local t = with_database()

  it("makes the worker run only those queues' jobs", function()
    local ran = {}
    t.app:task("job", function(args) ran[#ran + 1] = args.q end)
    local job = t.app.tasks.job
    local in_a = job:configure{ queue = "a" }:defer{ q = "a" }
    local in_b = job:configure{ queue = "b" }:defer{ q = "b" }
    local in_default = job:defer{ q = "default" }
    W.run(t.app, { queues = { "a" } })
    assert.are.same({ "a" }, ran)
    assert.are.same({ "succeeded", 1 }, W.state(t.name, in_a))
    assert.are.same({ "todo", 0 }, W.state(t.name, in_b))
    assert.are.same({ "todo", 0 }, W.state(t.name, in_default))
  end)

  it("takes several queues, and every queue when empty", function()
    local ran = {}
    t.app:task("job", function(args) ran[#ran + 1] = args.q end)
    local job = t.app.tasks.job
    for _, q in ipairs { "a", "b", "c" } do job:configure{ queue = q }:defer{ q = q } end
    W.run(t.app, { queues = { "a", "c" } })
    assert.are.same({ "a", "c" }, ran)
    W.run(t.app, { queues = {} })
    assert.are.same({ "a", "c", "b" }, ran)
  end)
end)

describe("concurrency", function()
  local t = with_database()

  local function sleepers(n)
    local journal = W.journal()
    t.app:task("io", function(args, ctx)
      journal:add("start", args.n)
      ctx:sleep(0.2)
      journal:add("end", args.n)
    end)
    for i = 1, n do t.app.tasks.io:defer{ n = i } end
    return journal
  end

  it("runs up to `concurrency` jobs at once while they wait on I/O", function()
    local journal = sleepers(5)
    W.run(t.app, { concurrency = 5 })
    assert.are.same({ "start 1", "start 2", "start 3", "start 4", "start 5" },
      { journal[1], journal[2], journal[3], journal[4], journal[5] })
    assert.are.equal(10, #journal)
    assert.are.equal(5, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'succeeded'"))
  end)

  it("runs one job at a time with concurrency 1", function()
    local journal = sleepers(3)
    W.run(t.app, { concurrency = 1 })
    assert.are.same({ "start 1", "end 1", "start 2", "end 2", "start 3", "end 3" }, journal)
  end)

  it("never runs more than `concurrency` jobs at once", function()
    local running, most = 0, 0
    t.app:task("io", function(_, ctx)
      running = running + 1
      most = math.max(most, running)
      ctx:sleep(0.01)
      running = running - 1
    end)
    for i = 1, 12 do t.app.tasks.io:defer{ n = i } end
    W.run(t.app, { concurrency = 3 })
    assert.are.equal(3, most)
    assert.are.equal(12, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'succeeded'"))
  end)
end)

describe("a task deferring another task", function()
  local t = with_database()

  it("has the new job run by the same one-shot worker run", function()
    local ran = {}
    t.app:task("inner", function(args) ran[#ran + 1] = "inner " .. args.from end)
    t.app:task("outer", function(args, ctx)
      ran[#ran + 1] = "outer"
      ctx.app.tasks.inner:defer{ from = args.id }
    end)
    t.app.tasks.outer:defer{ id = "o1" }
    W.run(t.app)
    assert.are.same({ "outer", "inner o1" }, ran)
    assert.are.equal(2, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'succeeded'"))
  end)
end)

describe("a one-shot worker (wait = false)", function()
  local t = with_database()

  it("returns once nothing is left to fetch, every job done", function()
    t.app:task("noop", function() end)
    t.app.tasks.noop:batch_defer{ {}, {}, {}, {} }
    W.run(t.app, { concurrency = 2 })
    assert.are.equal(4, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'succeeded'"))
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_jobs WHERE status <> 'succeeded'"))
  end)

  it("returns at once when the queue is empty, and registers and unregisters all the same", function()
    t.app:task("noop", function() end)
    W.run(t.app)
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_jobs"))
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_workers"))
  end)

  it("can run again on the same app", function()
    local n = 0
    t.app:task("count", function() n = n + 1 end)
    t.app.tasks.count:defer{}
    W.run(t.app)
    t.app.tasks.count:defer{}
    W.run(t.app)
    assert.are.equal(2, n)
  end)
end)
