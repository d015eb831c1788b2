--- Retry strategies, as Procrastinate's: after a failure with `attempts` earlier tries, retry
-- unless attempts >= max_attempts, after wait + linear_wait*attempts + exponential_wait^(attempts+1)
-- seconds. `retry_errors`, when given, is a function(err) -> boolean choosing which errors retry.
-- @module tarry.retry
local M = {}

--- The delay in seconds before the next try, or nil when the job should not be retried.
function M.delay(strategy, attempts, err)
  if not strategy or attempts >= strategy.max_attempts then return nil end
  if strategy.retry_errors and not strategy.retry_errors(err) then return nil end
  local expo = strategy.exponential_wait > 0 and strategy.exponential_wait ^ (attempts + 1) or 0
  return strategy.wait + strategy.linear_wait * attempts + expo
end

return M
