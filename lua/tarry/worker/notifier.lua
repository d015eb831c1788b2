--- Notifications: a LISTEN connection on the worker's queues' channels (PROTOCOL.md section 5);
-- a `job_inserted` wakes the fetcher, an `abort_job_requested` hands the abort to the runner. It
-- reconnects after a loss; polling covers the gaps: the fetcher's for new jobs, and here, while
-- jobs run, one for abort requests (every abort_job_polling_interval seconds, by default the
-- fetch_job_polling_interval; at once after a reconnect; the only way on a store without LISTEN).
-- @module tarry.worker.notifier
local core = require "tarry.core"
local Health = require "tarry.worker.health"

local Notifier = {}
Notifier.__index = Notifier

-- Seconds of silence after which the LISTEN connection is pinged (a dead one then shows).
local PING_AFTER = 30

function Notifier.new(w)
  return setmetatable({
    w = w,
    listener = nil,
    poll_wake = core.Event(),   -- poll for aborts now (poll_due passed), or the worker stops
    poll_due = 0,
  }, Notifier)
end

function Notifier:dispatch(note)
  local w = self.w
  local ok, payload = pcall(core.json_decode, note.payload)
  if not ok or type(payload) ~= "table" then return end
  if payload.type == "job_inserted" then
    w.log:debugf("notified", "NOTIFY on %s: a job was inserted, waking the fetcher", tostring(note.channel))
    w.fetcher:wake()
  elseif payload.type == "abort_job_requested" then
    local id = math.tointeger(payload.job_id)
    if id and not w.runner:abort(id, "NOTIFY") then w.fetcher:abort(id) end
  end
end

-- Listen on one connection until it breaks or the worker stops.
function Notifier:serve(listener)
  local w = self.w
  self.listener = listener
  w.log:debugf("listening", "LISTEN on %s", w.opts.queues and table.concat(w.opts.queues, ",") or "every queue")
  w.fetcher:wake()                      -- jobs may have come while we were not listening
  self:poll_soon()                      -- and abort requests
  while not w.stopping do
    local got, note = pcall(listener.wait, listener, PING_AFTER)
    if not got then
      if not w.stopping then w.health:failed("LISTEN", note) end
      break
    end
    if note == nil then pcall(listener.ping, listener)    -- a failure shows at the next wait
    else self:dispatch(note) end
  end
  self.listener = nil
  listener:close()
end

--- The loop, until the worker stops (or at once if the store cannot notify).
function Notifier:loop()
  local w = self.w
  local backoff = 0.1
  while not w.stopping do
    local ok, listener = pcall(w.store.listen, w.store, w.opts.queues)
    if ok and listener then
      backoff = 0.1
      self:serve(listener)
    elseif not ok then
      if not w.health:failed("LISTEN", listener) then
        w.log:warning("listen_failed", "cannot LISTEN, polling meanwhile: " .. Health.brief(listener))
      end
    else
      return                            -- this store has no notifications: the fetcher polls
    end
    if not w.stopping then w.stop_event:wait(Health.jittered(backoff)) end
    backoff = Health.next_backoff(backoff)
  end
end

--- The worker stops: close the connection, which ends the wait. (The abort polling goes on
-- while jobs run.)
function Notifier:stop()
  if self.listener then self.listener:close() end
  self.poll_wake:set()
end

-- ---- polling for abort requests ----

local function poll_interval(o) return o.abort_job_polling_interval or o.fetch_job_polling_interval end

--- Poll for abort requests at once (their NOTIFY may have been lost).
function Notifier:poll_soon()
  self.poll_due = 0
  self.poll_wake:set()
end

--- Ask the store which of the running jobs have an abort requested; the runner aborts them.
function Notifier:poll_aborts()
  local w = self.w
  local ids = w.runner:abortable_ids()
  if #ids == 0 then return end
  local ok, found = pcall(w.store.abort_requested, w.store, ids)
  if not ok then
    if not w.health:failed("polling for aborts", found) then
      w.log:warning("abort_poll_failed", "cannot poll for abort requests: " .. Health.brief(found))
    end
    return
  end
  w.health:ok()
  for _, id in ipairs(found) do w.runner:abort(id, "polling") end
end

--- The abort polling loop: until the worker stopped and its last job ended (or the stop is forced).
function Notifier:poll_loop()
  local w = self.w
  local function over() return w.forced or (w.fetching_ended and w.runner.running == 0) end
  self.poll_due = core.now() + poll_interval(w.opts)
  while not over() do
    local event = w.stopping and w.progress or self.poll_wake     -- once stopping, a job's end
    event:wait(math.max(self.poll_due - core.now(), 0))
    if not over() and core.now() >= self.poll_due then
      self:poll_aborts()
      self.poll_due = core.now() + poll_interval(w.opts)
    end
  end
end

return Notifier
