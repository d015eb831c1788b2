-- Small assertions the specs share.
local M = {}

--- The error f(...) raises; fails the test if f does not raise.
function M.error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

return M
