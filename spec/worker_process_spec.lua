-- Real `tarry worker` processes: signals, a PostgreSQL restart, several workers on one queue.
local db = require "support.db"
local proc = require "support.process"
local exactly_once = require "support.exactly_once"

local function status_of(name, id)
  return db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = " .. id)
end

local function defer(name, task, args, opts)
  local out = db.value(name, string.format(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, 0, NULL, NULL, %s::jsonb, NULL)" ..
    "::procrastinate_job_to_defer_v1]))", "'" .. ((opts or {}).queue or "default") .. "'", "'" .. task .. "'",
    "'" .. (args or "{}") .. "'"))
  return tonumber(out)
end

-- Wait until the worker runs job id: `doing` alone is not enough, a fetched job is `doing` before
-- it starts, and a stop that comes in between hands it back to todo instead of running it.
local function until_running(w, name, id)
  proc.until_true(function()
    return status_of(name, id) == "doing" and w:output():find("job " .. id .. " nap started", 1, true) ~= nil
  end, 30, "the job to start")
end

local TASKS = [[
app:task("nap", function(args, ctx) ctx:sleep(args.s) return true end)
app:task("add", function(args) return args.a + args.b end)
]]

describe("tarry worker stopping on signals", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  for _, sig in ipairs { "TERM", "INT" } do
    it("lets the running job finish on the first SIG" .. sig .. ", unregisters and exits 0", function()
      local app = proc.app_file(name, TASKS)
      local w = proc.start("worker --app " .. app .. " --fetch-job-polling-interval 0.2")
      local id = defer(name, "nap", '{"s": 0.5}')
      until_running(w, name, id)
      w:signal(sig)
      assert.are.equal(0, w:wait())
      assert.are.equal("succeeded", status_of(name, id))
      assert.are.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_workers"))
      assert.matches("stopping after the running jobs", w:output())
    end)
  end

  it("stops at once on a second signal; the cut job is failed", function()
    local app = proc.app_file(name, TASKS)
    local w = proc.start("worker --app " .. app)
    local id = defer(name, "nap", '{"s": 600}')
    until_running(w, name, id)
    w:signal("TERM")
    proc.until_true(function() return w:output():match("stopping after the running jobs") end, 30, "the first signal")
    w:signal("TERM")
    assert.are.equal(0, w:wait(60))
    assert.are.equal("failed", status_of(name, id))
    assert.matches("stopping at once", w:output())
    assert.matches("interrupted", w:output())
  end)

  it("bounds the graceful stop by --shutdown-graceful-timeout", function()
    local app = proc.app_file(name, TASKS)
    local w = proc.start("worker --app " .. app .. " --shutdown-graceful-timeout 0.3")
    local id = defer(name, "nap", '{"s": 600}')
    until_running(w, name, id)
    w:signal("INT")
    assert.are.equal(0, w:wait(60))
    assert.are.equal("failed", status_of(name, id))
  end)
end)

describe("a killed tarry worker", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("leaves its running job findable as stalled once its registration is pruned", function()
    local app = proc.app_file(name, TASKS)
    local w = proc.start("worker --app " .. app)
    local id = defer(name, "nap", '{"s": 600}')
    proc.until_true(function() return status_of(name, id) == "doing" end, 30, "the job to start")
    local worker_id = db.value(name, "SELECT worker_id FROM procrastinate_jobs WHERE id = " .. id)
    assert.is_not_nil(worker_id)
    w:signal("KILL")
    w:wait()
    -- Nothing unregistered it: its row stays, and no heartbeat will come any more.
    assert.are.equal(worker_id, db.value(name, "SELECT id FROM procrastinate_workers"))
    assert.are.equal(worker_id, db.value(name, "SELECT worker_id FROM procrastinate_prune_stalled_workers_v1(0)"))
    -- Procrastinate's select_stalled_jobs_by_heartbeat now finds the job (worker_id NULL, doing).
    assert.are.equal(tostring(id), db.value(name, [[
      SELECT j.id FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
      WHERE j.status = 'doing' AND (j.worker_id IS NULL OR w.last_heartbeat < now() - interval '30 seconds')]]))
  end)
end)

describe("tarry worker waking up", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("starts a job deferred while it idles, on the NOTIFY (polling every 10 minutes)", function()
    local app = proc.app_file(name, TASKS)
    local w = proc.start("worker --app " .. app .. " --fetch-job-polling-interval 600")
    proc.until_true(function() return db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE " ..
      "datname = current_database() AND query LIKE 'LISTEN%'") == "1" end, 30, "the worker to LISTEN")
    local id = defer(name, "add", '{"a": 1, "b": 2}')
    proc.until_true(function() return status_of(name, id) == "succeeded" end, 60, "the job to run")
    w:signal("TERM")
    assert.are.equal(0, w:wait())
  end)

  it("still runs everything by polling with --no-listen-notify", function()
    local app = proc.app_file(name, TASKS)
    local w = proc.start("worker --app " .. app .. " --no-listen-notify --fetch-job-polling-interval 0.1")
    local ids = {}
    for i = 1, 3 do ids[i] = defer(name, "add", '{"a": 1, "b": 2}') end
    proc.until_true(function() return status_of(name, ids[3]) == "succeeded" end, 60, "the jobs to run")
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE " ..
      "datname = current_database() AND query LIKE 'LISTEN%'"))
    w:signal("TERM")
    assert.are.equal(0, w:wait())
  end)

  it("writes JSON lines with --log-format json", function()
    local app = proc.app_file(name, TASKS)
    defer(name, "add", '{"a": 1, "b": 2}')
    local w = proc.start("worker --app " .. app .. " --one-shot --log-format json")
    assert.are.equal(0, w:wait())
    local tarry = require "tarry"
    local events = {}
    for line in w:output():gmatch("[^\n]+") do
      local rec = tarry.json.decode(line)
      events[#events + 1] = rec.event
      assert.is_string(rec.ts)
      assert.is_string(rec.level)
    end
    assert.are.same({ "worker_started", "job_started", "job_succeeded", "worker_stopped" }, events)
  end)
end)

describe("tarry worker across a PostgreSQL restart", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("reconnects, re-LISTENs and carries on; a job running meanwhile is recorded once the server is back;" ..
     " the outage is logged once, and its end once", function()
    local app = proc.app_file(name, TASKS)
    local w = proc.start("worker --app " .. app .. " --fetch-job-polling-interval 600")
    local running = defer(name, "nap", '{"s": 5}')
    proc.until_true(function() return status_of(name, running) == "doing" end, 30, "the job to start")
    db.server("restart")
    assert.are.equal("doing", status_of(name, running))   -- not reported done before its finish got through
    proc.until_true(function() return status_of(name, running) == "succeeded" end, 60, "the outcome to be recorded")
    proc.until_true(function() return db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE " ..
      "datname = current_database() AND query LIKE 'LISTEN%'") == "1" end, 60, "the worker to LISTEN again")
    local later = defer(name, "add", '{"a": 2, "b": 2}')
    proc.until_true(function() return status_of(name, later) == "succeeded" end, 60, "a job after the restart")
    w:signal("TERM")
    assert.are.equal(0, w:wait())
    local out = w:output()                 -- the outage is told once, and its end once
    local _, lost = out:gsub("lost the database", "")
    local _, back = out:gsub("the database is back after", "")
    assert.are.equal(1, lost, out)
    assert.are.equal(1, back, out)
    for line in out:gmatch("[^\n]+") do assert.matches("^%d%d%d%d%-", line) end   -- one event a line
  end)
end)

describe("several tarry worker processes on one queue", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("run each of 10,000 jobs exactly once", function()
    exactly_once.run(name, { jobs = 10000, options = "-c 8" })
  end)
end)

describe("tarry worker with a malformed command line", function()
  local function run(args)
    local p = io.popen(proc.tarry .. " " .. args .. " 2>&1")
    local out = p:read("a")
    local _, _, code = p:close()
    return code, out
  end

  it("exits 2 with one line on stderr", function()
    for _, args in ipairs { "worker", "worker --app x.lua -c abc", "worker --app x.lua --bogus",
      "worker --app x.lua --delete-jobs sometimes", "worker --app x.lua -c 0", "worker --app /nonexistent.lua" } do
      local code, out = run(args)
      assert.are.equal(2, code, args)
      assert.are.equal(1, select(2, out:gsub("\n", "")), args .. ": " .. out)
    end
  end)
end)
