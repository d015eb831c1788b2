-- Abort, cancel and the per-task timeout, with real `tarry worker` processes on PostgreSQL (and
-- the MemoryConnector's worker in-process): an abort is raised inside the job at its next yield
-- point; the job ends `aborted` (not retried) however it ends; a timeout ends it `failed` (or
-- retried).
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"
local W = require "support.worker"
local error_of = require("support.expect").error_of

local TASKS = [[
app:task("nap", function(args, ctx) ctx:sleep(30) end)
app:task("careful", function(args, ctx)
  local ok, err = pcall(function()
    ctx.app.connector:execute("INSERT INTO marks (job_id, what) VALUES ($1, 'started')", ctx.job.id)
    ctx:sleep(30)
  end)
  ctx.app.connector:execute("INSERT INTO marks (job_id, what) VALUES ($1, $2)", ctx.job.id, "cleanup after " .. err.code)
  return "cleaned up"                       -- returns: the job still ends aborted
end)
app:task("spin", function(args, ctx)
  ctx.app.connector:execute("INSERT INTO marks (job_id, what) VALUES ($1, 'spinning')", ctx.job.id)
  local n = 0
  while not ctx:should_abort() do n = n + 1 end       -- never yields by itself
  ctx.app.connector:execute("INSERT INTO marks (job_id, what) VALUES ($1, 'stopped spinning')", ctx.job.id)
end)
app:task("slow", { timeout = 0.5 }, function(args, ctx) ctx:sleep(30) end)
app:task("slow_retried", { timeout = 0.5, retry = 1 }, function(args, ctx) ctx:sleep(30) end)
app:task("add", function(args) return args.a + args.b end)
]]

local function status_of(name, id)
  return db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = " .. id)
end

local function marks(name, id)
  return db.value(name, "SELECT string_agg(what, ',' ORDER BY n) FROM marks WHERE job_id = " .. id)
end

-- Seconds from the abort_requested event to the aborted event (the database's clock, both).
local function abort_delay(name, id)
  return tonumber(db.value(name, "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'aborted') " ..
    "- max(at) FILTER (WHERE type = 'abort_requested')) FROM procrastinate_events WHERE job_id = " .. id))
end

local function report(what, name, id)
  local delay = abort_delay(name, id)
  print(string.format("\n  [measured] %s: abort_requested -> aborted in %.1f ms", what, delay * 1000))
  return delay
end

local function with_worker(args)
  local t = {}
  before_each(function()
    t.name = db.fresh()
    db.psql(t.name, "CREATE TABLE marks (n serial, job_id bigint NOT NULL, what text NOT NULL)")
    t.app = W.app(t.name)                    -- the spec's own app: defers and the job manager
    t.worker = proc.start("worker -v --app " .. proc.app_file(t.name, TASKS) .. " " .. args)
    if not args:find("no%-listen%-notify") then       -- a NOTIFY sent before the LISTEN would be lost
      proc.until_true(function() return db.value(t.name, "SELECT count(*) FROM pg_stat_activity WHERE " ..
        "datname = current_database() AND query LIKE 'LISTEN%'") == "1" end, 30, "the worker to LISTEN")
    end
  end)
  after_each(function()
    proc.kill_all()
    t.app:close()
    db.drop(t.name)
  end)
  -- Defer `task`, wait until the worker runs it (and, with `mark`, until it wrote that mark).
  function t.running(task, mark)
    local id = t.app:defer(task, {})
    proc.until_true(function() return status_of(t.name, id) == "doing" end, 30, "job " .. id .. " to start")
    if mark then proc.until_true(function() return marks(t.name, id) == mark end, 30, "the mark " .. mark) end
    return id
  end
  function t.aborted(id)
    proc.until_true(function() return status_of(t.name, id) == "aborted" end, 30, "job " .. id .. " to end aborted")
  end
  function t.stop()
    t.worker:signal("TERM")
    assert.are.equal(0, t.worker:wait(60), t.worker:output())
  end
  return t
end

local function assert_aborted(name, id)
  assert.are.equal("aborted", status_of(name, id))
  assert.are.equal("deferred,started,abort_requested,aborted", W.events(name, id))
  assert.are.same({ "f", "1" }, db.rows(name, "SELECT abort_requested, attempts FROM procrastinate_jobs WHERE id = " .. id)[1])
end

for _, mode in ipairs {
  { "with LISTEN (no polling: every 10 minutes)", "--fetch-job-polling-interval 600", "NOTIFY" },
  { "with --no-listen-notify (polling)", "--no-listen-notify --fetch-job-polling-interval 0.1", "polling" },
} do
  local title, args, how = mode[1], mode[2], mode[3]

  describe("app.jobs:cancel(id, { abort = true }) on a running job, " .. title, function()
    local t = with_worker(args)

    it("ends a job parked in ctx:sleep(30) aborted, through " .. how, function()
      local id = t.running("nap")
      assert.is_true(t.app.jobs:cancel(id, { abort = true }))
      t.aborted(id)
      assert_aborted(t.name, id)
      local delay = report("ctx:sleep(30), " .. how, t.name, id)
      assert.is_true(delay >= 0)
      t.stop()
      local out = t.worker:output()
      assert.matches("job " .. id .. " nap: abort requested %(" .. how .. "%)", out)
      assert.matches("job " .. id .. " nap aborted on request", out)
    end)

    it("ends a job aborted with `tarry jobs abort ID` (another process)", function()
      local id = t.running("nap")
      local p = io.popen(string.format("%s jobs abort %d --conninfo %s 2>&1", proc.tarry, id,
        db.shell_quote(db.conninfo(t.name))))
      local out = p:read("a")
      assert.is_true(p:close(), out)
      t.aborted(id)
      assert_aborted(t.name, id)
      report("tarry jobs abort, " .. how, t.name, id)
      t.stop()
    end)

    it("lets a task that catches the abort clean up; it still ends aborted", function()
      local id = t.running("careful", "started")
      assert.is_true(t.app.jobs:cancel(id, { abort = true }))
      t.aborted(id)
      assert_aborted(t.name, id)
      assert.are.equal("started,cleanup after aborted", marks(t.name, id))
      report("a task that cleans up, " .. how, t.name, id)
      t.stop()
    end)

    it("reaches a CPU-bound loop through ctx:should_abort(); what it does afterwards runs", function()
      local id = t.running("spin", "spinning")
      assert.is_true(t.app.jobs:cancel(id, { abort = true }))
      t.aborted(id)
      assert_aborted(t.name, id)
      assert.are.equal("spinning,stopped spinning", marks(t.name, id))
      report("ctx:should_abort() loop, " .. how, t.name, id)
      t.stop()
    end)
  end)
end

describe("app.jobs:cancel of a job that waits", function()
  local name, app
  before_each(function() name = db.fresh(); app = W.app(name) end)
  after_each(function() proc.kill_all(); app:close(); db.drop(name) end)

  it("cancels it: a worker never runs it", function()
    local file = proc.app_file(name, TASKS)
    local cancelled = app:defer("add", { a = 1, b = 2 })
    local other = app:defer("add", { a = 2, b = 2 })
    assert.is_true(app.jobs:cancel(cancelled))
    local w = proc.start("worker --one-shot --app " .. file)
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.equal("cancelled", status_of(name, cancelled))
    assert.are.equal("deferred,cancelled", W.events(name, cancelled))
    assert.are.equal("succeeded", status_of(name, other))        -- the worker did fetch
    assert.is_nil(w:output():match("job " .. cancelled .. " "))
  end)

  it("with abort = true, also cancels it (and sets the flag, as the protocol does)", function()
    local id = app:defer("add", { a = 1, b = 2 })
    assert.is_true(app.jobs:cancel(id, { abort = true }))
    assert.are.same({ "cancelled", "t" }, db.rows(name, "SELECT status, abort_requested FROM procrastinate_jobs WHERE id = " .. id)[1])
  end)
end)

describe("a task's timeout", function()
  local name, file
  before_each(function()
    name = db.fresh()
    db.psql(name, "CREATE TABLE marks (n serial, job_id bigint NOT NULL, what text NOT NULL)")
    file = proc.app_file(name, TASKS)
  end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  local function one_shot(task)
    local app = W.app(name)
    local id = app:defer(task, {})
    app:close()
    local w = proc.start("worker --one-shot --app " .. file)
    assert.are.equal(0, w:wait(60), w:output())
    return id, w:output()
  end

  it("ends a job still running after it failed, with a clear log line", function()
    local id, out = one_shot("slow")
    assert.are.same({ "failed", 1 }, W.state(name, id))
    assert.are.equal("deferred,started,failed", W.events(name, id))
    assert.matches("ERROR   job " .. id .. " slow timed out after 0.5 s %(", out)
    assert.matches("in method 'sleep'", out)                -- where it was when time ran out
  end)

  it("follows the task's retry rule: retried, then failed", function()
    local id, out = one_shot("slow_retried")
    assert.are.same({ "failed", 2 }, W.state(name, id))
    assert.are.equal("deferred,started,scheduled,deferred_for_retry,started,failed", W.events(name, id))
    assert.matches("WARNING job " .. id .. " slow_retried timed out after 0.5 s, retry in 0s", out)
    assert.matches("ERROR   job " .. id .. " slow_retried timed out after 0.5 s %(", out)
  end)
end)

describe("the MemoryConnector's worker", function()
  it("polls for aborts: cancel with abort sets the flag, the job ends aborted", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local seen
    app:task("nap", function(_, ctx)
      local ok, err = pcall(ctx.sleep, ctx, 30)
      seen = { ok, err.code, ctx:should_abort() }
      error(err)
    end)
    local id = app.tasks.nap:defer{}
    app:spawn(function()
      while app.jobs:get(id).status ~= "doing" do tarry.sleep(0.01) end
      assert(app.jobs:cancel(id, { abort = true }))
    end)
    W.run(app, { abort_job_polling_interval = 0.01, log_stream = io.tmpfile() })
    assert.are.same({ false, "aborted", true }, seen)
    local job = app.jobs:get(id)
    assert.are.equal("aborted", job.status)
    assert.is_false(job.abort_requested)
    local types = {}
    for i, e in ipairs(job.events) do types[i] = e.type end
    assert.are.same({ "deferred", "started", "abort_requested", "aborted" }, types)
  end)

  it("times a job out, and ctx:should_abort() tells a loop that does not yield", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local spins = 0
    app:task("spin", { timeout = 0.05 }, function(_, ctx)
      while not ctx:should_abort() do spins = spins + 1 end
      return spins            -- a number, as a task may return
    end)
    local id = app.tasks.spin:defer{}
    local log = io.tmpfile()
    W.run(app, { log_stream = log, log_format = "json" })
    assert.are.equal("failed", app.jobs:get(id).status)
    assert.is_true(spins > 0)
    local lines = W.json_lines(log)
    assert.are.same({ "error", "job_timed_out" }, { lines[1].level, lines[1].event })
    assert.matches("^job 1 spin timed out after 0.05 s", lines[1].message)
  end)
end)

describe("the timeout option", function()
  it("must be a number of seconds > 0", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    for _, bad in ipairs { 0, -1, "5", 0 / 0, math.huge, true } do
      assert.matches("worker_abort_spec%.lua:%d+: app:task%(\"t\"%): timeout must be a number of seconds > 0, got ",
        error_of(function() app:task("t", { timeout = bad }, function() end) end))
    end
    assert.are.equal(2.5, app:task("ok", { timeout = 2.5 }, function() end).timeout)
  end)
end)
