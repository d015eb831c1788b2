--- Signals: the first SIGINT or SIGTERM asks for a graceful stop (running jobs finish, at most
-- shutdown_graceful_timeout); a second one forces the stop.
-- @module tarry.worker.signals
local core = require "tarry.core"

local Signals = {}
Signals.__index = Signals

function Signals.new(w) return setmetatable({ w = w, watcher = nil }, Signals) end

function Signals:loop()
  local w = self.w
  self.watcher = core.Signals{ "INT", "TERM" }
  while true do
    local name = self.watcher:wait()
    if not name then return end
    if not w.stopping then
      w.log:info("stopping", "received SIG" .. name .. ": stopping after the running jobs " ..
        "(send it again to stop at once)")
      w:stop()
    else
      w.log:warning("stopping_now", "received SIG" .. name .. " again: stopping at once")
      w:force_stop()
    end
  end
end

--- Give the signals their default action back (ends the loop).
function Signals:close()
  if self.watcher then self.watcher:close() end
end

return Signals
