--- The job store: every operation on jobs that the worker and the job manager (`app.jobs`) need,
-- behind one interface. Two implementations: PostgreSQL (tarry/pg_jobs.lua, the protocol's
-- functions and statements of PROTOCOL.md) and the MemoryConnector's (tarry/memory.lua,
-- `connector:job_store()`), which follows the same rules in a Lua table. A connector written in
-- Lua may bring its own by having a `job_store()` method.
--
-- `Store.of(connector)` gives the store of a connector. On a PgConnector each method yields the
-- calling tarry coroutine while its statement runs (and blocks elsewhere); database errors raise
-- error objects (`code`, `sqlstate`). Arguments are validated by the callers (worker, manager):
-- the store assumes well-formed input.
--
-- Rows. A *job row* is a table { id=, task_name=, queue=, priority=, lock=, queueing_lock=,
-- args=, status=, scheduled_at=, attempts=, abort_requested=, worker_id= } (absent fields are
-- NULL; times are unix seconds, floats). `fetch` returns the columns the worker needs (no status,
-- abort_requested or worker_id). An *event row* is { id=, type=, at= }.
--
-- The worker's part:
--   store:register(stalled_after) -> worker_id   prune workers silent for stalled_after s, register
--   store:unregister(worker_id)
--   store:heartbeat(worker_id)
--   store:fetch(queues, worker_id, n) -> job rows   up to n jobs, now `doing` for this worker;
--                                                   queues: a list, or nil for every queue
--   store:fetch(queues, worker_id, n, tasks, exclude)  PostgreSQL's store only (the worker asks it
--                                 only there, for blocking tasks): only jobs of these task names,
--                                 or with exclude all but them
--   store:finish(outcomes)        outcomes: list of { id=, status=, delete=, retry_at= } (retry_at
--                                 set: retried to todo at that time; else finished with status)
--   store:listen(queues) -> listener or nil (nil: this store cannot notify, poll instead)
--   store:abort_requested(ids) -> the ids among `ids` (jobs this worker runs) that are doing
--                                 with an abort requested (the fallback of the abort NOTIFY)
--
-- The manager's part:
--   store:get_job(id) -> job row or nil
--   store:job_events(id) -> event rows, in id order
--   store:list_jobs(f) -> job rows in id order. f: { queue=, task=, status= (a list), lock=,
--                         queueing_lock=, worker_id=, after_id=, limit= }, each optional
--   store:cancel_job(id, abort, delete) -> id or nil       procrastinate_cancel_job_v1
--   store:retry_job(id, at, priority, queue, lock) -> status or nil, why
--                         procrastinate_retry_job_v2; at: unix seconds or nil (now). Returns the
--                         job's status afterwards ("todo", or "failed" for a doing job whose abort
--                         was requested), or nil and "invalid_status" (not found, or not doing or
--                         failed) or "abort_requested" (a failed job whose abort flag is still set)
--   store:counts(by, f) -> { { name=, jobs_count=, stats = { [status] = n } }, ... } ordered by
--                         name. by: "queue", "task" or "lock" (jobs without a lock not counted);
--                         f: { queue=, task=, status=, lock= }
--   store:workers() -> { { id=, last_heartbeat=, doing= }, ... } in id order
--   store:stalled(seconds, queue, task) -> job rows: doing, and their worker's heartbeat is older
--                         than `seconds` (or the worker row is gone)
--   store:delete_old(max_hours, queue, statuses) -> number of jobs deleted: those in one of
--                         `statuses` whose latest event is older than max_hours (jobs without
--                         events stay), optionally only in `queue`
--   store:defer_periodic(job, periodic_id, tick) -> id, or nil and why
--                         One tick of a periodic task, at most once across every worker (through
--                         procrastinate_defer_periodic_job_v2). job: { task_name=, queue=,
--                         priority=, lock=, queueing_lock=, args= }; args gets `timestamp = tick`.
--                         why: "already_deferred" (this tick, or a later one, was deferred
--                         already) or "already_enqueued" (a waiting job holds the queueing lock:
--                         the tick is skipped and may be deferred later)
--   store:last_tick(task_name, periodic_id) -> the newest deferred tick, or nil
--
-- Stalled-job recovery (every worker's, tarry/worker/recovery.lua):
--   store:recoverable(seconds, queues, worker_id, after_id, limit) -> job rows { id=, task_name=,
--                         queue=, lock=, queueing_lock=, attempts=, abort_requested=, worker_id=,
--                         heartbeat_age= (seconds; nil when the worker row is gone) }: the doing
--                         jobs whose worker sent no heartbeat for `seconds` (or is gone), in
--                         `queues` (nil: every queue), not those of `worker_id` (the caller's),
--                         with ids after `after_id`, at most `limit`, in id order
--   store:recover_stalled(seconds, decisions) -> { { id=, status= }, ... }: the jobs put back and
--                         their status afterwards. decisions: { { id=, worker_id=, retry_at= } (retry
--                         at that unix time; ends failed instead when a waiting job holds its
--                         queueing lock) or { id=, worker_id=, status= "failed"|"aborted" }, ... }.
--                         A job is put back only while it is still doing, with that worker
--                         (nil: none), and that worker still silent for `seconds` (or gone):
--                         checked in the change itself, so that many workers recovering at once
--                         put each job back once. Its worker_id is cleared.
local core = require "tarry.core"
local PgJobs = require "tarry.pg_jobs"

local Store = {}

--- The method names every store has (the specs check both implementations against it).
Store.METHODS = {
  "register", "unregister", "heartbeat", "fetch", "finish", "listen", "abort_requested",
  "get_job", "job_events", "list_jobs", "cancel_job", "retry_job", "counts", "workers", "stalled",
  "delete_old", "defer_periodic", "last_tick", "recoverable", "recover_stalled",
}

--- The job statuses, in the enum's order (without the legacy, never written `aborting`).
Store.STATUSES = { "todo", "doing", "succeeded", "failed", "cancelled", "aborted" }

--- The store of a connector: PostgreSQL for the C connectors, else the connector's job_store().
-- Raises (at the caller's `level`) for a value that has neither.
function Store.of(connector, level)
  local t = core.type(connector)
  if t == "PgConnector" or t == "SyncPgConnector" then return PgJobs.new(connector) end
  local ok, make = pcall(function() return connector.job_store end)
  if ok and type(make) == "function" then return connector:job_store() end
  error("no job store for this connector (" .. tostring(connector) .. "): expected a tarry.PgConnector, "
    .. "a tarry.SyncPgConnector, a tarry.MemoryConnector or an object with job_store()", (level or 1) + 1)
end

return Store
