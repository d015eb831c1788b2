-- Stalled-job recovery in the job stores (tarry/store.lua: recoverable, recover_stalled) and in
-- SQL (tarry_recover_stalled_jobs_v1, schema.sql): which jobs count as left behind by a dead worker,
-- what putting them back does to their rows and events, and that a job is put back once however
-- many workers try at the same time. The same scenario runs on tarry's schema, on a schema whose
-- triggers are Procrastinate's and that lacks tarry's recovery function (the store then uses the
-- protocol's functions, one job per statement), and on the MemoryConnector.
-- Also: a job that leaves `doing` through tarry's paths loses its worker_id (procrastinate#1454).
local tarry = require "tarry"
local Store = require "tarry.store"
local db = require "support.db"
local W = require "support.worker"

local function ids(list)
  local out = {}
  for i, j in ipairs(list) do out[i] = j.id end
  return out
end

local function types(store, id)
  local out = {}
  for i, e in ipairs(store:job_events(id)) do out[i] = e.type end
  return table.concat(out, ",")
end

-- Everything the store answers along the scenario. `age(ids, s)`: those workers' last heartbeat
-- goes s seconds back.
local function scenario(app, age)
  local store, out = Store.of(app.connector), {}
  local work = app.tasks.work
  local held = work:configure{ lock = "L" }:defer{}                 -- 1: the dead worker's, holds L
  local behind = work:configure{ lock = "L" }:defer{}               -- 2: waits for L
  local other_queue = work:configure{ queue = "other" }:defer{}     -- 3: the dead worker's
  local qlocked = work:configure{ queueing_lock = "Q" }:defer{}     -- 4: the dead worker's
  local dead = store:register(30)
  out.taken_by_dead = ids(store:fetch(nil, dead, 3))
  local waiting = work:configure{ queueing_lock = "Q", queue = "parked" }:defer{}   -- 5: waits, holding Q
  local lives = work:defer{}                                         -- 6: a live worker's
  local live = store:register(30)
  out.taken_by_live = ids(store:fetch({ "default" }, live, 1))
  local mine = work:defer{}                                          -- 7: the caller's own
  local me = store:register(30)
  out.taken_by_me = ids(store:fetch({ "default" }, me, 1))
  local orphan = work:defer{}                                        -- 8: its worker unregistered
  local gone = store:register(30)
  store:fetch({ "default" }, gone, 1)
  store:unregister(gone)

  out.fresh = ids(store:recoverable(30, nil, me, 0, 100))           -- only the orphan, so far
  age({ dead, me }, 60)
  local rows = store:recoverable(30, nil, me, 0, 100)
  out.recoverable = {}
  for i, r in ipairs(rows) do
    out.recoverable[i] = { r.id, r.task_name, r.queue, r.lock or false, r.queueing_lock or false, r.attempts,
      r.abort_requested, r.worker_id or false, r.heartbeat_age ~= nil and r.heartbeat_age >= 59 and r.heartbeat_age < 120 }
  end
  out.in_queue = ids(store:recoverable(30, { "default" }, me, 0, 100))
  out.pages = { ids(store:recoverable(30, nil, me, 0, 2)), ids(store:recoverable(30, nil, me, other_queue, 2)) }
  out.longer_timeout = ids(store:recoverable(100, nil, me, 0, 100))

  local now = tarry.now()
  local decisions = {
    { id = held, worker_id = dead, retry_at = now - 1 },
    { id = other_queue, worker_id = dead, status = "failed" },
    { id = qlocked, worker_id = dead, retry_at = now - 1 },        -- Q is held by job 5: failed instead
    { id = lives, worker_id = live, status = "failed" },           -- its worker is alive: left alone
    { id = orphan, status = "aborted" },
  }
  out.first = store:recover_stalled(30, decisions)
  out.second = store:recover_stalled(30, decisions)                 -- nothing is left to put back
  out.refetched = ids(store:fetch({ "default" }, live, 5))          -- the retried job 1; job 2 waits for it
  out.stale_worker = store:recover_stalled(30, { { id = held, worker_id = dead, retry_at = now } })
  out.jobs = {}
  for id = 1, 8 do
    local j = store:get_job(id)
    out.jobs[id] = { j.status, j.attempts, types(store, id) }
  end
  out.worker_ids = {}
  for _, id in ipairs { held, other_queue, qlocked, orphan, lives, behind, waiting } do
    out.worker_ids[#out.worker_ids + 1] = store:get_job(id).worker_id or false
  end
  return out
end

-- A database whose triggers are Procrastinate's and which has no tarry_recover_stalled_jobs_v1.
local function procrastinate_flavour(name)
  db.apply_schema_file(name, "spec/fixtures/procrastinate_triggers.sql")
  db.psql(name, "DROP FUNCTION tarry_recover_stalled_jobs_v1")
end

local function pg_age(name)
  return function(list, s)
    db.psql(name, string.format("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '%d seconds' "
      .. "WHERE id IN (%s)", s, table.concat(list, ",")))
  end
end

local function with_tasks(app)
  app:task("work", function() end)
  return app
end

describe("stalled-job recovery in the job stores", function()
  local names = {}
  after_each(function()
    for _, n in ipairs(names) do db.drop(n) end
    names = {}
  end)

  local function pg_run(flavour)
    local name = db.fresh()
    names[#names + 1] = name
    if flavour then flavour(name) end
    local app = with_tasks(W.app(name))
    local out = scenario(app, pg_age(name))
    app:close()
    return out
  end

  it("find the jobs of silent or gone workers and put each back once, alike everywhere", function()
    local pg = pg_run()
    local procrastinate = pg_run(procrastinate_flavour)
    local memory = tarry.MemoryConnector()
    local mem = scenario(with_tasks(tarry.App{ connector = memory }), function(list, s)
      for _, id in ipairs(list) do memory.workers[id].last_heartbeat = memory.workers[id].last_heartbeat - s end
    end)

    assert.are.same({ 1, 3, 4 }, pg.taken_by_dead)
    assert.are.same({ 6 }, pg.taken_by_live)
    assert.are.same({ 7 }, pg.taken_by_me)
    assert.are.same({ 8 }, pg.fresh)
    assert.are.same({
      { 1, "work", "default", "L", false, 0, false, 1, true },
      { 3, "work", "other", false, false, 0, false, 1, true },
      { 4, "work", "default", false, "Q", 0, false, 1, true },
      { 8, "work", "default", false, false, 0, false, false, false },   -- no worker: no heartbeat age
    }, pg.recoverable)
    assert.are.same({ 1, 4, 8 }, pg.in_queue)
    assert.are.same({ { 1, 3 }, { 4, 8 } }, pg.pages)
    assert.are.same({ 8 }, pg.longer_timeout)
    assert.are.same({ { id = 1, status = "todo" }, { id = 3, status = "failed" }, { id = 4, status = "failed" },
      { id = 8, status = "aborted" } }, pg.first)
    assert.are.same({}, pg.second)
    assert.are.same({ 1 }, pg.refetched)
    assert.are.same({}, pg.stale_worker)
    assert.are.same({
      { "doing", 1, "deferred,started,scheduled,deferred_for_retry,started" },
      { "todo", 0, "deferred" },                 -- still behind job 1, which holds L again
      { "failed", 1, "deferred,started,failed" },
      { "failed", 1, "deferred,started,failed" },
      { "todo", 0, "deferred" },
      { "doing", 0, "deferred,started" },
      { "doing", 0, "deferred,started" },
      { "aborted", 1, "deferred,started,aborted" },
    }, pg.jobs)
    -- the recovered jobs lost their worker_id (job 1 has the live worker's, who fetched it again)
    assert.are.same({ 2, false, false, false, 2, false, false }, pg.worker_ids)

    assert.are.same(pg, mem)
    -- Procrastinate's functions leave worker_id on the rows they change (PROTOCOL.md 4.4, 4.6): without
    -- tarry's function the failed jobs keep the dead worker's id, the rest is the same.
    assert.are.same({ 2, 1, 1, false, 2, false, false }, procrastinate.worker_ids)
    procrastinate.worker_ids = pg.worker_ids
    assert.are.same(pg, procrastinate)
  end)
end)

-- A psql session, fed through a pipe, that runs `sql` in an open transaction until released.
local function in_open_transaction(name, sql, probe)
  local session = assert(io.popen("psql -X -q -d " .. db.shell_quote(name) .. " >/dev/null 2>&1", "w"))
  session:write("BEGIN;\n", sql, ";\n")
  session:flush()
  local probes = 0
  repeat
    probes = probes + 1
    assert(probes < 5000, "the session never got as far as its statement")
  until probe()
  return function(finish)
    session:write(finish, ";\n\\q\n")
    session:close()
  end
end

describe("tarry_recover_stalled_jobs_v1", function()
  local name
  before_each(function()
    name = db.fresh()
    db.psql(name, [[
      SELECT procrastinate_register_worker_v1();
      SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'work', 0, 'L', NULL, '{}', NULL),
        ROW('default', 'work', 0, 'L', NULL, '{}', NULL)]::procrastinate_job_to_defer_v1[]);
      SELECT procrastinate_fetch_job_v2(NULL, 1);
      UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 minute']])
  end)
  after_each(function() db.drop(name) end)

  local RECOVER = "SELECT count(*) FROM tarry_recover_stalled_jobs_v1(30, '{1}', '{1}', '{NULL}', " ..
    "ARRAY[extract(epoch FROM now())::float8])"
  local LOCKED = "SELECT count(*) FROM (SELECT id FROM procrastinate_jobs WHERE id = 1 FOR UPDATE SKIP LOCKED) AS s"

  it("skips a job another transaction is recovering, and finds nothing once that committed", function()
    local release = in_open_transaction(name, RECOVER, function() return db.value(name, LOCKED) == "0" end)
    -- lock_timeout turns a wait (a bug: the row must be skipped) into an error instead of a hang
    local meanwhile = db.value(name, "SET lock_timeout = '2s'; " .. RECOVER)
    release("COMMIT")
    assert.are.equal("0", meanwhile)
    assert.are.equal("0", db.value(name, RECOVER))
    assert.are.equal("todo|1|-", db.value(name, "SELECT concat_ws('|', status, attempts, coalesce(worker_id::text, '-')) " ..
      "FROM procrastinate_jobs WHERE id = 1"))
    assert.are.equal("deferred,started,scheduled,deferred_for_retry", W.events(name, 1))
  end)

  it("recovers the job after a transaction that tried rolled back", function()
    local release = in_open_transaction(name, RECOVER, function() return db.value(name, LOCKED) == "0" end)
    release("ROLLBACK")
    assert.are.equal("1", db.value(name, RECOVER))
    assert.are.equal("deferred,started,scheduled,deferred_for_retry", W.events(name, 1))
  end)

  it("leaves a job whose worker sent a heartbeat meanwhile", function()
    db.psql(name, "SELECT procrastinate_update_heartbeat_v1(1)")
    assert.are.equal("0", db.value(name, RECOVER))
    assert.are.equal("doing", db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = 1"))
  end)

  it("releases the lock: the next same-lock job can be fetched", function()
    db.psql(name, "SELECT procrastinate_register_worker_v1()")
    assert.is_nil(db.value(name, "SELECT (procrastinate_fetch_job_v2(NULL, 2)).id"))
    assert.are.equal("1", db.value(name, "SELECT count(*) FROM tarry_recover_stalled_jobs_v1(30, '{1}', '{1}', " ..
      "'{failed}', '{NULL}')"))
    assert.are.equal("2", db.value(name, "SELECT (procrastinate_fetch_job_v2(NULL, 2)).id"))
  end)

  it("puts each job back once when many sessions recover the same jobs at once", function()
    db.psql(name, [[
      SELECT procrastinate_defer_jobs_v1(array_agg(ROW('default', 'work', 0, NULL, NULL, '{}', NULL)
        ::procrastinate_job_to_defer_v1)) FROM generate_series(1, 200);
      SELECT count(*) FROM tarry_fetch_jobs_v1(NULL, 1, 1000)]])
    local all = "SELECT count(*) FROM (SELECT array_agg(id ORDER BY id DESC) AS ids, array_agg(1::bigint) AS workers, " ..
      "array_agg(extract(epoch FROM now())::float8) AS ats FROM procrastinate_jobs WHERE status = 'doing') AS j, " ..
      "tarry_recover_stalled_jobs_v1(30, j.ids, j.workers, NULL, j.ats)"
    local sessions = {}
    for i = 1, 6 do
      sessions[i] = assert(io.popen("psql -X -q -At -d " .. db.shell_quote(name) .. " -c " .. db.shell_quote(all)))
    end
    local total = 0
    for _, s in ipairs(sessions) do
      total = total + tonumber(s:read("a"))
      s:close()
    end
    assert.are.equal(201, total)
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM (SELECT job_id FROM procrastinate_events " ..
      "WHERE type = 'deferred_for_retry' GROUP BY job_id HAVING count(*) <> 1) AS twice"))
    assert.are.equal("201", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' " ..
      "AND attempts = 1 AND worker_id IS NULL"))
  end)
end)

describe("worker_id of jobs that left doing", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() require("support.process").kill_all(); db.drop(name) end)

  it("is cleared by a tarry worker, so deleting the worker updates none of them", function()
    local proc = require "support.process"
    local app = proc.app_file(name, [[
app:task("ok", function() end)
app:task("boom", function() error("no") end)
app:task("again", { retry = 1 }, function(args, ctx) if ctx.job.attempts == 0 then error("once more") end end)
]])
    db.psql(name, [[SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'ok', 0, NULL, NULL, '{}', NULL),
      ROW('default', 'boom', 0, NULL, NULL, '{}', NULL), ROW('default', 'again', 0, NULL, NULL, '{}', NULL)]
      ::procrastinate_job_to_defer_v1[])]])
    local w = proc.start("worker --app " .. app .. " --fetch-job-polling-interval 0.1")
    proc.until_true_while({ w }, function()
      return W.count(name, "FROM procrastinate_jobs WHERE status IN ('succeeded', 'failed')") == 3
    end, 60, "the jobs to end")
    -- the worker is still registered, and none of the rows it finished or retried points at it
    assert.are.equal("1", db.value(name, "SELECT count(*) FROM procrastinate_workers"))
    assert.are.equal("succeeded|1,failed|1,succeeded|2", db.value(name,
      "SELECT string_agg(status || '|' || attempts, ',' ORDER BY id) FROM procrastinate_jobs"))
    assert.are.equal(0, W.count(name, "FROM procrastinate_jobs WHERE worker_id IS NOT NULL"))
    -- so deleting the worker (here in a transaction rolled back) updates no job row
    assert.matches("updated 0\n", db.psql(name, [[
      BEGIN;
      SELECT procrastinate_unregister_worker_v1(1);
      SELECT 'updated ' || n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'procrastinate_jobs';
      ROLLBACK;]]))
    w:signal("TERM")
    assert.are.equal(0, w:wait())
    -- what Procrastinate's finish does instead: the row keeps the worker (PROTOCOL.md 4.4), and
    -- unregistering that worker then updates it through the foreign key
    db.psql(name, [[
      SELECT procrastinate_register_worker_v1();
      SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'ok', 0, NULL, NULL, '{}', NULL)]::procrastinate_job_to_defer_v1[]);
      SELECT procrastinate_fetch_job_v2(NULL, 2);
      SELECT procrastinate_finish_job_v1(4, 'succeeded', false);]])
    assert.are.equal("2", db.value(name, "SELECT worker_id FROM procrastinate_jobs WHERE id = 4"))
    local updated = db.psql(name, [[
      BEGIN;
      SELECT procrastinate_unregister_worker_v1(2);
      SELECT 'updated ' || n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'procrastinate_jobs';
      COMMIT;]])
    assert.matches("updated 1\n", updated)
  end)
end)

describe("deleting a worker", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("can find its jobs through tarry_jobs_worker_id_idx_v1, as the foreign key's generic plan asks", function()
    -- the query the ON DELETE SET NULL action runs; seq scans off, so the plan shows whether the
    -- index can serve it at all (on a table this small the planner would scan anyway)
    local plan = db.psql(name, [[
      SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan;
      PREPARE detach(bigint) AS UPDATE ONLY procrastinate_jobs SET worker_id = NULL WHERE $1 = worker_id;
      EXPLAIN EXECUTE detach(1)]])
    assert.matches("tarry_jobs_worker_id_idx_v1", plan)
  end)
end)

describe("a worker starting after another died", function()
  -- what a kill -9 leaves: a registered worker that fetched a job and fell silent
  local function dead_worker_left(app, age)
    local store = Store.of(app.connector)
    local id = app.tasks.resize:defer{ file = "a.png" }
    local dead = store:register(30)
    store:fetch(nil, dead, 1)
    age(dead)
    return id
  end

  local function one_shot(app, opts)
    local log = io.tmpfile()
    local o = { log_stream = log, log_format = "json" }
    for k, v in pairs(opts or {}) do o[k] = v end
    W.run(app, o)
    local lines = {}
    for _, rec in ipairs(W.json_lines(log)) do
      if rec.event == "job_recovered" or rec.event == "heartbeat_too_slow" then lines[#lines + 1] = rec end
    end
    return lines
  end

  local function memory_app()
    local memory = tarry.MemoryConnector()
    local app = tarry.App{ connector = memory }
    app:task("resize", { retry = 2 }, function() end)
    return app, function(id) memory.workers[id].last_heartbeat = memory.workers[id].last_heartbeat - 60 end
  end

  it("puts the job back before its first fetch, and runs it (MemoryConnector)", function()
    local app, age = memory_app()
    local id = dead_worker_left(app, age)
    local lines = one_shot(app)
    local job = app.jobs:get(id)
    assert.are.same({ "succeeded", 2 }, { job.status, job.attempts })
    assert.are.equal(1, #lines)
    -- registering, the new worker pruned the silent one (as Procrastinate's workers do): the job's
    -- worker_id went NULL with it, so the line can no longer name that worker
    assert.are.equal("job 1 resize was left running by a worker that is gone: retried", lines[1].message)
    assert.are.same({ id, "resize", "todo" }, { lines[1].job_id, lines[1].task, lines[1].status })
    assert.is_nil(lines[1].worker_id)
  end)

  it("leaves it with recover_stalled = false", function()
    local app, age = memory_app()
    local id = dead_worker_left(app, age)
    assert.are.same({}, one_shot(app, { recover_stalled = false }))
    assert.are.equal("doing", app.jobs:get(id).status)
  end)

  it("refuses a recover_stalled that is not a boolean", function()
    local app = memory_app()
    assert.matches("run_worker: recover_stalled must be a boolean", require("support.expect").error_of(function()
      W.run(app, { recover_stalled = "yes" })
    end))
  end)
end)

describe("tarry worker's recovery options", function()
  local cli = require "support.cli"
  local app_path
  before_each(function()
    app_path = cli.write_file(os.tmpname() .. ".lua",
      "return require('tarry').App{ connector = require('tarry').MemoryConnector() }\n")
  end)
  after_each(function() os.remove(app_path) end)

  -- `tarry worker --app APP --one-shot args...` with extra environment: its stderr and exit code
  local function worker(args, env)
    local r = cli.run({ "worker", "--app", app_path, "--one-shot", table.unpack(args) }, env)
    return r.err, r.code
  end

  local TOO_SLOW = "the heartbeat interval %(5 s%) is not shorter than stalled_worker_timeout %(2 s%)"
  local SLOW = { "--update-heartbeat-interval", "5", "--stalled-worker-timeout", "2" }

  it("reach the worker from the command line and from TARRY_* variables", function()
    local err, code = worker(SLOW)
    assert.are.equal(0, code, err)
    assert.matches(TOO_SLOW, err)
    err, code = worker({}, { TARRY_UPDATE_HEARTBEAT_INTERVAL = "5", TARRY_STALLED_WORKER_TIMEOUT = "2" })
    assert.are.equal(0, code, err)
    assert.matches(TOO_SLOW, err)
    -- no recovery, no rounds: nothing checks the settings
    err, code = worker({ "--no-recover-stalled", table.unpack(SLOW) })
    assert.are.equal(0, code, err)
    assert.is_nil(err:match("heartbeat interval"))
    err = worker(SLOW, { TARRY_NO_RECOVER_STALLED = "1" })
    assert.is_nil(err:match("heartbeat interval"))
  end)

  it("refuse what is not a number of seconds, in one line, exit 2", function()
    for _, flag in ipairs { "--update-heartbeat-interval", "--stalled-worker-timeout" } do
      local err, code = worker({ flag, "soon" })
      assert.are.equal(2, code)
      assert.are.equal("tarry: " .. flag .. " must be a number of seconds >= 0, got 'soon'\n", err)
    end
  end)
end)
