--- tarry.MemoryConnector: jobs kept in a Lua table, with the same rules as PostgreSQL (ids from
-- 1, the queueing-lock conflict, all-or-nothing batches, the event log of each job, workers and
-- periodic markers; arguments were validated and encoded by the app already). For users' own
-- tests of their tasks, without a database. `connector:job_store()` is its job store (the
-- interface of tarry/store.lua).
-- @module tarry.memory
local core = require "tarry.core"

local Memory = core.newmetatable("tarry.MemoryConnector")
Memory.__index = Memory

local M = {}

local function fresh_state(self)
  self.jobs, self.next_id = {}, 1
  self.events, self.next_event = {}, 1     -- job id -> { { id=, type=, at= }, ... }
  self.workers, self.next_worker = {}, 0   -- worker id -> { id=, last_heartbeat= }
  self.markers = {}                        -- periodic defers: { task_name=, periodic_id=, defer_timestamp=, job_id= }
  return self
end

--- tarry.MemoryConnector(): a connector that keeps jobs in memory. It takes no options; an
-- options table, if given, must be empty (a typo is refused, as for the other connectors).
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("tarry.MemoryConnector: options must be a table, got " .. type(opts), 2)
  end
  local key = opts and next(opts)
  if key ~= nil then
    error(string.format("tarry.MemoryConnector: unknown option '%s' (it takes none)", tostring(key)), 2)
  end
  return fresh_state(setmetatable({}, Memory))
end

-- ---- the rules of the tables (PROTOCOL.md sections 3 to 5) ----

local function log_event(self, id, type, at)
  local list = self.events[id] or {}
  self.events[id] = list
  list[#list + 1] = { id = self.next_event, type = type, at = at or core.now() }
  self.next_event = self.next_event + 1
end

-- The event each status change writes (section 5); other changes write none.
local STATUS_EVENTS = {
  ["todo>doing"] = "started", ["doing>todo"] = "deferred_for_retry", ["doing>failed"] = "failed",
  ["doing>succeeded"] = "succeeded", ["todo>cancelled"] = "cancelled", ["todo>failed"] = "cancelled",
  ["todo>succeeded"] = "cancelled", ["doing>aborted"] = "aborted", ["failed>todo"] = "retried",
}

local function set_status(self, j, status)
  local event = STATUS_EVENTS[j.status .. ">" .. status]
  j.status = status
  if event then log_event(self, j.id, event) end
end

-- Deleting a job takes its events along and unlinks the periodic markers that point to it.
local function delete(self, id)
  self.jobs[id], self.events[id] = nil, nil
  for _, m in ipairs(self.markers) do if m.job_id == id then m.job_id = nil end end
end

local function waiting_with(self, lock)
  for _, j in pairs(self.jobs) do
    if j.status == "todo" and j.queueing_lock == lock then return j end
  end
  return nil
end

local function already_enqueued(lock)
  local err = core.error("already_enqueued", string.format(
    "a job with the same queueing lock is already waiting (Key (queueing_lock)=(%s) already exists.)", lock))
  err.sqlstate, err.constraint = "23505", "procrastinate_jobs_queueing_lock_idx_v1"
  return err
end

-- Insert one job (args already decoded): scheduled then deferred events, as the triggers order them.
local function insert(self, j, args)
  local id = self.next_id
  self.next_id = id + 1
  self.jobs[id] = {
    id = id, queue_name = j.queue_name, task_name = j.task_name, priority = j.priority,
    lock = j.lock, queueing_lock = j.queueing_lock, args = args,
    scheduled_at = j.scheduled_at, status = "todo", attempts = 0,
  }
  if j.scheduled_at then log_event(self, id, "scheduled", j.scheduled_at) end
  log_event(self, id, "deferred")
  return id
end

--- connector:defer_jobs(jobs) -> ids (the app calls it; see runtime/app.c).
function Memory:defer_jobs(jobs)
  local seen = {}
  for _, j in ipairs(jobs) do
    local lock = j.queueing_lock
    if lock ~= nil and (seen[lock] or waiting_with(self, lock)) then error(already_enqueued(lock), 0) end
    if lock then seen[lock] = true end
  end
  local ids = {}
  for i, j in ipairs(jobs) do ids[i] = insert(self, j, core.json_decode(j.args)) end
  return ids
end

--- The jobs, in id order, optionally only those of one task.
function Memory:list_jobs(task_name)
  local out = {}
  for id = 1, self.next_id - 1 do
    local j = self.jobs[id]
    if j and (task_name == nil or j.task_name == task_name) then out[#out + 1] = j end
  end
  return out
end

--- Forget every job (and event, worker and periodic marker).
function Memory:reset()
  fresh_state(self)
end

-- ---- the job store (tarry/store.lua documents the interface) ----

local MemoryJobs = {}
MemoryJobs.__index = MemoryJobs

--- The worker's job store over this connector (the interface tarry/pg_jobs.lua implements on PostgreSQL).
function Memory:job_store()
  return setmetatable({ conn = self }, MemoryJobs)
end

local function forget_worker(conn, id)
  conn.workers[id] = nil
  for _, j in pairs(conn.jobs) do if j.worker_id == id then j.worker_id = nil end end
end

function MemoryJobs:register(stalled_after)
  local conn, now = self.conn, core.now()
  for id, w in pairs(conn.workers) do
    if w.last_heartbeat < now - (stalled_after or 30) then forget_worker(conn, id) end
  end
  conn.next_worker = conn.next_worker + 1
  conn.workers[conn.next_worker] = { id = conn.next_worker, last_heartbeat = now }
  return conn.next_worker
end

function MemoryJobs:unregister(worker_id) forget_worker(self.conn, worker_id) end

function MemoryJobs:heartbeat(worker_id)
  local w = self.conn.workers[worker_id]
  if w then w.last_heartbeat = core.now() end
end

--- No LISTEN in memory: returns nil, the worker polls.
function MemoryJobs:listen() return nil end

local function wanted(queues, q)
  if queues == nil then return true end
  for _, name in ipairs(queues) do if name == q then return true end end
  return false
end

-- Ranked before j in (priority DESC, id ASC) order.
local function before(a, b)
  return a.priority > b.priority or (a.priority == b.priority and a.id < b.id)
end

-- The protocol's lock rule: a same-lock job that is doing, or todo and ranked earlier, blocks j.
local function lock_free(jobs, j)
  if j.lock == nil then return true end
  for _, o in pairs(jobs) do
    if o ~= j and o.lock == j.lock and (o.status == "doing" or (o.status == "todo" and before(o, j))) then
      return false
    end
  end
  return true
end

--- Up to n due jobs of these queues (nil: all), by the protocol's order and lock rule.
function MemoryJobs:fetch(queues, worker_id, n)
  local conn = self.conn
  local jobs, now, taken = conn.jobs, core.now(), {}
  for _ = 1, n do
    local best
    for _, j in pairs(jobs) do
      if j.status == "todo" and wanted(queues, j.queue_name) and (j.scheduled_at == nil or j.scheduled_at <= now)
          and (best == nil or before(j, best)) and lock_free(jobs, j) then
        best = j
      end
    end
    if not best then break end
    set_status(conn, best, "doing")
    best.worker_id = worker_id
    taken[#taken + 1] = { id = best.id, task_name = best.task_name, queue = best.queue_name,
      priority = best.priority, lock = best.lock, queueing_lock = best.queueing_lock,
      args = best.args, attempts = best.attempts, scheduled_at = best.scheduled_at }
  end
  return taken
end

-- procrastinate_retry_job_v2 on a table row: "todo", "failed", or nil and why.
local function retry(conn, j, at, priority, queue, lock)
  if not j or (j.status ~= "doing" and j.status ~= "failed") then return nil, "invalid_status" end
  if j.status == "doing" and j.abort_requested then
    set_status(conn, j, "failed")
    return "failed"
  end
  if j.abort_requested then return nil, "abort_requested" end
  local ql = j.queueing_lock
  local holder = ql and waiting_with(conn, ql)
  if holder and holder ~= j then error(already_enqueued(ql), 0) end
  j.attempts, j.scheduled_at = j.attempts + 1, at
  j.priority, j.queue_name, j.lock = priority or j.priority, queue or j.queue_name, lock or j.lock
  if at then log_event(conn, j.id, "scheduled", at) end     -- fires before the status event
  set_status(conn, j, "todo")
  return "todo"
end

-- procrastinate_finish_job_v1 on a table row (a missing or finished job is left alone).
local function finish(conn, j, status, del)
  if not j or (j.status ~= "todo" and j.status ~= "doing") then return end
  if del then return delete(conn, j.id) end
  if j.status == "doing" then j.attempts = j.attempts + 1 end
  j.abort_requested = nil
  set_status(conn, j, status)
end

--- Record outcomes: {id=, status=, delete=, retry_at=} each.
function MemoryJobs:finish(outcomes)
  local conn = self.conn
  for _, o in ipairs(outcomes) do
    local j = conn.jobs[o.id]
    if o.retry_at then retry(conn, j, o.retry_at) else finish(conn, j, o.status or "failed", o.delete) end
  end
end

--- Of these running jobs, those with an abort requested (the worker polls: no NOTIFY in memory).
function MemoryJobs:abort_requested(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local j = self.conn.jobs[id]
    if j and j.status == "doing" and j.abort_requested then out[#out + 1] = id end
  end
  table.sort(out)
  return out
end

-- ---- the manager's part ----

local function row(j)
  return { id = j.id, task_name = j.task_name, queue = j.queue_name, priority = j.priority, lock = j.lock,
    queueing_lock = j.queueing_lock, args = j.args, status = j.status, scheduled_at = j.scheduled_at,
    attempts = j.attempts, abort_requested = j.abort_requested == true, worker_id = j.worker_id }
end

function MemoryJobs:get_job(id)
  local j = self.conn.jobs[id]
  return j and row(j)
end

function MemoryJobs:job_events(id)
  local out = {}
  for i, e in ipairs(self.conn.events[id] or {}) do out[i] = { id = e.id, type = e.type, at = e.at } end
  return out
end

local function in_list(list, v)
  if list == nil then return true end
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

local function matches(j, f)
  return (f.queue == nil or j.queue_name == f.queue) and (f.task == nil or j.task_name == f.task)
    and in_list(f.status, j.status) and (f.lock == nil or j.lock == f.lock)
    and (f.queueing_lock == nil or j.queueing_lock == f.queueing_lock)
    and (f.worker_id == nil or j.worker_id == f.worker_id)
end

function MemoryJobs:list_jobs(f)
  local out = {}
  for id = (f.after_id or 0) + 1, self.conn.next_id - 1 do
    local j = self.conn.jobs[id]
    if j and matches(j, f) then
      if f.limit and #out >= f.limit then break end
      out[#out + 1] = row(j)
    end
  end
  return out
end

function MemoryJobs:cancel_job(id, abort, del)
  local conn = self.conn
  local j = conn.jobs[id]
  if not j then return nil end
  if del and j.status == "todo" then
    delete(conn, id)
    return id
  end
  if abort and (j.status == "todo" or j.status == "doing") then
    j.abort_requested = true
    log_event(conn, id, "abort_requested")
    if j.status == "todo" then set_status(conn, j, "cancelled") end
    return id
  end
  if not abort and j.status == "todo" then
    set_status(conn, j, "cancelled")
    return id
  end
  return nil
end

function MemoryJobs:retry_job(id, at, priority, queue, lock)
  return retry(self.conn, self.conn.jobs[id], at or core.now(), priority, queue, lock)
end

local GROUP_FIELDS = { queue = "queue_name", task = "task_name", lock = "lock" }

function MemoryJobs:counts(by, f)
  local field = assert(GROUP_FIELDS[by], "counts: by must be queue, task or lock")
  local groups, names = {}, {}
  for _, j in pairs(self.conn.jobs) do
    local name = j[field]
    if name ~= nil and matches(j, { queue = f.queue, task = f.task, status = f.status, lock = f.lock }) then
      local g = groups[name]
      if not g then
        g = { name = name, jobs_count = 0, stats = {} }
        groups[name], names[#names + 1] = g, name
      end
      g.jobs_count = g.jobs_count + 1
      g.stats[j.status] = (g.stats[j.status] or 0) + 1
    end
  end
  table.sort(names)
  local out = {}
  for i, name in ipairs(names) do out[i] = groups[name] end
  return out
end

function MemoryJobs:workers()
  local conn, now, out = self.conn, core.now(), {}
  for id = 1, conn.next_worker do
    local w = conn.workers[id]
    if w then
      local doing = 0
      for _, j in pairs(conn.jobs) do if j.worker_id == id and j.status == "doing" then doing = doing + 1 end end
      out[#out + 1] = { id = id, last_heartbeat = w.last_heartbeat, heartbeat_age = now - w.last_heartbeat,
        doing = doing }
    end
  end
  return out
end

function MemoryJobs:stalled(seconds, queue, task)
  local conn, limit, out = self.conn, core.now() - seconds, {}
  for id = 1, conn.next_id - 1 do
    local j = conn.jobs[id]
    if j and j.status == "doing" and matches(j, { queue = queue, task = task }) then
      local w = j.worker_id and conn.workers[j.worker_id]
      if not w or w.last_heartbeat < limit then out[#out + 1] = row(j) end
    end
  end
  return out
end

function MemoryJobs:delete_old(max_hours, queue, statuses)
  local conn, limit, n = self.conn, core.now() - max_hours * 3600, 0
  for id, j in pairs(conn.jobs) do
    local latest
    for _, e in ipairs(conn.events[id] or {}) do latest = math.max(latest or e.at, e.at) end
    if latest and latest < limit and in_list(statuses, j.status) and (queue == nil or j.queue_name == queue) then
      delete(conn, id)
      n = n + 1
    end
  end
  return n
end

local function newest_marker(conn, task_name, periodic_id)
  local newest
  for _, m in ipairs(conn.markers) do
    if m.task_name == task_name and m.periodic_id == periodic_id and (newest == nil or m.defer_timestamp > newest) then
      newest = m.defer_timestamp
    end
  end
  return newest
end

function MemoryJobs:defer_periodic(job, periodic_id, tick)
  local conn = self.conn
  periodic_id = periodic_id or ""
  local newest = newest_marker(conn, job.task_name, periodic_id)
  if newest and newest >= tick and newest <= core.now() + 60 then return nil, "already_deferred" end
  if job.queueing_lock and waiting_with(conn, job.queueing_lock) then return nil, "already_enqueued" end
  local args = {}
  for k, v in pairs(job.args or {}) do args[k] = v end
  args.timestamp = tick
  local id = insert(conn, { queue_name = job.queue, task_name = job.task_name, priority = job.priority or 0,
    lock = job.lock, queueing_lock = job.queueing_lock }, args)
  local kept = {}
  for _, m in ipairs(conn.markers) do
    if not (m.task_name == job.task_name and m.periodic_id == periodic_id and m.defer_timestamp < tick) then
      kept[#kept + 1] = m
    end
  end
  kept[#kept + 1] = { task_name = job.task_name, periodic_id = periodic_id, defer_timestamp = tick, job_id = id }
  conn.markers = kept
  return id
end

function MemoryJobs:last_tick(task_name, periodic_id)
  return newest_marker(self.conn, task_name, periodic_id or "")
end

-- ---- stalled-job recovery (tarry/worker/recovery.lua) ----

-- A doing job whose worker sent no heartbeat since `limit` (or is gone), and its heartbeat's age.
local function stalled_since(conn, j, limit, now)
  if j.status ~= "doing" then return false end
  local w = j.worker_id and conn.workers[j.worker_id]
  if w and w.last_heartbeat >= limit then return false end
  return true, w and now - w.last_heartbeat
end

function MemoryJobs:recoverable(seconds, queues, worker_id, after_id, limit)
  local conn, now, out = self.conn, core.now(), {}
  for id = (after_id or 0) + 1, conn.next_id - 1 do
    local j = conn.jobs[id]
    if j and wanted(queues, j.queue_name) and j.worker_id ~= worker_id then
      local stalled, age = stalled_since(conn, j, now - seconds, now)
      if stalled then
        out[#out + 1] = { id = j.id, task_name = j.task_name, queue = j.queue_name, lock = j.lock,
          queueing_lock = j.queueing_lock, attempts = j.attempts, abort_requested = j.abort_requested == true,
          worker_id = j.worker_id, heartbeat_age = age }
        if limit and #out >= limit then break end
      end
    end
  end
  return out
end

function MemoryJobs:recover_stalled(seconds, decisions)
  local conn, now, out = self.conn, core.now(), {}
  for _, d in ipairs(decisions) do
    local j = conn.jobs[d.id]
    if j and j.worker_id == d.worker_id and stalled_since(conn, j, now - seconds, now) then
      j.worker_id = nil
      if d.retry_at and not (j.queueing_lock and waiting_with(conn, j.queueing_lock)) then
        retry(conn, j, d.retry_at)
      else
        finish(conn, j, d.status or "failed", false)
      end
      out[#out + 1] = { id = j.id, status = j.status }
    end
  end
  return out
end

--- Nothing to open: returns the connector.
function Memory:open() return self end
--- Nothing to close.
function Memory:close() end
--- The connector itself (every call is synchronous).
function Memory:get_sync_connector() return self end
--- Misuse: a MemoryConnector runs no SQL.
function Memory:execute()
  error("tarry.MemoryConnector runs no SQL", 2)
end

--- `<tarry.MemoryConnector N jobs>`.
function Memory:__tostring()
  local n = 0
  for _ in pairs(self.jobs) do n = n + 1 end
  return string.format("<tarry.MemoryConnector %d job%s>", n, n == 1 and "" or "s")
end

return M
