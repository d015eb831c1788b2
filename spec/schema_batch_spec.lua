-- tarry's batch functions tarry_fetch_jobs_v1 and tarry_finish_jobs_v1 (end of lua/tarry/schema.sql)
-- against the single-job functions they stand for (PROTOCOL.md §4.3, §4.4, §4.6, §5):
--   * tarry_fetch_jobs_v1(q, w, n) must act like calling procrastinate_fetch_job_v2(q, w) until it
--     returns the all-NULL row or n jobs were taken;
--   * tarry_finish_jobs_v1(ids, statuses, deletes, retry_ats) like calling, element by element in
--     array order, procrastinate_finish_job_v1(id, status, delete) (retry_at NULL) or
--     procrastinate_retry_job_v2(id, to_timestamp(retry_at), NULL, NULL, NULL) — in one transaction,
--     so a failing element rolls the whole batch back — with one difference on purpose: a job the
--     batch takes out of `doing` loses its worker_id (the single functions leave it; see schema.sql).
--     The reference below therefore clears worker_id on the batch's doing rows before its single
--     calls: in a batch that succeeds every doing row leaves doing, and such an UPDATE of a doing
--     row writes no event, so the reference stays the single calls in everything else.
-- Every scenario runs on four databases: the single-job calls (the reference, written below as
-- spec_fetch_seq / spec_finish_seq) and the batch function, each on tarry's statement-level triggers
-- and on Procrastinate's row-level ones (spec/fixtures/procrastinate_triggers.sql).  The four must
-- agree on the outcome of every step (rows returned, or SQLSTATE, constraint and message), on the
-- job rows, on the periodic markers and on the events of each job (type and order per job; `at`
-- where it is deterministic: a scheduled event's planned time).  Ids are the same everywhere because
-- every scenario starts from emptied tables with restarted sequences.
local db = require("support.db")

local FUTURE, PAST = "2100-01-01 00:00:00+00", "2001-02-03 04:05:06+00"
local FUTURE_EPOCH, PAST_EPOCH = 4102444800, 981173106
local END_STATUS = 'P0001||End status should be either "succeeded", "failed" or "aborted" (job id: %s)'
local NOT_FOUND = 'P0001||Job was not found or not in "doing" or "todo" status (job id: %s)'
local BAD_RETRY = "P0001||Job was not found or has an invalid status to retry (job id: %s)"
local CHECK_ABORT = "23514|check_not_todo_abort_requested|new row for relation \"procrastinate_jobs\" "
  .. "violates check constraint \"check_not_todo_abort_requested\""
local QLOCK_DUP = "23505|procrastinate_jobs_queueing_lock_idx_v1|duplicate key value violates unique "
  .. "constraint \"procrastinate_jobs_queueing_lock_idx_v1\""

-- SQL literal of a Lua value (nil -> NULL)
local function lit(v)
  if v == nil then return "NULL" end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  return "'" .. tostring(v):gsub("'", "''") .. "'"
end

-- Everything the functions can change, as comparable strings (one query: psql runs are the slow part).
-- Events per job, in event id order; a scheduled event's `at` is its planned time, any other must be
-- the transaction time (our planned times are 2001 and 2100).
local SNAPSHOT = [[
SELECT 1 AS kind, id AS k1, 0::bigint AS k2, concat_ws('|', id, status, attempts, coalesce(worker_id::text, '-'),
    coalesce(extract(epoch FROM scheduled_at)::float8::text, '-'), abort_requested, queue_name, priority,
    coalesce(lock, '-'), coalesce(queueing_lock, '-'))
  FROM procrastinate_jobs
UNION ALL
SELECT 2, job_id, id, job_id || ':' || type::text ||
    CASE WHEN type = 'scheduled' THEN '@' || extract(epoch FROM at)::float8::text
         WHEN at > '2020-01-01' AND at < '2050-01-01' THEN '' ELSE '@?' || at::text END
  FROM procrastinate_events
UNION ALL
SELECT 3, id, 0, concat_ws('|', id, defer_timestamp, coalesce(job_id::text, '-'))
  FROM procrastinate_periodic_defers
ORDER BY 1, 2, 3]]

-- Installed in every database (the same on all four, so ids and sequences stay in step).
local HELPERS = [[
CREATE FUNCTION spec_try(stmt text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE v text; state text; cons text; msg text;
BEGIN
  EXECUTE stmt INTO v;
  RETURN 'ok ' || coalesce(v, '-');
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, cons = CONSTRAINT_NAME, msg = MESSAGE_TEXT;
  RETURN state || '|' || coalesce(cons, '') || '|' || msg;
END $f$;

-- The reference for tarry_fetch_jobs_v1: procrastinate_fetch_job_v2 until nothing or max_jobs.
CREATE FUNCTION spec_fetch_seq(target_queue_names varchar[], p_worker_id bigint, max_jobs integer)
RETURNS SETOF procrastinate_jobs LANGUAGE plpgsql AS $f$
DECLARE job procrastinate_jobs; taken integer := 0;
BEGIN
  WHILE max_jobs IS NULL OR taken < max_jobs LOOP
    SELECT * INTO job FROM procrastinate_fetch_job_v2(target_queue_names, p_worker_id);
    EXIT WHEN job.id IS NULL;
    taken := taken + 1;
    RETURN NEXT job;
  END LOOP;
END $f$;

-- The reference for tarry_finish_jobs_v1: the single-job functions, element by element (after
-- taking worker_id off the doing rows: the one difference, see the top of this file).
CREATE FUNCTION spec_finish_seq(job_ids bigint[], end_statuses procrastinate_job_status[],
                                delete_jobs boolean[], retry_at_epochs double precision[])
RETURNS integer LANGUAGE plpgsql AS $f$
DECLARE o record; n integer := 0;
BEGIN
  UPDATE procrastinate_jobs SET worker_id = NULL WHERE id = ANY (job_ids) AND status = 'doing';
  FOR o IN SELECT * FROM unnest(job_ids, end_statuses, delete_jobs, retry_at_epochs) WITH ORDINALITY
                         AS u(id, status, del, retry_at, position)
           ORDER BY u.position LOOP
    IF o.retry_at IS NULL THEN
      PERFORM procrastinate_finish_job_v1(o.id, o.status, o.del);
    ELSE
      PERFORM procrastinate_retry_job_v2(o.id, to_timestamp(o.retry_at), NULL, NULL, NULL);
    END IF;
    n := n + 1;
  END LOOP;
  RETURN n;
END $f$;

-- One psql run per step (they are the slow part): the setup script and/or the statement (its outcome
-- comes first, kind 0), then the snapshot of what it left.
CREATE FUNCTION spec_run(setup text, stmt text)
RETURNS TABLE(o_kind integer, o_k1 bigint, o_k2 bigint, o_line text) LANGUAGE plpgsql AS $f$
BEGIN
  IF setup IS NOT NULL THEN EXECUTE setup; END IF;
  IF stmt IS NOT NULL THEN RETURN QUERY SELECT 0, 0::bigint, 0::bigint, spec_try(stmt); END IF;
  RETURN QUERY ]] .. SNAPSHOT .. [[;
END $f$;
]]

local RESET = [[TRUNCATE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
  procrastinate_workers RESTART IDENTITY;
INSERT INTO procrastinate_workers DEFAULT VALUES; INSERT INTO procrastinate_workers DEFAULT VALUES;]]

-- jobs: list of {q=queue, p=priority, lock=, qlock=, status=, at=scheduled_at, attempts=, abort=,
-- worker=}; ids are 1, 2, ... in list order.  markers: list of job ids, one periodic marker each.
local function setup_sql(sc)
  local parts = { RESET }
  if sc.jobs and #sc.jobs > 0 then
    local rows = {}
    for _, j in ipairs(sc.jobs) do
      rows[#rows + 1] = string.format("(%s, 'task', %d, %s, %s, %s, %s::timestamptz, %d, %s, %s)",
        lit(j.q or "a"), j.p or 0, lit(j.lock), lit(j.qlock), lit(j.status or "todo"), lit(j.at),
        j.attempts or 0, tostring(j.abort or false), lit(j.worker))
    end
    parts[#parts + 1] = "INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, queueing_lock, "
      .. "status, scheduled_at, attempts, abort_requested, worker_id) VALUES " .. table.concat(rows, ", ") .. ";"
  end
  for i, job_id in ipairs(sc.markers or {}) do
    parts[#parts + 1] = string.format("INSERT INTO procrastinate_periodic_defers (task_name, periodic_id, "
      .. "defer_timestamp, job_id) VALUES ('task', 'p', %d, %d);", i, job_id)
  end
  return table.concat(parts, "\n")
end

-- The statement of one step, for the single-job reference or for the batch function.
-- fetch step: {fetch = SQL literal of the queue array, worker = SQL literal (default 1), max = n}
-- finish step: {finish = {{id, status, delete = bool, retry = epoch}, ...}}
local function step_sql(step, side)
  if step.fetch then
    local fn = side == "single" and "spec_fetch_seq" or "tarry_fetch_jobs_v1"
    return string.format("SELECT string_agg(concat_ws(':', r.id, r.status, coalesce(r.worker_id::text, '-'), "
      .. "r.attempts), ',' ORDER BY r.ordinality) FROM %s(%s, %s, %s) WITH ORDINALITY AS r",
      fn, step.fetch, tostring(step.worker or 1), step.max == nil and "NULL" or tostring(step.max))
  end
  local ids, statuses, deletes, retries = {}, {}, {}, {}
  for i, item in ipairs(step.finish) do
    ids[i], statuses[i] = lit(item[1]), lit(item[2])
    deletes[i] = item.delete == "null" and "NULL" or lit(item.delete or false)
    retries[i] = lit(item.retry)
  end
  local fn = side == "single" and "spec_finish_seq" or "tarry_finish_jobs_v1"
  return string.format("SELECT %s(ARRAY[%s]::bigint[], ARRAY[%s]::procrastinate_job_status[], "
    .. "ARRAY[%s]::boolean[], ARRAY[%s]::float8[])", fn, table.concat(ids, ","), table.concat(statuses, ","),
    table.concat(deletes, ","), table.concat(retries, ","))
end

-- spec_run's rows -> the snapshot, with the statement's outcome (if any) in s.outcome.
local function parse_snapshot(rows)
  local s = { jobs = {}, job = {}, events = {}, events_of = {}, markers = {} }
  for _, r in ipairs(rows) do
    local line = r[4]
    if r[1] == "0" then
      s.outcome = line
    elseif r[1] == "1" then
      s.jobs[#s.jobs + 1] = line
      local f = {}
      for field in (line .. "|"):gmatch("([^|]*)|") do f[#f + 1] = field end
      s.job[math.tointeger(f[1])] = { status = f[2], attempts = math.tointeger(f[3]), worker = f[4],
        scheduled = f[5], abort = f[6] == "t" }
    elseif r[1] == "2" then
      local id = math.tointeger(r[2])
      s.events[#s.events + 1] = line
      s.events_of[id] = s.events_of[id] or {}
      table.insert(s.events_of[id], (line:gsub("^%d+:", "")))
    else
      s.markers[#s.markers + 1] = line
    end
  end
  return s
end

-- The SQL of spec_run(setup, stmt) (either may be nil); `prefix` goes before the SELECT (a SET).
local function spec_run_sql(setup, stmt, prefix)
  return (prefix or "") .. "SELECT * FROM spec_run(" .. lit(setup) .. ", " .. lit(stmt) .. ")"
end

-- Runs calls = {{name, sql}, ...} at the same time, one psql each (the four databases of a scenario
-- are independent); returns their rows, as db.rows would, in the order of `calls`.
local function parallel_rows(calls)
  local running = {}
  for i, call in ipairs(calls) do
    local errfile = os.tmpname()
    running[i] = { errfile = errfile, pipe = assert(io.popen(string.format(
      "psql -X -q -At -F '\t' -v ON_ERROR_STOP=1 -d %s -c %s 2>%s",
      db.shell_quote(call[1]), db.shell_quote(call[2]), errfile), "r")) }
  end
  local results, failure = {}, nil
  for i, r in ipairs(running) do
    local out = r.pipe:read("a")
    local ok = r.pipe:close()
    local f = io.open(r.errfile); local err = f and f:read("a") or ""; if f then f:close() end
    os.remove(r.errfile)
    if not ok then failure = failure or ("psql failed: " .. err .. "\nSQL: " .. calls[i][2]) end
    local rows = {}
    for line in out:gmatch("[^\n]+") do
      local row = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do row[#row + 1] = field end
      rows[#rows + 1] = row
    end
    results[i] = rows
  end
  if failure then error(failure, 2) end
  return results
end

local function snapshot(name) return parse_snapshot(db.rows(name, spec_run_sql())) end

-- A psql session, fed through a pipe, that holds FOR UPDATE row locks on some jobs until released.
local function hold_row_locks(name, ids)
  local list = table.concat(ids, ",")
  local locker = assert(io.popen("psql -X -q -d " .. db.shell_quote(name) .. " >/dev/null 2>&1", "w"))
  locker:write("BEGIN; SELECT id FROM procrastinate_jobs WHERE id IN (" .. list .. ") FOR UPDATE;\n")
  locker:flush()
  -- Locked, on the database's own word, when SKIP LOCKED no longer sees any of them.
  local probes = 0
  repeat
    probes = probes + 1
    assert(probes < 5000, "the locker never took its row locks")
  until db.value(name, "SELECT count(*) FROM (SELECT id FROM procrastinate_jobs WHERE id IN (" .. list
    .. ") FOR UPDATE SKIP LOCKED) AS s") == "0"
  return function()
    locker:write("ROLLBACK;\n\\q\n")
    locker:close()
  end
end

-- Four databases: {single, batch} x {tarry's triggers, Procrastinate's row-level triggers}.
local function quartet()
  local q = { dbs = {} }
  function q.open()
    for _, flavour in ipairs({ "tarry", "procrastinate" }) do
      for _, side in ipairs({ "single", "batch" }) do
        local name = db.fresh()
        q.dbs[#q.dbs + 1] = { name = name, flavour = flavour, side = side }
        if flavour == "procrastinate" then
          db.apply_schema_file(name, "spec/fixtures/procrastinate_triggers.sql")
        end
        db.psql(name, HELPERS)
      end
    end
  end
  function q.close() for _, d in ipairs(q.dbs) do db.drop(d.name) end end
  function q.batch_db() return q.dbs[2].name end

  -- Runs scenario sc = {jobs=, markers=, steps={...}} on the four databases, checks that they agree
  -- and that a step that failed changed nothing; returns the reference run (tarry triggers, single
  -- calls): {outcomes = {...}, before = snapshot, after = snapshot}.
  function q.run(sc)
    local runs, calls = {}, {}
    for i, d in ipairs(q.dbs) do
      runs[i] = { label = d.flavour .. "/" .. d.side, outcomes = {} }
      calls[i] = { d.name, spec_run_sql(setup_sql(sc)) }
    end
    for i, rows in ipairs(parallel_rows(calls)) do
      runs[i].before = parse_snapshot(rows)
      runs[i].after = runs[i].before
    end
    for s_i, step in ipairs(sc.steps) do
      local releases = {}
      for i, d in ipairs(q.dbs) do
        if step.hold then releases[#releases + 1] = hold_row_locks(d.name, step.hold) end
        -- lock_timeout only turns a wait (a bug: rows must be skipped) into an error instead of a hang
        calls[i] = { d.name, spec_run_sql(nil, step_sql(step, d.side), step.hold and "SET lock_timeout = '1s'; ") }
      end
      local ok, results = pcall(parallel_rows, calls)
      for _, release in ipairs(releases) do release() end
      assert(ok, results)
      for i, rows in ipairs(results) do
        local run, after = runs[i], parse_snapshot(rows)
        local out = assert(after.outcome)
        run.outcomes[s_i] = out
        if not out:match("^ok ") then
          -- all or nothing: a failing step leaves no trace
          assert.same(run.after.jobs, after.jobs, run.label .. " step " .. s_i .. " left job changes")
          assert.same(run.after.events, after.events, run.label .. " step " .. s_i .. " left events")
          assert.same(run.after.markers, after.markers, run.label .. " step " .. s_i .. " left marker changes")
        end
        run.after = after
      end
    end
    local ref = runs[1]
    for i = 2, #runs do
      local r = runs[i]
      assert.same(ref.outcomes, r.outcomes, r.label .. ": outcomes differ from " .. ref.label)
      assert.same(ref.after.jobs, r.after.jobs, r.label .. ": job rows differ from " .. ref.label)
      assert.same(ref.after.events, r.after.events, r.label .. ": events differ from " .. ref.label)
      assert.same(ref.after.markers, r.after.markers, r.label .. ": markers differ from " .. ref.label)
    end
    return ref
  end
  return q
end

local function with_quartet(body)
  return function()
    local q = quartet()
    setup(q.open)
    teardown(q.close)
    body(q)
  end
end

describe("test databases", with_quartet(function(q)
  it("have tarry's statement-level triggers, or Procrastinate's seven row-level ones", function()
    for _, d in ipairs(q.dbs) do
      local triggers = db.value(d.name, [[SELECT string_agg(tgname || ':' || CASE WHEN tgtype & 1 = 1
          THEN 'row' ELSE 'statement' END, ',' ORDER BY tgname)
        FROM pg_trigger WHERE tgrelid = 'procrastinate_jobs'::regclass AND NOT tgisinternal]])
      if d.flavour == "tarry" then
        assert.equal("tarry_jobs_insert_events:statement,tarry_jobs_note_abort_requested_set:statement,"
          .. "tarry_jobs_unlink_periodic_defers:row,tarry_jobs_update_events:statement", triggers)
      else
        local n = 0
        for trigger in triggers:gmatch("[^,]+") do
          n = n + 1
          assert.matches("^procrastinate_.*:row$", trigger)
        end
        assert.equal(7, n)
      end
    end
  end)
end))

describe("tarry_fetch_jobs_v1", with_quartet(function(q)
  it("takes jobs by priority DESC then id ASC and marks them doing for the worker, a started event each", function()
    local r = q.run({ jobs = { { p = 0 }, { p = 5 }, { p = 5, q = "b" }, { p = -1 }, { p = 10, q = "c" } },
      steps = { { fetch = "NULL", worker = 2, max = 10 } } })
    assert.same({ "ok 5:doing:2:0,2:doing:2:0,3:doing:2:0,1:doing:2:0,4:doing:2:0" }, r.outcomes)
    for id = 1, 5 do
      assert.equal("doing", r.after.job[id].status)
      assert.equal("2", r.after.job[id].worker)
      assert.same({ "deferred", "started" }, r.after.events_of[id])
    end
  end)

  it("leaves attempts, scheduled_at and abort_requested alone, and takes a NULL worker", function()
    local r = q.run({ jobs = { { attempts = 3, at = PAST } }, steps = { { fetch = "NULL", worker = "NULL", max = 1 } } })
    assert.same({ "ok 1:doing:-:3" }, r.outcomes)
    assert.same({ status = "doing", attempts = 3, worker = "-", scheduled = tostring(PAST_EPOCH), abort = false },
      r.after.job[1])
    assert.same({ "scheduled@" .. PAST_EPOCH, "deferred", "started" }, r.after.events_of[1])
  end)

  it("filters queues: NULL is any queue, '{}' and an unknown queue match nothing", function()
    local jobs = { { q = "a" }, { q = "b" }, { q = "c", p = 1 }, { q = "a", p = 2 } }
    assert.same({ "ok 4:doing:1:0,3:doing:1:0,1:doing:1:0,2:doing:1:0" },
      q.run({ jobs = jobs, steps = { { fetch = "NULL", max = 10 } } }).outcomes)
    assert.same({ "ok -" }, q.run({ jobs = jobs, steps = { { fetch = "'{}'", max = 10 } } }).outcomes)
    assert.same({ "ok -" }, q.run({ jobs = jobs, steps = { { fetch = "'{zzz}'", max = 10 } } }).outcomes)
    assert.same({ "ok 4:doing:1:0,1:doing:1:0" }, q.run({ jobs = jobs, steps = { { fetch = "'{a}'", max = 10 } } }).outcomes)
    local r = q.run({ jobs = jobs, steps = { { fetch = "'{b,c,zzz}'", max = 10 } } })
    assert.same({ "ok 3:doing:1:0,2:doing:1:0" }, r.outcomes)
    assert.equal("todo", r.after.job[1].status)
    assert.same({ "deferred" }, r.after.events_of[1])
  end)

  it("skips jobs scheduled in the future and takes those scheduled in the past", function()
    local r = q.run({ jobs = { { at = FUTURE, p = 9 }, { at = PAST }, {} }, steps = { { fetch = "NULL", max = 10 } } })
    assert.same({ "ok 2:doing:1:0,3:doing:1:0" }, r.outcomes)
    assert.equal("todo", r.after.job[1].status)
    assert.same({ "scheduled@" .. FUTURE_EPOCH, "deferred" }, r.after.events_of[1])
  end)

  it("takes only the first job of a lock (priorities 0, 5, 5 over two queues); the doing one then blocks the rest", function()
    local r = q.run({
      jobs = { { lock = "L", p = 0 }, { lock = "L", p = 5 }, { lock = "L", p = 5, q = "b" }, { q = "b" } },
      steps = { { fetch = "NULL", max = 10 }, { fetch = "NULL", max = 10 }, { fetch = "'{b}'", max = 10 } } })
    assert.same({ "ok 2:doing:1:0,4:doing:1:0", "ok -", "ok -" }, r.outcomes)
    assert.equal("todo", r.after.job[1].status)
    assert.equal("todo", r.after.job[3].status)
  end)

  it("lets a same-lock job ranked first block the others even when it is in a queue not asked for", function()
    local r = q.run({ jobs = { { lock = "L", p = 5 }, { lock = "L", p = 5, q = "b" }, { lock = "L", p = 9, q = "c" } },
      steps = { { fetch = "'{a,b}'", max = 10 }, { fetch = "'{c}'", max = 10 }, { fetch = "'{a,b}'", max = 10 } } })
    assert.same({ "ok -", "ok 3:doing:1:0", "ok -" }, r.outcomes)
  end)

  it("lets a doing same-lock job block its lock", function()
    local r = q.run({ jobs = { { lock = "L", status = "doing", worker = 2 }, { lock = "L", p = 9 }, { lock = "M" } },
      steps = { { fetch = "NULL", max = 10 } } })
    assert.same({ "ok 3:doing:1:0" }, r.outcomes)
    assert.equal("todo", r.after.job[2].status)
  end)

  it("lets a future-scheduled higher-priority same-lock job block them all", function()
    local r = q.run({ jobs = { { lock = "L", p = 9, at = FUTURE }, { lock = "L" }, { lock = "L", q = "b" }, { q = "b" } },
      steps = { { fetch = "NULL", max = 10 } } })
    assert.same({ "ok 4:doing:1:0" }, r.outcomes)
  end)

  it("takes at most max_jobs jobs, and what is left on the next call", function()
    local r = q.run({ jobs = { {}, {}, { p = 1 }, {}, {} }, steps = {
      { fetch = "NULL", max = 2 }, { fetch = "NULL", max = 0 }, { fetch = "NULL", max = 10 }, { fetch = "NULL", max = 10 } } })
    assert.same({ "ok 3:doing:1:0,1:doing:1:0", "ok -", "ok 2:doing:1:0,4:doing:1:0,5:doing:1:0", "ok -" }, r.outcomes)
    r = q.run({ jobs = { {}, {}, {} }, steps = { { fetch = "NULL", max = 3 }, { fetch = "NULL" } } })
    assert.same({ "ok 1:doing:1:0,2:doing:1:0,3:doing:1:0", "ok -" }, r.outcomes)
    r = q.run({ jobs = { {}, {}, {} }, steps = { { fetch = "NULL" } } })  -- NULL max_jobs: no limit
    assert.same({ "ok 1:doing:1:0,2:doing:1:0,3:doing:1:0" }, r.outcomes)
  end)

  it("returns zero rows when nothing is eligible (procrastinate_fetch_job_v2 returns one all-NULL row)", function()
    q.run({ jobs = { { at = FUTURE }, { status = "doing" }, { status = "failed" } }, steps = { { fetch = "NULL", max = 5 } } })
    local b = q.batch_db()
    for _, queues in ipairs({ "NULL", "'{}'", "'{a}'", "'{zzz}'" }) do
      assert.equal("0", db.value(b, "SELECT count(*) FROM tarry_fetch_jobs_v1(" .. queues .. ", 1, 5)"))
      assert.same({ { "1", "t" } },
        db.rows(b, "SELECT count(*), bool_and(id IS NULL) FROM procrastinate_fetch_job_v2(" .. queues .. ", 1)"))
    end
  end)

  it("returns whole procrastinate_jobs rows, as they are after the update", function()
    q.run({ jobs = { { p = 3, lock = "x", qlock = "y", attempts = 2 } }, steps = {} })
    assert.equal("1|a|task|3|x|y|{}|doing||2|f|1",
      table.concat(db.rows(q.batch_db(), "SELECT * FROM tarry_fetch_jobs_v1(NULL, 1, 1)")[1], "|"))
  end)

  it("fails with 23503 for a worker that does not exist, and takes nothing", function()
    local r = q.run({ jobs = { {}, {} }, steps = { { fetch = "NULL", worker = 99, max = 2 } } })
    assert.matches("^23503|procrastinate_jobs_worker_id_fkey|", r.outcomes[1])
  end)
end))

describe("tarry_fetch_jobs_v1 and row locks held by another transaction", with_quartet(function(q)
  it("skips locked rows without waiting; a locked same-lock job still blocks its lock", function()
    local r = q.run({
      jobs = { { p = 9 }, { p = 5, lock = "L" }, { p = 1, lock = "L" }, {}, { p = 2 } },
      steps = {
        { fetch = "NULL", max = 10, hold = { 1, 2 } },  -- 1 and 2 locked: 3 is blocked by 2
        { fetch = "NULL", max = 10 },                   -- released: 1 and 2
        { fetch = "NULL", max = 10 },                   -- 3 blocked by the doing 2
      } })
    assert.same({ "ok 5:doing:1:0,4:doing:1:0", "ok 1:doing:1:0,2:doing:1:0", "ok -" }, r.outcomes)
    assert.equal("todo", r.after.job[3].status)
  end)

  it("skips a locked row and still fills max_jobs from the rows after it", function()
    local r = q.run({ jobs = { {}, {}, {}, {} }, steps = { { fetch = "NULL", max = 2, hold = { 1, 3 } } } })
    assert.same({ "ok 2:doing:1:0,4:doing:1:0" }, r.outcomes)
  end)
end))

describe("tarry_finish_jobs_v1: finishing", with_quartet(function(q)
  it("finishes doing jobs: succeeded, failed, aborted; attempts +1, abort flag cleared, worker_id cleared", function()
    local r = q.run({
      jobs = { { status = "doing", worker = 1 }, { status = "doing", attempts = 2, worker = 2 },
               { status = "doing", abort = true, worker = 1, at = PAST } },
      steps = { { finish = { { 1, "succeeded" }, { 2, "failed" }, { 3, "aborted" } } } } })
    assert.same({ "ok 3" }, r.outcomes)
    assert.same({ status = "succeeded", attempts = 1, worker = "-", scheduled = "-", abort = false }, r.after.job[1])
    assert.same({ status = "failed", attempts = 3, worker = "-", scheduled = "-", abort = false }, r.after.job[2])
    assert.same({ status = "aborted", attempts = 1, worker = "-", scheduled = tostring(PAST_EPOCH), abort = false },
      r.after.job[3])
    assert.same({ "succeeded" }, r.after.events_of[1])
    assert.same({ "failed" }, r.after.events_of[2])
    assert.same({ "aborted" }, r.after.events_of[3])
  end)

  it("finishes todo jobs: attempts unchanged, cancelled for succeeded and failed, no event for aborted", function()
    local r = q.run({ jobs = { { attempts = 1 }, {}, { at = FUTURE } },
      steps = { { finish = { { 3, "aborted" }, { 1, "succeeded" }, { 2, "failed" } } } } })
    assert.same({ "ok 3" }, r.outcomes)
    assert.same({ status = "succeeded", attempts = 1, worker = "-", scheduled = "-", abort = false }, r.after.job[1])
    assert.equal("failed", r.after.job[2].status)
    assert.same({ status = "aborted", attempts = 0, worker = "-", scheduled = tostring(FUTURE_EPOCH), abort = false },
      r.after.job[3])
    assert.same({ "deferred", "cancelled" }, r.after.events_of[1])
    assert.same({ "deferred", "cancelled" }, r.after.events_of[2])
    assert.same({ "scheduled@" .. FUTURE_EPOCH, "deferred" }, r.after.events_of[3])
  end)

  it("deletes with delete_job: row and events gone, periodic markers unlinked", function()
    local r = q.run({ jobs = { { status = "doing" }, {}, { status = "doing" }, {} }, markers = { 1, 2, 3 },
      steps = { { finish = { { 1, "succeeded", delete = true }, { 2, "failed", delete = true },
                             { 3, "aborted", delete = false } } } } })
    assert.same({ "ok 3" }, r.outcomes)
    assert.is_nil(r.after.job[1])
    assert.is_nil(r.after.job[2])
    assert.is_nil(r.after.events_of[2])
    assert.same({ "1|1|-", "2|2|-", "3|3|3" }, r.after.markers)
    assert.same({ "3|aborted|1|-|-|f|a|0|-|-", "4|todo|0|-|-|f|a|0|-|-" }, r.after.jobs)
  end)

  it("treats a NULL delete_job as false, like the single function", function()
    local r = q.run({ jobs = { { status = "doing" }, {} },
      steps = { { finish = { { 1, "succeeded", delete = "null" }, { 2, "failed", delete = "null" } } } } })
    assert.same({ "ok 2" }, r.outcomes)
    assert.equal("succeeded", r.after.job[1].status)
    assert.equal("failed", r.after.job[2].status)
  end)

  it("retries doing jobs: todo, attempts +1, scheduled_at = retry_at, scheduled then deferred_for_retry", function()
    local r = q.run({ jobs = { { status = "doing", worker = 1, attempts = 1 }, { status = "doing", at = PAST } },
      steps = { { finish = { { 1, "failed", retry = FUTURE_EPOCH }, { 2, nil, retry = FUTURE_EPOCH + 0.25 } } } } })
    assert.same({ "ok 2" }, r.outcomes)
    assert.same({ status = "todo", attempts = 2, worker = "-", scheduled = tostring(FUTURE_EPOCH), abort = false },
      r.after.job[1])
    assert.equal(tostring(FUTURE_EPOCH + 0.25), r.after.job[2].scheduled)
    assert.same({ "scheduled@" .. FUTURE_EPOCH, "deferred_for_retry" }, r.after.events_of[1])
    assert.same({ "scheduled@" .. (FUTURE_EPOCH + 0.25), "deferred_for_retry" }, r.after.events_of[2])
  end)

  it("retries failed jobs: todo with a retried event; a doing job with abort_requested ends failed instead", function()
    local r = q.run({ jobs = { { status = "failed", attempts = 1 }, { status = "doing", abort = true, attempts = 1 } },
      steps = { { finish = { { 1, "failed", retry = PAST_EPOCH }, { 2, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ "ok 2" }, r.outcomes)
    assert.same({ status = "todo", attempts = 2, worker = "-", scheduled = tostring(PAST_EPOCH), abort = false },
      r.after.job[1])
    assert.same({ status = "failed", attempts = 1, worker = "-", scheduled = "-", abort = true }, r.after.job[2])
    assert.same({ "scheduled@" .. PAST_EPOCH, "retried" }, r.after.events_of[1])
    assert.same({ "failed" }, r.after.events_of[2])
  end)

  it("applies a mixed batch of finishes, deletes and retries", function()
    local r = q.run({
      jobs = { { status = "doing" }, {}, { status = "doing" }, { status = "doing", attempts = 4 },
               { status = "failed" }, { status = "doing", abort = true }, { status = "doing", lock = "L" },
               { lock = "L" } },
      markers = { 3 },
      steps = { { finish = { { 4, "failed", retry = FUTURE_EPOCH }, { 1, "succeeded" }, { 2, "aborted" },
                             { 3, "failed", delete = true }, { 5, "failed", retry = PAST_EPOCH },
                             { 6, "failed", retry = PAST_EPOCH }, { 7, "succeeded" } } },
                { fetch = "NULL", max = 10 } } })
    assert.same({ "ok 7", "ok 5:doing:1:1,8:doing:1:0" }, r.outcomes)
    assert.same({ "1|succeeded|1|-|-|f|a|0|-|-", "2|aborted|0|-|-|f|a|0|-|-",
      "4|todo|5|-|" .. FUTURE_EPOCH .. "|f|a|0|-|-", "5|doing|1|1|" .. PAST_EPOCH .. "|f|a|0|-|-",
      "6|failed|0|-|-|t|a|0|-|-", "7|succeeded|1|-|-|f|a|0|L|-", "8|doing|0|1|-|f|a|0|L|-" }, r.after.jobs)
    assert.same({ "1|1|-" }, r.after.markers)
    assert.same({ "scheduled@" .. PAST_EPOCH, "retried", "started" }, r.after.events_of[5])
  end)

  it("returns 0 for empty arrays and changes nothing", function()
    local r = q.run({ jobs = { { status = "doing" } }, steps = { { finish = {} } } })
    assert.same({ "ok 0" }, r.outcomes)
    for _, d in ipairs(q.dbs) do
      local fn = d.side == "single" and "spec_finish_seq" or "tarry_finish_jobs_v1"
      assert.equal("0", db.value(d.name, "SELECT " .. fn .. "(NULL, NULL, NULL, NULL)"))
    end
    assert.same({ "1|doing|0|-|-|f|a|0|-|-" }, snapshot(q.batch_db()).jobs)
  end)
end))

describe("tarry_finish_jobs_v1: errors", with_quartet(function(q)
  local function doing(n)
    local jobs = {}
    for i = 1, n do jobs[i] = { status = "doing", worker = 1 } end
    return jobs
  end

  it("rejects an end status other than succeeded/failed/aborted, even with delete_job, and applies nothing", function()
    for _, status in ipairs({ "cancelled", "todo", "doing", "aborting" }) do
      local r = q.run({ jobs = doing(2), steps = { { finish = { { 1, "succeeded" }, { 2, status } } } } })
      assert.same({ END_STATUS:format(2) }, r.outcomes)
      assert.equal("doing", r.after.job[1].status)
      r = q.run({ jobs = doing(2), steps = { { finish = { { 1, "succeeded", delete = true }, { 2, status, delete = true } } } } })
      assert.same({ END_STATUS:format(2) }, r.outcomes)
      assert.is_not_nil(r.after.job[1])
    end
    local r = q.run({ jobs = doing(1), steps = { { finish = { { 1, nil } } } } })
    assert.same({ END_STATUS:format(1) }, r.outcomes)
  end)

  it("rejects an unknown id or a job not todo/doing with the finish message, and applies nothing", function()
    local r = q.run({ jobs = doing(2), markers = { 2 },
      steps = { { finish = { { 1, "succeeded" }, { 2, "failed", delete = true }, { 999, "succeeded" } } } } })
    assert.same({ NOT_FOUND:format(999) }, r.outcomes)
    assert.same({ "1|doing|0|1|-|f|a|0|-|-", "2|doing|0|1|-|f|a|0|-|-" }, r.after.jobs)
    assert.same({ "1|1|2" }, r.after.markers)
    for _, status in ipairs({ "succeeded", "failed", "cancelled", "aborted" }) do
      r = q.run({ jobs = { { status = "doing" }, { status = status } },
        steps = { { finish = { { 1, "succeeded" }, { 2, "succeeded" } } } } })
      assert.same({ NOT_FOUND:format(2) }, r.outcomes)
      r = q.run({ jobs = { { status = "doing" }, { status = status } },
        steps = { { finish = { { 1, "succeeded" }, { 2, "aborted", delete = true } } } } })
      assert.same({ NOT_FOUND:format(2) }, r.outcomes)
    end
  end)

  it("rejects a retry of an unknown id or of a job not doing/failed with the retry message, and applies nothing", function()
    for _, status in ipairs({ "todo", "succeeded", "cancelled", "aborted" }) do
      local r = q.run({ jobs = { { status = "doing" }, { status = status } },
        steps = { { finish = { { 1, "failed", retry = PAST_EPOCH }, { 2, "failed", retry = PAST_EPOCH } } } } })
      assert.same({ BAD_RETRY:format(2) }, r.outcomes)
      assert.equal("doing", r.after.job[1].status)
    end
    local r = q.run({ jobs = doing(1), steps = { { finish = { { 1, "succeeded" }, { 42, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ BAD_RETRY:format(42) }, r.outcomes)
  end)

  it("fails with 23514 when retrying a failed job that still has abort_requested, and applies nothing", function()
    local r = q.run({ jobs = { { status = "doing" }, { status = "failed", abort = true } },
      steps = { { finish = { { 1, "succeeded" }, { 2, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ CHECK_ABORT }, r.outcomes)
    -- the two-step path: a doing job with abort_requested is retried to failed, then again
    r = q.run({ jobs = { { status = "doing", abort = true } },
      steps = { { finish = { { 1, "failed", retry = PAST_EPOCH } } }, { finish = { { 1, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ "ok 1", CHECK_ABORT }, r.outcomes)
  end)

  it("reports the error of the first failing element in array order", function()
    local r = q.run({ jobs = { { status = "succeeded" }, { status = "succeeded" }, { status = "doing" } },
      steps = { { finish = { { 3, "succeeded" }, { 2, "succeeded" }, { 1, "succeeded" } } } } })
    assert.same({ NOT_FOUND:format(2) }, r.outcomes)
    r = q.run({ jobs = doing(2), steps = { { finish = { { 999, "succeeded" }, { 2, "cancelled" } } } } })
    assert.same({ NOT_FOUND:format(999) }, r.outcomes)
    r = q.run({ jobs = doing(2), steps = { { finish = { { 1, "cancelled" }, { 999, "succeeded" } } } } })
    assert.same({ END_STATUS:format(1) }, r.outcomes)
    r = q.run({ jobs = { { status = "failed", abort = true }, { status = "doing" } },
      steps = { { finish = { { 1, "failed", retry = PAST_EPOCH }, { 999, "succeeded" } } } } })
    assert.same({ CHECK_ABORT }, r.outcomes)
    r = q.run({ jobs = { { status = "failed", abort = true }, { status = "doing" } },
      steps = { { finish = { { 999, "failed", retry = PAST_EPOCH }, { 1, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ BAD_RETRY:format(999) }, r.outcomes)
  end)

  it("handles the same job twice like two single calls in a row", function()
    local r = q.run({ jobs = doing(1), steps = { { finish = { { 1, "succeeded" }, { 1, "succeeded" } } } } })
    assert.same({ NOT_FOUND:format(1) }, r.outcomes)
    r = q.run({ jobs = doing(1), steps = { { finish = { { 1, "failed", retry = PAST_EPOCH }, { 1, "succeeded" } } } } })
    assert.same({ "ok 2" }, r.outcomes)
    assert.same({ "scheduled@" .. PAST_EPOCH, "deferred_for_retry", "cancelled" }, r.after.events_of[1])
    r = q.run({ jobs = doing(1), steps = { { finish = { { 1, "failed", retry = PAST_EPOCH }, { 1, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ BAD_RETRY:format(1) }, r.outcomes)
    r = q.run({ jobs = { { status = "doing", abort = true } },
      steps = { { finish = { { 1, "failed", retry = PAST_EPOCH }, { 1, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ CHECK_ABORT }, r.outcomes)
  end)

  it("raises a queueing-lock conflict (23505) exactly when the single calls in array order would", function()
    -- job 1 (doing, queueing lock q) retried to todo while job 2 (todo, q) is still todo: 23505
    local jobs = { { status = "doing", qlock = "q" }, { qlock = "q" } }
    local r = q.run({ jobs = jobs, steps = { { finish = { { 1, "failed", retry = PAST_EPOCH }, { 2, "succeeded" } } } } })
    assert.matches("^" .. QLOCK_DUP:gsub("%p", "%%%0"), r.outcomes[1])
    -- job 2 finished first: no conflict
    r = q.run({ jobs = jobs, steps = { { finish = { { 2, "succeeded" }, { 1, "failed", retry = PAST_EPOCH } } } } })
    assert.same({ "ok 2" }, r.outcomes)
    assert.equal("todo", r.after.job[1].status)
    -- a todo job outside the batch
    r = q.run({ jobs = jobs, steps = { { finish = { { 1, "failed", retry = PAST_EPOCH } } } } })
    assert.matches("^" .. QLOCK_DUP:gsub("%p", "%%%0"), r.outcomes[1])
  end)

  it("fails as a plain statement too, with the message on the wire and nothing applied", function()
    for _, d in ipairs(q.dbs) do
      db.psql(d.name, setup_sql({ jobs = doing(2) }))
      local ok, err = pcall(db.psql, d.name, step_sql({ finish = { { 1, "succeeded" }, { 7, "failed" } } }, d.side))
      assert.is_false(ok)
      assert.matches('ERROR:  Job was not found or not in "doing" or "todo" status %(job id: 7%)', err)
      assert.equal("doing,doing", db.value(d.name, "SELECT string_agg(status::text, ',' ORDER BY id) FROM procrastinate_jobs"))
    end
  end)
end))
