--- Recovery: the jobs a dead worker left `doing` (kill -9, a crash, a lost machine) are put back
-- without user code. When it starts, and then every max(stalled_worker_timeout / 2,
-- update_heartbeat_interval) seconds (with jitter), each worker looks for the doing jobs of its
-- queues whose worker sent no heartbeat for stalled_worker_timeout seconds (or is gone). For each
-- job whose task this app knows, the task's retry rule decides, as if the job had raised an error
-- of code "stalled": retried (procrastinate_retry_job_v2), else failed; a job whose abort was
-- requested ends aborted. The store re-checks, in the statement that puts a job back, that it is
-- still doing with that silent worker, so that workers recovering at once put it back once.
-- A job of a task this app does not know is left to the workers that know it (logged once).
-- @module tarry.worker.recovery
local core = require "tarry.core"
local Log = require "tarry.log"
local retry = require "tarry.retry"
local Health = require "tarry.worker.health"

local Recovery = {}
Recovery.__index = Recovery

local PAGE = 200              -- stalled jobs looked at per statement
local MIN_INTERVAL = 0.5      -- seconds: however short the timeouts, no busier than this
local MAX_TOLD = 10000        -- unknown-task jobs remembered as logged already

function Recovery.new(w)
  return setmetatable({
    w = w,
    rounds = 0,            -- rounds done (the first one checks the settings)
    told = {},             -- job id -> true: its unknown task was logged already
    told_count = 0,
  }, Recovery)
end

--- Seconds between two rounds, before jitter.
function Recovery:interval()
  local o = self.w.opts
  return math.max(o.stalled_worker_timeout / 2, o.update_heartbeat_interval, MIN_INTERVAL)
end

local function who(job)
  if not job.worker_id then return "a worker that is gone" end
  if not job.heartbeat_age then return string.format("worker %d (its registration is gone)", job.worker_id) end
  return string.format("worker %d (no heartbeat for %.0f s)", job.worker_id, job.heartbeat_age)
end

local function stalled_error(job)
  return core.error("stalled", string.format("job %d %s was left running by %s", job.id, job.task_name, who(job)))
end

--- What to do with a stalled job: { id=, worker_id=, retry_at= } or { id=, worker_id=, status= },
-- and the words for the log line; nil for a job whose task this app cannot run.
function Recovery:decide(job)
  local def = self.w.app:find_task(job.task_name)
  if not def or not def.fn then return nil end
  local d = { id = job.id, worker_id = job.worker_id }
  if job.abort_requested then
    d.status = "aborted"
    return d, "aborted (its abort was requested)"
  end
  local judged, delay = pcall(retry.delay, def.retry, job.attempts, stalled_error(job))
  d.status = "failed"
  if not judged then return d, "failed (its retry_errors raised: " .. Log.error_text(delay) .. "; not retried)" end
  if not delay then return d, def.retry and "failed (no retries left)" or "failed (its task does not retry)" end
  d.status, d.retry_at = nil, core.now() + delay
  return d, delay == 0 and "retried" or string.format("retried in %g s", delay)
end

-- A stalled job this app cannot run: logged once per job.
function Recovery:leave(job)
  if self.told[job.id] then return end
  if self.told_count >= MAX_TOLD then self.told, self.told_count = {}, 0 end
  self.told[job.id], self.told_count = true, self.told_count + 1
  self.w.log:warning("stalled_unknown_task", string.format("job %d %s was left running by %s: not recovered " ..
    "here, task %q is not registered in this app (the workers that know it recover it)", job.id,
    job.task_name, who(job), job.task_name), { job_id = job.id, task = job.task_name, worker_id = job.worker_id })
end

-- The line for one job put back; `what` says what was decided, `status` what happened.
function Recovery:told_back(job, what, status, wanted_retry)
  if wanted_retry and status ~= "todo" then
    what = string.format("%s instead of retried (%s)", status, job.queueing_lock
      and "a waiting job holds its queueing lock" or "its abort was requested meanwhile")
  end
  self.w.log:warning("job_recovered", string.format("job %d %s was left running by %s: %s", job.id,
    job.task_name, who(job), what), { job_id = job.id, task = job.task_name, queue = job.queue,
    attempts = job.attempts, worker_id = job.worker_id, heartbeat_age = job.heartbeat_age, status = status })
end

-- Decide for one page of stalled jobs and put them back; returns how many went back.
function Recovery:recover(jobs)
  local w = self.w
  local decisions, chosen = {}, {}      -- chosen: job id -> { job, decision, words }
  for _, job in ipairs(jobs) do
    if not w.runner.jobs[job.id] then     -- running here (this worker was pruned, then came back)
      local d, what = self:decide(job)
      if d then
        decisions[#decisions + 1], chosen[job.id] = d, { job, d, what }
      else
        self:leave(job)
      end
    end
  end
  local back = w.store:recover_stalled(w.opts.stalled_worker_timeout, decisions)
  for _, r in ipairs(back) do
    local job, d, what = table.unpack(chosen[r.id])
    self:told_back(job, what, r.status, d.retry_at ~= nil)
  end
  if #back < #decisions then
    w.log:debugf("recovery_skipped", "%d stalled job(s) were put back by another worker meanwhile", #decisions - #back)
  end
  return #back
end

function Recovery:check_settings()
  local o = self.w.opts
  if o.update_heartbeat_interval >= o.stalled_worker_timeout then
    self.w.log:warning("heartbeat_too_slow", string.format("the heartbeat interval (%g s) is not shorter than " ..
      "stalled_worker_timeout (%g s): workers will take each other's running jobs for stalled ones",
      o.update_heartbeat_interval, o.stalled_worker_timeout))
  end
end

-- The stalled jobs with ids after `after` (one page), and how many of them went back.
function Recovery:page(after)
  local w = self.w
  local jobs = w.store:recoverable(w.opts.stalled_worker_timeout, w.opts.queues, w.liveness.worker_id, after, PAGE)
  return jobs, self:recover(jobs)
end

--- One round: every stalled job of this worker's queues, page by page; returns how many went back.
-- A failure is logged, and the next round tries again.
function Recovery:round()
  local w = self.w
  if self.rounds == 0 then self:check_settings() end
  self.rounds = self.rounds + 1
  local after, back = 0, 0
  while true do
    local ok, jobs, n = pcall(self.page, self, after)
    if not ok then
      if not w.health:failed("recovering stalled jobs", jobs) then
        w.log:warning("recovery_failed", "cannot recover stalled jobs, trying again later: " .. Health.brief(jobs))
      end
      break
    end
    w.health:ok()
    back = back + n
    if #jobs < PAGE then break end
    after = jobs[#jobs].id
  end
  if back > 0 then w.fetcher:wake() end     -- the retried ones may run here at once
  return back
end

--- The loop, until the worker stops (the first round runs before the first fetch: Worker:main).
function Recovery:loop()
  local w = self.w
  while not w.stopping do
    w.stop_event:wait(Health.jittered(self:interval()))
    if w.stopping then return end
    self:round()
  end
end

return Recovery
