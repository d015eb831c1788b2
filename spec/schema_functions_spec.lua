-- PROTOCOL.md §4 behaviour of tarry's schema functions (§8 items 4, 5, 6, 9, 10, 12, 13 as far
-- as they concern the schema alone): return values, state changes and exact errors.
-- Event rows are covered by schema_events_spec.lua, notifications by schema_notify_spec.lua.
local db = require("support.db")

-- SQL literal of a Lua value (nil -> NULL)
local function lit(v)
  if v == nil then return "NULL" end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  return "'" .. tostring(v):gsub("'", "''") .. "'"
end

-- Each describe block gets a database of its own; `t` holds helpers bound to it.
local function testdb()
  local t = {}
  function t.open()
    t.name = db.fresh()
    -- Runs a statement and reports how it ended: "ok" or "SQLSTATE|constraint|message".
    -- (The exception block rolls the statement back, as a failed statement would be.)
    db.psql(t.name, [[
      CREATE FUNCTION spec_try(stmt text) RETURNS text LANGUAGE plpgsql AS $f$
      DECLARE state text; cons text; msg text;
      BEGIN
        EXECUTE stmt;
        RETURN 'ok';
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, cons = CONSTRAINT_NAME, msg = MESSAGE_TEXT;
        RETURN state || '|' || coalesce(cons, '') || '|' || msg;
      END $f$]])
  end
  function t.close() if t.name then db.drop(t.name) end end
  function t.value(sql) return db.value(t.name, sql) end
  function t.rows(sql) return db.rows(t.name, sql) end
  function t.lines(sql)
    local out = {}
    for _, row in ipairs(db.rows(t.name, sql)) do out[#out + 1] = table.concat(row, "|") end
    return out
  end
  function t.try(stmt) return t.value("SELECT spec_try(" .. lit(stmt) .. ")") end
  -- ARRAY[...] of jobs {queue, task, priority, lock, qlock, args, at}; defaults as Python sends them
  function t.jobs_array(jobs)
    local items = {}
    for _, j in ipairs(jobs) do
      items[#items + 1] = string.format("ROW(%s, %s, %s, %s, %s, %s, %s)::procrastinate_job_to_defer_v1",
        lit(j.queue or "default"), lit(j.task or "task"), j.priority == false and "NULL" or lit(j.priority or 0),
        lit(j.lock), lit(j.qlock), lit(j.args or "{}"), lit(j.at))
    end
    return "ARRAY[" .. table.concat(items, ", ") .. "]::procrastinate_job_to_defer_v1[]"
  end
  function t.defer_sql(jobs) return "SELECT procrastinate_defer_jobs_v1(" .. t.jobs_array(jobs) .. ")" end
  -- defers the jobs, returns their ids (integers) in the order returned
  function t.defer(jobs)
    local ids = {}
    for _, row in ipairs(t.rows("SELECT unnest(procrastinate_defer_jobs_v1(" .. t.jobs_array(jobs) .. ")) AS id")) do
      ids[#ids + 1] = math.tointeger(row[1])
    end
    return ids
  end
  function t.defer1(job) return t.defer({ job or {} })[1] end
  -- fetch: the id taken (integer) or nil for the all-NULL row
  function t.fetch(queues, worker)
    local v = t.value(string.format("SELECT id FROM procrastinate_fetch_job_v2(%s, %s)", queues or "NULL",
      worker and tostring(worker) or "NULL"))
    return v and math.tointeger(v)
  end
  function t.job(id, cols) return t.lines("SELECT " .. cols .. " FROM procrastinate_jobs WHERE id = " .. id)[1] end
  return t
end

describe("procrastinate_fetch_job_v2", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)

  it("returns exactly one all-NULL row when nothing is eligible, for NULL, '{}' and an unknown queue", function()
    -- present but not eligible: scheduled in the future, and already doing
    t.defer1({ queue = "f", at = "2100-01-01 00:00:00+00" })
    local doing = t.defer1({ queue = "f" })
    assert.equal(doing, t.fetch("'{f}'"))
    for _, queues in ipairs({ "NULL", "'{}'", "'{unknown}'" }) do
      assert.same({ "1|t|t" }, t.lines(string.format([[SELECT count(*), bool_and(f IS NULL),
        bool_and(f.id IS NULL AND f.status IS NULL AND f.args IS NULL)
        FROM procrastinate_fetch_job_v2(%s::varchar[], NULL) AS f]], queues)), queues)
    end
    -- an empty array matches nothing even when a job is eligible
    t.defer1({ queue = "f2" })
    assert.is_nil(t.fetch("'{}'"))
  end)

  it("takes the highest priority, then the lowest id; sets doing and the worker only", function()
    local worker = math.tointeger(t.value("SELECT worker_id FROM procrastinate_register_worker_v1()"))
    local ids = t.defer({ { queue = "p1", priority = 1 }, { queue = "p2", priority = 3 }, { queue = "p1", priority = 3 },
      { queue = "p1", priority = 3, at = "2001-01-01 00:00:00+00" } })
    t.value("UPDATE procrastinate_jobs SET attempts = 2 WHERE id = " .. ids[2])
    local row = t.lines(string.format([[SELECT id, status, worker_id, attempts, scheduled_at IS NULL, abort_requested, queue_name
      FROM procrastinate_fetch_job_v2('{p1,p2}', %d)]], worker))[1]
    assert.equal(string.format("%d|doing|%d|2|t|f|p2", ids[2], worker), row)
    assert.equal(ids[3], t.fetch("'{p1}'", worker))
    -- scheduled in the past is eligible, and keeps its scheduled_at
    assert.equal(ids[4], t.fetch("'{p1}'", worker))
    assert.equal("doing|2001-01-01 00:00:00+00", t.job(ids[4], "status, scheduled_at"))
    assert.equal(ids[1], t.fetch("'{p1}'", worker))
    assert.is_nil(t.fetch("'{p1,p2}'", worker))
  end)

  it("fails with 23503 on the worker FK for an unknown worker id", function()
    t.defer1({ queue = "fk" })
    assert.equal("23503|procrastinate_jobs_worker_id_fkey|",
      t.try("SELECT procrastinate_fetch_job_v2('{fk}', 987654)"):match("^([^|]*|[^|]*|)"))
  end)
end)

describe("the lock blocking rule (§4.3)", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)

  it("runs same-lock jobs over two queues one at a time, in priority then id order", function()
    local p0 = t.defer1({ queue = "la", lock = "L", priority = 0 })
    local p5a = t.defer1({ queue = "lb", lock = "L", priority = 5 })
    local p5b = t.defer1({ queue = "la", lock = "L", priority = 5 })
    -- a worker on queue la alone cannot run anything: p5a (queue lb) ranks first
    assert.is_nil(t.fetch("'{la}'"))
    local order = {}
    for _ = 1, 3 do
      local got = t.fetch("'{la,lb}'")
      order[#order + 1] = got
      -- while it is doing, no other same-lock job can start, on either queue
      assert.is_nil(t.fetch("'{la}'"))
      assert.is_nil(t.fetch("'{lb}'"))
      t.value(string.format("SELECT procrastinate_finish_job_v1(%d, 'succeeded', false)", got))
    end
    assert.same({ p5a, p5b, p0 }, order)
  end)

  it("lets a future-scheduled higher-priority same-lock job block them all", function()
    local ids = t.defer({ { queue = "ma", lock = "M", priority = 0 }, { queue = "mb", lock = "M", priority = 5 },
      { queue = "ma", lock = "M", priority = 5 } })
    t.defer1({ queue = "mz", lock = "M", priority = 9, at = "2100-01-01 00:00:00+00" })
    local free = t.defer1({ queue = "ma" })  -- no lock: unaffected
    assert.equal(free, t.fetch("'{ma,mb}'"))
    assert.is_nil(t.fetch("'{ma,mb}'"))
    -- with the blocker gone, the first of the others runs
    t.value("DELETE FROM procrastinate_jobs WHERE queue_name = 'mz'")
    assert.equal(ids[2], t.fetch("'{ma,mb}'"))
  end)

  it("lets a stale doing job block its lock until it is retried", function()
    local a = t.defer1({ queue = "sa", lock = "S" })
    local b = t.defer1({ queue = "sa", lock = "S" })
    assert.equal(a, t.fetch("'{sa}'"))
    assert.is_nil(t.fetch("'{sa}'"))
    t.value(string.format("SELECT procrastinate_retry_job_v2(%d, NULL, NULL, NULL, NULL)", a))
    assert.equal(a, t.fetch("'{sa}'"))  -- back to todo with its old id: ranks before b
    t.value(string.format("SELECT procrastinate_finish_job_v1(%d, 'failed', false)", a))
    assert.equal(b, t.fetch("'{sa}'"))
  end)
end)

describe("procrastinate_defer_jobs_v1", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)

  it("returns the ids in input order and maps the seven fields", function()
    local ids = t.defer({ { queue = "d", task = "first", priority = -2, lock = "l1", qlock = "dq1", args = '{"a": 1}' },
      { queue = "d", task = "second", at = "2100-01-01 00:00:00+00" }, { queue = "d", task = "third" } })
    assert.equal(3, #ids)
    assert.is_true(ids[1] < ids[2] and ids[2] < ids[3])
    assert.equal("first|d|-2|l1|dq1|{\"a\": 1}|todo||0|f|",
      t.job(ids[1], "task_name, queue_name, priority, lock, queueing_lock, args, status, scheduled_at, attempts, abort_requested, worker_id"))
    assert.equal("second|2100-01-01 00:00:00+00", t.job(ids[2], "task_name, scheduled_at"))
    assert.equal("third", t.job(ids[3], "task_name"))
  end)

  it("returns NULL for an empty or NULL array", function()
    assert.same({ "t|t" }, t.lines([[SELECT procrastinate_defer_jobs_v1('{}') IS NULL,
      procrastinate_defer_jobs_v1(NULL) IS NULL]]))
    assert.same({ "0" }, t.lines("SELECT count(*) FROM (SELECT unnest(procrastinate_defer_jobs_v1('{}')) AS id) s"))
  end)

  it("keeps explicit NULLs (23502) and checks name lengths (22001)", function()
    assert.matches("^23502|", t.try(t.defer_sql({ { priority = false } })))
    assert.matches("^23502|", t.try("SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('q', 't', 0, NULL, NULL, NULL, NULL)]::procrastinate_job_to_defer_v1[])"))
    assert.matches("^22001|", t.try(t.defer_sql({ { task = string.rep("t", 129) } })))
    assert.equal("ok", t.try(t.defer_sql({ { task = string.rep("t", 128) } })))
  end)

  it("rejects a duplicate queueing lock with 23505 on procrastinate_jobs_queueing_lock_idx_v1", function()
    local holder = t.defer1({ queue = "ql", qlock = "q" })
    local before = t.value("SELECT count(*) FROM procrastinate_jobs")
    local result = t.try(t.defer_sql({ { queue = "ql", qlock = "q" } }))
    assert.matches("^23505|procrastinate_jobs_queueing_lock_idx_v1|", result)
    -- a batch with one conflicting job inserts nothing
    assert.matches("^23505|procrastinate_jobs_queueing_lock_idx_v1|",
      t.try(t.defer_sql({ { queue = "ql", qlock = "free" }, { queue = "ql", qlock = "q" } })))
    -- and so does a batch whose own elements share one
    assert.matches("^23505|procrastinate_jobs_queueing_lock_idx_v1|",
      t.try(t.defer_sql({ { queue = "ql", qlock = "z" }, { queue = "ql", qlock = "z" } })))
    assert.equal(before, t.value("SELECT count(*) FROM procrastinate_jobs"))
    -- the DETAIL Python parses
    local ok, err = pcall(t.value, t.defer_sql({ { queue = "ql", qlock = "q" } }))
    assert.is_false(ok)
    assert.matches("Key %(queueing_lock%)=%(q%) already exists%.", err)
    -- once the holder is doing, the same queueing lock is free again
    assert.equal(holder, t.fetch("'{ql}'"))
    assert.equal("ok", t.try(t.defer_sql({ { queue = "ql", qlock = "q" } })))
  end)

  it("fails with 22023 for a 41-byte queue name, and works with 40 bytes", function()
    assert.equal("22023||channel name too long", t.try(t.defer_sql({ { queue = string.rep("x", 41) } })))
    -- bytes, not characters: 20 two-byte characters plus one byte
    assert.equal("22023||channel name too long", t.try(t.defer_sql({ { queue = string.rep("é", 20) .. "x" } })))
    assert.equal("ok", t.try(t.defer_sql({ { queue = string.rep("x", 40) } })))
    assert.equal("1", t.value("SELECT count(*) FROM procrastinate_jobs WHERE queue_name = '" .. string.rep("x", 40) .. "'"))
  end)
end)

describe("procrastinate_finish_job_v1", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)
  local function finish(id, status, delete)
    return t.try(string.format("SELECT procrastinate_finish_job_v1(%d, %s, %s)", id, lit(status), tostring(delete)))
  end

  it("raises the exact P0001 message for a bad end status, even with delete_job", function()
    local id = t.defer1({ queue = "fin" })
    for _, status in ipairs({ "todo", "doing", "cancelled" }) do
      for _, delete in ipairs({ false, true }) do
        assert.equal(string.format('P0001||End status should be either "succeeded", "failed" or "aborted" (job id: %d)', id),
          finish(id, status, delete))
      end
    end
    assert.equal("todo", t.job(id, "status"))
  end)

  it("raises the exact P0001 message when the job is missing or not todo/doing", function()
    assert.equal('P0001||Job was not found or not in "doing" or "todo" status (job id: 424242)',
      finish(424242, "succeeded", false))
    local id = t.defer1({ queue = "fin" })
    assert.equal("ok", finish(id, "failed", false))
    assert.equal(string.format('P0001||Job was not found or not in "doing" or "todo" status (job id: %d)', id),
      finish(id, "succeeded", true))
  end)

  it("counts an attempt only from doing, clears the abort flag, keeps worker and schedule", function()
    local worker = math.tointeger(t.value("SELECT worker_id FROM procrastinate_register_worker_v1()"))
    local id = t.defer1({ queue = "fa", at = "2001-01-01 00:00:00+00" })
    assert.equal(id, t.fetch("'{fa}'", worker))
    t.value(string.format("SELECT procrastinate_cancel_job_v1(%d, true, false)", id))
    assert.equal("ok", finish(id, "aborted", false))
    assert.equal(string.format("aborted|1|f|%d|2001-01-01 00:00:00+00", worker),
      t.job(id, "status, attempts, abort_requested, worker_id, scheduled_at"))
    local todo = t.defer1({ queue = "fa" })
    assert.equal("ok", finish(todo, "succeeded", false))
    assert.equal("succeeded|0", t.job(todo, "status, attempts"))
  end)

  it("deletes a todo or doing job with its events, and unlinks its periodic marker", function()
    local id = math.tointeger(t.value([[SELECT procrastinate_defer_periodic_job_v2('fd', NULL, NULL, 'per_fin', 0,
      '', 100, '{"timestamp": 100}')]]))
    assert.equal(id, t.fetch("'{fd}'"))
    assert.equal("ok", finish(id, "succeeded", true))
    assert.same({ "0|0" }, t.lines("SELECT (SELECT count(*) FROM procrastinate_jobs WHERE id = " .. id
      .. "), (SELECT count(*) FROM procrastinate_events WHERE job_id = " .. id .. ")"))
    assert.same({ "per_fin|100|t" }, t.lines([[SELECT task_name, defer_timestamp, job_id IS NULL
      FROM procrastinate_periodic_defers WHERE task_name = 'per_fin']]))
  end)
end)

describe("procrastinate_cancel_job_v1", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)
  local function cancel(id, abort, delete)
    return t.value(string.format("SELECT procrastinate_cancel_job_v1(%d, %s, %s)", id, tostring(abort), tostring(delete)))
  end

  it("cancels a todo job", function()
    local id = t.defer1({ queue = "c" })
    assert.equal(tostring(id), cancel(id, false, false))
    assert.equal("cancelled|f|0", t.job(id, "status, abort_requested, attempts"))
    assert.is_nil(cancel(id, false, false))  -- no longer todo
  end)

  it("deletes a todo job and its events when delete_job is set", function()
    local id = t.defer1({ queue = "c" })
    assert.equal(tostring(id), cancel(id, false, true))
    assert.same({ "0|0" }, t.lines("SELECT (SELECT count(*) FROM procrastinate_jobs WHERE id = " .. id
      .. "), (SELECT count(*) FROM procrastinate_events WHERE job_id = " .. id .. ")"))
  end)

  it("returns NULL for a doing job without abort, with or without delete_job", function()
    local id = t.defer1({ queue = "cd" })
    assert.equal(id, t.fetch("'{cd}'"))
    assert.is_nil(cancel(id, false, false))
    assert.is_nil(cancel(id, false, true))
    assert.equal("doing|f", t.job(id, "status, abort_requested"))
  end)

  it("flags a doing job for abort (again and again), and cancels a todo job with the flag set", function()
    local doing = t.defer1({ queue = "ca" })
    assert.equal(doing, t.fetch("'{ca}'"))
    assert.equal(tostring(doing), cancel(doing, true, false))
    assert.equal(tostring(doing), cancel(doing, true, true))  -- delete_job goes down the abort path
    assert.equal("doing|t", t.job(doing, "status, abort_requested"))
    local todo = t.defer1({ queue = "ca" })
    assert.equal(tostring(todo), cancel(todo, true, false))
    assert.equal("cancelled|t", t.job(todo, "status, abort_requested"))
    assert.is_nil(cancel(424242, true, false))
  end)
end)

describe("procrastinate_retry_job_v2 and _v1", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)
  local function retry(v, id, at, prio, queue, lock)
    return t.try(string.format("SELECT procrastinate_retry_job_v%d(%d, %s, %s, %s, %s)", v, id, lit(at), lit(prio), lit(queue), lit(lock)))
  end

  it("sends a doing job back to todo: attempts +1, scheduled_at as given, new values when not NULL", function()
    local worker = math.tointeger(t.value("SELECT worker_id FROM procrastinate_register_worker_v1()"))
    local id = t.defer1({ queue = "r", lock = "rl", priority = 2, at = "2001-01-01 00:00:00+00" })
    assert.equal(id, t.fetch("'{r}'", worker))
    assert.equal("ok", retry(2, id, "2100-01-01 00:00:00+00", nil, nil, nil))
    assert.equal(string.format("todo|1|2100-01-01 00:00:00+00|2|r|rl|%d|f", worker),
      t.job(id, "status, attempts, scheduled_at, priority, queue_name, lock, worker_id, abort_requested"))
    t.value("UPDATE procrastinate_jobs SET scheduled_at = NULL WHERE id = " .. id)
    assert.equal(id, t.fetch("'{r}'", worker))
    assert.equal("ok", retry(2, id, nil, 7, "r2", "rl2"))
    assert.equal("todo|2||7|r2|rl2", t.job(id, "status, attempts, scheduled_at, priority, queue_name, lock"))
  end)

  it("retries a failed job too (v2 only)", function()
    local id = t.defer1({ queue = "rf" })
    assert.equal(id, t.fetch("'{rf}'"))
    t.value(string.format("SELECT procrastinate_finish_job_v1(%d, 'failed', false)", id))
    assert.equal(string.format('P0001||Job was not found or not in "doing" status (job id: %d)', id),
      retry(1, id, nil, nil, nil, nil))
    assert.equal("ok", retry(2, id, nil, nil, nil, nil))
    assert.equal("todo|2", t.job(id, "status, attempts"))
  end)

  it("turns an abort-flagged doing job into failed, then refuses it with 23514", function()
    for _, v in ipairs({ 2, 1 }) do
      local id = t.defer1({ queue = "ra" })
      assert.equal(id, t.fetch("'{ra}'"))
      t.value(string.format("SELECT procrastinate_cancel_job_v1(%d, true, false)", id))
      assert.equal("ok", retry(v, id, "2100-01-01 00:00:00+00", 5, "elsewhere", "x"))
      assert.equal("failed|0|t||0|ra|", t.job(id, "status, attempts, abort_requested, scheduled_at, priority, queue_name, lock"))
      if v == 2 then
        assert.matches("^23514|check_not_todo_abort_requested|", retry(2, id, nil, nil, nil, nil))
      end
    end
  end)

  it("raises the exact P0001 messages for unknown ids and wrong statuses", function()
    assert.equal("P0001||Job was not found or has an invalid status to retry (job id: 424242)",
      retry(2, 424242, nil, nil, nil, nil))
    assert.equal('P0001||Job was not found or not in "doing" status (job id: 424242)',
      retry(1, 424242, nil, nil, nil, nil))
    local todo = t.defer1({ queue = "rx" })
    assert.equal(string.format("P0001||Job was not found or has an invalid status to retry (job id: %d)", todo),
      retry(2, todo, nil, nil, nil, nil))
  end)

  it("v1 retries a doing job like v2", function()
    local id = t.defer1({ queue = "r1" })
    assert.equal(id, t.fetch("'{r1}'"))
    assert.equal("ok", retry(1, id, "2100-01-01 00:00:00+00", 3, nil, nil))
    assert.equal("todo|1|2100-01-01 00:00:00+00|3", t.job(id, "status, attempts, scheduled_at, priority"))
  end)
end)

describe("procrastinate_defer_periodic_job_v2", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)
  local function periodic(task, pid, ts, qlock)
    return t.value(string.format([[SELECT procrastinate_defer_periodic_job_v2('pq', 'plock', %s, %s, 4, %s, %d,
      '{"timestamp": %d}')]], lit(qlock), lit(task), lit(pid), ts, ts))
  end
  local function markers(task)
    return t.lines(string.format([[SELECT periodic_id, defer_timestamp, job_id IS NOT NULL
      FROM procrastinate_periodic_defers WHERE task_name = %s ORDER BY periodic_id, defer_timestamp]], lit(task)))
  end

  it("defers one job per tick, with the given fields, and returns NULL for a repeated tick", function()
    local id = periodic("per", "", 1000)
    assert.is_not_nil(id)
    assert.equal('pq|per|4|plock||{"timestamp": 1000}||todo',
      t.job(id, "queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at, status"))
    assert.equal(id, t.value("SELECT job_id FROM procrastinate_periodic_defers WHERE task_name = 'per'"))
    assert.is_nil(periodic("per", "", 1000))
    assert.equal("1", t.value("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'per'"))
    assert.same({ "|1000|t" }, markers("per"))
  end)

  it("deletes the older markers of the same task and periodic id only", function()
    periodic("per2", "other", 500)
    periodic("per2", "", 1000)
    periodic("per2", "", 1060)
    assert.same({ "|1060|t", "other|500|t" }, markers("per2"))
    periodic("per2", "", 1030)  -- an older tick: later markers are kept
    assert.same({ "|1030|t", "|1060|t", "other|500|t" }, markers("per2"))
    periodic("per2", "", 1090)
    assert.same({ "|1090|t", "other|500|t" }, markers("per2"))
  end)

  it("leaves no marker when the queueing lock conflicts (23505)", function()
    t.defer1({ queue = "pq", qlock = "pql" })
    assert.matches("^23505|procrastinate_jobs_queueing_lock_idx_v1|", t.try([[SELECT procrastinate_defer_periodic_job_v2(
      'pq', NULL, 'pql', 'per3', 0, '', 2000, '{"timestamp": 2000}')]]))
    assert.same({}, markers("per3"))
    -- the tick can be deferred later
    t.value("UPDATE procrastinate_jobs SET status = 'doing' WHERE queueing_lock = 'pql'")
    assert.is_not_nil(periodic("per3", "", 2000, "pql"))
  end)
end)

describe("worker liveness functions", function()
  local t = testdb()
  setup(t.open)
  teardown(t.close)
  local function register()
    -- the result column is named worker_id
    local rows = require("support.psql_conn").new(t.name):execute("SELECT * FROM procrastinate_register_worker_v1()")
    assert.equal(1, #rows)
    return rows[1].worker_id
  end

  it("registers workers with new ids and a heartbeat of now()", function()
    local a, b = register(), register()
    assert.is_true(math.type(a) == "integer" and b > a)
    assert.equal("t", t.value("SELECT bool_and(last_heartbeat > '2020-01-01') FROM procrastinate_workers"))
  end)

  it("updates the heartbeat, silently ignoring a missing worker", function()
    local w = register()
    t.value("UPDATE procrastinate_workers SET last_heartbeat = '2000-01-01' WHERE id = " .. w)
    assert.equal("ok", t.try("SELECT procrastinate_update_heartbeat_v1(" .. w .. ")"))
    assert.equal("t", t.value("SELECT last_heartbeat > '2020-01-01' FROM procrastinate_workers WHERE id = " .. w))
    assert.equal("ok", t.try("SELECT procrastinate_update_heartbeat_v1(424242)"))
  end)

  it("prunes stalled workers, returns their ids and detaches their jobs", function()
    local stale, alive = register(), register()
    t.value("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '40 seconds' WHERE id = " .. stale)
    t.value("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '20 seconds' WHERE id = " .. alive)
    local running = t.defer1({ queue = "pw" })
    assert.equal(running, t.fetch("'{pw}'", stale))
    local done = t.defer1({ queue = "pw" })
    assert.equal(done, t.fetch("'{pw}'", stale))
    t.value(string.format("SELECT procrastinate_finish_job_v1(%d, 'succeeded', false)", done))
    assert.same({ tostring(stale) }, t.lines("SELECT worker_id FROM procrastinate_prune_stalled_workers_v1(30)"))
    assert.same({ "doing|t", "succeeded|t" }, t.lines(string.format(
      "SELECT status, worker_id IS NULL FROM procrastinate_jobs WHERE id IN (%d, %d) ORDER BY id", running, done)))
    -- fractional seconds are accepted: 20 s old is more than 19.5 s
    assert.same({ tostring(alive) }, t.lines("SELECT worker_id FROM procrastinate_prune_stalled_workers_v1(19.5)"))
    -- the pruned worker's next fetch fails on the FK
    t.defer1({ queue = "pw" })
    assert.matches("^23503|procrastinate_jobs_worker_id_fkey|",
      t.try(string.format("SELECT procrastinate_fetch_job_v2('{pw}', %d)", stale)))
  end)

  it("unregisters a worker, detaching every job of it, and ignores a missing one", function()
    local w = register()
    local ids = t.defer({ { queue = "uw" }, { queue = "uw" } })
    assert.equal(ids[1], t.fetch("'{uw}'", w))
    assert.equal(ids[2], t.fetch("'{uw}'", w))
    t.value(string.format("SELECT procrastinate_retry_job_v2(%d, NULL, NULL, NULL, NULL)", ids[2]))
    assert.equal("ok", t.try("SELECT procrastinate_unregister_worker_v1(" .. w .. ")"))
    assert.equal("0", t.value("SELECT count(*) FROM procrastinate_workers WHERE id = " .. w))
    assert.same({ "doing|t", "todo|t" }, t.lines(string.format(
      "SELECT status, worker_id IS NULL FROM procrastinate_jobs WHERE id IN (%d, %d) ORDER BY id", ids[1], ids[2])))
    assert.equal("ok", t.try("SELECT procrastinate_unregister_worker_v1(424242)"))
  end)
end)
