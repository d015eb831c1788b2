--- Running jobs: each fetched job runs in its own tarry coroutine, with its context (`ctx`); its
-- outcome (succeeded, failed, retried, aborted) goes to the recorder and its slot back to the
-- fetcher. A running job can be asked to stop, by an abort request (the notifier hands it over)
-- or by its task's timeout: the error object { code = "aborted" | "timeout" } is raised inside the
-- job at its next yield point (handle:interrupt), and ctx:should_abort() tells a loop that does
-- not yield. The job may catch the error and clean up; it ends aborted (never retried), or failed
-- for a timeout (retried if its task says so), whether it then raised or returned.
-- @module tarry.worker.runner
local core = require "tarry.core"
local Log = require "tarry.log"
local retry = require "tarry.retry"

local Runner = {}
Runner.__index = Runner

--- What a task receives as its second argument.
-- @type Context
local Context = {}
Context.__index = Context
Runner.Context = Context

-- ctx -> the runner's entry of its job (weak: a context a task kept does not keep the entry).
local entries = setmetatable({}, { __mode = "k" })

-- Seconds between the turns of the worker's loop that ctx:should_abort() gives.
local TURN_EVERY = 0.02

--- ctx:sleep(seconds): parks this job only; the worker's other jobs go on.
function Context:sleep(seconds) return core.sleep(seconds) end

--- ctx:should_abort() -> true once the job was asked to stop: an abort was requested, or its
-- task's timeout passed. For loops that do not yield (where no abort can be raised): it lets
-- the worker's loop turn (at most every 20 ms) so that the request can arrive meanwhile.
function Context:should_abort()
  local entry = entries[self]
  if not entry then return false end
  local runner = entry.runner
  entry.shielded = true            -- a stop asked for meanwhile is not raised: this returns it
  if not entry.stop and core.in_coroutine() and core.now() - entry.turned >= TURN_EVERY then
    entry.turned = core.now()
    core.sleep(0)
  end
  if not entry.stop and entry.deadline and core.now() >= entry.deadline then runner:stop(entry, "timeout") end
  entry.shielded = false
  return entry.stop ~= nil
end

function Runner.new(w)
  return setmetatable({
    w = w,
    running = 0,           -- jobs whose coroutine has not finished
    jobs = {},             -- job id -> { job=, handle=, stop=, timeout=, deadline=, timer=, ... }
  }, Runner)
end

--- Slots free for more jobs (a blocking job takes a thread instead: tarry/worker/blocking.lua).
function Runner:free()
  local b = self.w.blocking
  return self.w.opts.concurrency - self.running + (b and b.running or 0)
end

local function describe(job) return string.format("job %d %s", job.id, job.task_name) end
Runner.describe = describe

-- The task's traceback, without the worker's own frames below the task function.
local function on_error(e)
  local msg = Log.error_text(e)      -- the line carries it; the traceback below starts at its frames
  local tb = debug.traceback(nil, 2):gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  return { err = e, message = msg, traceback = tb }
end

-- ---- asking a job to stop ----

-- The error raised inside a job asked to stop.
local function stop_error(entry)
  if entry.stop == "aborted" then return core.error("aborted", describe(entry.job) .. " was aborted") end
  return core.error("timeout", string.format("%s timed out after %g s", describe(entry.job), entry.timeout))
end

--- Ask a running job to stop (reason "aborted" or "timeout"); the first reason wins. The error
-- is raised inside it at its next yield point, unless ctx:should_abort() is asking (it tells).
function Runner:stop(entry, reason)
  if entry.stop then return end
  entry.stop = reason
  if entry.blocking then return self.w.blocking:stop(entry.job, reason) end   -- its thread sees the flag
  if not entry.shielded then entry.handle:interrupt(stop_error(entry)) end
end

--- An abort was requested for job `id` (how: "NOTIFY" or "polling"). false when it does not run here.
function Runner:abort(id, how)
  local entry = self.jobs[id]
  if not entry or not entry.handle then return false end
  if entry.stop ~= "aborted" then
    self.w.log:debugf("abort_received", "%s: abort requested (%s), stopping it", describe(entry.job), how)
  end
  self:stop(entry, "aborted")
  return true
end

--- The ids of the running jobs that were not asked to abort yet (what the abort polling asks about).
function Runner:abortable_ids()
  local ids = {}
  for id, entry in pairs(self.jobs) do
    if entry.stop ~= "aborted" then ids[#ids + 1] = id end
  end
  table.sort(ids)
  return ids
end

-- The task's timeout: a coroutine that sleeps it, then asks the job to stop.
function Runner:arm_timeout(entry, seconds)
  entry.timeout, entry.deadline = seconds, core.now() + seconds
  entry.timer = self.w.app:spawn(function()
    core.sleep(seconds)
    if self.jobs[entry.job.id] == entry then self:stop(entry, "timeout") end
  end)
end

-- ---- outcomes ----

--- The outcome of a job that returned (ok) or raised (failure): its record, and how to log it.
-- A job asked to stop ends aborted, or timed out (failed or retried), however it ended.
function Runner:outcome(entry, ok, failure, def)
  local job, delete_jobs = entry.job, self.w.opts.delete_jobs
  local o = { id = job.id }
  if entry.stop == "aborted" then
    o.status, o.delete = "aborted", delete_jobs == "always"
    return o, "info", "job_aborted", "aborted on request"
  end
  if ok and not entry.stop then
    o.status = "succeeded"
    o.delete = delete_jobs ~= "never"
    return o, "info", "job_succeeded", "succeeded"
  end
  if ok then failure = nil end            -- the task returned (after a stop): its results are not a failure
  local err, said = failure and failure.err, nil
  if entry.stop == "timeout" then err, said = stop_error(entry), string.format("timed out after %g s", entry.timeout) end
  local judged, delay = pcall(retry.delay, def and def.retry, job.attempts, err)
  if not judged then                     -- retry_errors itself raised: not retried, both told
    o.status, o.delete = "failed", delete_jobs == "always"
    return o, "error", "job_failed", string.format("%s; and its retry_errors raised: %s (not retried)",
      said or "failed: " .. failure.message, Log.error_text(delay))
  end
  if delay then
    o.retry_at = core.now() + delay
    return o, "warning", "job_retried", said and string.format("%s, retry in %gs", said, delay)
      or string.format("failed, retry in %gs: %s", delay, failure.message)
  end
  o.status = "failed"
  o.delete = delete_jobs == "always"
  return o, "error", said and "job_timed_out" or "job_failed", said or "failed: " .. failure.message
end

-- A job that cannot run at all: failed, never retried.
function Runner:refused(job, event, what)
  return { id = job.id, status = "failed", delete = self.w.opts.delete_jobs == "always" }, "error", event,
    "failed: " .. what .. " (not retried)"
end

function Runner:context(entry)
  local w = self.w
  local ctx = setmetatable({ job = entry.job, app = w.app, worker_name = w.opts.name,
    worker_id = w.liveness.worker_id }, Context)
  entries[ctx] = entry
  return ctx
end

function Runner:run(entry)
  local w, job = self.w, entry.job
  local def = w.app:find_task(job.task_name)
  local t0 = core.now()
  local o, level, event, what
  if not def or not def.fn then
    o, level, event, what = self:refused(job, "task_not_found",
      string.format("task %q is not registered in this app", job.task_name))
  elseif core.is_error(job.args) then  -- a row another client wrote that Lua cannot hold
    o, level, event, what = self:refused(job, "undecodable_args", "cannot decode its arguments: " .. job.args.message)
  else
    if w.log:enabled("info") then
      w.log:info("job_started", describe(job) .. " started", { job_id = job.id, task = job.task_name,
        queue = job.queue, attempts = job.attempts })
    end
    if def.timeout then self:arm_timeout(entry, def.timeout) end
    local ok, failure
    if entry.blocking then ok, failure = w.blocking:run(job, self:context(entry))
    else ok, failure = xpcall(def.fn, on_error, job.args, self:context(entry)) end
    o, level, event, what = self:outcome(entry, ok, failure, def)
    if not ok and o.status ~= "aborted" then o.traceback = failure.traceback end
  end
  if w.log:enabled(level) then
    local ms = (core.now() - t0) * 1000
    w.log:write(level, event, string.format("%s %s (%.1f ms)", describe(job), what, ms),
      { job_id = job.id, task = job.task_name, queue = job.queue, attempts = job.attempts,
        duration_ms = ms, traceback = o.traceback })
  end
  o.traceback = nil
  self:done(entry, o)
end

--- The job ended: its outcome to the recorder, its slot to the fetcher.
function Runner:done(entry, outcome)
  local id = entry.job.id
  if self.jobs[id] ~= entry then return end
  self.jobs[id] = nil
  if entry.timer then entry.timer:cancel() end
  self.running = self.running - 1
  self.w:count(outcome)
  if entry.blocking then self.w.blocking.running = self.w.blocking.running - 1 end
  self.w.recorder:add(outcome)
  self.w.fetcher:wake()
  self.w.progress:set()
end

function Runner:start(job)
  self.running = self.running + 1
  local entry = { job = job, runner = self, turned = core.now() }
  local b = self.w.blocking
  if b and b:owns(job) then entry.blocking, b.running = true, b.running + 1 end
  self.jobs[job.id] = entry
  entry.handle = self.w.app:spawn(self.guarded_run, self, entry)
end

--- run, with a guard: a failure of the worker's own code around the task (not the task's: run
-- catches those) still frees the slot and ends the job failed, so the worker never hangs on it.
function Runner:guarded_run(entry)
  local ok, err = pcall(self.run, self, entry)
  if ok or self.jobs[entry.job.id] ~= entry then return end
  self:done(entry, { id = entry.job.id, status = "failed", delete = false })
  self.w.log:error("worker_bug", string.format("%s: the worker failed around the task: %s",
    describe(entry.job), Log.error_text(err)), { job_id = entry.job.id })
end

--- Wait for running jobs (bounded by the graceful timeout, cut by a forced stop), then cancel
-- what is left: those jobs count as failed (or retried, if their task says so).
function Runner:drain()
  local w = self.w
  local timeout = w.opts.shutdown_graceful_timeout
  local deadline = timeout and core.now() + timeout
  while self.running > 0 and not w.forced do
    local left = deadline and deadline - core.now()
    if left and left <= 0 then break end
    w.progress:wait(left)
  end
  for id, entry in pairs(self.jobs) do
    entry.handle:cancel()
    local def = w.app:find_task(entry.job.task_name)
    local o = self:outcome(entry, false, { err = "interrupted", message = "interrupted by the worker's shutdown" }, def)
    w.log:error("job_interrupted", describe(entry.job) .. " interrupted by the shutdown", { job_id = id })
    self:done(entry, o)
  end
end

return Runner
