--- Liveness: the worker registers (pruning workers silent for stalled_worker_timeout), sends a
-- heartbeat every update_heartbeat_interval seconds, and unregisters when it stops, through the
-- protocol's functions. Other workers judge its jobs stalled by those heartbeats.
-- @module tarry.worker.liveness
local Health = require "tarry.worker.health"

local Liveness = {}
Liveness.__index = Liveness

function Liveness.new(w) return setmetatable({ w = w, worker_id = nil }, Liveness) end

function Liveness:register()
  local w = self.w
  self.worker_id = w.store:register(w.opts.stalled_worker_timeout)
  return self.worker_id
end

--- This worker was pruned as stalled (its fetch hit the foreign key): register again.
function Liveness:register_again()
  self.w.log:warning("reregister", "this worker was pruned as stalled: registering again")
  return (pcall(self.register, self))
end

function Liveness:unregister()
  local w = self.w
  w.store:unregister(self.worker_id)
end

--- The heartbeat loop, until the worker stops.
function Liveness:loop()
  local w = self.w
  while not w.stopping do
    w.stop_event:wait(w.opts.update_heartbeat_interval)
    if w.stopping then return end
    local ok, err = pcall(w.store.heartbeat, w.store, self.worker_id)
    if ok then
      w.health:ok()
      w.log:debugf("heartbeat", "heartbeat sent (worker id %d)", self.worker_id)
    elseif not w.health:failed("heartbeat", err) then
      w.log:warning("heartbeat_failed", "heartbeat failed: " .. Health.brief(err))
    end
  end
end

return Liveness
