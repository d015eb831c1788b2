--- Recording outcomes: the runner hands each finished job's outcome here; they are written in
-- batches (one statement for all that are pending; or the fetcher takes them along on its next
-- round trip, store:finish_fetch, while it is fetching) and kept until they reached the database, so
-- a job is done only once its finish is stored. After a forced stop, or past the flush deadline of
-- a graceful one, what could not be written is given up (those jobs stay `doing` until recovered).
-- @module tarry.worker.recorder
local core = require "tarry.core"
local Health = require "tarry.worker.health"
local Errors = require "tarry.dashboard.errors"

local Recorder = {}
Recorder.__index = Recorder

function Recorder.new(w)
  return setmetatable({
    w = w,
    pending = {},          -- outcomes not yet recorded
    in_flight = 0,         -- outcomes being recorded right now, by the loop
    riding = 0,            -- outcomes being recorded right now, along with the fetcher's fetch
    batches = 0,           -- batches recorded so far (a one-shot worker's exit test)
    has_work = core.Event(),
  }, Recorder)
end

--- An outcome { id=, status=, delete=, retry_at= } to record.
function Recorder:add(outcome)
  self.pending[#self.pending + 1] = outcome
  self.w.fetcher:ended(outcome.id)
  self.has_work:set()
end

--- Wake the loop: the fetcher will not take the pending outcomes along soon.
function Recorder:kick()
  if #self.pending > 0 then self.has_work:set() end
end

--- The fetcher takes the pending outcomes along on its round trip (store:finish_fetch), unless
-- there are more than `max`: those the loop writes meanwhile, on another connection ...
function Recorder:take(max)
  if #self.pending > max then
    self.has_work:set()
    return {}
  end
  local batch = self.pending
  self.pending = {}
  self.riding = #batch
  return batch
end

--- ... and says how it went: recorded (ok), to retry (a connection error), or, refused by the
-- database, written here (one by one if need be).
function Recorder:taken(batch, ok, err)
  self.riding = 0
  if #batch == 0 then return end
  if ok then
    self.batches = self.batches + 1
    Errors.recorded(self.w, batch)
  elseif Health.is_connection_error(err) then
    for i = #batch, 1, -1 do table.insert(self.pending, 1, batch[i]) end
  else
    self:write(batch)
  end
end

--- Nothing pending and nothing being written.
function Recorder:idle() return #self.pending == 0 and self.in_flight == 0 and self.riding == 0 end

-- One statement for these outcomes (a lean worker's through the round trip, fetching nothing).
function Recorder:finish(batch)
  local w = self.w
  if w.opts.lean and w.fetcher.combined then
    return w.store:finish_fetch(batch, w.opts.queues, w.liveness.worker_id, 0, true)
  end
  return w.store:finish(batch)
end

function Recorder:write_one_by_one(batch)
  local w = self.w
  for _, o in ipairs(batch) do
    local ok, err = pcall(self.finish, self, { o })
    if not ok then
      if Health.is_connection_error(err) then
        self.pending[#self.pending + 1] = o
      else
        w.log:error("finish_failed", string.format("job %d: cannot record its outcome: %s", o.id, Health.brief(err)),
          { job_id = o.id })
      end
    end
  end
end

-- One batch: true when written (or, for what the database refused, given up job by job).
function Recorder:write(batch)
  local w = self.w
  self.in_flight = #batch
  w.log:debugf("finish_batch", "recording %d job outcome(s) in one statement", #batch)
  local ok, err = pcall(self.finish, self, batch)
  if ok then Errors.recorded(w, batch) end          -- the failures' messages, for the dashboard
  if not ok and not Health.is_connection_error(err) and #batch > 1 then
    self:write_one_by_one(batch)          -- one bad id must not hold the others back
    ok = true
  elseif not ok then
    for i = #batch, 1, -1 do table.insert(self.pending, 1, batch[i]) end
  end
  self.in_flight = 0
  self.batches = self.batches + 1
  w.fetcher:wake()                        -- a one-shot worker may find retried or unlocked jobs now
  return ok, err
end

--- The loop: record pending outcomes until the worker stops and no job runs or waits.
function Recorder:loop()
  local w = self.w
  local backoff = 0.05
  while true do
    if #self.pending == 0 or w.fetcher:takes_outcomes() then
      -- Done once nothing can add an outcome: the fetcher's loop has ended (at a stop it still
      -- starts the queued jobs that could not go back), and no job runs.
      if #self.pending == 0 and w.fetching_ended and w.runner.running == 0 then return end
      self.has_work:wait()
    else
      local batch = self.pending
      self.pending = {}
      local ok, err = self:write(batch)
      if ok then
        backoff = 0.05
        w.health:ok()
      else
        if not w.health:failed("recording outcomes", err) then
          w.log:warning("finish_failed", string.format("could not record %d job outcome(s), retrying: %s",
            #batch, Health.brief(err)))
        end
        if w.forced or (w.stopping and core.now() > w.flush_deadline) then
          w.log:error("finish_abandoned", string.format("%d job outcome(s) could not be recorded: " ..
            "those jobs stay 'doing' until recovered as stalled (%s)", #self.pending, Health.brief(err)))
          self.pending = {}
          return
        end
        self.has_work:wait(Health.jittered(backoff))
        backoff = Health.next_backoff(backoff)
      end
    end
  end
end

return Recorder
