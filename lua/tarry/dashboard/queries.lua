--- The dashboard's SQL: listings with keyset pagination and indexed filters, counts that never
-- scan the whole jobs table, and the throughput/latency series from procrastinate_events.
-- Reads only procrastinate_* objects (and tarry_job_errors_v1 when present), so it works on any
-- database with Procrastinate's schema. Each function runs its statement through
-- connector:execute: inside a tarry coroutine on an open PgConnector it yields that coroutine only.
-- @module tarry.dashboard.queries
local core = require "tarry.core"
local Errors = require "tarry.dashboard.errors"

local M = {}

local JOB_COLUMNS = [[
id, task_name, queue_name AS queue, priority, lock, queueing_lock, args, status::text AS status,
extract(epoch FROM scheduled_at)::float8 AS scheduled_at, attempts, abort_requested, worker_id]]

M.STATUSES = { "todo", "doing", "succeeded", "failed", "cancelled", "aborted" }
local IS_STATUS = {}
for _, s in ipairs(M.STATUSES) do IS_STATUS[s] = true end
M.IS_STATUS = IS_STATUS

--- The argument search `q` as a jsonb value for `args @> $n`: `{"a":1}` (a JSON object) as is;
-- `key=value`: {key: value}, value read as JSON when it is a number, true, false, null or a
-- quoted string, else as the text itself. nil and a message when q is neither.
function M.search_value(q)
  if q:match("^%s*{") then
    local ok, v = pcall(core.json_decode, q)
    if not ok or type(v) ~= "table" or core.is_array(v) then
      return nil, "q: a JSON search must be an object, like {\"user\": 42}"
    end
    return core.json_encode(v)
  end
  local key, text = q:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
  if not key or key == "" then return nil, "q: search by key=value or by a JSON object like {\"user\": 42}" end
  local value = text
  if text:match("^%-?%d+%.?%d*$") or text == "true" or text == "false" or text == "null" or text:match('^".*"$') then
    local ok, v = pcall(core.json_decode, text)
    if ok then value = v end
  end
  return core.json_encode({ [key] = value })
end

--- The WHERE clause of a filter { status=, queue=, task=, lock=, q= } and its parameters (the
-- filter must be checked: see api.filter). Returns sql, params.
function M.where(f, params)
  params = params or {}
  local parts = {}
  local function add(sql, v)
    params[#params + 1] = v
    parts[#parts + 1] = (sql:gsub("%$%?", "$" .. #params))
  end
  if f.status then add("status = $?::procrastinate_job_status", f.status) end
  if f.queue then add("queue_name = $?", f.queue) end
  if f.task then add("task_name = $?", f.task) end
  if f.lock then add("lock = $?", f.lock) end
  if f.search then add("args @> $?::jsonb", f.search) end
  return #parts > 0 and table.concat(parts, " AND ") or "true", params
end

--- A page of jobs, newest first (order "desc", the default) or oldest first: at most `limit`,
-- after the job `after_id` of the previous page. Returns the rows and the next page's after_id
-- (nil on the last page). One index range scan on the primary key; the filters are evaluated
-- on the rows it meets (queue_name has an index too, the planner picks).
function M.list_jobs(c, f)
  local where, params = M.where(f)
  local desc = f.order ~= "asc"
  if f.after_id then
    params[#params + 1] = f.after_id
    where = where .. string.format(" AND id %s $%d", desc and "<" or ">", #params)
  end
  params[#params + 1] = f.limit + 1
  local sql = string.format("SELECT %s FROM procrastinate_jobs WHERE %s ORDER BY id %s LIMIT $%d",
    JOB_COLUMNS, where, desc and "DESC" or "ASC", #params)
  local rows = c:execute(sql, table.unpack(params, 1, #params))
  local next_after
  if #rows > f.limit then
    rows[#rows] = nil
    next_after = rows[#rows].id
  end
  return rows, next_after
end

--- The ids of the jobs a filter matches, `limit` at a time in id order after `after_id`.
function M.matching_ids(c, f, after_id, limit)
  local where, params = M.where(f)
  params[#params + 1] = after_id
  params[#params + 1] = limit
  local sql = string.format("SELECT id FROM procrastinate_jobs WHERE %s AND id > $%d ORDER BY id LIMIT $%d",
    where, #params - 1, #params)
  local ids = {}
  for i, r in ipairs(c:execute(sql, table.unpack(params, 1, #params))) do ids[i] = r.id end
  return ids
end

local function id_array(ids)
  local t = {}
  for i, id in ipairs(ids) do t[i] = string.format("%d", id) end
  return "{" .. table.concat(t, ",") .. "}"
end

-- One bulk step per action: the jobs of `ids` it applies to, through the protocol's functions
-- (retry: failed jobs without a pending abort flag; cancel: todo jobs), or a plain DELETE of the
-- jobs that are not running (what delete_old_jobs does; their events go by ON DELETE CASCADE).
local BULK = {
  retry = [[SELECT count(*) AS n FROM (SELECT procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL)
    FROM procrastinate_jobs WHERE id = ANY ($1::bigint[]) AND status = 'failed' AND NOT abort_requested) AS r]],
  cancel = [[SELECT count(r.id) AS n FROM (SELECT procrastinate_cancel_job_v1(id, false, false) AS id
    FROM procrastinate_jobs WHERE id = ANY ($1::bigint[]) AND status = 'todo') AS r]],
  delete = [[WITH gone AS (DELETE FROM procrastinate_jobs WHERE id = ANY ($1::bigint[]) AND status <> 'doing'
    RETURNING 1) SELECT count(*) AS n FROM gone]],
}

--- Apply `action` (retry, cancel, delete) to the jobs of ids; returns how many it changed.
function M.bulk(c, action, ids)
  if #ids == 0 then return 0 end
  local n = c:execute(assert(BULK[action]), id_array(ids))[1].n
  if action == "delete" and n > 0 then Errors.forget(c, id_array(ids)) end
  return n
end

--- Delete one job unless it is running: true when it was deleted.
function M.delete_job(c, id)
  local gone = c:execute("WITH gone AS (DELETE FROM procrastinate_jobs WHERE id = $1 AND status <> 'doing' RETURNING 1) "
    .. "SELECT count(*) AS n FROM gone", id)[1].n > 0
  if gone then Errors.forget(c, id_array({ id })) end
  return gone
end

-- Run now: a todo job scheduled later becomes due now, and the workers of its queue are woken
-- (the NOTIFY a defer sends: PROTOCOL.md §5).
local RUN_NOW = [[
WITH due AS (UPDATE procrastinate_jobs SET scheduled_at = now()
             WHERE id = $1 AND status = 'todo' AND scheduled_at > now() RETURNING id, queue_name)
SELECT id, pg_notify('procrastinate_queue_v1#' || queue_name, json_build_object('type', 'job_inserted', 'job_id', id)::text),
       pg_notify('procrastinate_any_queue_v1', json_build_object('type', 'job_inserted', 'job_id', id)::text)
FROM due]]

--- Make a scheduled todo job due now: true when it was scheduled later.
function M.run_now(c, id)
  return #c:execute(RUN_NOW, id) > 0
end

-- ---- counts that do not scan the table ----

-- The queues, by a loose index scan of procrastinate_jobs_queue_name_idx_v1 (one index probe per
-- queue, however many jobs), with exact counts of todo and doing jobs (the partial index
-- procrastinate_jobs_id_lock_idx_v1 holds only those) and, for finished jobs, how many finished
-- in the last `window` seconds (events, through tarry_events_at_idx_v1 when present).
local QUEUE_NAMES = [[
WITH RECURSIVE q(name) AS (
  (SELECT queue_name FROM procrastinate_jobs ORDER BY queue_name LIMIT 1)
  UNION ALL
  SELECT (SELECT queue_name FROM procrastinate_jobs WHERE queue_name > q.name ORDER BY queue_name LIMIT 1)
  FROM q WHERE q.name IS NOT NULL
)
SELECT name FROM q WHERE name IS NOT NULL LIMIT 1000]]

local LIVE_COUNTS = [[
SELECT queue_name AS name, status::text AS status, count(*) AS n FROM procrastinate_jobs
WHERE status = ANY ('{todo,doing}'::procrastinate_job_status[]) GROUP BY 1, 2]]

-- Each event's job through its primary key (a join lets the planner scan the whole jobs table),
-- and at most RECENT_CAP events, the newest: the counts stay bounded however busy the queues are
-- (and the plan's cost stays under PostgreSQL's default jit_above_cost: compiling it would cost
-- more than running it; measured on 1M jobs).
local RECENT_CAP = 10000
local RECENT_COUNTS = [[
SELECT (SELECT j.queue_name FROM procrastinate_jobs AS j WHERE j.id = e.job_id) AS name, e.type::text AS status,
       count(*) AS n
FROM (SELECT job_id, type FROM procrastinate_events
      WHERE at > now() - $1::float8 * interval '1 second'
        AND type = ANY ('{succeeded,failed,cancelled,aborted}'::procrastinate_job_event_type[])
      ORDER BY at DESC LIMIT $2) AS e
GROUP BY 1, 2]]

--- { { name=, todo=, doing=, succeeded=, failed=, cancelled=, aborted= }, ... } by name, and
-- true when the finished counts were capped; they are those of the last `window` seconds (at
-- most the newest RECENT_CAP events).
function M.queues(c, window)
  local out, by = {}, {}
  for i, r in ipairs(c:execute(QUEUE_NAMES)) do
    local q = { name = r.name }
    for _, s in ipairs(M.STATUSES) do q[s] = 0 end
    out[i], by[r.name] = q, q
  end
  local recent, seen = c:execute(RECENT_COUNTS, window, RECENT_CAP), 0
  for _, rows in ipairs { c:execute(LIVE_COUNTS), recent } do
    for _, r in ipairs(rows) do
      if by[r.name] then by[r.name][r.status] = r.n end
    end
  end
  for _, r in ipairs(recent) do seen = seen + r.n end
  return out, seen >= RECENT_CAP
end

-- The planner's row estimate of the whole table and of each status (pg_class, pg_stats): no scan.
local ESTIMATES = [[
SELECT (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'procrastinate_jobs'::regclass) AS total,
       (SELECT json_object_agg(v, f) FROM pg_stats AS s,
               unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS m(v, f)
        WHERE s.tablename = 'procrastinate_jobs' AND s.attname = 'status'
          AND s.schemaname = ANY (current_schemas(false))) AS freqs]]

--- { total=, by_status = { [status] = n } }: estimates (the latest ANALYZE's).
function M.estimates(c)
  local r = c:execute(ESTIMATES)[1]
  local by = {}
  for _, s in ipairs(M.STATUSES) do
    local f = type(r.freqs) == "table" and r.freqs[s]
    by[s] = f and math.floor(f * r.total + 0.5) or 0
  end
  return { total = r.total, by_status = by }
end

-- Per `bucket` seconds over the last `window` seconds: jobs succeeded and failed (events), and the
-- defer-to-start latency of the jobs started (a start's wait since its job was due: the deferred
-- event, or its schedule when later), from the newest LATENCY_SAMPLE starts of the window (three
-- index probes per start: the sample keeps it cheap, and under jit_above_cost, on busy queues).
local THROUGHPUT = [[
SELECT (floor(extract(epoch FROM at) / $2::integer) * $2::integer)::bigint AS t,
       count(*) FILTER (WHERE type = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE type = 'failed') AS failed
FROM procrastinate_events
WHERE at > now() - $1::float8 * interval '1 second' AND type = ANY ('{succeeded,failed}'::procrastinate_job_event_type[])
GROUP BY 1 ORDER BY 1]]

local LATENCY = [[
SELECT (floor(extract(epoch FROM s.at) / $2::integer) * $2::integer)::bigint AS t, count(*) AS started,
       avg(w)::float8 AS avg, percentile_cont(0.5) WITHIN GROUP (ORDER BY w)::float8 AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY w)::float8 AS p95, max(w)::float8 AS max
FROM (SELECT job_id, at FROM procrastinate_events
      WHERE at > now() - $1::float8 * interval '1 second' AND type = 'started'
      ORDER BY at DESC LIMIT $3) AS s
CROSS JOIN LATERAL (
  SELECT greatest(0, extract(epoch FROM s.at - greatest(d.at, coalesce(j.scheduled_at, d.at)))) AS w
  FROM procrastinate_events AS d JOIN procrastinate_jobs AS j ON j.id = d.job_id
  WHERE d.job_id = s.job_id AND d.type = 'deferred' ORDER BY d.id LIMIT 1) AS l
GROUP BY 1 ORDER BY 1]]
local LATENCY_SAMPLE = 1000

--- The series of the last `window` seconds in `bucket`-second steps: { throughput = { { t=,
-- succeeded=, failed= }, ... }, latency = { { t=, started=, avg=, p50=, p95=, max= }, ... } }.
function M.stats(c, window, bucket)
  return { throughput = c:execute(THROUGHPUT, window, bucket),
    latency = c:execute(LATENCY, window, bucket, LATENCY_SAMPLE) }
end

-- The doing jobs of each worker (the partial index on worker_id), at most 20 per worker.
local RUNNING = [[
SELECT w.id AS worker_id, r.id, r.task_name, r.queue_name AS queue
FROM procrastinate_workers AS w
CROSS JOIN LATERAL (SELECT id, task_name, queue_name FROM procrastinate_jobs AS j
                    WHERE j.worker_id = w.id AND j.status = 'doing' ORDER BY j.id LIMIT 20) AS r
ORDER BY w.id, r.id]]

--- What each worker runs: { [worker_id] = { { id=, task_name=, queue= }, ... } }.
function M.running(c)
  local by = {}
  for _, r in ipairs(c:execute(RUNNING)) do
    by[r.worker_id] = by[r.worker_id] or {}
    table.insert(by[r.worker_id], { id = r.id, task_name = r.task_name, queue = r.queue })
  end
  return by
end

--- The ticks deferred for a periodic task: the newest one, or nil.
function M.last_tick(c, task_name, periodic_id)
  return c:execute("SELECT max(defer_timestamp) AS tick FROM procrastinate_periodic_defers "
    .. "WHERE task_name = $1 AND periodic_id = $2", task_name, periodic_id or "")[1].tick
end

return M
