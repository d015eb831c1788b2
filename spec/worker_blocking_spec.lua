-- Blocking task bodies (`blocking = true`), with real `tarry worker` processes on PostgreSQL: they
-- run on the worker's threads, each with its own Lua state, so the loop goes on meanwhile (other
-- jobs start, heartbeats are written); several run in parallel; their defers, abort requests,
-- timeouts and errors work as on the loop; a start that cannot give every thread the same app
-- fails clearly; the MemoryConnector runs them inline. Times come from the database's clock
-- (clock_timestamp() of the marks the tasks write). Specs tagged #tsan run the ThreadSanitizer
-- build's executable in scripts/test's TSan pass.
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"
local build = require "support.build"
local W = require "support.worker"

local TASKS = [[
local core = require "tarry.core"
local function mark(ctx, what)
  ctx.app.connector:execute("INSERT INTO marks (job_id, what, thread) VALUES ($1, $2, $3)", ctx.job.id, what,
    tostring(require("tarry").thread_id))
end
local function crunch(seconds)              -- CPU-bound: never yields, never sleeps
  local deadline, n = core.now() + seconds, 0
  while core.now() < deadline do n = n + 1 end
  return n
end
app:task("crunch", { blocking = true }, function(args, ctx)
  mark(ctx, "start"); crunch(args.seconds); mark(ctx, "end")
end)
app:task("quick", function(args, ctx) mark(ctx, "start") end)
app:task("fan_out", { blocking = true }, function(args, ctx)
  local t0 = core.now()
  ctx.app.tasks.quick:defer{}
  local t1 = core.now()
  ctx.app.tasks.quick:batch_defer{ {}, {} }
  local t2 = core.now()
  ctx.app.tasks.quick:defer{}
  local t3 = core.now()
  mark(ctx, string.format("first defer %.2f ms, batch_defer of 2 %.2f ms, next defer %.2f ms",
    (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000))
end)
app:task("spin", { blocking = true }, function(args, ctx)
  mark(ctx, "spinning")
  while not ctx:should_abort() do end
  mark(ctx, "stopped spinning")
end)
app:task("spin_timeout", { blocking = true, timeout = 0.5 }, function(args, ctx)
  while not ctx:should_abort() do end
  mark(ctx, "stopped spinning")
end)
app:task("forever", { blocking = true }, function(args, ctx)
  mark(ctx, "looping")
  local n = 0
  while true do n = n + 1 end             -- asks nothing: only --blocking-abort-hook reaches it
end)
app:task("nap", { blocking = true }, function(args, ctx) mark(ctx, "start"); ctx:sleep(args.seconds); mark(ctx, "end") end)
app:task("boom", { blocking = true }, function() error("kaboom in a thread") end)
]]

local function status_of(name, id)
  return db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = " .. id)
end

local function marks(name, id)
  return db.value(name, "SELECT string_agg(what, ',' ORDER BY n) FROM marks WHERE job_id = " .. id)
end

-- The epoch seconds of job id's mark `what`.
local function mark_at(name, id, what)
  return tonumber(db.value(name, string.format("SELECT extract(epoch FROM at) FROM marks WHERE job_id = %d " ..
    "AND what = '%s'", id, what)))
end

local function start_worker(file, args, tsan)
  local bin = tsan and build.bin("tarry") or proc.tarry
  return proc.spawn(bin .. " worker -v --app " .. file .. " " .. args, tsan and build.env_prefix() or nil)
end

local function with_database()
  local t = {}
  before_each(function()
    t.name = db.fresh()
    db.psql(t.name, "CREATE TABLE marks (n serial, job_id bigint NOT NULL, what text NOT NULL, thread text, "
      .. "at timestamptz NOT NULL DEFAULT clock_timestamp())")
    t.app = W.app(t.name)
    t.file = proc.app_file(t.name, TASKS)
  end)
  after_each(function()
    proc.kill_all()
    t.app:close()
    db.drop(t.name)
  end)
  function t.started(w, id, mark)
    proc.until_true_while({ w }, function() return (marks(t.name, id) or ""):find(mark or "start", 1, true) end, 60,
      "job " .. id .. " to start")
  end
  function t.ended(w, id, status)
    proc.until_true_while({ w }, function() return status_of(t.name, id) == status end, 60,
      "job " .. id .. " to end " .. status)
  end
  function t.stop(w)
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
  end
  return t
end

describe("a blocking task #tsan", function()
  local t = with_database()

  it("runs on a thread while the loop goes on: an ordinary job starts and heartbeats are written", function()
    local w = start_worker(t.file, "--blocking-threads 2 --update-heartbeat-interval 0.2 " ..
      "--fetch-job-polling-interval 600", build.tsan)
    local a, b = t.app:defer("crunch", { seconds = 2 }), t.app:defer("crunch", { seconds = 2 })
    t.started(w, a); t.started(w, b)
    local beats = {}
    local q = t.app:defer("quick", {})
    proc.until_true_while({ w }, function()
      beats[db.value(t.name, "SELECT extract(epoch FROM last_heartbeat) FROM procrastinate_workers")] = true
      return status_of(t.name, a) == "succeeded" and status_of(t.name, b) == "succeeded"
    end, 60, "the blocking jobs to end")
    assert.are.equal("succeeded", status_of(t.name, q))
    local first_end = math.min(mark_at(t.name, a, "end"), mark_at(t.name, b, "end"))
    local last_start = math.max(mark_at(t.name, a, "start"), mark_at(t.name, b, "start"))
    local quick_start = mark_at(t.name, q, "start")
    assert.is_true(quick_start < first_end, "the ordinary job started before the blocking jobs finished")
    local during = {}
    for beat in pairs(beats) do
      local at = tonumber(beat)
      if at and at > last_start and at < first_end then during[#during + 1] = at end
    end
    table.sort(during)
    assert.is_true(#during >= 2, "heartbeats were written while both blocking jobs ran")
    local deferred = tonumber(db.value(t.name, "SELECT extract(epoch FROM at) FROM procrastinate_events " ..
      "WHERE type = 'deferred' AND job_id = " .. q))
    local gaps = {}
    for i = 2, #during do gaps[#gaps + 1] = string.format("%.0f", (during[i] - during[i - 1]) * 1000) end
    print(string.format("\n  [measured] ordinary job: deferred -> started in %.1f ms while 2 blocking jobs ran; " ..
      "heartbeats seen meanwhile %d apart (ms, sampled): %s", (quick_start - deferred) * 1000, #during,
      table.concat(gaps, " ")))
    assert.are.same({ "1", "2" }, (function()
      local ids = { db.value(t.name, "SELECT thread FROM marks WHERE job_id = " .. a .. " LIMIT 1"),
        db.value(t.name, "SELECT thread FROM marks WHERE job_id = " .. b .. " LIMIT 1") }
      table.sort(ids)
      return ids
    end)())
    assert.are.equal("nil", db.value(t.name, "SELECT thread FROM marks WHERE job_id = " .. q))   -- the loop's state
    t.stop(w)
  end)

  it("runs four CPU-bound jobs two at a time on two threads", function()
    local ids = {}
    for i = 1, 4 do ids[i] = t.app:defer("crunch", { seconds = 1 }) end
    local w = start_worker(t.file, "--one-shot --blocking-threads 2", build.tsan)
    assert.are.equal(0, w:wait(120), w:output())
    local spans, points = {}, {}
    for i, id in ipairs(ids) do
      assert.are.equal("succeeded", status_of(t.name, id))
      spans[i] = { mark_at(t.name, id, "start"), mark_at(t.name, id, "end") }
      points[#points + 1] = { spans[i][1], 1 }
      points[#points + 1] = { spans[i][2], -1 }
    end
    table.sort(points, function(x, y) return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2]) end)
    local now, most = 0, 0
    for _, p in ipairs(points) do now = now + p[2]; most = math.max(most, now) end
    assert.are.equal(2, most, "two ran at once, never more")
    local total, first, last = 0, math.huge, 0
    for _, s in ipairs(spans) do
      total, first, last = total + s[2] - s[1], math.min(first, s[1]), math.max(last, s[2])
    end
    print(string.format("\n  [measured] 4 jobs of 1 s on 2 threads: %.2f s of job time in %.2f s", total, last - first))
  end)
end)

describe("inside a blocking task", function()
  local t = with_database()

  it("task:defer and batch_defer work (a blocking connection of the thread); those jobs then run", function()
    local id = t.app:defer("fan_out", {})
    local w = start_worker(t.file, "--one-shot --blocking-threads 1")
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.equal("succeeded", status_of(t.name, id))
    assert.are.equal(4, W.count(t.name, "FROM procrastinate_jobs WHERE task_name = 'quick' AND status = 'succeeded'"))
    print("\n  [measured] in a blocking task: " .. marks(t.name, id))
  end)

  it("--conninfo applies to the threads' apps too", function()
    local file = proc.app_file(t.name, TASKS, { conninfo = "dbname=tarry_no_such_db host=/nonexistent" })
    local id = t.app:defer("fan_out", {})
    local w = proc.start("worker --one-shot --blocking-threads 1 --app " .. file .. " --conninfo "
      .. db.shell_quote(db.conninfo(t.name)))
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.equal("succeeded", status_of(t.name, id))
  end)

  it("ctx:should_abort() sees an abort request; the job ends aborted #tsan", function()
    local w = start_worker(t.file, "--blocking-threads 1 --fetch-job-polling-interval 600", build.tsan)
    local id = t.app:defer("spin", {})
    t.started(w, id, "spinning")
    assert.is_true(t.app.jobs:cancel(id, { abort = true }))
    t.ended(w, id, "aborted")
    assert.are.equal("spinning,stopped spinning", marks(t.name, id))
    local delay = tonumber(db.value(t.name, "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'aborted') " ..
      "- max(at) FILTER (WHERE type = 'abort_requested')) FROM procrastinate_events WHERE job_id = " .. id))
    print(string.format("\n  [measured] blocking job: abort_requested -> aborted in %.1f ms", delay * 1000))
    t.stop(w)
    assert.matches("job " .. id .. " spin aborted on request", w:output())
  end)

  it("with --blocking-abort-hook, an abort reaches a pure-Lua loop that never asks", function()
    local w = start_worker(t.file, "--blocking-threads 1 --blocking-abort-hook --fetch-job-polling-interval 600")
    local id = t.app:defer("forever", {})
    t.started(w, id, "looping")
    assert.is_true(t.app.jobs:cancel(id, { abort = true }))
    t.ended(w, id, "aborted")
    t.stop(w)
  end)

  it("ctx:should_abort() sees the task's timeout; the job ends failed", function()
    local id = t.app:defer("spin_timeout", {})
    local w = start_worker(t.file, "--one-shot --blocking-threads 1")
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.same({ "failed", 1 }, W.state(t.name, id))
    assert.are.equal("stopped spinning", marks(t.name, id))
    assert.matches("job " .. id .. " spin_timeout timed out after 0.5 s", w:output())
  end)

  it("an error ends the job failed, with the thread's traceback in the log", function()
    local id = t.app:defer("boom", {})
    local w = start_worker(t.file, "--one-shot --blocking-threads 1")
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.same({ "failed", 1 }, W.state(t.name, id))
    local out = w:output()
    assert.matches("job " .. id .. " boom failed: [^\n]*:%d+: kaboom in a thread", out)
    assert.matches("stack traceback:", out)
  end)
end)

describe("stopping a worker with blocking jobs", function()
  local t = with_database()

  it("waits for a running blocking job (graceful stop)", function()
    local w = start_worker(t.file, "--blocking-threads 1")
    local id = t.app:defer("nap", { seconds = 1 })
    t.started(w, id)
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.equal("succeeded", status_of(t.name, id))
    assert.are.equal("start,end", marks(t.name, id))
  end)

  it("marks one still running at the graceful timeout as the loop's jobs are marked", function()
    local w = start_worker(t.file, "--blocking-threads 1 --shutdown-graceful-timeout 0.5")
    local id = t.app:defer("crunch", { seconds = 30 })      -- ignores stop requests
    t.started(w, id)
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.same({ "failed", 1 }, W.state(t.name, id))
    local out = w:output()
    assert.matches("job " .. id .. " crunch interrupted by the shutdown", out)
    assert.matches("1 blocking thread%(s%) still inside a task at the stop", out)
  end)
end)

describe("a worker's start with blocking tasks", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  local function fails(body, args, env)
    local w = proc.start("worker --app " .. proc.app_file(name, body) .. " " .. (args or ""), env)
    assert.are_not.equal(0, w:wait(60))
    assert.is_nil(w:output():find("Sanitizer"), w:output())   -- the threads were joined, their states freed
    return w:output()
  end

  it("fails cleanly when the app file raises in a thread, naming the thread, the file and the error", function()
    local out = fails([[
if require("tarry").thread_id then error("no threads here, please") end
app:task("b", { blocking = true }, function() end)
]], "--blocking-threads 2")
    assert.matches("blocking thread %d cannot load the app file /[^ ]+%.lua: [^\n]*no threads here, please", out)
  end)

  it("refuses a thread whose app registered other tasks, naming the difference", function()
    local out = fails([[
app:task("b", { blocking = true }, function() end)
if require("tarry").thread_id == 2 then app:task("extra", function() end) end
]], "--blocking-threads 2")
    assert.matches("blocking thread 2 loaded [^ ]+ with other tasks than the worker's app: it has %[b %(blocking%), "
      .. "extra%], the worker %[b %(blocking%)%]", out)
  end)

  it("refuses a thread whose app registered a task with another blocking flag", function()
    local out = fails([[
app:task("b", { blocking = require("tarry").thread_id == nil }, function() end)
]], "--blocking-threads 1")
    assert.matches("it has %[b%], the worker %[b %(blocking%)%]", out)
  end)

  it("refuses 0 threads (--blocking-threads 0 or TARRY_BLOCKING_THREADS=0) when the app has blocking tasks", function()
    local body = [[app:task("b", { blocking = true }, function() end)]]
    local expected = "blocking_threads is 0 but the app has blocking tasks %(b%)"
    assert.matches(expected, fails(body, "--blocking-threads 0"))
    assert.matches(expected, fails(body, "", "TARRY_BLOCKING_THREADS=0 "))
  end)

  it("takes 0 threads when the app has no blocking task", function()
    local file = proc.app_file(name, [[app:task("plain", function() end)]])
    local w = proc.start("worker --one-shot --blocking-threads 0 --app " .. file)
    assert.are.equal(0, w:wait(60), w:output())
  end)
end)

describe("a worker a Lua script starts (app:run_worker) with blocking tasks", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  -- A script for `tarry run`: its threads load this same file (run_worker's caller), where
  -- run_worker only hands them the app; tarry.thread_id keeps the defer to the main state.
  local function script(worker_opts)
    local path = os.tmpname() .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write(string.format([[
local tarry = require "tarry"
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = %q } }
app:task("where", { blocking = true }, function(args, ctx)
  ctx.app.connector:execute("CREATE TABLE seen AS SELECT $1::text AS thread", tostring(tarry.thread_id))
end)
if not tarry.thread_id then app.tasks.where:defer{} end
app:run_worker{ wait = false, log_level = "warning", blocking_threads = 1%s }
]], db.conninfo(name), worker_opts))
    f:close()
    return path
  end

  it("loads the app in its threads from the file that called run_worker", function()
    local w = proc.start("run " .. script(""))
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.equal("1", db.value(name, "SELECT thread FROM seen"))
  end)

  it("or from the option app_file (a file that returns the app)", function()
    local other = proc.app_file(name, [[
app:task("where", { blocking = true }, function(args, ctx)
  ctx.app.connector:execute("CREATE TABLE seen AS SELECT 'app_file, thread ' || $1 AS thread", tarry.thread_id)
end)]])
    local w = proc.start("run " .. script(string.format(", app_file = %q", other)))
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.equal("app_file, thread 1", db.value(name, "SELECT thread FROM seen"))
  end)
end)

describe("app:run_worker from the stock lua5.4 (tarry/core.so) with blocking tasks", function()
  local t = with_database()

  it("runs them on threads of this process, loading app_file", function()
    local app = dofile(t.file)
    local ids = { app:defer("crunch", { seconds = 0.2 }), app:defer("quick", {}) }
    W.run(app, { app_file = t.file, blocking_threads = 1 })
    app:close()
    assert.are.equal("succeeded", status_of(t.name, ids[1]))
    assert.are.equal("succeeded", status_of(t.name, ids[2]))
    assert.are.equal("1", db.value(t.name, "SELECT thread FROM marks WHERE job_id = " .. ids[1] .. " LIMIT 1"))
  end)
end)

describe("the task option blocking", function()
  it("must be a boolean", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    assert.has_error(function() app:task("x", { blocking = "yes" }, function() end) end,
      'app:task("x"): blocking must be a boolean, got string')
  end)

  it("runs inline on the MemoryConnector: same results, no threads", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local seen = {}
    app:task("sum", { blocking = true }, function(args, ctx)
      seen[#seen + 1] = { args.a + args.b, tarry.thread_id, ctx.job.task_name }
      ctx:sleep(0)
    end)
    app:task("boom", { blocking = true }, function() error("kaboom") end)
    local ok_id = app.tasks.sum:defer{ a = 1, b = 2 }
    local bad_id = app.tasks.boom:defer{}
    W.run(app, { log_level = "error", log_stream = io.open("/dev/null", "w") })
    assert.are.same({ { 3, nil, "sum" } }, seen)
    assert.are.equal("succeeded", app.jobs:get(ok_id).status)
    assert.are.equal("failed", app.jobs:get(bad_id).status)
  end)
end)
