-- The event rows of tarry's batch functions when they tell the update trigger what their UPDATE
-- did (tarry.update_events: 'started', 'finished', 'retried'; see tarry_jobs_update_events in
-- lua/tarry/schema.sql), against the same functions that do not tell it (the trigger then works the
-- events out with its general query, from the old and new rows), and against Procrastinate's
-- row-level triggers (spec/fixtures/procrastinate_triggers.sql).  Every scenario runs on the three
-- databases, and their event tables must be identical row for row: ids, jobs, types, and `at`
-- (a scheduled event's planned time; any other the time of its statement's transaction, compared
-- by rank, as the three run at different times).  The job rows must be identical too.
local db = require("support.db")
local schema = require("tarry.schema")

local FUTURE_EPOCH, PAST_EPOCH = 4102444800, 981173106

-- tarry's fetch and finish as schema.sql has them, less the lines that tell the trigger.
local function untold_functions()
  local sql = {}
  for _, f in ipairs(schema.tarry_functions()) do
    if f.name == "tarry_fetch_jobs_v1" or f.name == "tarry_finish_jobs_v1" then
      local untold = f.sql:gsub("\n[^\n]*set_config%('tarry%.update_events'[^\n]*", "")
      assert(untold ~= f.sql and not untold:find("tarry.update_events", 1, true), f.name .. " tells nothing?")
      sql[#sql + 1] = untold
    end
  end
  assert(#sql == 2)
  return table.concat(sql, "\n")
end

-- Everything compared: the events, then the jobs.
local DUMP = [[
SELECT 'event ' || id || ' ' || job_id || ' ' || type || ' ' || CASE WHEN type = 'scheduled'
    THEN to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') ELSE 'at#' || dense_rank() OVER (ORDER BY at) END
FROM procrastinate_events
UNION ALL
SELECT 'job ' || concat_ws(' ', id, status, attempts, coalesce(worker_id::text, '-'),
    coalesce(to_char(scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), '-'), abort_requested)
FROM procrastinate_jobs
ORDER BY 1]]

-- Each job's events in order, "type type ..." (a scheduled one with its year), jobs by id.
local EVENTS_BY_JOB = [[
SELECT j.id || ': ' || coalesce(string_agg(e.type::text || CASE WHEN e.type = 'scheduled'
    THEN '@' || extract(year FROM e.at AT TIME ZONE 'UTC') ELSE '' END, ' ' ORDER BY e.id), '')
FROM procrastinate_jobs AS j LEFT JOIN procrastinate_events AS e ON e.job_id = j.id
GROUP BY j.id ORDER BY j.id]]

local RESET = [[TRUNCATE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
  procrastinate_workers RESTART IDENTITY;
INSERT INTO procrastinate_workers DEFAULT VALUES;]]

-- n jobs (ids 1..n) with these priorities (default 0), each in one transaction of its own.
local function defer(priorities)
  local rows = {}
  for i, p in ipairs(priorities) do rows[i] = string.format("ROW('q', 't', %d, NULL, NULL, '{}', NULL)", p) end
  return "SELECT procrastinate_defer_jobs_v1(ARRAY[" .. table.concat(rows, ", ") .. "]::procrastinate_job_to_defer_v1[])"
end

local function fetch(n) return string.format("SELECT count(*) FROM tarry_fetch_jobs_v1(NULL, 1, %d)", n) end

-- items: { {id, status} | {id, retry = epoch} | {id, status, delete = true} }
local function finish(items)
  local ids, statuses, deletes, retries = {}, {}, {}, {}
  for i, item in ipairs(items) do
    ids[i], statuses[i] = item[1], item[2] or "failed"
    deletes[i], retries[i] = item.delete and "t" or "f", item.retry and string.format("%d", item.retry) or "NULL"
  end
  return string.format("SELECT tarry_finish_jobs_v1('{%s}', '{%s}', '{%s}', '{%s}')", table.concat(ids, ","),
    table.concat(statuses, ","), table.concat(deletes, ","), table.concat(retries, ","))
end

local SCENARIOS = {
  { "fetch: a started event per job (a batch, then one more by procrastinate_fetch_job_v2)",
    { defer({ 0, 5, 0, 5, 1 }), fetch(4), "SELECT id FROM procrastinate_fetch_job_v2(NULL, 1)" },
    { "1: deferred started", "2: deferred started", "3: deferred started", "4: deferred started",
      "5: deferred started" } },

  { "finish from doing: succeeded, failed, and aborted after an abort request",
    { defer({ 0, 0, 0 }), fetch(3), "SELECT procrastinate_cancel_job_v1(3, true, false)",
      finish({ { 1, "succeeded" }, { 2, "failed" }, { 3, "aborted" } }) },
    { "1: deferred started succeeded", "2: deferred started failed", "3: deferred started abort_requested aborted" } },

  { "retry from doing: scheduled at retry_at then deferred_for_retry; a job whose abort was requested fails",
    { defer({ 0, 0, 0 }), fetch(3), "SELECT procrastinate_cancel_job_v1(2, true, false)",
      finish({ { 1, retry = FUTURE_EPOCH }, { 2, retry = FUTURE_EPOCH }, { 3, retry = PAST_EPOCH } }),
      fetch(1) },
    { "1: deferred started scheduled@2100 deferred_for_retry", "2: deferred started abort_requested failed",
      "3: deferred started scheduled@2001 deferred_for_retry started" } },

  { "retry without a time (procrastinate_retry_job_v2): deferred_for_retry alone",
    { defer({ 0 }), fetch(1), "SELECT procrastinate_retry_job_v2(1, NULL, NULL, NULL, NULL)", fetch(1),
      finish({ { 1, "succeeded" } }) },
    { "1: deferred started deferred_for_retry started succeeded" } },

  { "delete_job: the job goes with its events; a mixed batch of finishes, deletes and retries",
    { defer({ 0, 0, 0, 0 }), fetch(4),
      finish({ { 1, "succeeded", delete = true }, { 2, "failed" }, { 3, retry = FUTURE_EPOCH }, { 4, "aborted", delete = true } }) },
    { "2: deferred started failed", "3: deferred started scheduled@2100 deferred_for_retry" } },

  { "a batch that finishes a job never started: cancelled (the trigger works that batch out itself)",
    { defer({ 0, 0, 0 }), fetch(2), finish({ { 1, "succeeded" }, { 3, "succeeded" } }),
      finish({ { 2, "aborted" } }) },
    { "1: deferred started succeeded", "2: deferred started aborted", "3: deferred cancelled" } },

  { "the setting ends with its statement: later statements of the caller's transaction log their own events",
    { defer({ 0, 0, 0 }),
      "BEGIN; " .. fetch(2) .. "; UPDATE procrastinate_jobs SET status = 'todo', worker_id = NULL WHERE id = 1;"
        .. " UPDATE procrastinate_jobs SET abort_requested = true WHERE id = 2; "
        .. finish({ { 2, "failed" } }) .. "; UPDATE procrastinate_jobs SET status = 'cancelled' WHERE id IN (1, 3);"
        .. " SELECT 1 / (coalesce(current_setting('tarry.update_events', true), '') = '')::int; COMMIT" },
    { "1: deferred started deferred_for_retry cancelled", "2: deferred started abort_requested failed",
      "3: deferred cancelled" } },

  { "an error in the batch takes its setting with it: the next statement logs its own events",
    { defer({ 0, 0 }),
      "BEGIN; DO $$ BEGIN PERFORM * FROM tarry_fetch_jobs_v1(NULL, 999999, 1); "
        .. "EXCEPTION WHEN foreign_key_violation THEN NULL; END $$; "
        .. "UPDATE procrastinate_jobs SET status = 'cancelled' WHERE id = 1; COMMIT",
      fetch(1) },
    { "1: deferred cancelled", "2: deferred started" } },
}

describe("event rows of the batch functions: told to the trigger, worked out by it, row-level", function()
  local dbs = {}
  setup(function()
    dbs.told = db.fresh()
    dbs.untold = db.fresh()
    db.psql(dbs.untold, untold_functions())
    dbs.row_level = db.fresh()
    db.apply_schema_file(dbs.row_level, "spec/fixtures/procrastinate_triggers.sql")
  end)
  teardown(function()
    for _, name in pairs(dbs) do db.drop(name) end
  end)

  -- Runs the steps on each database (each step one psql session, so one transaction unless it
  -- opens its own); returns the dumps and the events by job.
  local function run(steps, names)
    local dumps, by_job = {}, {}
    for _, name in ipairs(names) do
      db.psql(dbs[name], RESET)
      for _, step in ipairs(steps) do db.psql(dbs[name], step) end
      dumps[name] = db.psql(dbs[name], DUMP)
      by_job[name] = {}
      for _, row in ipairs(db.rows(dbs[name], EVENTS_BY_JOB)) do by_job[name][#by_job[name] + 1] = row[1] end
    end
    return dumps, by_job
  end

  for _, scenario in ipairs(SCENARIOS) do
    local title, steps, expected = scenario[1], scenario[2], scenario[3]
    it(title, function()
      local names = { "told", "untold", "row_level" }
      local dumps, by_job = run(steps, names)
      for _, name in ipairs(names) do assert.same(expected, by_job[name], name) end
      assert.matches("^event %d+ ", dumps.told)  -- something to compare
      assert.equal(dumps.row_level, dumps.told)
      assert.equal(dumps.untold, dumps.told)
    end)
  end

  it("lean (skip_events): no event rows for the fetch and the finish, told or not", function()
    local steps = { defer({ 0, 0 }),
      "SELECT count(*) FROM tarry_finish_fetch_jobs_v1('{}', '{}', '{}', '{}', NULL, 1, 2, true)",
      "SELECT count(*) FROM tarry_finish_fetch_jobs_v1('{1,2}', '{succeeded,failed}', '{f,f}', '{NULL,NULL}', NULL, 1, 0, true)",
      fetch(0) }
    local dumps, by_job = run(steps, { "told", "untold" })
    assert.same({ "1: deferred", "2: deferred" }, by_job.told)
    assert.equal(dumps.untold, dumps.told)
    assert.matches("job 1 succeeded 1", dumps.told)
  end)

  it("the trigger trusts the setting: it logs what the setting names, whatever the UPDATE did", function()
    -- (only tarry's functions set it, for their own statement: this shows the told path is taken)
    db.psql(dbs.told, RESET .. defer({ 0 }))
    db.psql(dbs.told, "BEGIN; SELECT set_config('tarry.update_events', 'started', true); "
      .. "UPDATE procrastinate_jobs SET priority = 3 WHERE id = 1; COMMIT")
    assert.same({ "1: deferred started" }, (function()
      local out = {}
      for _, row in ipairs(db.rows(dbs.told, EVENTS_BY_JOB)) do out[#out + 1] = row[1] end
      return out
    end)())
  end)
end)
