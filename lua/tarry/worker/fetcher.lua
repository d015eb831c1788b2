--- Fetching: take as many jobs as the runner has free slots, in one statement, whenever a slot
-- frees up, a job is announced (NOTIFY), an outcome was recorded, or the polling interval passed.
-- A one-shot worker (wait = false) ends when nothing is left to fetch.
-- @module tarry.worker.fetcher
local core = require "tarry.core"
local Health = require "tarry.worker.health"

local Fetcher = {}
Fetcher.__index = Fetcher

function Fetcher.new(w)
  return setmetatable({ w = w, event = core.Event() }, Fetcher)
end

--- Something changed that may let a fetch find work: a freed slot, a NOTIFY, a stop.
function Fetcher:wake() self.event:set() end

-- One fetch: the number of jobs started and whether every free slot got one, or nil and the error.
function Fetcher:round()
  local w = self.w
  if w.blocking then return self:blocking_round() end
  local free = w.runner:free()
  if free <= 0 then return 0, false end
  local ok, jobs = pcall(w.store.fetch, w.store, w.opts.queues, w.liveness.worker_id, free)
  if not ok then return nil, jobs end
  w.log:debugf("fetched", "fetched %d job(s) for %d free slot(s)", #jobs, free)
  for _, job in ipairs(jobs) do w.runner:start(job) end
  return #jobs, #jobs == free
end

-- With blocking tasks (tarry/worker/blocking.lua) a round is one fetch per kind of slot with room,
-- { n =, tasks =, exclude = }: free threads take only jobs of blocking tasks, free slots only the
-- others, so no job waits in `doing` for a thread.
function Fetcher:blocking_round()
  local w = self.w
  local started, filled, kinds = 0, true, w.blocking:kinds(w.runner:free())
  if #kinds == 0 then return 0, false end
  for _, kind in ipairs(kinds) do
    local ok, jobs = pcall(w.store.fetch, w.store, w.opts.queues, w.liveness.worker_id, kind.n, kind.tasks, kind.exclude)
    if not ok then return nil, jobs end
    w.log:debugf("fetched", "fetched %d job(s) for %d free %s", #jobs, kind.n, kind.exclude and "slot(s)" or "thread(s)")
    for _, job in ipairs(jobs) do w.runner:start(job) end
    started, filled = started + #jobs, filled and #jobs == kind.n
  end
  return started, filled
end

-- No room for any job (a slot or, with blocking tasks, a thread).
local function full(w)
  if w.blocking then return #w.blocking:kinds(w.runner:free()) == 0 end
  return w.runner:free() <= 0
end

-- SQLSTATEs of an object missing from the database: retrying cannot help, the worker stops.
local SCHEMA_SQLSTATES = { ["42883"] = true, ["42P01"] = true, ["42703"] = true, ["42704"] = true }

-- After a failed fetch: stop (schema), register again (pruned as stalled), or wait and retry.
function Fetcher:failed(err, backoff)
  local w = self.w
  if type(err) == "table" and SCHEMA_SQLSTATES[err.sqlstate] then
    local stop = core.error("schema", string.format("the database lacks an object tarry needs: %s; "
      .. "`tarry healthchecks` names what is missing", err.message))
    stop.sqlstate = err.sqlstate
    error(stop, 0)
  end
  if type(err) == "table" and err.sqlstate == "23503" and w.liveness:register_again() then return 0.05 end
  if not w.health:failed("fetching jobs", err) then
    w.log:warning("fetch_failed", string.format("cannot fetch jobs, retrying in %gs: %s", backoff, Health.brief(err)))
  end
  self.event:wait(Health.jittered(backoff))
  return Health.next_backoff(backoff)
end

-- A one-shot worker is done when a fetch found nothing while no job ran and no outcome was
-- pending or being recorded, from before that fetch began until it returned: an outcome recorded
-- meanwhile (a retry, a lock released) may have been missed by the fetch's snapshot.
function Fetcher:nothing_left(n, batches_before)
  local w = self.w
  return n == 0 and w.runner.running == 0 and w.recorder:idle() and w.recorder.batches == batches_before
end

--- The loop, until the worker stops (or, one-shot, runs out of jobs).
function Fetcher:loop()
  local w = self.w
  local backoff = 0.1
  while not w.stopping do
    local batches_before = w.recorder.batches
    local n, more = self:round()
    if n == nil then
      backoff = self:failed(more, backoff)
    else
      backoff = 0.1
      w.health:ok()
      if not more then
        if not w.opts.wait and self:nothing_left(n, batches_before) then return end
        if full(w) or not w.opts.wait then
          self.event:wait()                                     -- a slot frees up (or a stop)
        else
          self.event:wait(w.opts.fetch_job_polling_interval)    -- a NOTIFY, a free slot, or time to poll
        end
      end
    end
  end
end

return Fetcher
