--- tarry.MemoryConnector: jobs kept in a Lua table, with the same rules as PostgreSQL (ids from
-- 1, the queueing-lock conflict, all-or-nothing batches; arguments were validated and encoded by
-- the app already). For users' own tests of their tasks, without a database.
-- @module tarry.memory
local core = require "tarry.core"

local Memory = { __name = "tarry.MemoryConnector" }
Memory.__index = Memory

local M = {}

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
  return setmetatable({ jobs = {}, next_id = 1 }, Memory)
end

local function conflict(self, lock, batch_locks)
  if lock == nil then return false end
  if batch_locks[lock] then return true end
  for _, j in pairs(self.jobs) do
    if j.status == "todo" and j.queueing_lock == lock then return true end
  end
  return false
end

--- connector:defer_jobs(jobs) -> ids (the app calls it; see runtime/app.c).
function Memory:defer_jobs(jobs)
  local seen = {}
  for _, j in ipairs(jobs) do
    if conflict(self, j.queueing_lock, seen) then
      local err = core.error("already_enqueued", string.format(
        "a job with the same queueing lock is already waiting (Key (queueing_lock)=(%s) already exists.)",
        j.queueing_lock))
      err.sqlstate, err.constraint = "23505", "procrastinate_jobs_queueing_lock_idx_v1"
      error(err, 0)
    end
    if j.queueing_lock then seen[j.queueing_lock] = true end
  end
  local ids = {}
  for i, j in ipairs(jobs) do
    local id = self.next_id
    self.next_id = id + 1
    self.jobs[id] = {
      id = id, queue_name = j.queue_name, task_name = j.task_name, priority = j.priority,
      lock = j.lock, queueing_lock = j.queueing_lock, args = core.json_decode(j.args),
      scheduled_at = j.scheduled_at, status = "todo", attempts = 0,
    }
    ids[i] = id
  end
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

--- Forget every job.
function Memory:reset()
  self.jobs, self.next_id = {}, 1
end

-- ---- the worker's job store (see tarry/pg_jobs.lua for the PostgreSQL one) ----

local MemoryJobs = {}
MemoryJobs.__index = MemoryJobs

--- The worker's job store over this connector (the interface tarry/pg_jobs.lua implements on PostgreSQL).
function Memory:job_store()
  return setmetatable({ conn = self }, MemoryJobs)
end

--- Register a worker; returns its id.
function MemoryJobs:register()
  self.conn.next_worker = (self.conn.next_worker or 0) + 1
  return self.conn.next_worker
end
--- Unregister a worker (nothing to do in memory).
function MemoryJobs:unregister() end
--- Record a heartbeat (nothing to do in memory).
function MemoryJobs:heartbeat() end
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
  local jobs, now, taken = self.conn.jobs, core.now(), {}
  for _ = 1, n do
    local best
    for _, j in pairs(jobs) do
      if j.status == "todo" and wanted(queues, j.queue_name) and (j.scheduled_at == nil or j.scheduled_at <= now)
          and (best == nil or before(j, best)) and lock_free(jobs, j) then
        best = j
      end
    end
    if not best then break end
    best.status, best.worker_id = "doing", worker_id
    taken[#taken + 1] = { id = best.id, task_name = best.task_name, queue = best.queue_name,
      priority = best.priority, lock = best.lock, queueing_lock = best.queueing_lock,
      args = best.args, attempts = best.attempts, scheduled_at = best.scheduled_at }
  end
  return taken
end

--- Record outcomes: {id=, status=, delete=, retry_at=} each.
function MemoryJobs:finish(outcomes)
  local jobs = self.conn.jobs
  for _, o in ipairs(outcomes) do
    local j = jobs[o.id]
    if j then
      j.attempts = j.attempts + (j.status == "doing" and 1 or 0)
      if o.retry_at then j.status, j.scheduled_at = "todo", o.retry_at
      elseif o.delete then jobs[o.id] = nil
      else j.status = o.status end
    end
  end
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
