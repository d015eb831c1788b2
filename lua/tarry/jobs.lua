--- app.jobs: the job manager (Procrastinate's JobManager). Look jobs up, list them, cancel,
-- abort and retry them, count them per queue, task and lock, see the workers, find stalled jobs
-- and delete old ones, on any connector whose store implements tarry/store.lua (PostgreSQL, the
-- MemoryConnector). Inside a tarry coroutine on a PgConnector every call yields only that
-- coroutine. Misuse raises a plain error at the caller's line; a job that cannot be retried
-- raises an error object (`code` "not_found" or "cannot_retry").
--
--     app.jobs:get(42)                       --> <tarry.Job #42 add succeeded queue=math attempts=1>
--     app.jobs:list{ status = "failed", limit = 50 }
--     app.jobs:cancel(42, { abort = true })  --> true when it took effect
--     app.jobs:retry(42)                     --> true (the job is todo again)
--     app.jobs:delete_old{ max_hours = 72 }  --> how many jobs were deleted
local core = require "tarry.core"
local options = require "tarry.options"
local Store = require "tarry.store"

local M = {}

-- ---- jobs ----

local Job = core.newmetatable("tarry.Job")
Job.__index = Job

--- <tarry.Job #42 add succeeded queue=math attempts=1>
function Job:__tostring()
  return string.format("<tarry.Job #%d %s %s queue=%s attempts=%d>", self.id, self.task_name, self.status,
    self.queue, self.attempts)
end

local function job(row, events)
  row.events = events
  return setmetatable(row, Job)
end
M.Job = Job

-- ---- validation ----

local STATUS = {}
for _, s in ipairs(Store.STATUSES) do STATUS[s] = true end
local FINISHED = { succeeded = true, failed = true, cancelled = true, aborted = true }

-- Misuse is blamed as options.lua does: `level` counts from the function's caller (2: the
-- caller of the manager's method that called the check).
local function fail(level, fmt, ...) error(string.format(fmt, ...), level + 1) end

local function check_id(id, what, level)
  local n = math.tointeger(id)
  if not n then fail(level + 1, "%s: the job id must be an integer, got %s", what, tostring(id)) end
  return n
end

local function check_statuses(v, what, allowed, name, level)
  if v == nil then return nil end
  local list = type(v) == "string" and { v } or v
  if type(list) ~= "table" or #list == 0 then
    fail(level + 1, "%s: %s must be a status or a list of statuses", what, name)
  end
  for _, s in ipairs(list) do
    if not allowed[s] then
      local names = {}
      for _, k in ipairs(Store.STATUSES) do if allowed[k] then names[#names + 1] = k end end
      fail(level + 1, "%s: %s cannot hold %s (use %s)", what, name, tostring(s), table.concat(names, ", "))
    end
  end
  return list
end

local function check_filters(f, what, known, level)
  f = options.check_known(f, known, what, level + 1)
  for _, k in ipairs { "queue", "task", "lock", "queueing_lock" } do
    if f[k] ~= nil and type(f[k]) ~= "string" then
      fail(level + 1, "%s: %s must be a string, got %s", what, k, type(f[k]))
    end
  end
  return f
end

-- ---- the manager ----

local Manager = core.newmetatable("tarry.JobManager")
Manager.__index = Manager

--- The manager of an app (app.jobs reaches it; one per app, made on first use).
function M.new(app)
  return setmetatable({ app = app }, Manager)
end

function Manager:store()
  local s = rawget(self, "_store")
  if not s then
    s = Store.of(self.app.connector, 3)
    rawset(self, "_store", s)
  end
  return s
end

--- jobs:get(id) -> the job with its fields and its events ({ id=, type=, at= }, oldest first),
-- or nil when there is no such job.
function Manager:get(id)
  id = check_id(id, "jobs:get", 2)
  local store = self:store()
  local row = store:get_job(id)
  return row and job(row, store:job_events(id))
end

local LIST = { queue = true, task = true, status = true, lock = true, queueing_lock = true, worker_id = true,
  limit = true, after_id = true }

--- jobs:list{ queue=, task=, status=, lock=, queueing_lock=, worker_id=, limit = 100, after_id= }
-- -> jobs in id order (without their events), and the after_id of the next page when this one
-- is full. `status` is a status or a list of them.
function Manager:list(f)
  f = check_filters(f, "jobs:list", LIST, 2)
  local q = { queue = f.queue, task = f.task, lock = f.lock, queueing_lock = f.queueing_lock,
    status = check_statuses(f.status, "jobs:list", STATUS, "status", 2),
    worker_id = f.worker_id and check_id(f.worker_id, "jobs:list", 2),
    after_id = f.after_id and check_id(f.after_id, "jobs:list", 2),
    limit = f.limit or 100 }
  if math.type(q.limit) ~= "integer" or q.limit < 1 then
    fail(2, "jobs:list: limit must be an integer >= 1, got %s", tostring(f.limit))
  end
  local rows = self:store():list_jobs(q)
  for i, r in ipairs(rows) do rows[i] = job(r) end
  local next_after = #rows > 0 and #rows == q.limit and rows[#rows].id or nil
  return rows, next_after
end

--- jobs:cancel(id, { abort = false, delete = false }) -> true when it took effect: a todo job is
-- cancelled (deleted, with delete = true); with abort = true a doing job gets an abort request
-- (its worker stops it; it ends `aborted`). false for a missing or finished job, and for a doing
-- one without abort.
function Manager:cancel(id, opts)
  id = check_id(id, "jobs:cancel", 2)
  opts = options.check_known(opts, { abort = true, delete = true }, "jobs:cancel", 2)
  return self:store():cancel_job(id, opts.abort == true, opts.delete == true) ~= nil
end

local function retry_error(store, id, why)
  local row = store:get_job(id)
  local err
  if not row then
    err = core.error("not_found", string.format("job %d does not exist", id))
  elseif why == "abort_requested" then
    err = core.error("cannot_retry", string.format("job %d is failed but its abort request is still set; "
      .. "procrastinate_retry_job_v2 refuses it (check_not_todo_abort_requested)", id))
  elseif why == "aborted_instead" then
    err = core.error("cannot_retry", string.format("job %d was doing with an abort requested: it is now failed, "
      .. "not retried (procrastinate_retry_job_v2)", id))
  else
    err = core.error("cannot_retry", string.format("job %d is %s: only failed jobs, and doing ones whose worker "
      .. "is gone (see jobs:stalled), can be retried", id, row.status))
  end
  err.job_id, err.status = id, row and row.status
  return err
end

--- jobs:retry(id, { at =, priority =, queue =, lock = }) -> true: a failed job (or a doing one
-- whose worker died) goes back to todo, at `at` (unix seconds; default now), with attempts + 1
-- and the new priority, queue or lock when given (procrastinate_retry_job_v2). Raises an error
-- object when it cannot: code "not_found", or "cannot_retry" with the job's `status`.
function Manager:retry(id, opts)
  id = check_id(id, "jobs:retry", 2)
  local what = "jobs:retry"
  opts = options.check_known(opts, { at = true, priority = true, queue = true, lock = true }, what, 2)
  if opts.at ~= nil and (type(opts.at) ~= "number" or opts.at ~= opts.at or math.abs(opts.at) == math.huge) then
    fail(2, "%s: at must be a unix time (a finite number of seconds)", what)
  end
  options.check_priority(opts.priority, what, 2)
  options.check_queue(opts.queue, what, 2)
  options.check_string(opts.lock, "lock", what, 2)
  local store = self:store()
  local status, why = store:retry_job(id, opts.at, opts.priority, opts.queue, opts.lock)
  if status == "todo" then return true end
  error(retry_error(store, id, status and "aborted_instead" or why), 2)
end

local function counted(rows)
  for i, r in ipairs(rows) do
    local c = { name = r.name, jobs_count = r.jobs_count }
    for _, s in ipairs(Store.STATUSES) do c[s] = 0 end
    for s, n in pairs(r.stats or {}) do c[s] = n end
    rows[i] = c
  end
  return rows
end

local COUNT_FILTERS = { queue = true, task = true, status = true, lock = true }

local function counts(self, by, f, what)     -- called by a method: level 3 is the user
  f = check_filters(f, what, COUNT_FILTERS, 3)
  local q = { queue = f.queue, task = f.task, lock = f.lock,
    status = check_statuses(f.status, what, STATUS, "status", 3) }
  return counted(self:store():counts(by, q))
end

--- jobs:queues{ queue=, task=, status=, lock= } -> { { name=, jobs_count=, todo=, doing=,
-- succeeded=, failed=, cancelled=, aborted= }, ... } ordered by name (Procrastinate's list_queues).
function Manager:queues(f) return (counts(self, "queue", f, "jobs:queues")) end
--- jobs:tasks{...}: the same, per task name.
function Manager:tasks(f) return (counts(self, "task", f, "jobs:tasks")) end
--- jobs:locks{...}: the same, per lock (jobs without a lock are not counted).
function Manager:locks(f) return (counts(self, "lock", f, "jobs:locks")) end

--- jobs:workers() -> { { id=, last_heartbeat=, heartbeat_age=, doing= }, ... }: the registered
-- workers, their last heartbeat (unix seconds, and how long ago) and how many jobs each runs.
function Manager:workers()
  return self:store():workers()
end

--- jobs:stalled{ seconds = 30, queue=, task= } -> the doing jobs whose worker has not sent a
-- heartbeat for `seconds` (or is gone), as Procrastinate's get_stalled_jobs.
function Manager:stalled(f)
  f = check_filters(f, "jobs:stalled", { seconds = true, queue = true, task = true }, 2)
  local seconds = f.seconds or 30
  if type(seconds) ~= "number" or not (seconds >= 0) then fail(2, "jobs:stalled: seconds must be a number >= 0") end
  local rows = self:store():stalled(seconds, f.queue, f.task)
  for i, r in ipairs(rows) do rows[i] = job(r) end
  return rows
end

--- jobs:delete_old{ max_hours =, queue =, statuses = { "succeeded" } } -> the number of jobs
-- deleted: those in one of `statuses` (succeeded, failed, cancelled, aborted) whose latest event
-- is older than max_hours, with their events (Procrastinate's delete_old_jobs).
function Manager:delete_old(f)
  f = check_filters(f, "jobs:delete_old", { max_hours = true, queue = true, statuses = true }, 2)
  if type(f.max_hours) ~= "number" or not (f.max_hours >= 0) or f.max_hours == math.huge then
    fail(2, "jobs:delete_old: max_hours must be a number of hours >= 0, got %s", tostring(f.max_hours))
  end
  local statuses = check_statuses(f.statuses, "jobs:delete_old", FINISHED, "statuses", 2) or { "succeeded" }
  return self:store():delete_old(f.max_hours, f.queue, statuses)
end

function Manager:__tostring()
  return string.format("<tarry.JobManager %s>", tostring(self.app.connector))
end

-- ---- the builtin retention task ----

M.REMOVE_OLD_JOBS = "builtin:procrastinate.builtin_tasks.remove_old_jobs"

local REMOVE_ARGS = { max_hours = true, queue = true, remove_failed = true, remove_cancelled = true,
  remove_aborted = true, timestamp = true }

local function flag(args, name)
  local v = args[name]
  if v == nil or v == core.null then return false end
  if type(v) ~= "boolean" then error(string.format("remove_old_jobs: %s must be a boolean, got %s", name, type(v)), 0) end
  return v
end

--- The task: Procrastinate's remove_old_jobs(max_hours, queue=None, remove_failed=False,
-- remove_cancelled=False, remove_aborted=False). A periodic schedule's `timestamp` is ignored.
local function remove_old_jobs(args, ctx)
  for k in pairs(args) do
    if not REMOVE_ARGS[k] then error(string.format("remove_old_jobs: unexpected argument %q", tostring(k)), 0) end
  end
  if type(args.max_hours) ~= "number" then
    error("remove_old_jobs: max_hours (a number of hours) is required", 0)
  end
  local queue = args.queue
  if queue == core.null then queue = nil end
  local statuses = { "succeeded" }
  if flag(args, "remove_failed") then statuses[#statuses + 1] = "failed" end
  if flag(args, "remove_cancelled") then statuses[#statuses + 1] = "cancelled" end
  if flag(args, "remove_aborted") then statuses[#statuses + 1] = "aborted" end
  return ctx.app.jobs:delete_old{ max_hours = args.max_hours, queue = queue, statuses = statuses }
end

--- The tasks every app knows without registering them (name -> definition), and their aliases.
M.builtin_tasks = {
  [M.REMOVE_OLD_JOBS] = { name = M.REMOVE_OLD_JOBS, fn = remove_old_jobs, queue = "builtin", priority = 0,
    aliases = { "procrastinate.builtin_tasks.remove_old_jobs" }, builtin = true },
}
M.builtin_aliases = { ["procrastinate.builtin_tasks.remove_old_jobs"] = M.REMOVE_OLD_JOBS }

return M
