--- Running jobs: each fetched job runs in its own tarry coroutine, with its context (`ctx`); its
-- outcome (succeeded, failed, retried) goes to the recorder and its slot back to the fetcher.
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

--- ctx:sleep(seconds): parks this job only; the worker's other jobs go on.
function Context:sleep(seconds) return core.sleep(seconds) end

function Runner.new(w)
  return setmetatable({
    w = w,
    running = 0,           -- jobs whose coroutine has not finished
    jobs = {},             -- job id -> { job=, handle= }
  }, Runner)
end

--- Slots free for more jobs.
function Runner:free() return self.w.opts.concurrency - self.running end

local function describe(job) return string.format("job %d %s", job.id, job.task_name) end
Runner.describe = describe

-- The task's traceback, without the worker's own frames below the task function.
local function on_error(e)
  local msg = Log.error_text(e)      -- the line carries it; the traceback below starts at its frames
  local tb = debug.traceback(nil, 2):gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  return { err = e, message = msg, traceback = tb }
end

--- The outcome of a job that returned (ok) or raised (failure): its record, and how to log it.
function Runner:outcome(job, ok, failure, def)
  local delete_jobs = self.w.opts.delete_jobs
  local o = { id = job.id }
  if ok then
    o.status = "succeeded"
    o.delete = delete_jobs ~= "never"
    return o, "info", "job_succeeded", "succeeded"
  end
  local judged, delay = pcall(retry.delay, def and def.retry, job.attempts, failure.err)
  if not judged then                     -- retry_errors itself raised: not retried, both told
    o.status, o.delete = "failed", delete_jobs == "always"
    return o, "error", "job_failed", string.format("failed: %s; and its retry_errors raised: %s (not retried)",
      failure.message, Log.error_text(delay))
  end
  if delay then
    o.retry_at = core.now() + delay
    return o, "warning", "job_retried", string.format("failed, retry in %gs: %s", delay, failure.message)
  end
  o.status = "failed"
  o.delete = delete_jobs == "always"
  return o, "error", "job_failed", "failed: " .. failure.message
end

-- A job that cannot run at all: failed, never retried.
function Runner:refused(job, event, what)
  return { id = job.id, status = "failed", delete = self.w.opts.delete_jobs == "always" }, "error", event,
    "failed: " .. what .. " (not retried)"
end

function Runner:run(job)
  local w = self.w
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
    local ctx = setmetatable({ job = job, app = w.app, worker_name = w.opts.name,
      worker_id = w.liveness.worker_id }, Context)
    local ok, failure = xpcall(def.fn, on_error, job.args, ctx)
    o, level, event, what = self:outcome(job, ok, failure, def)
    if not ok then o.traceback = failure.traceback end
  end
  if w.log:enabled(level) then
    local ms = (core.now() - t0) * 1000
    w.log:write(level, event, string.format("%s %s (%.1f ms)", describe(job), what, ms),
      { job_id = job.id, task = job.task_name, queue = job.queue, attempts = job.attempts,
        duration_ms = ms, traceback = o.traceback })
  end
  o.traceback = nil
  self:done(job, o)
end

--- The job ended: its outcome to the recorder, its slot to the fetcher.
function Runner:done(job, outcome)
  if not self.jobs[job.id] then return end
  self.jobs[job.id] = nil
  self.running = self.running - 1
  self.w.recorder:add(outcome)
  self.w.fetcher:wake()
  self.w.progress:set()
end

function Runner:start(job)
  self.running = self.running + 1
  local entry = { job = job }
  self.jobs[job.id] = entry
  entry.handle = self.w.app:spawn(self.run, self, job)
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
    local o = self:outcome(entry.job, false, { err = "interrupted", message = "interrupted by the worker's shutdown" }, def)
    w.log:error("job_interrupted", describe(entry.job) .. " interrupted by the shutdown", { job_id = id })
    self:done(entry.job, o)
  end
end

return Runner
