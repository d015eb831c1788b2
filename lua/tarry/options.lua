--- Validation of the options tasks and defers accept. Misuse raises at the caller's level.
-- @module tarry.options
local M = {}

local MAX_NAME = 128
local MAX_QUEUE_BYTES = 40

local function fail(level, fmt, ...)
  error(string.format(fmt, ...), level + 1)
end

--- Raise for a key of opts that is not in known (blamed `level` frames up); returns opts or {}.
function M.check_known(opts, known, what, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail(level + 1, "%s: options must be a table, got %s", what, type(opts)) end
  for k in pairs(opts) do
    if not known[k] then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      fail(level + 1, "%s: unknown option '%s' (known: %s)", what, tostring(k), table.concat(names, ", "))
    end
  end
  return opts
end

-- A name PostgreSQL could not store (nor a NOTIFY channel carry) fails here, naming the field.
local function check_text(s, field, what, level)
  local nul = s:find("\0", 1, true)
  if nul then fail(level + 1, "%s: %s must not contain a NUL byte (byte %d)", what, field, nul) end
  local valid, bad = utf8.len(s)
  if not valid then
    fail(level + 1, "%s: %s must be valid UTF-8 (invalid byte at position %d)", what, field, bad)
  end
end

--- Raise unless name is a task name (1 to 128 characters).
function M.check_name(name, what, level)
  if type(name) == "string" then check_text(name, "task name", what, level + 1) end
  if type(name) ~= "string" or #name == 0 or utf8.len(name) > MAX_NAME then
    fail(level + 1, "%s: task name must be a string of 1 to %d characters, got %s", what, MAX_NAME,
      type(name) == "string" and string.format("%q", name) or type(name))
  end
end

--- Raise unless queue is nil or a queue name (1 to 40 bytes).
function M.check_queue(queue, what, level)
  if queue == nil then return end
  if type(queue) == "string" then check_text(queue, "queue", what, level + 1) end
  if type(queue) ~= "string" or #queue == 0 or #queue > MAX_QUEUE_BYTES then
    fail(level + 1, "%s: queue must be a string of 1 to %d bytes (it names a NOTIFY channel), got %s",
      what, MAX_QUEUE_BYTES, type(queue) == "string" and string.format("%q", queue) or type(queue))
  end
end

--- Raise unless p is nil or a 32-bit integer.
function M.check_priority(p, what, level)
  if p ~= nil and (math.type(p) ~= "integer" or p < -2147483648 or p > 2147483647) then
    fail(level + 1, "%s: priority must be a 32-bit integer, got %s", what, tostring(p))
  end
end

--- Raise unless v is nil or a string.
function M.check_string(v, name, what, level)
  if v ~= nil and type(v) ~= "string" then
    fail(level + 1, "%s: %s must be a string, got %s", what, name, type(v))
  end
end

--- Raise unless timeout is nil or a finite number of seconds > 0 (a job still running after it
-- is interrupted with an error object of code "timeout").
function M.check_timeout(timeout, what, level)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0) or timeout == math.huge) then
    fail(level + 1, "%s: timeout must be a number of seconds > 0, got %s", what,
      type(timeout) == "number" and tostring(timeout) or type(timeout))
  end
  return timeout
end

--- Normalize `retry`: nil/false (never), true (forever), N (max attempts) or a table.
function M.check_retry(retry, what, level)
  if retry == nil or retry == false then return nil end
  if retry == true then return { max_attempts = math.maxinteger, wait = 0, linear_wait = 0, exponential_wait = 0 } end
  if math.type(retry) == "integer" and retry >= 0 then
    return { max_attempts = retry, wait = 0, linear_wait = 0, exponential_wait = 0 }
  end
  if type(retry) ~= "table" then
    fail(level + 1, "%s: retry must be true, false, a whole number >= 0 or a table, got %s", what,
      type(retry) == "number" and tostring(retry) or type(retry))
  end
  M.check_known(retry, { max_attempts = true, wait = true, linear_wait = true, exponential_wait = true,
    retry_errors = true }, what .. " retry", level + 1)
  if retry.retry_errors ~= nil and type(retry.retry_errors) ~= "function" then
    fail(level + 1, "%s: retry.retry_errors must be a function(err) -> boolean, got %s", what, type(retry.retry_errors))
  end
  local r = { max_attempts = retry.max_attempts or math.maxinteger, retry_errors = retry.retry_errors }
  for _, k in ipairs { "wait", "linear_wait", "exponential_wait" } do
    local v = retry[k] or 0
    if type(v) ~= "number" or v < 0 then fail(level + 1, "%s: retry.%s must be a number >= 0", what, k) end
    r[k] = v
  end
  if math.type(r.max_attempts) ~= "integer" or r.max_attempts < 0 then
    fail(level + 1, "%s: retry.max_attempts must be an integer >= 0", what)
  end
  return r
end

return M
