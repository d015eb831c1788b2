-- app.jobs, the job manager: one scenario of defers, a worker run, cancels, aborts, retries, a
-- dead worker and a live one, listings and counts, told against PostgreSQL (the protocol's
-- functions, a real database) and against the MemoryConnector, which must give the same answers.
local tarry = require "tarry"
local Store = require "tarry.store"
local db = require "support.db"
local W = require "support.worker"
local error_of = require("support.expect").error_of

local FUTURE = 4102444800           -- 2100-01-01

local function register_tasks(app)
  app:task("add", { queue = "math" }, function(args) return args.a + args.b end)
  app:task("boom", { queue = "q2" }, function() error("boom") end)
end

local function types(job)
  local t = {}
  for i, e in ipairs(job.events) do t[i] = e.type end
  return table.concat(t, ",")
end

local function ids(list)
  local out = {}
  for i, j in ipairs(list) do out[i] = j.id end
  return out
end

local function err_summary(f)
  local err = error_of(f)
  return { err.code, err.message, err.status }
end

-- Everything the manager answers along the scenario. `age(hours)` moves every event back in time.
local function scenario(app, age)
  local jobs, out = app.jobs, {}
  local add, boom = app.tasks.add, app.tasks.boom
  local done = add:defer{ a = 1, b = 2 }                                         -- 1
  local failing = boom:configure{ lock = "L" }:defer{}                           -- 2
  local cancelled = add:configure{ queueing_lock = "once", priority = 3 }:defer{ a = 2, b = 2 }   -- 3
  local later = add:configure{ schedule_at = FUTURE, lock = "L2" }:defer{ a = 0, b = 0 }      -- 4
  out.cancel = { jobs:cancel(cancelled), jobs:cancel(cancelled), jobs:cancel(999) }
  app:run_worker{ wait = false, install_signal_handlers = false, log_stream = io.tmpfile() }

  local j = jobs:get(done)
  out.printed = tostring(j)
  out.fields = { j.id, j.task_name, j.queue, j.priority, j.lock, j.status, j.attempts, j.abort_requested,
    j.args.a, j.args.b }
  out.events = { types(j), types(jobs:get(failing)), types(jobs:get(cancelled)), types(jobs:get(later)) }
  out.scheduled = jobs:get(later).scheduled_at
  out.missing = jobs:get(999)

  out.retried = jobs:retry(failing)
  local r = jobs:get(failing)
  out.after_retry = { r.status, r.attempts, types(r) }
  out.retry_errors = { err_summary(function() jobs:retry(done) end), err_summary(function() jobs:retry(999) end) }

  -- a worker that dies holding job 2, and a live one running a fresh job 5
  local store = Store.of(app.connector)
  local dead = store:register(30)
  out.taken_by_dead = ids(store:fetch(nil, dead, 1))
  store:unregister(dead)
  local running = add:defer{ a = 5, b = 5 }
  local live = store:register(30)
  out.taken_by_live = ids(store:fetch({ "math" }, live, 1))
  local ws = jobs:workers()
  out.workers = { #ws, ws[1].id == live, ws[1].doing, ws[1].heartbeat_age < 60 }
  out.stalled = ids(jobs:stalled{ seconds = 30 })
  out.stalled_filtered = { ids(jobs:stalled{ seconds = 30, queue = "math" }), ids(jobs:stalled{ task = "boom" }) }
  out.stalled_retry = jobs:retry(failing)

  out.abort = { jobs:cancel(running), jobs:cancel(running, { abort = true }) }
  local a = jobs:get(running)
  out.aborting = { a.status, a.abort_requested, types(a) }
  out.abort_retry = err_summary(function() jobs:retry(running) end)
  out.after_abort_retry = jobs:get(running).status

  local page1, after = jobs:list{ limit = 2 }
  local page2, after2 = jobs:list{ limit = 2, after_id = after }
  local page3, after3 = jobs:list{ limit = 2, after_id = after2 }
  out.pages = { ids(page1), after, ids(page2), after2, ids(page3), after3 or false }
  out.filtered = { ids(jobs:list{ status = "failed" }), ids(jobs:list{ status = { "todo", "cancelled" } }),
    ids(jobs:list{ queue = "q2" }), ids(jobs:list{ task = "add", lock = "L2" }),
    ids(jobs:list{ queueing_lock = "once" }), ids(jobs:list{ worker_id = live }) }
  out.listed_type = tostring(jobs:list{ limit = 1 }[1])

  out.queues = jobs:queues()
  out.tasks = jobs:tasks()
  out.locks = jobs:locks()
  out.counts_filtered = { jobs:queues{ status = "failed" }, jobs:tasks{ queue = "math", lock = "L2" } }

  out.nothing_old = jobs:delete_old{ max_hours = 1 }
  age(100)
  out.deleted = { jobs:delete_old{ max_hours = 72 }, jobs:delete_old{ max_hours = 72, statuses = { "cancelled" },
    queue = "q2" }, jobs:delete_old{ max_hours = 72, statuses = { "failed", "cancelled" } } }
  out.left = ids(jobs:list{})
  return out
end

describe("app.jobs on PostgreSQL and on the MemoryConnector", function()
  local t = W.with_database(before_each, after_each)

  it("gives the same answers to the same calls", function()
    register_tasks(t.app)
    local pg = scenario(t.app, function(hours)
      db.psql(t.name, string.format("UPDATE procrastinate_events SET at = at - interval '%d hours'", hours))
    end)
    local memory = tarry.MemoryConnector()
    local mem = scenario(t.app:with_connector(memory), function(hours)
      for _, list in pairs(memory.events) do for _, e in ipairs(list) do e.at = e.at - hours * 3600 end end
    end)
    assert.are.same(pg, mem)

    -- and the answers are the protocol's
    assert.are.same({ true, false, false }, pg.cancel)
    assert.are.equal("<tarry.Job #1 add succeeded queue=math attempts=1>", pg.printed)
    assert.are.same({ 1, "add", "math", 0, nil, "succeeded", 1, false, 1, 2 }, pg.fields)
    assert.are.same({ "deferred,started,succeeded", "deferred,started,failed", "deferred,cancelled",
      "scheduled,deferred" }, pg.events)
    assert.are.equal(FUTURE, pg.scheduled)
    assert.is_nil(pg.missing)
    assert.is_true(pg.retried)
    assert.are.same({ "todo", 2, "deferred,started,failed,scheduled,retried" }, pg.after_retry)
    assert.are.same({
      { "cannot_retry", "job 1 is succeeded: only failed jobs, and doing ones whose worker is gone (see "
        .. "jobs:stalled), can be retried", "succeeded" },
      { "not_found", "job 999 does not exist" } }, pg.retry_errors)
    assert.are.same({ 2 }, pg.taken_by_dead)
    assert.are.same({ 5 }, pg.taken_by_live)
    assert.are.same({ 1, true, 1, true }, pg.workers)
    assert.are.same({ 2 }, pg.stalled)
    assert.are.same({ {}, { 2 } }, pg.stalled_filtered)
    assert.is_true(pg.stalled_retry)
    assert.are.same({ false, true }, pg.abort)
    assert.are.same({ "doing", true, "deferred,started,abort_requested" }, pg.aborting)
    assert.are.same({ "cannot_retry", "job 5 was doing with an abort requested: it is now failed, not retried "
      .. "(procrastinate_retry_job_v2)", "failed" }, pg.abort_retry)
    assert.are.same({ { 1, 2 }, 2, { 3, 4 }, 4, { 5 }, false }, pg.pages)
    assert.are.same({ { 5 }, { 2, 3, 4 }, { 2 }, { 4 }, { 3 }, { 5 } }, pg.filtered)
    assert.are.equal("<tarry.Job #1 add succeeded queue=math attempts=1>", pg.listed_type)
    assert.are.same({
      { name = "math", jobs_count = 4, todo = 1, doing = 0, succeeded = 1, failed = 1, cancelled = 1, aborted = 0 },
      { name = "q2", jobs_count = 1, todo = 1, doing = 0, succeeded = 0, failed = 0, cancelled = 0, aborted = 0 },
    }, pg.queues)
    assert.are.same({ "add", 4, "boom", 1 }, { pg.tasks[1].name, pg.tasks[1].jobs_count, pg.tasks[2].name,
      pg.tasks[2].jobs_count })
    assert.are.same({ "L", 1, 1, "L2", 1, 1 }, { pg.locks[1].name, pg.locks[1].jobs_count, pg.locks[1].todo,
      pg.locks[2].name, pg.locks[2].jobs_count, pg.locks[2].todo })
    assert.are.same({ "math" }, { pg.counts_filtered[1][1].name, pg.counts_filtered[1][2] })
    assert.are.same({ "add", 1 }, { pg.counts_filtered[2][1].name, pg.counts_filtered[2][1].jobs_count })
    assert.are.equal(0, pg.nothing_old)
    assert.are.same({ 1, 0, 2 }, pg.deleted)
    assert.are.same({ 2, 4 }, pg.left)
  end)
end)

describe("app.jobs misuse", function()
  local app = tarry.App{ connector = tarry.MemoryConnector() }
  local HERE = "jobs_manager_spec%.lua:%d+: "

  it("names the caller's line and what is wrong", function()
    local cases = {
      { function() app.jobs:get("x") end, "jobs:get: the job id must be an integer, got x" },
      { function() app.jobs:cancel(1, { abrot = true }) end, "jobs:cancel: unknown option 'abrot' %(known: abort, delete%)" },
      { function() app.jobs:list{ status = "done" } end,
        "jobs:list: status cannot hold done %(use todo, doing, succeeded, failed, cancelled, aborted%)" },
      { function() app.jobs:list{ limit = 0 } end, "jobs:list: limit must be an integer >= 1, got 0" },
      { function() app.jobs:list{ queue = 3 } end, "jobs:list: queue must be a string, got number" },
      { function() app.jobs:retry(1, { at = 0 / 0 }) end, "jobs:retry: at must be a unix time" },
      { function() app.jobs:retry(1, { priority = 1.5 }) end, "jobs:retry: priority must be a 32%-bit integer" },
      { function() app.jobs:stalled{ seconds = -1 } end, "jobs:stalled: seconds must be a number >= 0" },
      { function() app.jobs:delete_old{} end, "jobs:delete_old: max_hours must be a number of hours >= 0, got nil" },
      { function() app.jobs:delete_old{ max_hours = 1, statuses = { "todo" } } end,
        "jobs:delete_old: statuses cannot hold todo %(use succeeded, failed, cancelled, aborted%)" },
      { function() app.jobs:queues{ stauts = "todo" } end, "jobs:queues: unknown option 'stauts'" },
    }
    for _, c in ipairs(cases) do
      assert.matches(HERE .. c[2], error_of(c[1]))
    end
  end)

  it("is one manager per app, and says whose", function()
    assert.are.equal(app.jobs, app.jobs)
    assert.are_not.equal(app.jobs, app:with_connector(tarry.MemoryConnector()).jobs)
    assert.are.equal("<tarry.JobManager <tarry.MemoryConnector 0 jobs>>", tostring(app.jobs))
  end)

  it("refuses a connector that has no job store, when first used", function()
    local odd = tarry.App{ connector = { defer_jobs = function() return {} end } }
    assert.matches(HERE .. "no job store for this connector", error_of(function() odd.jobs:get(1) end))
  end)
end)

describe("app.jobs inside a tarry coroutine", function()
  local t = W.with_database(before_each, after_each)

  it("yields on the async pool like a defer, and sees what the coroutine deferred", function()
    register_tasks(t.app)
    local opened <close> = t.app:open()
    local h = t.app:spawn(function()
      local id = t.app.tasks.add:defer{ a = 1, b = 1 }
      assert.is_true(tarry.in_coroutine())
      return tostring(t.app.jobs:get(id)), t.app.jobs:cancel(id)
    end)
    t.app:run()
    local printed, cancelled = h:result()
    assert.are.equal("<tarry.Job #1 add todo queue=math attempts=0>", printed)
    assert.is_true(cancelled)
  end)
end)
