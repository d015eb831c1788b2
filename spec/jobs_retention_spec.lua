-- Retention: app.jobs:delete_old and the builtin task Procrastinate users defer to run it,
-- `builtin:procrastinate.builtin_tasks.remove_old_jobs`, which every tarry app knows.
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"
local W = require "support.worker"
local error_of = require("support.expect").error_of

local REMOVE = "builtin:procrastinate.builtin_tasks.remove_old_jobs"

-- A job left in `status` by a worker `hours` ago: inserted and finished through the protocol's
-- functions, then its events moved back in time.
local function finished(name, status, hours, queue)
  local id = tonumber(db.value(name, string.format([[SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
    ROW('%s', 'work', 0, NULL, NULL, '{}', NULL)::procrastinate_job_to_defer_v1]))]], queue or "default")))
  if status == "cancelled" then
    db.psql(name, "SELECT procrastinate_cancel_job_v1(" .. id .. ", false, false)")
  else
    db.psql(name, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = " .. id)
    db.psql(name, string.format("SELECT procrastinate_finish_job_v1(%d, '%s', false)", id, status))
  end
  db.psql(name, string.format("UPDATE procrastinate_events SET at = at - interval '%g hours' WHERE job_id = %d",
    hours, id))
  return id
end

local function left(name)
  local out = {}
  for _, r in ipairs(db.rows(name, "SELECT id FROM procrastinate_jobs ORDER BY id")) do out[#out + 1] = tonumber(r[1]) end
  return out
end

describe("app.jobs:delete_old", function()
  local t = W.with_database(before_each, after_each)

  it("deletes the jobs of the given statuses whose latest event is older than max_hours, with their events", function()
    local old_ok = finished(t.name, "succeeded", 100)
    local new_ok = finished(t.name, "succeeded", 1)
    local old_failed = finished(t.name, "failed", 100)
    local old_cancelled = finished(t.name, "cancelled", 100)
    local old_aborted = finished(t.name, "aborted", 100)
    local other_queue = finished(t.name, "succeeded", 100, "other")
    assert.are.equal(1, t.app.jobs:delete_old{ max_hours = 72, queue = "default" })
    assert.are.same({ new_ok, old_failed, old_cancelled, old_aborted, other_queue }, left(t.name))
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_events WHERE job_id = " .. old_ok))
    assert.are.equal(2, t.app.jobs:delete_old{ max_hours = 72, statuses = { "succeeded", "aborted" } })
    assert.are.same({ new_ok, old_failed, old_cancelled }, left(t.name))
    assert.are.equal(2, t.app.jobs:delete_old{ max_hours = 0.5, statuses = { "succeeded", "failed" } })
    assert.are.same({ old_cancelled }, left(t.name))
  end)

  it("deletes the kept errors (tarry_job_errors_v1) of deleted jobs once they are older than max_hours", function()
    local old_failed = finished(t.name, "failed", 100)
    local kept_failed = finished(t.name, "failed", 1)
    for _, id in ipairs{ old_failed, kept_failed } do
      db.psql(t.name, "INSERT INTO tarry_job_errors_v1 (job_id, attempt, message, at) VALUES (" .. id
        .. ", 1, 'boom', now() - interval '100 hours')")
    end
    db.psql(t.name, "INSERT INTO tarry_job_errors_v1 (job_id, attempt, message) VALUES (" .. kept_failed .. ", 2, 'new')")
    assert.are.equal(1, t.app.jobs:delete_old{ max_hours = 72, statuses = { "failed" } })
    assert.are.same({ kept_failed }, left(t.name))
    assert.are.equal(0, W.count(t.name, "FROM tarry_job_errors_v1 WHERE job_id = " .. old_failed))
    assert.are.equal(2, W.count(t.name, "FROM tarry_job_errors_v1 WHERE job_id = " .. kept_failed))
  end)

  it("keeps waiting and running jobs, jobs without events, and counts a scheduled event at its time", function()
    local todo = finished(t.name, "succeeded", 100)
    db.psql(t.name, "UPDATE procrastinate_jobs SET status = 'todo' WHERE id = " .. todo)   -- a manual edit
    local silent = finished(t.name, "succeeded", 100)
    db.psql(t.name, "DELETE FROM procrastinate_events WHERE job_id = " .. silent)
    local planned = finished(t.name, "cancelled", 100)
    db.psql(t.name, "INSERT INTO procrastinate_events (job_id, type, at) VALUES (" .. planned
      .. ", 'scheduled', now() + interval '1 day')")
    assert.are.equal(0, t.app.jobs:delete_old{ max_hours = 1, statuses = { "succeeded", "cancelled" } })
    assert.are.same({ todo, silent, planned }, left(t.name))
  end)

  it("starts from tarry's index on the events' time, so a run with little to delete reads little", function()
    db.psql(t.name, [[
      INSERT INTO procrastinate_jobs (queue_name, task_name, status, attempts)
      SELECT 'default', 'work', 'succeeded', 1 FROM generate_series(1, 20000);
      INSERT INTO procrastinate_events (job_id, type, at)
      SELECT id, e.type::procrastinate_job_event_type, now() FROM procrastinate_jobs,
             (VALUES ('deferred'), ('started'), ('succeeded')) AS e (type);
      ANALYZE procrastinate_jobs; ANALYZE procrastinate_events]])
    local plan = {}
    local conn = tarry.SyncPgConnector{ conninfo = db.conninfo(t.name) }
    for _, r in ipairs(conn:execute("EXPLAIN " .. require("tarry.pg_jobs").DELETE_OLD, 72, nil,
        "{succeeded}")) do
      plan[#plan + 1] = r["QUERY PLAN"]
    end
    conn:close()
    plan = table.concat(plan, "\n")
    assert.matches("Index Scan using tarry_events_at_idx_v1 on procrastinate_events", plan)
    assert.is_nil(plan:match("Seq Scan"), plan)
    assert.are.equal(0, t.app.jobs:delete_old{ max_hours = 72 })
  end)
end)

describe("the builtin task remove_old_jobs", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  local function defer_as_python(args, queue)
    return tonumber(db.value(name, string.format([[SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
      ROW('%s', '%s', 0, NULL, NULL, '%s', NULL)::procrastinate_job_to_defer_v1]))]], queue or "builtin",
      REMOVE, args)))
  end

  local function run_worker(queues)
    local app = proc.app_file(name, "")                 -- an app with no task of its own
    local w = proc.start("worker --app " .. app .. " --one-shot" .. (queues and " -q " .. queues or ""))
    assert.are.equal(0, w:wait())
    return w:output()
  end

  it("is run by a tarry worker when Python (or anyone) defers it, with Procrastinate's arguments", function()
    local old_ok = finished(name, "succeeded", 100)
    local new_ok = finished(name, "succeeded", 1)
    local old_failed = finished(name, "failed", 100)
    local old_cancelled = finished(name, "cancelled", 100)
    local old_aborted = finished(name, "aborted", 100)
    local other = finished(name, "failed", 100, "other")
    local job = defer_as_python('{"max_hours": 72, "remove_failed": true, "queue": "default"}')
    local out = run_worker("builtin")
    assert.matches("job " .. job .. " " .. REMOVE .. " succeeded", out)
    assert.are.same({ new_ok, old_cancelled, old_aborted, other, job }, left(name))
    assert.are.same({ "succeeded", 1 }, W.state(name, job))

    local job2 = defer_as_python('{"max_hours": 72, "remove_cancelled": true, "remove_aborted": true, '
      .. '"remove_failed": false, "queue": null}')
    run_worker()
    assert.are.same({ new_ok, other, job, job2 }, left(name))   -- job succeeded moments ago: it stays
    assert.is_nil(W.state(name, old_failed) or W.state(name, old_ok))
  end)

  it("is found by its alias and from a Lua app's tasks, on queue builtin", function()
    local app = W.app(name)
    local task = app.tasks["procrastinate.builtin_tasks.remove_old_jobs"]
    assert.are.equal(REMOVE, task.name)
    assert.are.equal("builtin", task.queue)
    assert.are.equal(task.def, app:find_task(REMOVE))
    local id = task:defer{ max_hours = 0 }
    assert.are.same({ "builtin", REMOVE }, db.rows(name, "SELECT queue_name, task_name FROM procrastinate_jobs "
      .. "WHERE id = " .. id)[1])
    assert.matches("already registered", error_of(function() app:task(REMOVE, function() end) end))
    app:close()
  end)

  it("fails the job, with the reason in the log, on arguments Procrastinate would refuse", function()
    local missing = defer_as_python('{"queue": null}')
    local unknown = defer_as_python('{"max_hours": 1, "keep": true}')
    local badflag = defer_as_python('{"max_hours": 1, "remove_failed": "yes"}')
    local out = run_worker()
    assert.are.same({ "failed", 1 }, W.state(name, missing))
    assert.are.same({ "failed", 1 }, W.state(name, unknown))
    assert.are.same({ "failed", 1 }, W.state(name, badflag))
    assert.matches("max_hours %(a number of hours%) is required", out)
    assert.matches('unexpected argument "keep"', out)
    assert.matches("remove_failed must be a boolean, got string", out)
  end)
end)
