-- The worker's round trip that records outcomes and fetches the next jobs (store:finish_fetch),
-- its prefetch queue (the `prefetch` option), and how a graceful stop puts back the jobs it
-- prefetched (store:release). On three schemas: tarry's (tarry_finish_fetch_jobs_v1), one with
-- Procrastinate's row-level triggers (spec/fixtures/procrastinate_triggers.sql), and that one
-- without tarry_finish_fetch_jobs_v1 (the statement in tarry/pg_jobs.lua built on the protocol's
-- functions does the round trip).
local tarry = require "tarry"
local db = require "support.db"
local W = require "support.worker"
local proc = require "support.process"
local PgJobs = require "tarry.pg_jobs"
local exactly_once = require "support.exactly_once"

local PROCRASTINATE_TRIGGERS = "spec/fixtures/procrastinate_triggers.sql"

local SCHEMAS = {
  { label = "tarry's schema", setup = function() end, combined = "tarry_finish_fetch_jobs_v1", lean_skips = true },
  { label = "Procrastinate's triggers", combined = "tarry_finish_fetch_jobs_v1",
    setup = function(name) db.apply_schema_file(name, PROCRASTINATE_TRIGGERS) end },
  -- (The protocol's retry keeps the job's worker_id: unregistering the worker then updates the row,
  -- and the scheduled trigger logs one more `scheduled`; see spec/worker_interop_spec.lua.)
  { label = "Procrastinate's triggers, without tarry_finish_fetch_jobs_v1", combined = "procrastinate_fetch_job_v2",
    retried_later = "deferred,started,scheduled,deferred_for_retry,scheduled",
    setup = function(name)
      db.apply_schema_file(name, PROCRASTINATE_TRIGGERS)
      db.psql(name, "DROP FUNCTION tarry_finish_fetch_jobs_v1")
    end },
}

local function defer(name, task, opts)
  opts = opts or {}
  local function lit(v) return v ~= nil and ("'" .. tostring(v) .. "'") or "NULL" end
  return tonumber(db.value(name, string.format("SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW('default', %s, %d, "
    .. "%s, %s, '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1]))", lit(task), opts.priority or 0, lit(opts.lock),
    lit(opts.queueing_lock))))
end

-- An app file with a "gate" task that runs until the returned file exists (at most 120 s) and a
-- "quick" task (quick_body: its function's source; a no-op by default).
local function gate_app(name, quick_body)
  local gate = os.tmpname()
  os.remove(gate)
  local app = proc.app_file(name, string.format([[
app:task("quick", %s)
app:task("gate", function(_, ctx)
  local deadline = os.time() + 120
  while not io.open(%q) and os.time() < deadline do ctx:sleep(0.02) end
end)
]], quick_body or "function() end", gate))
  return app, gate
end

for _, schema in ipairs(SCHEMAS) do
  describe("on " .. schema.label, function()
    local t = {}
    before_each(function()
      t.name = db.fresh()
      schema.setup(t.name)
      t.app = W.app(t.name)
    end)
    after_each(function()
      proc.kill_all()
      if t.conn then t.conn:close(); t.conn = nil end
      W.cleanup(t)
    end)

    -- The job store on a sync connection, registered as a worker would be.
    local function store()
      t.conn = tarry.SyncPgConnector{ conninfo = db.conninfo(t.name) }
      local s = PgJobs.new(t.conn)
      return s, s:register(30)
    end

    it("the store's round trip is the one this schema has", function()
      local s = store()
      assert.truthy(s.finish_fetch_sql:find(schema.combined, 1, true))
    end)

    it("finish_fetch records the outcomes first: the fetch sees the lock they released", function()
      local s, wid = store()
      local a = defer(t.name, "t", { lock = "L" })
      local b = defer(t.name, "t", { lock = "L" })
      local jobs = s:fetch(nil, wid, 5)
      assert.are.same({ a }, { jobs[1].id })
      assert.are.equal(1, #jobs)                       -- b waits for a's lock
      jobs = s:finish_fetch({ { id = a, status = "succeeded" } }, nil, wid, 5)
      assert.are.equal(1, #jobs)
      assert.are.equal(b, jobs[1].id)
      assert.are.same({ "succeeded", 1 }, W.state(t.name, a))
      assert.are.equal("deferred,started,succeeded", W.events(t.name, a))
      assert.are.equal("deferred,started", W.events(t.name, b))
    end)

    it("finish_fetch with no outcomes fetches, and with n = 0 only records", function()
      local s, wid = store()
      local a, b = defer(t.name, "t"), defer(t.name, "t")
      local jobs = s:finish_fetch({}, nil, wid, 1)
      assert.are.equal(a, jobs[1].id)
      jobs = s:finish_fetch({ { id = a, retry_at = os.time() + 3600 } }, nil, wid, 0)
      assert.are.equal(0, #jobs)
      assert.are.same({ "todo", 1 }, W.state(t.name, a))
      assert.are.same({ "todo", 0 }, W.state(t.name, b))
    end)

    it("finish_fetch is all or nothing: an outcome the database refuses records and fetches nothing", function()
      local s, wid = store()
      local a = defer(t.name, "t")
      assert.are.equal(1, #s:fetch(nil, wid, 1))
      local b = defer(t.name, "t")
      local ok = pcall(s.finish_fetch, s, { { id = a, status = "succeeded" }, { id = 424242, status = "succeeded" } },
        nil, wid, 1)
      assert.is_false(ok)
      assert.are.same({ "doing", 0 }, W.state(t.name, a))
      assert.are.same({ "todo", 0 }, W.state(t.name, b))
    end)

    it("release puts prefetched jobs back to todo, except an abort requested or a taken queueing lock", function()
      local s, wid = store()
      local plain = defer(t.name, "t")
      local aborted = defer(t.name, "t")
      local qlocked = defer(t.name, "t", { queueing_lock = "Q" })
      local other = defer(t.name, "t")
      assert.are.equal(4, #s:fetch(nil, wid, 4))
      db.psql(t.name, "SELECT procrastinate_cancel_job_v1(" .. aborted .. ", true, false)")
      defer(t.name, "t", { queueing_lock = "Q" })        -- allowed: the first one is doing
      local back = s:release({ plain, aborted, qlocked }, wid)
      assert.are.same({ plain }, back)
      assert.are.same({ "todo", 0 }, W.state(t.name, plain))
      assert.are.equal("deferred,started,deferred_for_retry", W.events(t.name, plain))
      assert.are.equal("0", db.value(t.name, "SELECT count(*) FROM procrastinate_jobs WHERE id = " .. plain
        .. " AND worker_id IS NOT NULL"))
      for _, id in ipairs { aborted, qlocked, other } do assert.are.same({ "doing", 0 }, W.state(t.name, id)) end
      assert.are.same({}, s:release({ other }, wid + 1))   -- another worker's job: left alone
    end)

    it("a worker with prefetch runs jobs in priority order", function()
      local journal = W.journal()
      t.app:task("t", function(_, ctx) journal:add("start", ctx.job.id); ctx:sleep(0.002); journal:add("end", ctx.job.id) end)
      local ids = {}
      for i = 1, 12 do ids[i] = defer(t.name, "t", { priority = i % 3 }) end
      W.run(t.app, { concurrency = 1, prefetch = 8 })
      local order = {}
      for _, line in ipairs(journal) do
        local id = line:match("^start (%d+)")
        if id then order[#order + 1] = tonumber(id) end
      end
      local expected = { table.unpack(ids) }
      table.sort(expected, function(x, y)
        local px, py = x % 3, y % 3   -- ids are 1..12 on a fresh database: priority = id % 3
        if px ~= py then return px > py end
        return x < y
      end)
      assert.are.same(expected, order)
      for _, id in ipairs(ids) do
        assert.are.same({ "succeeded", 1 }, W.state(t.name, id))
        assert.are.equal("deferred,started,succeeded", W.events(t.name, id))
      end
    end)

    it("a worker with prefetch and concurrency 4 never runs two jobs of one lock at once", function()
      local journal, running = W.journal(), {}
      t.app:task("t", function(_, ctx)
        local lock = ctx.job.lock
        if lock then
          assert(not running[lock], "two jobs of lock " .. lock .. " at once")
          running[lock] = true
        end
        journal:add("start", ctx.job.id)
        ctx:sleep(0.002)
        if lock then running[lock] = nil end
      end)
      local locked = {}
      for i = 1, 40 do
        local lock = ({ "A", "B", nil, nil })[i % 4 + 1]
        local id = defer(t.name, "t", { lock = lock })
        if lock then locked[lock] = locked[lock] or {}; table.insert(locked[lock], id) end
      end
      local log = io.tmpfile()
      W.run(t.app, { concurrency = 4, prefetch = 16, log_stream = log })
      log:seek("set")
      assert.are.equal(40, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'succeeded' AND attempts = 1"),
        log:read("a") .. db.value(t.name, "SELECT string_agg(id || ':' || status || ':' || coalesce(lock, '-'), ' ' "
          .. "ORDER BY id) FROM procrastinate_jobs"))
      for _, ids in pairs(locked) do              -- a lock's jobs ran in id order
        local seen = {}
        for _, line in ipairs(journal) do
          local id = tonumber(line:match("^start (%d+)"))
          for _, l in ipairs(ids) do if l == id then seen[#seen + 1] = id end end
        end
        assert.are.same(ids, seen)
      end
    end)

    it("retries and failures go through the round trip with the same events", function()
      t.app:task("flaky", { retry = { max_attempts = 1, wait = 0 } }, function() error("no") end)
      t.app:task("ok", function() end)
      local flaky = t.app.tasks.flaky:defer{}
      local oks = {}
      for i = 1, 5 do oks[i] = t.app.tasks.ok:defer{} end
      W.run(t.app, { concurrency = 2, prefetch = 4, log_level = "error", log_stream = io.tmpfile() })
      assert.are.same({ "failed", 2 }, W.state(t.name, flaky))
      assert.are.equal("deferred,started,scheduled,deferred_for_retry,started,failed", W.events(t.name, flaky))
      for _, id in ipairs(oks) do assert.are.equal("deferred,started,succeeded", W.events(t.name, id)) end
      assert.are.equal(0, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'doing' OR worker_id IS NOT NULL"))
    end)

    it("lean mode writes no event rows for fetches and outcomes, on tarry's triggers only", function()
      t.app:task("ok", function() end)
      t.app:task("later", { retry = { max_attempts = 1, wait = 3600 } }, function() error("no") end)
      local ok = { t.app.tasks.ok:defer{}, t.app.tasks.ok:defer{} }
      local later = t.app.tasks.later:defer{}
      W.run(t.app, { concurrency = 1, lean = true, log_level = "error", log_stream = io.tmpfile() })
      for _, id in ipairs(ok) do
        assert.are.same({ "succeeded", 1 }, W.state(t.name, id))
        assert.are.equal(schema.lean_skips and "deferred" or "deferred,started,succeeded", W.events(t.name, id))
      end
      assert.are.same({ "todo", 1 }, W.state(t.name, later))
      assert.are.equal(schema.lean_skips and "deferred"
        or schema.retried_later or "deferred,started,scheduled,deferred_for_retry", W.events(t.name, later))
      local again = t.app.tasks.ok:defer{}               -- the flag lasted only for the worker's statements
      db.psql(t.name, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = " .. again)
      assert.are.equal("deferred,started", W.events(t.name, again))
    end)

    it("a graceful stop puts the prefetched jobs back to todo and runs those that cannot go back", function()
      local app, gate = gate_app(t.name)
      for _ = 1, 5 do defer(t.name, "quick") end
      local held = defer(t.name, "gate")
      local qlocked = defer(t.name, "quick", { queueing_lock = "Q" })
      for _ = 1, 20 do defer(t.name, "quick") end
      local w = proc.start("worker --app " .. app .. " -c 1 --prefetch 8 --prefetch-hold 600 --log-level debug")
      -- The gate job runs (the worker logged its start: a prefetched gate job is doing too, and
      -- a stop before it starts would put it back); the worker holds prefetched jobs besides it
      -- (doing, with its id): qlocked and at least one more. Only 2 are waited for: how many the
      -- worker takes ahead follows the pace of its recent jobs (PREFETCH_WINDOW), which a loaded
      -- or sanitized run makes slow.
      proc.until_true_while({ w }, function()
        return w:count(" job " .. held .. " gate started$") == 1
          and W.count(t.name, "FROM procrastinate_jobs WHERE status = 'doing' AND id > " .. held) >= 2
      end, 60, "the worker to prefetch jobs while the gate job runs")
      assert.are.same({ "doing", 0 }, W.state(t.name, qlocked))
      defer(t.name, "quick", { queueing_lock = "Q" })      -- qlocked cannot go back to todo now
      w:signal("TERM")
      -- the release's own line: "could not put back ..." (the release failed) must not pass for it
      w:wait_for("put back %d+ prefetched job%(s%), %d+ to run before stopping", 1, 60)
      assert(io.open(gate, "w")):close()
      assert.are.equal(0, w:wait(60), w:output())
      os.remove(gate)
      assert.are.same({ "succeeded", 1 }, W.state(t.name, held))
      assert.are.same({ "succeeded", 1 }, W.state(t.name, qlocked), w:output())   -- run before the worker stopped
      assert.are.equal(0, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'doing' OR worker_id IS NOT NULL"))
      -- Every job fetched and not run is todo again, as it was: attempts 0, its fetch in the event log.
      local returned = W.count(t.name, "FROM procrastinate_jobs AS j WHERE status = 'todo' AND EXISTS (SELECT 1 "
        .. "FROM procrastinate_events AS e WHERE e.job_id = j.id AND e.type = 'started')")
      assert.is_true(returned >= 1, tostring(returned))
      assert.are.equal(returned, W.count(t.name, "FROM procrastinate_jobs AS j WHERE status = 'todo' AND attempts = 0 "
        .. "AND (SELECT string_agg(type::text, ',' ORDER BY id) FROM procrastinate_events AS e WHERE e.job_id = j.id) "
        .. "= 'deferred,started,deferred_for_retry'"))
      assert.are.equal(28, W.count(t.name, "FROM procrastinate_jobs WHERE status IN ('todo', 'succeeded')"))
    end)
  end)
end

describe("a prefetched job whose abort is requested", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("ends aborted without running", function()
    local ran = os.tmpname()
    local app, gate = gate_app(name, string.format('function(_, ctx) local f = io.open(%q, "a"); f:write(ctx.job.id, "\\n"); f:close() end', ran))
    for _ = 1, 5 do defer(name, "quick") end
    local held = defer(name, "gate")
    local victim = defer(name, "quick")
    local w = proc.start("worker --app " .. app .. " -c 1 --prefetch 8 --prefetch-hold 600 --log-level info")
    proc.until_true_while({ w }, function() return W.state(name, victim)[1] == "doing" end, 60,
      "the worker to prefetch the job after the gate job")
    assert.are.same({ "doing", 0 }, W.state(name, held))
    db.psql(name, "SELECT procrastinate_cancel_job_v1(" .. victim .. ", true, false)")
    proc.until_true_while({ w }, function() return W.state(name, victim)[1] == "aborted" end, 60,
      "the queued job to end aborted")
    assert(io.open(gate, "w")):close()
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
    os.remove(gate)
    assert.are.equal("deferred,started,abort_requested,aborted", W.events(name, victim))
    assert.are.same({ "succeeded", 1 }, W.state(name, held))
    local runs = proc.read(ran) or ""
    os.remove(ran)
    assert.is_nil(runs:find("^" .. victim .. "\n") or runs:find("\n" .. victim .. "\n"), runs)
    assert.are.equal(5, select(2, runs:gsub("\n", "")))
  end)
end)

describe("prefetched jobs behind a long job", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("go back to todo after --prefetch-hold seconds, and another worker runs them", function()
    local app, gate = gate_app(name)
    for _ = 1, 5 do defer(name, "quick") end
    local held = defer(name, "gate")
    for _ = 1, 10 do defer(name, "quick") end
    local w = proc.start("worker --app " .. app .. " -c 1 --prefetch 8 --prefetch-hold 0.2 --log-level debug --name w1")
    w:wait_for("every slot runs a long job", 1, 60)
    assert.are.same({ "doing", 0 }, W.state(name, held))
    assert.are.equal(0, W.count(name, "FROM procrastinate_jobs WHERE status = 'doing' AND id <> " .. held))
    local other = proc.start("worker --app " .. app .. " --one-shot -c 1 --name w2 --log-level warning")
    assert.are.equal(0, other:wait(60), other:output())
    assert.are.equal(15, W.count(name, "FROM procrastinate_jobs WHERE status = 'succeeded' AND attempts = 1"))
    assert(io.open(gate, "w")):close()
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
    os.remove(gate)
    assert.are.same({ "succeeded", 1 }, W.state(name, held))
  end)
end)

describe("tarry worker processes with prefetch on one queue", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("run each of 3,000 jobs exactly once, every process taking some", function()
    exactly_once.run(name, { jobs = 3000, options = "-c 2 --prefetch 32", priority = "g % 5",
      lock = "CASE WHEN g % 7 = 0 THEN 'L' || (g % 3) END" })
  end)
end)

describe("a worker whose outcomes cannot be written for a while", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function()
    proc.kill_all()
    db.psql(name, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tarry_spec_lock'")
    db.drop(name)
  end)

  -- A psql in the background that keeps job `id`'s row locked until its backend is terminated.
  local function lock_row(id)
    assert(os.execute(string.format("PGAPPNAME=tarry_spec_lock psql -X -q -d %s -c 'SELECT id FROM procrastinate_jobs "
      .. "WHERE id = %d FOR UPDATE; SELECT pg_sleep(600)' >/dev/null 2>&1 &", name, id)))
    proc.until_true(function()
      return db.value(name, "SELECT count(*) FROM (SELECT id FROM procrastinate_jobs WHERE id = " .. id
        .. " FOR UPDATE SKIP LOCKED) AS free") == "0"
    end, 60, "the row lock")
  end

  it("stops fetching at twice its prefetch in jobs doing, and goes on once they are written", function()
    local app, gate = gate_app(name)
    local held = defer(name, "gate")
    for _ = 1, 200 do defer(name, "quick") end
    local w = proc.start("worker --app " .. app .. " --one-shot -c 1 --prefetch 8 --log-level debug")
    proc.until_true_while({ w }, function() return W.state(name, held)[1] == "doing" end, 60, "the gate job to start")
    -- Recording the gate job's outcome waits for this lock, and so do the outcomes of the jobs
    -- that end meanwhile.
    lock_row(held)
    assert(io.open(gate, "w")):close()
    w:wait_for("no fetch until their outcomes are written", 1, 60)
    -- 2 * max(prefetch 8, concurrency 1): what the worker holds, its ended jobs included.
    assert.are.equal(16, W.count(name, "FROM procrastinate_jobs WHERE status = 'doing'"), w:output())
    assert.are.equal(0, W.count(name, "FROM procrastinate_jobs WHERE status = 'succeeded'"), w:output())
    db.psql(name, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tarry_spec_lock'")
    assert.are.equal(0, w:wait(120), w:output())
    os.remove(gate)
    assert.are.equal(201, W.count(name, "FROM procrastinate_jobs WHERE status = 'succeeded' AND attempts = 1"))
  end)
end)
