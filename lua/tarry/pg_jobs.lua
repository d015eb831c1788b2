--- The worker's job store on PostgreSQL: the protocol's functions, batched. Only the
-- procrastinate_* functions are used, so a schema applied by Procrastinate works unchanged.
-- Every method runs through connector:execute, so inside a tarry coroutine it yields.
-- @module tarry.pg_jobs
local PgJobs = {}
PgJobs.__index = PgJobs

-- n fetches in one round trip: procrastinate_fetch_job_v2 called again while the previous call
-- found a job. Each call sees the jobs the previous ones took (a volatile function's statements
-- see earlier changes of the transaction), so the lock rule holds inside a batch as well.
local FETCH = [[
WITH RECURSIVE r(n, job) AS (
  SELECT 1, procrastinate_fetch_job_v2($1::varchar[], $2::bigint)
  UNION ALL
  SELECT n + 1, procrastinate_fetch_job_v2($1::varchar[], $2::bigint)
  FROM r WHERE (r.job).id IS NOT NULL AND n < $3::integer
)
SELECT (job).id, (job).task_name, (job).queue_name AS queue, (job).priority, (job).lock,
       (job).queueing_lock, (job).args, (job).attempts,
       extract(epoch FROM (job).scheduled_at)::float8 AS scheduled_at
FROM r WHERE (job).id IS NOT NULL ORDER BY n]]

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

--- The job store of a PgConnector.
function PgJobs.new(connector)
  return setmetatable({ connector = connector, fetch_sql = FETCH, finish_sql = FINISH }, PgJobs)
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

--- Up to n jobs for this worker, in the protocol's order. queues: a list, or nil for all.
function PgJobs:fetch(queues, worker_id, n)
  if queues ~= self.queues then self.queues, self.literal = queues, PgJobs.queues_literal(queues) end
  return self.connector:execute(self.fetch_sql, self.literal, worker_id, n)
end

--- outcomes: list of {id=, status=, delete=, retry_at=} in one statement.
function PgJobs:finish(outcomes)
  local fmt_num = function(v) return v and string.format("%.17g", v) or "NULL" end
  local ids, statuses, dels, ats = {}, {}, {}, {}
  for i, o in ipairs(outcomes) do
    ids[i], statuses[i], dels[i], ats[i] = o.id, o.status or "failed", o.delete and "t" or "f", o.retry_at or false
  end
  self.connector:execute(self.finish_sql, array_literal(ids, tostring), array_literal(statuses, tostring),
    array_literal(dels, tostring), array_literal(ats, function(v) return fmt_num(v or nil) end))
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

return PgJobs
