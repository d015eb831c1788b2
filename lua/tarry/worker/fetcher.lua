--- Fetching: take as many jobs as the worker can take now (`Fetcher:wanted`), in one statement,
-- whenever a slot frees up, a job is announced (NOTIFY), an outcome was recorded, or the polling
-- interval passed. A one-shot worker (wait = false) ends when nothing is left to fetch.
--
-- Round trips are saved by taking jobs ahead: with `prefetch` above the concurrency, the worker
-- holds up to `prefetch` jobs (running, and queued in a local queue), starts a queued one as soon
-- as a slot frees up, without a round trip, and fetches again when half of what it may hold is
-- missing, or sooner, as soon as a few are, when what it holds would run out before a fetch
-- returns (short jobs: the fetch then runs while the jobs do, not in turn with them). It queues
-- only as many as its recent jobs say it starts within PREFETCH_WINDOW seconds, none while every
-- slot runs a long job, and what waited `prefetch_hold` seconds then goes back to todo: a worker
-- busy with long jobs holds none back from the others for long. A queued job is `doing` with this
-- worker's id like a running one: no other worker takes it, stalled recovery treats it as running
-- here, and a graceful stop puts the unstarted ones back to `todo` (store:release). Ended jobs
-- whose outcome the recorder has not written yet are `doing` too: the worker fetches only while it
-- holds fewer than twice max(prefetch, concurrency) jobs in all (running, queued, ending), so a
-- recorder that falls behind slows the fetching down.
-- @module tarry.worker.fetcher
local core = require "tarry.core"
local Health = require "tarry.worker.health"

local Fetcher = {}
Fetcher.__index = Fetcher

-- Jobs are taken ahead only as many as the worker starts within this many seconds, at the
-- pace of its recent jobs.
local PREFETCH_WINDOW = 0.05

-- At most this many outcomes ride along with a fetch. Measured at concurrency 1, 10 and 100 (20,000
-- no-op jobs, three runs each), writing them on another connection while the fetch runs was as fast
-- or faster than one round trip doing both in turn, for batches of any size: so none do, and the
-- recorder writes every batch (a lean worker's through store:finish_fetch, fetching nothing).
local COMBINE_MAX = 0

-- A fetch that goes out before half of what the worker may hold is missing (Fetcher:should_fetch)
-- asks for at least this many jobs.
local EARLY_MIN = 16

function Fetcher.new(w)
  local store = w.store
  return setmetatable({
    w = w,
    event = core.Event(),
    queue = {},            -- prefetched jobs, not started yet, the next to start last (see take)
    started_at = {},       -- job id -> when it started (for the pace of recent jobs)
    last_start = -math.huge, -- when the latest job started
    pace = nil,            -- recent jobs' mean duration in seconds (nil: none ended yet)
    fetch_time = nil,      -- recent fetches' mean duration in seconds (nil: none yet)
    waiting = false,       -- in event:wait (the recorder writes outcomes itself meanwhile)
    combined = store.finish_fetch ~= nil,
    can_release = store.release ~= nil,
  }, Fetcher)
end

--- Something changed that may let a fetch find work: a freed slot, a NOTIFY, a stop. Queued
-- jobs go into free slots at once.
function Fetcher:wake()
  self:start_queued()
  self.waiting = false                  -- it resumes now: the recorder leaves the outcomes to it
  self.event:set()
end

-- The jobs the worker may hold beyond its free slots right now.
function Fetcher:ahead()
  local w = self.w
  local limit = w.opts.prefetch - w.opts.concurrency       -- prefetch: jobs in hand, running or queued
  -- (With blocking tasks, none: a job is fetched only when a slot or thread is free for it.)
  if limit <= 0 or not self.can_release or w.stopping or not self.pace or w.blocking then return 0 end
  if self:slots_held() then return 0 end
  local by_pace = math.floor(PREFETCH_WINDOW * w.opts.concurrency / math.max(self.pace, 1e-6))
  return math.min(limit, by_pace)
end

-- True when every slot runs a job that started more than PREFETCH_WINDOW ago: queued jobs would wait.
-- (Without blocking threads, the latest job to start holds a slot when none is free: if it started
-- within the window, not every slot is held, and the running jobs need no count.)
function Fetcher:slots_held()
  local w = self.w
  if w.runner:free() > 0 then return false end
  local since, old = core.now() - PREFETCH_WINDOW, 0
  if not w.blocking and self.last_start >= since then return false end
  for _, t in pairs(self.started_at) do
    if t < since then old = old + 1 end
  end
  return old >= w.opts.concurrency
end

--- Jobs this worker has `doing` in the database: running, queued, and ended with their outcome
-- not recorded yet.
function Fetcher:held()
  local w, r = self.w, self.w.recorder
  return w.runner.running + #self.queue + #r.pending + r.in_flight + r.riding
end

--- The most jobs the worker holds (see held): twice what it may run and queue, so the outcomes of
-- one round can be written while the next round runs, but a recorder that falls behind (a slow
-- or blocked finish) stops the fetching instead of letting ended jobs pile up unrecorded.
function Fetcher:most()
  local o = self.w.opts
  return 2 * math.max(o.prefetch, o.concurrency)
end

--- How many jobs the worker can take now: its free slots, plus what it may queue ahead, less
-- what it queued already; no more than keeps held() within most().
function Fetcher:wanted()
  local want = self.w.runner:free() + self:ahead() - #self.queue
  local room = self:most() - self:held()
  if room < want and room <= 0 and not self.throttled then
    self.w.log:debugf("throttled", "holding %d job(s), %d of them ended and not recorded yet: no fetch until "
      .. "their outcomes are written", self:held(), self:held() - self.w.runner.running - #self.queue)
  end
  self.throttled = room < want and room <= 0
  return math.min(want, room)
end

-- A fetch is worth a round trip when nothing is queued, or when half of what the worker may run
-- and queue is missing: one round trip then brings many jobs, instead of many round trips a few
-- each. Sooner when the jobs in hand would all have ended before a fetch returns: waiting for half
-- to be missing then leaves the worker idle for most of every fetch, and the fetch connection idle
-- while the worker runs what it fetched (traced at concurrency 100 with no-op jobs: every fetch of
-- ~250 started with 100 running and under 60 queued, and returned to a worker with none left).
-- At least EARLY_MIN jobs, so that a round trip still brings a few.
function Fetcher:should_fetch()
  if self.w.blocking then return not self:full() end
  local want = self:wanted()
  if want <= 0 then return false end
  local half = math.max(1, (self.w.opts.concurrency + self:ahead()) // 2)
  return #self.queue == 0 or want >= half or (want >= math.min(half, EARLY_MIN) and self:runs_dry())
end

-- True when the running and queued jobs end, at the pace of recent jobs, within twice the time of
-- recent fetches.
function Fetcher:runs_dry()
  if not self.pace or not self.fetch_time then return false end
  local w = self.w
  return (w.runner.running + #self.queue) * self.pace / w.opts.concurrency < 2 * self.fetch_time
end

--- True while the fetcher will take the recorder's outcomes along on its next round (the
-- recorder leaves them to it).
function Fetcher:takes_outcomes()
  return self.combined and not self.waiting and not self.w.stopping and #self.w.recorder.pending <= COMBINE_MAX
end

--- A job ended (the recorder tells): its duration goes into the pace of recent jobs.
function Fetcher:ended(id)
  local t = self.started_at[id]
  if t then
    self.started_at[id] = nil
    local d = core.now() - t
    self.pace = self.pace and (self.pace * 0.8 + d * 0.2) or d
  end
end

function Fetcher:start(job)
  if self.w.opts.prefetch > 0 and self.can_release then
    local now = core.now()
    self.started_at[job.id], self.last_start = now, now
  end
  self.w.runner:start(job)
end

--- Start queued jobs while slots are free (once the worker stops, only those release() kept).
function Fetcher:start_queued(stopping_too)
  local w = self.w
  while #self.queue > 0 and w.runner:free() > 0 and not w.forced and (stopping_too or not w.stopping) do
    self:start(table.remove(self.queue))
  end
end

--- An abort was requested for job `id`: if it is queued here, it ends aborted without running.
function Fetcher:abort(id)
  for i, job in ipairs(self.queue) do
    if job.id == id then
      table.remove(self.queue, i)
      local w = self.w
      w.log:info("job_aborted", string.format("job %d %s aborted on request before it started", id, job.task_name),
        { job_id = id, task = job.task_name, queue = job.queue })
      w.recorder:add{ id = id, status = "aborted", delete = w.opts.delete_jobs == "always" }
      self:wake()
      return true
    end
  end
  return false
end

-- a comes after b in the protocol's order (priority, then id).
local function later(a, b)
  if a.priority ~= b.priority then return a.priority < b.priority end
  return a.id > b.id
end

-- Add fetched jobs: into free slots, the rest to the queue. The queue is in the protocol's order
-- from its end, so that starting the next job takes the last one (taking the first moved all the
-- others up, for each job).
function Fetcher:take(jobs)
  local q = self.queue
  if #q == 0 then
    for i = #jobs, 1, -1 do q[#q + 1] = jobs[i] end          -- fetched in the protocol's order
  else
    for _, job in ipairs(jobs) do q[#q + 1] = job end
    table.sort(q, later)
  end
  self:start_queued()
end

-- One round trip: the recorder's outcomes (if any) and a fetch of n jobs.
function Fetcher:finish_fetch(n)
  local w = self.w
  local outcomes = w.recorder:take(COMBINE_MAX)
  local ok, jobs = pcall(w.store.finish_fetch, w.store, outcomes, w.opts.queues, w.liveness.worker_id, n, w.opts.lean)
  w.recorder:taken(outcomes, ok, jobs)
  if not ok and #outcomes > 0 and not Health.is_connection_error(jobs) then
    -- An outcome the database refused took the fetch down with it: record them apart, fetch again.
    ok, jobs = pcall(w.store.fetch, w.store, w.opts.queues, w.liveness.worker_id, n)
  end
  return ok, jobs
end

-- One fetch: the number of jobs fetched and whether it got all it asked for, or nil and the error.
function Fetcher:round()
  local w = self.w
  if w.blocking then return self:blocking_round() end
  local n = self:wanted()
  if n <= 0 then return 0, false end
  local ok, jobs
  local t0 = core.now()
  if self.combined then
    ok, jobs = self:finish_fetch(n)
  else
    ok, jobs = pcall(w.store.fetch, w.store, w.opts.queues, w.liveness.worker_id, n)
  end
  if not ok then return nil, jobs end
  local d = core.now() - t0
  self.fetch_time = self.fetch_time and (self.fetch_time * 0.8 + d * 0.2) or d
  local free = w.runner:free()
  if n > free then
    w.log:debugf("fetched", "fetched %d job(s) for %d free slot(s) and %d to queue", #jobs, free, n - free)
  else
    w.log:debugf("fetched", "fetched %d job(s) for %d free slot(s)", #jobs, n)
  end
  self:take(jobs)
  return #jobs, #jobs == n
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

-- No room for any job (a slot or the queue, or, with blocking tasks, a thread).
function Fetcher:full()
  local w = self.w
  if w.blocking then return #w.blocking:kinds(w.runner:free()) == 0 end
  return self:wanted() <= 0
end

-- SQLSTATEs of an object missing from the database: retrying cannot help, the worker stops.
local SCHEMA_SQLSTATES = { ["42883"] = true, ["42P01"] = true, ["42703"] = true, ["42704"] = true }

-- Wait for the event (seconds: nil for no limit); meanwhile the recorder writes outcomes itself.
function Fetcher:wait(seconds)
  self.waiting = true
  self.w.recorder:kick()
  self.event:wait(seconds)
  self.waiting = false
end

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
  self:wait(Health.jittered(backoff))
  return Health.next_backoff(backoff)
end

-- A one-shot worker is done when a fetch found nothing while no job ran or was queued and no
-- outcome was pending or being recorded, from before that fetch began until it returned: an
-- outcome recorded meanwhile (a retry, a lock released) may have been missed by the fetch's snapshot.
function Fetcher:nothing_left(n, batches_before)
  local w = self.w
  return n == 0 and w.runner.running == 0 and #self.queue == 0 and w.recorder:idle()
    and w.recorder.batches == batches_before
end

-- Queued jobs that waited `prefetch_hold` seconds with every slot held by a long job go back to
-- todo, for other workers to take (else they would wait as long as that job).
function Fetcher:hand_back()
  local w = self.w
  if #self.queue == 0 or w.runner:free() > 0 or not self:slots_held() then return end
  local ok, back = self:give_back()
  if not ok then return end               -- they wait here; the next round tries again
  w.log:debugf("released", "put back %d prefetched job(s): every slot runs a long job", #back)
end

-- Put the queued jobs back to todo (store:release); those the store kept, or all of them when it
-- failed, return to the queue. They leave the queue for the duration of the call: a slot freed
-- meanwhile (Runner:done -> wake -> start_queued) must not start a job the database is handing
-- to other workers, or it would run twice.
function Fetcher:give_back()
  local w, jobs = self.w, self.queue
  self.queue = {}
  local ids = {}
  for i, job in ipairs(jobs) do ids[i] = job.id end
  local ok, back = pcall(w.store.release, w.store, ids, w.liveness.worker_id)
  local gone = {}
  if ok then for _, id in ipairs(back) do gone[id] = true end end
  for _, job in ipairs(jobs) do if not gone[job.id] then self.queue[#self.queue + 1] = job end end
  return ok, back
end

--- At a stop: the queued jobs go back to todo; those that cannot (an abort was requested, or a
-- waiting job took their queueing lock) run here, as slots free up. When the database cannot be
-- reached they stay `doing` with this worker's id, and stalled recovery puts them back once the
-- worker is gone.
function Fetcher:release()
  local w = self.w
  if #self.queue == 0 then return end
  local ok, back = self:give_back()
  if not ok then
    w.log:warning("release_failed", string.format("could not put back %d prefetched job(s), they stay doing "
      .. "until recovered as stalled: %s", #self.queue, Health.brief(back)))
    self.queue = {}
    return
  end
  w.log:debugf("released", "put back %d prefetched job(s), %d to run before stopping", #back, #self.queue)
  while #self.queue > 0 and not w.forced do
    self:start_queued(true)
    if #self.queue > 0 then self:wait() end
  end
end

--- The loop, until the worker stops (or, one-shot, runs out of jobs).
function Fetcher:loop()
  local w = self.w
  local backoff = 0.1
  while not w.stopping do
    local batches_before = w.recorder.batches
    self:start_queued()
    local n, more = 0, false
    if self:should_fetch() then n, more = self:round() end
    if n == nil then
      backoff = self:failed(more, backoff)
    else
      backoff = 0.1
      w.health:ok()
      if not more then
        if not w.opts.wait and self:nothing_left(n, batches_before) then break end
        if not w.opts.wait and w.recorder.batches ~= batches_before then
          -- one-shot: outcomes were recorded (maybe by this round), so look again at once
        elseif #self.queue > 0 and w.runner:free() <= 0 then
          self:wait(w.opts.prefetch_hold)                 -- a slot frees up, or give the queue back
          if not w.stopping then self:hand_back() end
        elseif self:full() or #self.queue > 0 or not w.opts.wait then
          self:wait()                                     -- a slot frees up (or a stop)
        else
          self:wait(w.opts.fetch_job_polling_interval)    -- a NOTIFY, a free slot, or time to poll
        end
      end
    end
  end
  self:release()
end

return Fetcher
