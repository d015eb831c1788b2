--- The job store on PostgreSQL (the interface is documented in tarry/store.lua): the protocol's
-- functions, batched for the worker, and the statements of PROTOCOL.md section 6.2 for the
-- manager. Only procrastinate_* objects are required, so a schema applied by Procrastinate works
-- unchanged; tarry_* functions are used when the schema has them. Every method runs through
-- connector:execute, so inside a tarry coroutine it yields.
-- @module tarry.pg_jobs
local PgJobs = {}
PgJobs.__index = PgJobs

-- Up to n fetches: procrastinate_fetch_job_v2 called again while the previous call found a job.
-- Each call sees the jobs the previous ones took (a volatile function's statements see earlier
-- changes of the transaction), so the lock rule holds inside a batch as well. q, w, n: the
-- placeholders of the queues, the worker id and n; after: a CTE the first call must follow (its
-- FROM), or nil. The one source of FETCH and FINISH_FETCH.
local function fetch_calls(q, w, n, after)
  return string.format([[r(n, job) AS (
  SELECT 1, CASE WHEN %s::integer > 0 THEN procrastinate_fetch_job_v2(%s::varchar[], %s::bigint) END%s
  UNION ALL
  SELECT n + 1, procrastinate_fetch_job_v2(%s::varchar[], %s::bigint)
  FROM r WHERE (r.job).id IS NOT NULL AND n < %s::integer
)
SELECT (job).id, (job).task_name, (job).queue_name AS queue, (job).priority, (job).lock,
       (job).queueing_lock, (job).args, (job).attempts,
       extract(epoch FROM (job).scheduled_at)::float8 AS scheduled_at
FROM r WHERE (job).id IS NOT NULL ORDER BY n]], n, q, w, after and (" FROM " .. after) or "", q, w, n)
end
local FETCH = "WITH RECURSIVE " .. fetch_calls("$1", "$2", "$3")

-- Outcomes of many jobs in one round trip, each through the protocol function it needs.
local FINISH = [[
SELECT count(CASE WHEN t.retry_at IS NULL
    THEN (SELECT 1 FROM procrastinate_finish_job_v1(t.id, t.status::procrastinate_job_status, t.del))
    ELSE (SELECT 1 FROM procrastinate_retry_job_v2(t.id, to_timestamp(t.retry_at), NULL, NULL, NULL)) END) AS n
FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::float8[]) WITH ORDINALITY AS t(id, status, del, retry_at, i)]]

-- tarry's set-based batch functions (schema.sql), when the schema has them.
local FAST_FETCH = [[
SELECT id, task_name, queue_name AS queue, priority, lock, queueing_lock, args, attempts,
       extract(epoch FROM scheduled_at)::float8 AS scheduled_at
FROM tarry_fetch_jobs_v1($1::varchar[], $2::bigint, $3::integer)]]
local FAST_FINISH = [[
SELECT tarry_finish_jobs_v1($1::bigint[], $2::procrastinate_job_status[], $3::boolean[], $4::float8[]) AS n]]
local HAS_FAST = [[
SELECT to_regprocedure('tarry_fetch_jobs_v1(character varying[], bigint, integer)') IS NOT NULL
   AND to_regprocedure('tarry_finish_jobs_v1(bigint[], procrastinate_job_status[], boolean[], double precision[])')
       IS NOT NULL AS fast]]

-- Outcomes, then a fetch, in one round trip (the worker's default path). Without tarry's function:
-- FINISH as a materialised CTE that the fetch's first call reads, so every finish call ran before
-- the first fetch call (each a volatile function: it sees what the earlier ones changed).
local FINISH_FETCH = "WITH RECURSIVE finished AS MATERIALIZED (\n" .. FINISH .. "\n), "
  .. fetch_calls("$5", "$6", "$7", "finished")
local FAST_FINISH_FETCH = [[
SELECT id, task_name, queue_name AS queue, priority, lock, queueing_lock, args, attempts,
       extract(epoch FROM scheduled_at)::float8 AS scheduled_at
FROM tarry_finish_fetch_jobs_v1($1::bigint[], $2::procrastinate_job_status[], $3::boolean[], $4::float8[],
                                $5::varchar[], $6::bigint, $7::integer, $8::boolean)]]
local TARRY_FINISH_FETCH = "tarry_finish_fetch_jobs_v1(bigint[], procrastinate_job_status[], boolean[], "
  .. "double precision[], character varying[], bigint, integer, boolean)"

-- Prefetched jobs a stopping worker did not start, back to todo (see PgJobs:release).
local RELEASE = [[
UPDATE procrastinate_jobs AS job SET status = 'todo', worker_id = NULL
WHERE job.id = ANY ($1::bigint[]) AND job.status = 'doing' AND job.worker_id = $2::bigint
  AND NOT job.abort_requested
  AND (job.queueing_lock IS NULL OR NOT EXISTS (
        SELECT 1 FROM procrastinate_jobs AS other
        WHERE other.queueing_lock = job.queueing_lock AND other.status = 'todo'))
RETURNING job.id]]

--- The job store of a PgConnector.
function PgJobs.new(connector)
  return setmetatable({ connector = connector, fetch_sql = FETCH, finish_sql = FINISH,
    finish_fetch_sql = FINISH_FETCH, functions = {} }, PgJobs)
end

--- true when the database has the function of this signature (asked once per store).
function PgJobs:has_function(signature)
  local known = self.functions[signature]
  if known == nil then
    known = self.connector:execute("SELECT to_regprocedure($1) IS NOT NULL AS present", signature)[1].present
    self.functions[signature] = known
  end
  return known
end

local function array_literal(list, fmt)
  local parts = {}
  for i, v in ipairs(list) do parts[i] = fmt(v) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function quoted(s) return '"' .. s:gsub('[\\"]', "\\%0") .. '"' end

--- The queues parameter: nil (every queue) or a varchar[] literal.
function PgJobs.queues_literal(queues)
  if queues == nil then return nil end
  return array_literal(queues, quoted)
end

-- The worker refuses a database whose schema lacks something it needs, naming it, instead of
-- failing on every fetch.
local function check_schema(connector)
  local schema = require "tarry.schema"
  local state, missing = schema.inspect(connector)
  if state == "tarry" or state == "procrastinate" then return end
  local what = state == "absent" and "the database has no tarry schema (apply it with `tarry schema --apply`)"
    or "the database's schema is incomplete, missing: " .. table.concat(missing, ", ")
  error(require("tarry.core").error("schema", what), 0)
end

--- Register the worker (after checking the schema and pruning stalled workers); returns its id.
function PgJobs:register(stalled_after)
  check_schema(self.connector)
  if self.connector:execute(HAS_FAST)[1].fast then
    self.fetch_sql, self.finish_sql, self.fast = FAST_FETCH, FAST_FINISH, true
  end
  if self:has_function(TARRY_FINISH_FETCH) then self.finish_fetch_sql, self.can_skip_events = FAST_FINISH_FETCH, true end
  self.connector:execute("SELECT worker_id FROM procrastinate_prune_stalled_workers_v1($1)", stalled_after or 30)
  return self.connector:execute("SELECT worker_id FROM procrastinate_register_worker_v1()")[1].worker_id
end

--- Unregister the worker.
function PgJobs:unregister(worker_id)
  self.connector:execute("SELECT procrastinate_unregister_worker_v1($1)", worker_id)
end

--- Record the worker's heartbeat.
function PgJobs:heartbeat(worker_id)
  self.connector:execute("SELECT procrastinate_update_heartbeat_v1($1)", worker_id)
end

-- A fetch of some task names only (or all but them): for a worker with blocking tasks, which
-- takes as many of those as it has threads free (tarry/worker/blocking.lua). The rules are
-- tarry_fetch_jobs_v1's (eligibility, order, the lock rule over every task, SKIP LOCKED) with one
-- more condition; a plain statement, so it also works on a schema applied by Procrastinate.
local FILTERED_FETCH = [[
WITH candidate AS (
  SELECT job.id
  FROM procrastinate_jobs AS job
  WHERE job.status = 'todo'
    AND ($1::varchar[] IS NULL OR job.queue_name = ANY ($1::varchar[]))
    AND (job.scheduled_at IS NULL OR job.scheduled_at <= now())
    AND ((job.task_name = ANY ($4::varchar[])) <> $5::boolean)
    AND (job.lock IS NULL OR NOT EXISTS (
          SELECT 1 FROM procrastinate_jobs AS other
          WHERE other.lock = job.lock
            AND (other.status = 'doing'
                 OR (other.status = 'todo'
                     AND (other.priority > job.priority OR (other.priority = job.priority AND other.id < job.id))))))
  ORDER BY job.priority DESC, job.id ASC
  LIMIT $3::integer
  FOR UPDATE OF job SKIP LOCKED
), taken AS (
  UPDATE procrastinate_jobs AS job SET status = 'doing', worker_id = $2::bigint
  FROM candidate WHERE job.id = candidate.id
  RETURNING job.*
)
SELECT id, task_name, queue_name AS queue, priority, lock, queueing_lock, args, attempts,
       extract(epoch FROM scheduled_at)::float8 AS scheduled_at
FROM taken ORDER BY priority DESC, id ASC]]

--- Up to n jobs for this worker, in the protocol's order. queues: a list, or nil for all.
-- tasks (optional): only jobs of these task names, or with `exclude` all but them.
function PgJobs:fetch(queues, worker_id, n, tasks, exclude)
  if queues ~= self.queues then self.queues, self.literal = queues, PgJobs.queues_literal(queues) end
  if tasks then
    return self.connector:execute(FILTERED_FETCH, self.literal, worker_id, n, array_literal(tasks, quoted),
      exclude and "true" or "false")
  end
  return self.connector:execute_prepared(self.fetch_sql, self.literal, worker_id, n)
end

-- The four array literals of a list of outcomes, in one pass (the recorder's per-job cost: no
-- call per element; table.concat writes the ids as tostring does).
local function outcome_arrays(outcomes)
  local ids, statuses, dels, ats = {}, {}, {}, {}
  for i = 1, #outcomes do
    local o = outcomes[i]
    ids[i], statuses[i], dels[i] = o.id, o.status or "failed", o.delete and "t" or "f"
    ats[i] = o.retry_at and string.format("%.17g", o.retry_at) or "NULL"
  end
  local concat = table.concat
  return "{" .. concat(ids, ",") .. "}", "{" .. concat(statuses, ",") .. "}", "{" .. concat(dels, ",") .. "}",
    "{" .. concat(ats, ",") .. "}"
end

--- outcomes: list of {id=, status=, delete=, retry_at=} in one statement.
function PgJobs:finish(outcomes)
  local ids, statuses, dels, ats = outcome_arrays(outcomes)
  self.connector:execute_prepared(self.finish_sql, ids, statuses, dels, ats)
end

--- finish(outcomes), then fetch(queues, worker_id, n), in one statement and one transaction: the
-- fetch sees what the finish changed. All or nothing: an error leaves every outcome unrecorded.
-- lean: write no procrastinate_events rows for these changes (only with tarry's function; on a
-- schema without it, or with Procrastinate's row-level triggers, the events are written).
function PgJobs:finish_fetch(outcomes, queues, worker_id, n, lean)
  if queues ~= self.queues then self.queues, self.literal = queues, PgJobs.queues_literal(queues) end
  local ids, statuses, dels, ats = outcome_arrays(outcomes)
  if self.can_skip_events then
    return self.connector:execute_prepared(self.finish_fetch_sql, ids, statuses, dels, ats, self.literal, worker_id,
      n, lean and true or false)
  end
  return self.connector:execute_prepared(self.finish_fetch_sql, ids, statuses, dels, ats, self.literal, worker_id, n)
end

--- Put back to todo the jobs of this list that this worker fetched and did not start; returns the
-- ids put back. Not those whose abort was requested, nor those whose queueing lock a waiting job
-- holds now (todo cannot take them): the worker runs those.
function PgJobs:release(ids, worker_id)
  local out = {}
  for i, r in ipairs(self.connector:execute(RELEASE, array_literal(ids, tostring), worker_id)) do out[i] = r.id end
  return out
end

--- A listener on the channels of these queues (nil: every queue).
function PgJobs:listen(queues)
  local channels = {}
  if queues == nil then
    channels[1] = "procrastinate_any_queue_v1"
  else
    for i, q in ipairs(queues) do channels[i] = "procrastinate_queue_v1#" .. q end
  end
  return self.connector:listen(channels)
end

-- PROTOCOL.md 6.2 list_jobs_to_abort, for the jobs this worker runs (by primary key).
local ABORT_REQUESTED = [[
SELECT id FROM procrastinate_jobs WHERE id = ANY ($1::bigint[]) AND status = 'doing' AND abort_requested ORDER BY id]]

--- Of these running jobs, those with an abort requested.
function PgJobs:abort_requested(ids)
  local out = {}
  for i, r in ipairs(self.connector:execute(ABORT_REQUESTED, array_literal(ids, tostring))) do out[i] = r.id end
  return out
end

-- ---- the manager's part ----

local JOB_COLUMNS = [[
id, task_name, queue_name AS queue, priority, lock, queueing_lock, args, status::text AS status,
extract(epoch FROM scheduled_at)::float8 AS scheduled_at, attempts, abort_requested, worker_id]]

local GET_JOB = "SELECT " .. JOB_COLUMNS .. " FROM procrastinate_jobs WHERE id = $1"
local JOB_EVENTS = [[
SELECT id, type::text AS type, extract(epoch FROM at)::float8 AS at
FROM procrastinate_events WHERE job_id = $1 ORDER BY id]]

-- A NULL filter is no filter (each statement is planned with its actual parameters, so the
-- planner drops the disabled ones). Keyset pagination on the primary key.
local LIST_JOBS = "SELECT " .. JOB_COLUMNS .. [[ FROM procrastinate_jobs
WHERE ($1::varchar IS NULL OR queue_name = $1) AND ($2::varchar IS NULL OR task_name = $2)
  AND ($3::procrastinate_job_status[] IS NULL OR status = ANY ($3)) AND ($4::text IS NULL OR lock = $4)
  AND ($5::text IS NULL OR queueing_lock = $5) AND ($6::bigint IS NULL OR worker_id = $6)
  AND ($7::bigint IS NULL OR id > $7)
ORDER BY id LIMIT $8]]

-- Counts per status, grouped by one column (%s: a column of the fixed list below).
local COUNTS = [[
SELECT name, sum(n)::bigint AS jobs_count, json_object_agg(status, n) AS stats
FROM (SELECT %s AS name, status::text AS status, count(*) AS n FROM procrastinate_jobs
      WHERE ($1::varchar IS NULL OR queue_name = $1) AND ($2::varchar IS NULL OR task_name = $2)
        AND ($3::procrastinate_job_status[] IS NULL OR status = ANY ($3)) AND ($4::text IS NULL OR lock = $4)
        AND %s IS NOT NULL
      GROUP BY 1, 2) AS s
GROUP BY name ORDER BY name]]
local GROUP_COLUMNS = { queue = "queue_name", task = "task_name", lock = "lock" }

-- The running jobs of each worker, through the partial index on (worker_id) of doing jobs.
local WORKERS = [[
SELECT w.id, extract(epoch FROM w.last_heartbeat)::float8 AS last_heartbeat,
       extract(epoch FROM now() - w.last_heartbeat)::float8 AS heartbeat_age,
       (SELECT count(*) FROM procrastinate_jobs AS j WHERE j.worker_id = w.id AND j.status = 'doing') AS doing
FROM procrastinate_workers AS w ORDER BY w.id]]

-- PROTOCOL.md 6.2 select_stalled_jobs_by_heartbeat (ordered, for stable listings).
local STALLED = "SELECT " .. JOB_COLUMNS .. [[ FROM procrastinate_jobs
WHERE status = 'doing' AND ($2::varchar IS NULL OR queue_name = $2) AND ($3::varchar IS NULL OR task_name = $3)
  AND (worker_id IS NULL OR worker_id IN (
       SELECT id FROM procrastinate_workers WHERE last_heartbeat < now() - make_interval(secs => $1::float8)))
ORDER BY id]]

local CANCEL = "SELECT procrastinate_cancel_job_v1($1::bigint, $2::boolean, $3::boolean) AS id"
local RETRY = [[
SELECT procrastinate_retry_job_v2($1::bigint, coalesce(to_timestamp($2::float8), now()), $3::integer,
                                  $4::varchar, $5::varchar)]]
local STATUS = "SELECT status::text AS status FROM procrastinate_jobs WHERE id = $1"

-- PROTOCOL.md 6.2 delete_old_jobs: a job's age is that of its latest event (a scheduled event
-- counts at its planned time); jobs without events stay.
-- Latest event older than the cutoff = an event older than it and none since, so the search starts
-- from the old events (tarry_events_at_idx_v1): a run that finds little to delete reads little.
local DELETE_OLD = [[
WITH old AS (
  SELECT j.id FROM procrastinate_jobs AS j
  WHERE j.id IN (SELECT e.job_id FROM procrastinate_events AS e
                 WHERE e.at < now() - $1::float8 * interval '1 hour')
    AND j.status = ANY ($3::procrastinate_job_status[]) AND ($2::varchar IS NULL OR j.queue_name = $2)
    AND NOT EXISTS (SELECT 1 FROM procrastinate_events AS e
                    WHERE e.job_id = j.id AND e.at >= now() - $1::float8 * interval '1 hour')
), gone AS (
  DELETE FROM procrastinate_jobs AS j USING old WHERE j.id = old.id RETURNING 1
)
SELECT count(*) AS n FROM gone]]

local PERIODIC_ARGS = "$1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::integer, $6::varchar, $7::bigint, $8::jsonb"
-- tarry_defer_periodic_job_v1 (schema.sql) serialises the callers of one periodic task and skips
-- a tick older than the newest marker. Without it, the same check guards the protocol function.
local DEFER_PERIODIC_TARRY = "SELECT tarry_defer_periodic_job_v1(" .. PERIODIC_ARGS .. ") AS id"
local DEFER_PERIODIC = "SELECT procrastinate_defer_periodic_job_v2(" .. PERIODIC_ARGS .. [[) AS id
WHERE NOT EXISTS (SELECT 1 FROM procrastinate_periodic_defers
                  WHERE task_name = $4 AND periodic_id = $6 AND defer_timestamp >= $7
                    AND defer_timestamp <= extract(epoch FROM now())::bigint + 60)]]
local TARRY_PERIODIC = "tarry_defer_periodic_job_v1(character varying, character varying, character varying, "
  .. "character varying, integer, character varying, bigint, jsonb)"
local LAST_TICK = [[
SELECT max(defer_timestamp) AS tick FROM procrastinate_periodic_defers WHERE task_name = $1 AND periodic_id = $2]]

local function statuses_literal(list)
  if list == nil then return nil end
  return array_literal(list, tostring)
end

function PgJobs:get_job(id)
  return self.connector:execute(GET_JOB, id)[1]
end

function PgJobs:job_events(id)
  return self.connector:execute(JOB_EVENTS, id)
end

function PgJobs:list_jobs(f)
  return self.connector:execute(LIST_JOBS, f.queue, f.task, statuses_literal(f.status), f.lock,
    f.queueing_lock, f.worker_id, f.after_id, f.limit)
end

function PgJobs:cancel_job(id, abort, delete)
  return self.connector:execute(CANCEL, id, abort and true or false, delete and true or false)[1].id
end

-- The protocol function's own refusal (P0001), and a failed job that keeps its abort flag (23514).
local RETRY_REFUSALS = { P0001 = "invalid_status", ["23514"] = "abort_requested" }

function PgJobs:retry_job(id, at, priority, queue, lock)
  local ok, err = pcall(self.connector.execute, self.connector, RETRY, id, at, priority, queue, lock)
  if not ok then
    local why = type(err) == "table" and RETRY_REFUSALS[err.sqlstate]
    if why then return nil, why end
    error(err, 0)
  end
  return self.connector:execute(STATUS, id)[1].status
end

function PgJobs:counts(by, f)
  local column = assert(GROUP_COLUMNS[by], "counts: by must be queue, task or lock")
  return self.connector:execute(string.format(COUNTS, column, column), f.queue, f.task,
    statuses_literal(f.status), f.lock)
end

function PgJobs:workers()
  return self.connector:execute(WORKERS)
end

function PgJobs:stalled(seconds, queue, task)
  return self.connector:execute(STALLED, seconds, queue, task)
end

PgJobs.DELETE_OLD = DELETE_OLD     -- the specs check its plan

function PgJobs:delete_old(max_hours, queue, statuses)
  local n = self.connector:execute(DELETE_OLD, max_hours, queue, statuses_literal(statuses))[1].n
  require("tarry.dashboard.errors").prune(self.connector, max_hours)   -- their kept errors go too
  return n
end

function PgJobs:defer_periodic(job, periodic_id, tick)
  local args = {}
  for k, v in pairs(job.args or {}) do args[k] = v end
  args.timestamp = tick
  local sql = self:has_function(TARRY_PERIODIC) and DEFER_PERIODIC_TARRY or DEFER_PERIODIC
  local ok, rows = pcall(self.connector.execute, self.connector, sql, job.queue, job.lock, job.queueing_lock,
    job.task_name, job.priority or 0, periodic_id or "", tick, args)
  if not ok then
    if type(rows) == "table" and rows.code == "already_enqueued" then return nil, "already_enqueued" end
    error(rows, 0)
  end
  local id = rows[1] and rows[1].id
  if id == nil then return nil, "already_deferred" end
  return id
end

--- false on a schema without tarry_defer_periodic_job_v1 (one Procrastinate applied): two workers
-- may then both defer a tick one of them is late on (the worker warns).
function PgJobs:periodic_serialised() return self:has_function(TARRY_PERIODIC) end

function PgJobs:last_tick(task_name, periodic_id)
  return self.connector:execute(LAST_TICK, task_name, periodic_id or "")[1].tick
end

-- ---- stalled-job recovery (tarry/worker/recovery.lua) ----

-- The doing jobs whose worker sent no heartbeat for $1 seconds (or is gone), in the queues $2 (NULL:
-- every queue), not those of the worker $3, with ids after $4, at most $5, in id order.
local RECOVERABLE = [[
SELECT job.id, job.task_name, job.queue_name AS queue, job.lock, job.queueing_lock, job.attempts,
       job.abort_requested, job.worker_id, extract(epoch FROM now() - w.last_heartbeat)::float8 AS heartbeat_age
FROM procrastinate_jobs AS job LEFT JOIN procrastinate_workers AS w ON w.id = job.worker_id
WHERE job.status = 'doing' AND ($2::varchar[] IS NULL OR job.queue_name = ANY ($2))
  AND job.worker_id IS DISTINCT FROM $3::bigint AND job.id > $4::bigint
  AND (w.id IS NULL OR w.last_heartbeat < now() - $1::float8 * interval '1 second')
ORDER BY job.id LIMIT $5::integer]]

local RECOVER_FAST = [[
SELECT recovered_id AS id, new_status::text AS status
FROM tarry_recover_stalled_jobs_v1($1::float8, $2::bigint[], $3::bigint[], $4::procrastinate_job_status[], $5::float8[])]]
local TARRY_RECOVER = "tarry_recover_stalled_jobs_v1(double precision, bigint[], bigint[], "
  .. "procrastinate_job_status[], double precision[])"

-- Without tarry's function (a schema Procrastinate applied): one job per statement, the same
-- re-check on the row locked for the change, then the protocol function.
local RECOVER_ONE = [[
WITH target AS MATERIALIZED (
  SELECT job.id FROM procrastinate_jobs AS job
  WHERE job.id = $2::bigint AND job.status = 'doing' AND job.worker_id IS NOT DISTINCT FROM $3::bigint
    AND NOT EXISTS (SELECT 1 FROM procrastinate_workers AS w
                    WHERE w.id = job.worker_id AND w.last_heartbeat >= now() - $1::float8 * interval '1 second')
  FOR UPDATE OF job SKIP LOCKED
)
SELECT target.id, CASE WHEN $5::float8 IS NULL
    THEN (SELECT 1 FROM procrastinate_finish_job_v1(target.id, $4::procrastinate_job_status, false))
    ELSE (SELECT 1 FROM procrastinate_retry_job_v2(target.id, to_timestamp($5::float8), NULL, NULL, NULL)) END AS done
FROM target]]

function PgJobs:recoverable(seconds, queues, worker_id, after_id, limit)
  return self.connector:execute(RECOVERABLE, seconds, PgJobs.queues_literal(queues), worker_id, after_id or 0, limit)
end

-- One job on a schema without tarry_recover_stalled_jobs_v1: its status afterwards, or nil when it
-- was not (or no longer) stalled. A retry that a waiting job's queueing lock refuses ends it failed.
function PgJobs:recover_one(seconds, d)
  local c = self.connector
  local ok, rows = pcall(c.execute, c, RECOVER_ONE, seconds, d.id, d.worker_id, d.status or "failed", d.retry_at)
  if not ok and d.retry_at and type(rows) == "table" and rows.sqlstate == "23505" then
    rows = c:execute(RECOVER_ONE, seconds, d.id, d.worker_id, "failed", nil)
  elseif not ok then
    error(rows, 0)
  end
  if not rows[1] then return nil end
  return c:execute(STATUS, d.id)[1].status
end

function PgJobs:recover_stalled(seconds, decisions)
  if #decisions == 0 then return {} end
  if not self:has_function(TARRY_RECOVER) then
    local out = {}
    for _, d in ipairs(decisions) do
      local status = self:recover_one(seconds, d)
      if status then out[#out + 1] = { id = d.id, status = status } end
    end
    return out
  end
  local ids, workers, statuses, ats = {}, {}, {}, {}
  for i, d in ipairs(decisions) do
    ids[i], workers[i] = tostring(d.id), d.worker_id and tostring(d.worker_id) or "NULL"
    statuses[i] = d.retry_at and "NULL" or (d.status or "failed")
    ats[i] = d.retry_at and string.format("%.17g", d.retry_at) or "NULL"
  end
  local lit = function(list) return "{" .. table.concat(list, ",") .. "}" end
  return self.connector:execute(RECOVER_FAST, seconds, lit(ids), lit(workers), lit(statuses), lit(ats))
end

return PgJobs
