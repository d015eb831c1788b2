--- Notifications: a LISTEN connection on the worker's queues' channels (PROTOCOL.md section 5);
-- a `job_inserted` wakes the fetcher. It reconnects after a loss; polling covers the gaps.
-- @module tarry.worker.notifier
local core = require "tarry.core"
local Health = require "tarry.worker.health"

local Notifier = {}
Notifier.__index = Notifier

-- Seconds of silence after which the LISTEN connection is pinged (a dead one then shows).
local PING_AFTER = 30

function Notifier.new(w) return setmetatable({ w = w, listener = nil }, Notifier) end

function Notifier:dispatch(note)
  local w = self.w
  local ok, payload = pcall(core.json_decode, note.payload)
  if ok and type(payload) == "table" and payload.type == "job_inserted" then
    w.log:debugf("notified", "NOTIFY on %s: a job was inserted, waking the fetcher", tostring(note.channel))
    w.fetcher:wake()
  end
end

-- Listen on one connection until it breaks or the worker stops.
function Notifier:serve(listener)
  local w = self.w
  self.listener = listener
  w.log:debugf("listening", "LISTEN on %s", w.opts.queues and table.concat(w.opts.queues, ",") or "every queue")
  w.fetcher:wake()                      -- jobs may have come while we were not listening
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

--- The worker stops: close the connection, which ends the wait.
function Notifier:stop()
  if self.listener then self.listener:close() end
end

return Notifier
