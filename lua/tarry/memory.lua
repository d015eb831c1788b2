--- tarry.MemoryConnector: jobs kept in a Lua table, with the same rules as PostgreSQL (ids from
-- 1, the queueing-lock conflict, all-or-nothing batches; arguments were validated and encoded by
-- the app already). For users' own tests of their tasks, without a database.
local core = require "tarry.core"

local Memory = { __name = "tarry.MemoryConnector" }
Memory.__index = Memory

local M = {}

function M.new()
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

function Memory:open() return self end
function Memory:close() end
function Memory:get_sync_connector() return self end
function Memory:execute()
  error("tarry.MemoryConnector runs no SQL", 2)
end

function Memory:__tostring()
  local n = 0
  for _ in pairs(self.jobs) do n = n + 1 end
  return string.format("<tarry.MemoryConnector %d job%s>", n, n == 1 and "" or "s")
end

return M
