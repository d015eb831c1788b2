--- The database's health as the worker sees it: an outage is logged once when it starts and once
-- when it ends; reconnection delays grow with jitter.
-- @module tarry.worker.health
local core = require "tarry.core"

local Health = {}
Health.__index = Health

function Health.new(log) return setmetatable({ log = log, lost_at = nil }, Health) end

--- The one-line text of an error: an error object's message, without the "tarry: code:" prefix.
function Health.brief(err)
  if type(err) == "table" and err.message then return tostring(err.message) end
  return tostring(err)
end

function Health.is_connection_error(err)
  return type(err) == "table" and err.code == "connection"
end

--- Reconnection delays: doubling from 0.1 s to at most 2 s ...
function Health.next_backoff(backoff) return math.min(backoff * 2, 2) end
--- ... each waited with +-25% jitter, so that many workers do not retry in step after an outage.
function Health.jittered(backoff) return backoff * (0.75 + 0.5 * math.random()) end

--- A database call failed: the first connection failure logs "lost the database" once, later
-- ones only at debug level until a call succeeds again. Returns true for a connection failure.
function Health:failed(what, err)
  if not Health.is_connection_error(err) then return false end
  if not self.lost_at then
    self.lost_at = core.now()
    self.log:warning("database_lost", string.format("lost the database (%s): %s; retrying", what, Health.brief(err)))
  elseif self.log:enabled("debug") then
    self.log:debug("database_retry", string.format("still no database (%s): %s", what, Health.brief(err)))
  end
  return true
end

--- A database call succeeded: after an outage, log once that the database is back.
function Health:ok()
  if not self.lost_at then return end
  self.log:info("database_back", string.format("the database is back after %.1f s", core.now() - self.lost_at))
  self.lost_at = nil
end

return Health
