-- Fault injection: `kill -9` of a tarry worker in the middle of a job. No unregister, no outcome,
-- no more heartbeats: the jobs it ran stay `doing` (and keep their locks) until another worker, on
-- its own and with no manual step, sees that worker silent for --stalled-worker-timeout seconds and
-- puts them back, by the task's retry rule: retried, or failed when no retry is left.
-- The workers here use a 2 s timeout and a 0.5 s heartbeat; the time from the kill to the job
-- running again is printed.
local db = require "support.db"
local proc = require "support.process"
local W = require "support.worker"

local FAST = "--stalled-worker-timeout 2 --update-heartbeat-interval 0.5 --fetch-job-polling-interval 0.2"

local TASKS = [[
-- the first try parks until the worker is killed; a later one returns at once
app:task("hold", { retry = 1 }, function(args, ctx) if ctx.job.attempts == 0 then ctx:sleep(600) end end)
-- every try parks: two kills use up its one retry
app:task("stuck", { retry = 1 }, function(args, ctx) ctx:sleep(600) end)
app:task("quick", function() end)
]]

-- Defer `n` jobs of `task` (with `lock`) through the protocol's function; returns the first id.
local function defer(name, task, lock, n)
  return tonumber(db.value(name, string.format([[
    SELECT min(id) FROM unnest(procrastinate_defer_jobs_v1(ARRAY(
      SELECT ROW('default', %s, 0, %s, NULL, '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1
      FROM generate_series(1, %d)))) AS id]], "'" .. task .. "'", lock and ("'" .. lock .. "'") or "NULL", n or 1)))
end

local function row(name, id)
  return db.value(name, "SELECT concat_ws('|', status, attempts, coalesce(worker_id::text, '-')) " ..
    "FROM procrastinate_jobs WHERE id = " .. id)
end

local function worker_of(name, id)
  return db.value(name, "SELECT worker_id FROM procrastinate_jobs WHERE id = " .. id)
end

local function now(name) return tonumber(db.value(name, "SELECT extract(epoch FROM clock_timestamp())")) end

-- The `at` of the job's n-th event of `type` (unix seconds), or nil.
local function event_at(name, id, type, n)
  return tonumber(db.value(name, string.format("SELECT extract(epoch FROM at) FROM procrastinate_events " ..
    "WHERE job_id = %d AND type = '%s' ORDER BY id OFFSET %d LIMIT 1", id, type, n - 1)))
end

local function started(args) return proc.start("worker " .. args) end

-- Wait until the worker process registered (its "started" line names its id); returns the id.
local function registered(w)
  w:wait_for('worker "[^"]*" %(id %d+%) started', 1, 30)
  return w:output():match('worker "[^"]*" %(id (%d+)%) started')
end

-- kill -9, and the database's time right after.
local function kill9(name, w)
  w:signal("KILL")
  w:wait()
  return now(name)
end

describe("a worker killed with kill -9 mid-job", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("has its job, which holds a lock, re-run by another worker, then the next job of that lock", function()
    local app = proc.app_file(name, TASKS)
    local first = defer(name, "hold", "L")
    local next_one = defer(name, "quick", "L")
    local a = started("--app " .. app .. " --name a " .. FAST)
    proc.until_true_while({ a }, function() return row(name, first) ~= "todo|0|-" end, 30, "the job to start")
    local dead = worker_of(name, first)
    assert.are.equal(dead, registered(a))
    local b = started("--app " .. app .. " --name b " .. FAST)
    registered(b)
    local killed_at = kill9(name, a)
    proc.until_true_while({ b }, function() return row(name, next_one) == "succeeded|1|-" end, 60,
      "the next same-lock job to run")

    local again_at = event_at(name, first, "started", 2)
    print(string.format("\n  kill -9 to the job running again: %.2f s (--stalled-worker-timeout 2, " ..
      "--update-heartbeat-interval 0.5)", again_at - killed_at))
    assert.are.equal("succeeded|2|-", row(name, first))
    assert.are.equal("deferred,started,scheduled,deferred_for_retry,started,succeeded", W.events(name, first))
    -- one at a time: the next job of the lock started after the first one ended
    assert.is_true(event_at(name, next_one, "started", 1) >= event_at(name, first, "succeeded", 1))
    b:wait_for("was left running by", 1, 30)
    assert.matches(string.format("job %d hold was left running by worker %s %%(no heartbeat for %%d+ s%%): retried\n",
      first, dead), b:output())
    assert.are.equal(0, W.count(name, "FROM procrastinate_jobs WHERE worker_id IS NOT NULL"))
    b:signal("TERM")
    assert.are.equal(0, b:wait())
  end)

  it("has its job ended failed once the task's retries are used up, which frees its lock", function()
    local app = proc.app_file(name, TASKS)
    local job = defer(name, "stuck", "L")
    local next_one = defer(name, "quick", "L")
    local a = started("--app " .. app .. " --name a " .. FAST)
    proc.until_true_while({ a }, function() return row(name, job) ~= "todo|0|-" end, 30, "the job to start")
    local b = started("--app " .. app .. " --name b " .. FAST)
    local b_id = registered(b)
    kill9(name, a)
    -- b puts it back (attempts 1), takes it again, and is killed in turn
    proc.until_true_while({ b }, function() return row(name, job) == "doing|1|" .. b_id end, 60, "b to run the job again")
    local c = started("--app " .. app .. " --name c " .. FAST)
    registered(c)
    kill9(name, b)
    proc.until_true_while({ c }, function() return row(name, next_one) == "succeeded|1|-" end, 60,
      "the next same-lock job to run")
    assert.are.equal("failed|2|-", row(name, job))
    assert.are.equal("deferred,started,scheduled,deferred_for_retry,started,failed", W.events(name, job))
    c:wait_for("was left running by", 1, 30)     -- the row is written before the worker logs it
    assert.matches(string.format("job %d stuck was left running by worker %s %%(no heartbeat for %%d+ s%%): " ..
      "failed %%(no retries left%%)", job, b_id), c:output())
    c:signal("TERM")
    assert.are.equal(0, c:wait())
  end)

  it("is left to the workers that know its task, and not recovered with --no-recover-stalled", function()
    local app = proc.app_file(name, TASKS .. 'app:task("rare", function(args, ctx) ctx:sleep(600) end)\n')
    local without = proc.app_file(name, TASKS)
    local job = defer(name, "rare")
    local a = started("--app " .. app .. " --name a " .. FAST)
    proc.until_true_while({ a }, function() return row(name, job) ~= "todo|0|-" end, 30, "the job to start")
    local dead = worker_of(name, job)
    local stranger = started("--app " .. without .. " --name stranger " .. FAST)
    local idle = started("--app " .. app .. " --name idle --no-recover-stalled " .. FAST)
    registered(stranger)
    registered(idle)
    kill9(name, a)
    stranger:wait_for("not recovered here", 1, 60)
    assert.are.equal("doing|0|" .. dead, row(name, job))
    local knows = started("--app " .. app .. " --name knows " .. FAST)
    proc.until_true_while({ knows }, function() return row(name, job) == "failed|1|-" end, 60, "the job to be recovered")
    -- (knows, starting after the kill, pruned the dead worker's registration: the job names no worker now)
    knows:wait_for("was left running by", 1, 30)  -- the row is written before the worker logs it
    assert.matches(string.format("job %d rare was left running by a worker that is gone: failed %%(its task " ..
      "does not retry%%)", job), knows:output())
    assert.matches(string.format('job %d rare was left running by worker %s %%(no heartbeat for %%d+ s%%): not ' ..
      'recovered here, task "rare" is not registered in this app', job, dead), stranger:output())
    assert.are.equal(1, select(2, stranger:output():gsub("not recovered here", "")), "logged once")
    assert.is_nil(idle:output():match("was left running"))
  end)
end)

-- A schema whose triggers are Procrastinate's and that lacks tarry_recover_stalled_jobs_v1: the
-- workers recover one job per statement, so their rounds overlap and race for the same jobs.
local function procrastinate_flavour(name)
  db.apply_schema_file(name, "spec/fixtures/procrastinate_triggers.sql")
  db.psql(name, "DROP FUNCTION tarry_recover_stalled_jobs_v1")
end

for _, flavour in ipairs { "tarry", "procrastinate" } do
  describe("three workers recovering the jobs of a killed one at once (" .. flavour .. " schema)", function()
    local name
    before_each(function()
      name = db.fresh()
      if flavour == "procrastinate" then procrastinate_flavour(name) end
    end)
    after_each(function() proc.kill_all(); db.drop(name) end)

    it("put each job back once: one deferred_for_retry per job, one log line per job", function()
      local N = 300
      local app = proc.app_file(name, TASKS)
      local first = defer(name, "hold", nil, N)
      local a = started("--app " .. app .. " --name a -c " .. N .. " " .. FAST)
      proc.until_true_while({ a }, function() return W.count(name, "FROM procrastinate_jobs WHERE status = 'doing'") == N end,
        60, "the jobs to start")
      local others = {}
      for i = 1, 3 do
        others[i] = started(string.format("--app %s --name r%d -c 20 %s", app, i, FAST))
        registered(others[i])
      end
      kill9(name, a)
      proc.until_true_while(others, function()
        return W.count(name, "FROM procrastinate_jobs WHERE status = 'succeeded' AND attempts = 2") == N
      end, 120, "every job to be re-run")
      assert.are.equal(0, W.count(name, "FROM (SELECT job_id FROM procrastinate_events WHERE type = " ..
        "'deferred_for_retry' GROUP BY job_id HAVING count(*) <> 1) AS twice"))
      assert.are.equal(N, W.count(name, "FROM procrastinate_events WHERE type = 'deferred_for_retry'"))
      local named, split = {}, {}
      for i, w in ipairs(others) do
        local n = 0
        for id in w:output():gmatch("job (%d+) hold was left running by worker") do
          id = tonumber(id)
          assert.is_nil(named[id], "job " .. id .. " recovered twice")
          named[id], n = true, n + 1
        end
        split[i] = n
      end
      for id = first, first + N - 1 do assert.is_true(named[id], "job " .. id .. " has no recovery line") end
      print(string.format("\n  %s schema: the three workers recovered %s of the %d jobs", flavour,
        table.concat(split, " + "), N))
      for _, w in ipairs(others) do w:signal("TERM") end
      for _, w in ipairs(others) do assert.are.equal(0, w:wait()) end
    end)
  end)
end
