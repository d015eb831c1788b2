-- Every worker defers the app's periodic tasks: real `tarry worker` processes on one PostgreSQL
-- (one job per tick across three of them, a catch-up after a gap, --no-periodic, a lost
-- connection), markers whose job is gone (procrastinate#1495), a schema Procrastinate applied,
-- a failing schedule, and the MemoryConnector.
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"
local W = require "support.worker"

-- A task every second (croniter's 6th field, the second, last) that records which worker ran
-- which job of which tick.
local TICKING = [[
app:task("tick", { cron = "* * * * * *" }, function(args, ctx)
  ctx.app.connector:execute("INSERT INTO effects VALUES ($1, $2, $3)", ctx.job.id, args.timestamp, ctx.worker_name)
end)
]]

local function effects_table(name)
  db.psql(name, "CREATE TABLE effects (job_id bigint NOT NULL, tick bigint NOT NULL, worker text NOT NULL)")
end

local function count(name, from_where) return tonumber(db.value(name, "SELECT count(*) " .. from_where)) end
local function db_now(name) return tonumber(db.value(name, "SELECT extract(epoch FROM now())::float8")) end

-- The ticks of the jobs (those after `after`, if given), as { min =, max =, n =, per_tick = { [n] =
-- the number of ticks with n jobs } }.
local function ticks(name, after)
  local out = { n = 0, per_tick = {} }
  for _, row in ipairs(db.rows(name, "SELECT (args->>'timestamp')::bigint, count(*) FROM procrastinate_jobs "
    .. "WHERE (args->>'timestamp')::bigint > " .. (after or 0) .. " GROUP BY 1 ORDER BY 1")) do
    local t, n = tonumber(row[1]), tonumber(row[2])
    out.min, out.max, out.n = out.min or t, t, out.n + 1
    out.per_tick[n] = (out.per_tick[n] or 0) + 1
  end
  return out
end

-- Wait (bounded) until the database's clock has passed the second `t`: the next tick is due.
local function after_second(name, t)
  proc.until_true(function() return db_now(name) >= t + 1 end, 10, "the next second")
end

local function stop(w)
  w:signal("TERM")
  assert.are.equal(0, w:wait(), w:output())
end

local function json_events(output, event)
  local out = {}
  for line in output:gmatch("[^\n]+") do
    local ok, rec = pcall(tarry.json.decode, line)
    if ok and type(rec) == "table" and rec.event == event then out[#out + 1] = rec end
  end
  return out
end

describe("tarry worker processes deferring a per-second task", function()
  local name
  before_each(function() name = db.fresh(); effects_table(name) end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("defer one job per tick between three of them, every tick, each job run once", function()
    local app = proc.app_file(name, TICKING)
    local workers = proc.start_workers(3, app)
    proc.until_true(function() return count(name, "FROM procrastinate_jobs") >= 10 end, 60, "ten ticks")
    for _, w in ipairs(workers) do stop(w) end
    local t = ticks(name)
    assert.are.same({ [1] = t.n }, t.per_tick)             -- no tick has two jobs
    assert.are.equal(t.max - t.min + 1, t.n)               -- and none is missing
    assert.is_true(t.n >= 10)
    -- Each job ran once, with its tick; a job deferred as the workers stopped is left todo, and a
    -- one-shot worker without the deferrer runs them, deferring nothing itself.
    local left = count(name, "FROM procrastinate_jobs WHERE status = 'todo'")
    local drain = proc.start("worker --app " .. app .. " --one-shot --no-periodic --name drain")
    assert.are.equal(0, drain:wait(), drain:output())
    assert.are.equal(t.n, ticks(name).n)
    assert.are.same({ tostring(t.n), tostring(t.n), tostring(t.n) }, db.rows(name, "SELECT count(*), "
      .. "count(DISTINCT e.job_id), count(*) FILTER (WHERE e.tick = (j.args->>'timestamp')::bigint) "
      .. "FROM effects e JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.status = 'succeeded'")[1])
    assert.are.equal(left, count(name, "FROM effects WHERE worker = 'drain'"))
    assert.is_true(count(name, "FROM effects WHERE worker <> 'drain'") > 0)
  end)

  it("catch up, when one starts after a gap, the ticks within --periodic-max-delay; older ones are skipped " ..
     "with one warning", function()
    -- The state a gap leaves: the newest tick was deferred (and run) 100 s ago.
    local last = math.floor(db_now(name)) - 100
    db.psql(name, string.format("SELECT procrastinate_defer_periodic_job_v2('default', NULL, NULL, 'tick', 0, '', "
      .. "%d, '{\"timestamp\": %d}')", last, last))
    db.psql(name, "UPDATE procrastinate_jobs SET status = 'succeeded'")
    local app = proc.app_file(name, TICKING)
    local launched = math.floor(db_now(name))
    local w = proc.start("worker --app " .. app .. " --periodic-max-delay 3 --log-format json")
    proc.until_true(function() return count(name, "FROM effects") >= 6 end, 60, "the caught-up ticks and two more")
    stop(w)
    local late = json_events(w:output(), "periodic_late")
    assert.are.equal(1, #late, w:output())
    assert.are.same({ "tick", "", last + 1 }, { late[1].task, late[1].periodic_id, late[1].first_skipped })
    assert.matches("^periodic task \"tick\": its ticks from .- to .- are older than periodic_max_delay "
      .. "%(3 s%): skipped$", late[1].message)
    local first = late[1].last_skipped + 1                  -- the oldest tick within the delay
    assert.is_true(first >= launched - 3)
    local t = ticks(name, last)                               -- after the old tick: a contiguous run from `first`
    assert.are.same({ [1] = t.n }, t.per_tick)
    assert.are.same({ first, t.n }, { t.min, t.max - t.min + 1 })
    -- that one was deferred by the catch-up, periodic_max_delay after its tick (or later)
    assert.is_true(tonumber(db.value(name, "SELECT extract(epoch FROM e.at) FROM procrastinate_events e JOIN "
      .. "procrastinate_jobs j ON j.id = e.job_id WHERE e.type = 'deferred' AND (j.args->>'timestamp')::bigint = "
      .. first)) >= first + 3)
  end)

  it("defer nothing with --no-periodic or TARRY_NO_PERIODIC; a one-shot worker defers what is due at its start " ..
     "and runs it", function()
    local app = proc.app_file(name, TICKING)
    for _, run in ipairs { { "--no-periodic", "" }, { "", "TARRY_NO_PERIODIC=1 " } } do
      local w = proc.start("worker --app " .. app .. " --one-shot " .. run[1], run[2])
      assert.are.equal(0, w:wait(), w:output())
    end
    assert.are.equal(0, count(name, "FROM procrastinate_jobs"))
    local before = db_now(name)
    local w = proc.start("worker --app " .. app .. " --one-shot")
    assert.are.equal(0, w:wait(), w:output())
    local after = db_now(name)
    local row = db.rows(name, "SELECT (args->>'timestamp')::bigint, status FROM procrastinate_jobs")
    assert.are.equal(1, #row)
    assert.are.equal("succeeded", row[1][2])
    local tick = tonumber(row[1][1])
    assert.is_true(tick >= math.floor(before) and tick <= after)
    assert.are.equal(1, count(name, "FROM effects"))
  end)

  it("carries on after its connections are cut, catching up the ticks it missed", function()
    local app = proc.app_file(name, TICKING)
    local w = proc.start("worker --app " .. app)
    proc.until_true(function() return count(name, "FROM effects") >= 2 end, 60, "two ticks")
    db.psql(name, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
      .. "AND pid <> pg_backend_pid()")
    local cut = count(name, "FROM procrastinate_jobs")
    proc.until_true(function() return count(name, "FROM effects") >= cut + 2 end, 60, "two ticks after the cut")
    stop(w)
    local t = ticks(name)
    assert.are.same({ [1] = t.n }, t.per_tick)
    assert.are.equal(t.max - t.min + 1, t.n)
  end)
end)

-- A trigger that refuses the jobs of one task: a database error on that schedule's defers only.
local function refuse_task(name, task)
  db.psql(name, [[
    CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'no jobs of this task here'; END $$;
    CREATE TRIGGER refuse BEFORE INSERT ON procrastinate_jobs FOR EACH ROW
      WHEN (NEW.task_name = ']] .. task .. [[') EXECUTE FUNCTION refuse()]])
end

describe("a tarry worker process with a schedule the database refuses", function()
  local name
  before_each(function() name = db.fresh(); effects_table(name) end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("warns once, keeps deferring the other schedules, and defers it again once the database accepts it", function()
    refuse_task(name, "broken")
    local app = proc.app_file(name, TICKING .. [[
app:task("broken", { cron = "* * * * * *" }, function() end)
]])
    local w = proc.start("worker --app " .. app .. " --log-format json")
    proc.until_true(function() return count(name, "FROM effects") >= 3 end, 60, "three ticks of the other schedule")
    db.psql(name, "DROP TRIGGER refuse ON procrastinate_jobs")
    proc.until_true(function() return count(name, "FROM procrastinate_jobs WHERE task_name = 'broken'") >= 1 end,
      60, "the refused schedule to be deferred")
    stop(w)
    local failed, recovered = json_events(w:output(), "periodic_failed"), json_events(w:output(), "periodic_recovered")
    assert.are.same({ 1, 1 }, { #failed, #recovered }, w:output())
    assert.matches('^periodic task "broken": cannot defer, retrying: .*no jobs of this task here', failed[1].message)
    assert.are.same({ "broken", 'periodic task "broken": deferring its ticks again' },
      { recovered[1].task, recovered[1].message })
    assert.are.same({}, db.rows(name, "SELECT task_name, args->>'timestamp' FROM procrastinate_jobs "
      .. "GROUP BY 1, 2 HAVING count(*) > 1"))                  -- one job per tick of each schedule
  end)
end)

describe("a tarry worker process on a MemoryConnector", function()
  after_each(function() proc.kill_all() end)

  it("defers and runs the periodic ticks too", function()
    local path = os.tmpname() .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write([[
local tarry = require "tarry"
local app = tarry.App{ connector = tarry.MemoryConnector() }
app:task("tick", { cron = "* * * * * *" }, function(args) end)
return app
]])
    f:close()
    local w = proc.start("worker --app " .. path .. " --log-format json")
    proc.until_true(function() return #json_events(w:output(), "job_succeeded") >= 3 end, 60, "three ticks run")
    stop(w)
    local deferred = json_events(w:output(), "periodic_deferred")
    assert.is_true(#deferred >= 3)
    for i = 2, #deferred do assert.are.equal(deferred[i - 1].tick + 1, deferred[i].tick) end
    os.remove(path)
  end)
end)

-- In-process one-shot workers on PostgreSQL: what a pass defers, from the markers it finds.
describe("a worker's periodic pass", function()
  local t = W.with_database(before_each, after_each)
  local ran

  local function app_with_tick(app)
    ran = {}
    app:task("tick", { cron = "* * * * * *" }, function(args) ran[#ran + 1] = args.timestamp end)
    return app
  end

  local function newest_marker(name)
    return tonumber(db.value(name, "SELECT max(defer_timestamp) FROM procrastinate_periodic_defers"))
  end

  it("goes on after the job of the newest marker was deleted (procrastinate#1495)", function()
    app_with_tick(t.app)
    W.run(t.app)
    local first = newest_marker(t.name)
    assert.are.same({ first }, ran)
    db.psql(t.name, "DELETE FROM procrastinate_jobs")       -- as delete_jobs = successful does
    assert.are.equal(1, W.count(t.name, "FROM procrastinate_periodic_defers WHERE job_id IS NULL"))
    after_second(t.name, first)
    W.run(t.app)
    assert.are.equal(first + 1, ran[2])                     -- the next tick, and those since
    assert.are.equal(#ran - 1, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'succeeded'"))
  end)

  it("goes on after a marker that was never linked to a job (procrastinate#1495)", function()
    app_with_tick(t.app)
    local marker = math.floor(db_now(t.name))
    db.psql(t.name, "INSERT INTO procrastinate_periodic_defers (task_name, periodic_id, defer_timestamp, job_id) "
      .. "VALUES ('tick', '', " .. marker .. ", NULL)")
    after_second(t.name, marker)
    W.run(t.app)
    assert.are.equal(marker + 1, ran[1])
    for i = 2, #ran do assert.are.equal(ran[i - 1] + 1, ran[i]) end
  end)

  it("defers to the schedule's queue, even one this worker does not take jobs from", function()
    t.app:task("report", { queue = "reports" }, function() end)
    t.app:periodic("* * * * * *", "report", { periodic_id = "elsewhere", queue = "elsewhere" })
    W.run(t.app, { queues = { "reports" } })
    assert.are.same({ { "elsewhere", "todo" } }, db.rows(t.name, "SELECT queue_name, status FROM procrastinate_jobs"))
  end)

  it("skips a tick whose queueing lock is held by a waiting job, quietly", function()
    t.app:task("report", { queueing_lock = "one" }, function() end)
    t.app:periodic("* * * * * *", "report")
    t.app.tasks.report:defer{}                                 -- waits in a queue this worker does not take
    local log = io.tmpfile()
    W.run(t.app, { queues = { "other" }, log_level = "debug", log_stream = log })
    assert.are.equal(1, W.count(t.name, "FROM procrastinate_jobs"))
    log:seek("set")
    local text = log:read("a")
    assert.matches("a job with its queueing lock is waiting: skipped", text, 1, true)
    assert.is_nil(text:find("WARNING", 1, true), text)
  end)

  it("logs a failing schedule once, defers the others, and does not stop the worker", function()
    refuse_task(t.name, "broken")
    app_with_tick(t.app)
    t.app:task("broken", { cron = "* * * * * *" }, function() end)
    local log = io.tmpfile()
    W.run(t.app, { log_format = "json", log_stream = log })
    local lines = W.json_lines(log)
    local failed = {}
    for _, l in ipairs(lines) do if l.event == "periodic_failed" then failed[#failed + 1] = l end end
    assert.are.equal(1, #failed)
    assert.are.equal("broken", failed[1].task)
    assert.matches('periodic task "broken": cannot defer, retrying: .*no jobs of this task here', failed[1].message)
    assert.are.equal(1, #ran)
  end)

  it("warns once, on a schema without tarry_defer_periodic_job_v1, that a late tick may be deferred twice", function()
    db.psql(t.name, "DROP FUNCTION tarry_defer_periodic_job_v1(varchar, varchar, varchar, varchar, integer, varchar, "
      .. "bigint, jsonb)")
    app_with_tick(t.app)
    local log = io.tmpfile()
    W.run(t.app, { log_format = "json", log_stream = log })
    local warned = {}
    for _, l in ipairs(W.json_lines(log)) do if l.event == "periodic_unserialised" then warned[#warned + 1] = l end end
    assert.are.equal(1, #warned)
    assert.matches("two workers may both defer a tick one of them is late on", warned[1].message, 1, true)
    assert.are.equal(1, #ran)
  end)

  it("is off with periodic = false", function()
    app_with_tick(t.app)
    W.run(t.app, { periodic = false })
    assert.are.same({}, ran)
    assert.are.equal(0, W.count(t.name, "FROM procrastinate_jobs"))
  end)

  it("runs on the MemoryConnector the same way", function()
    local app = app_with_tick(tarry.App{ connector = tarry.MemoryConnector() })
    local before = tarry.now()
    W.run(app)
    assert.are.equal(1, #ran)
    assert.is_true(ran[1] >= math.floor(before) and ran[1] <= tarry.now())
  end)
end)

describe("the worker's periodic flags", function()
  local function run(args, env)
    local p = io.popen((env or "") .. proc.tarry .. " worker --app x.lua " .. args .. " 2>&1")
    local out = p:read("a")
    local _, _, code = p:close()
    return code, out
  end

  it("are refused when malformed, in one line, exit 2", function()
    for _, c in ipairs {
      { "--periodic-max-delay -1", nil, "^tarry: %-%-periodic%-max%-delay must be a number of seconds >= 0, "
        .. "got '%-1'\n$" },
      { "--periodic-max-delay soon", nil, "^tarry: %-%-periodic%-max%-delay must be a number of seconds >= 0, "
        .. "got 'soon'\n$" },
      { "", "TARRY_PERIODIC_MAX_DELAY=-2 ", "^tarry: TARRY_PERIODIC_MAX_DELAY: %-%-periodic%-max%-delay must be a "
        .. "number" },
    } do
      local code, out = run(c[1], c[2])
      assert.are.equal(2, code, out)
      assert.matches(c[3], out)
    end
  end)
end)

describe("run_worker's periodic options", function()
  it("are refused when malformed", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    for _, c in ipairs { { { periodic = "no" }, "periodic must be a boolean" },
      { { periodic_max_delay = -1 }, "periodic_max_delay must be a number of seconds >= 0" } } do
      local ok, err = pcall(W.run, app, c[1])
      assert.is_false(ok)
      assert.matches(c[2], err, 1, true)
    end
  end)
end)
