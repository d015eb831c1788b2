-- What the worker records after running a job: success, failure, retries with their delay,
-- jobs of tasks the app does not know, and which finished jobs delete_jobs removes.
local retry = require "tarry.retry"
local db = require "support.db"
local W = require "support.worker"

local function with_database(opts) return W.with_database(before_each, after_each, opts) end

describe("a task that raises", function()
  local t = with_database()

  it("fails its job without retrying by default: failed, attempts 1, events deferred, started, failed", function()
    t.app:task("boom", function() error("kaboom") end)
    local id = t.app.tasks.boom:defer{}
    W.run(t.app, { log_level = "error", log_stream = io.tmpfile() })
    assert.are.same({ "failed", 1 }, W.state(t.name, id))
    assert.are.equal("deferred,started,failed", W.events(t.name, id))
  end)

  it("is logged with its message and job id, and the worker keeps going", function()
    local log = io.tmpfile()
    t.app:task("boom", function() error("kaboom") end)
    t.app:task("fine", function() end)
    local bad = t.app.tasks.boom:defer{}
    local good = t.app.tasks.fine:defer{}
    W.run(t.app, { log_format = "json", log_stream = log })
    local lines = W.json_lines(log)
    assert.are.equal(1, #lines)
    assert.are.same({ "error", "job_failed", bad, "boom" },
      { lines[1].level, lines[1].event, lines[1].job_id, lines[1].task })
    assert.matches("kaboom", lines[1].message)
    -- the traceback holds the frames only: the message is in the line already (printed once)
    assert.matches("^stack traceback:\n.*worker_outcomes_spec%.lua:22:", lines[1].traceback)
    assert.are.same({ "succeeded", 1 }, W.state(t.name, good))
  end)
end)

describe("retries", function()
  local t = with_database()

  it("runs a job max_attempts + 1 times with retry = { max_attempts = 2, wait = 0 }, then fails it", function()
    local tries = {}
    t.app:task("flaky", { retry = { max_attempts = 2, wait = 0 } }, function(_, ctx)
      tries[#tries + 1] = ctx.job.attempts
      error("not yet")
    end)
    local id = t.app.tasks.flaky:defer{}
    W.run(t.app, { log_level = "error", log_stream = io.tmpfile() })
    assert.are.same({ 0, 1, 2 }, tries)
    assert.are.same({ "failed", 3 }, W.state(t.name, id))
    assert.are.equal("deferred,started,scheduled,deferred_for_retry,started,scheduled,deferred_for_retry,started,failed",
      W.events(t.name, id))
  end)

  it("takes an integer as max_attempts, and succeeds on the try that does not raise", function()
    local tries = 0
    t.app:task("flaky", { retry = 5 }, function()
      tries = tries + 1
      if tries < 3 then error("not yet") end
    end)
    local id = t.app.tasks.flaky:defer{}
    W.run(t.app, { log_level = "error", log_stream = io.tmpfile() })
    assert.are.equal(3, tries)
    assert.are.same({ "succeeded", 3 }, W.state(t.name, id))
  end)

  it("schedules the retry `wait` seconds ahead, which a one-shot worker leaves todo", function()
    local tries = 0
    t.app:task("slow_retry", { retry = { max_attempts = 3, wait = 30 } }, function()
      tries = tries + 1
      error("later")
    end)
    local id = t.app.tasks.slow_retry:defer{}
    W.run(t.app, { log_level = "error" })
    assert.are.equal(1, tries)
    assert.are.same({ "todo", 1 }, W.state(t.name, id))
    assert.are.equal("t", db.value(t.name, "SELECT scheduled_at BETWEEN now() + interval '25 s' AND now() + " ..
      "interval '35 s' FROM procrastinate_jobs WHERE id = " .. id))
    -- The retry cleared the job's worker_id, so unregistering the worker does not update it (that
    -- update, through the FK, would log one more `scheduled` event: see worker_interop_spec.lua).
    assert.are.equal("deferred,started,scheduled,deferred_for_retry", W.events(t.name, id))
  end)

  it("retries only the errors retry_errors accepts", function()
    -- The "transient" job's first error is transient (retried), its second is not (failed).
    t.app:task("picky", { retry = { max_attempts = 5, retry_errors = function(err) return err.transient end } },
      function(args, ctx)
        error({ transient = args.kind == "transient" and ctx.job.attempts == 0 })
      end)
    local id = t.app.tasks.picky:defer{ kind = "transient" }
    local other = t.app.tasks.picky:defer{ kind = "permanent" }
    W.run(t.app, { log_level = "error", log_stream = io.tmpfile() })
    assert.are.same({ "failed", 2 }, W.state(t.name, id))
    assert.are.same({ "failed", 1 }, W.state(t.name, other))
  end)

  it("waits wait + linear_wait * attempts + exponential_wait ^ (attempts + 1) seconds", function()
    local task = t.app:task("backoff", { retry = { max_attempts = 3, wait = 1, linear_wait = 2, exponential_wait = 3 } },
      function() end)
    assert.are.equal(1 + 0 + 3, retry.delay(task.retry, 0))
    assert.are.equal(1 + 2 + 9, retry.delay(task.retry, 1))
    assert.are.equal(1 + 4 + 27, retry.delay(task.retry, 2))
    assert.is_nil(retry.delay(task.retry, 3))
    local plain = t.app:task("plain", { retry = true }, function() end)
    assert.are.equal(0, retry.delay(plain.retry, 1000))
    local never = t.app:task("never", function() end)
    assert.is_nil(retry.delay(never.retry, 0))
  end)
end)

describe("a job whose task this app does not know", function()
  local t = with_database()

  it("fails with attempts 1, is not retried, is logged as task_not_found, and the others still run", function()
    local log = io.tmpfile()
    local ran = {}
    t.app:task("known", function(args) ran[#ran + 1] = args.n end)
    t.app.tasks.known:defer{ n = 1 }
    local unknown = t.app:defer("somebody.elses.task", { x = 1 })
    t.app.tasks.known:defer{ n = 2 }
    W.run(t.app, { log_format = "json", log_stream = log })
    assert.are.same({ 1, 2 }, ran)
    assert.are.same({ "failed", 1 }, W.state(t.name, unknown))
    assert.are.equal("deferred,started,failed", W.events(t.name, unknown))
    local lines = W.json_lines(log)
    assert.are.equal(1, #lines)
    assert.are.same({ "error", "task_not_found", unknown, "somebody.elses.task" },
      { lines[1].level, lines[1].event, lines[1].job_id, lines[1].task })
    assert.matches("not registered", lines[1].message)
  end)
end)

describe("delete_jobs", function()
  local t = with_database()

  --- Runs one job that succeeds, one that fails and one of an unknown task; returns which rows remain.
  local function remaining_after(delete_jobs)
    t.app:task("ok", function() end)
    t.app:task("boom", function() error("no") end)
    local ids = { ok = t.app.tasks.ok:defer{}, boom = t.app.tasks.boom:defer{}, unknown = t.app:defer("nope", {}) }
    W.run(t.app, { delete_jobs = delete_jobs, log_level = "error", log_stream = io.tmpfile() })
    local left = {}
    for what, id in pairs(ids) do left[what] = W.state(t.name, id) or "deleted" end
    return left
  end

  it("\"never\" (the default) keeps every finished job", function()
    assert.are.same({ ok = { "succeeded", 1 }, boom = { "failed", 1 }, unknown = { "failed", 1 } },
      remaining_after("never"))
  end)

  it("\"successful\" deletes succeeded jobs and keeps failed ones", function()
    assert.are.same({ ok = "deleted", boom = { "failed", 1 }, unknown = { "failed", 1 } },
      remaining_after("successful"))
  end)

  it("\"always\" deletes succeeded and failed jobs, with their events", function()
    assert.are.same({ ok = "deleted", boom = "deleted", unknown = "deleted" }, remaining_after("always"))
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_events"))
  end)

  it("never deletes a job that is retried", function()
    t.app:task("again", { retry = { max_attempts = 1, wait = 3600 } }, function() error("no") end)
    local id = t.app.tasks.again:defer{}
    W.run(t.app, { delete_jobs = "always", log_level = "error" })
    assert.are.same({ "todo", 1 }, W.state(t.name, id))
  end)
end)
