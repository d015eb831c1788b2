--- The worker's options: their names, defaults and checks, in one table.
-- @module tarry.worker.options
local Periodic = require "tarry.periodic"

local M = {}

-- The default prefetch: the slots, plus this many jobs taken ahead. A round trip's fixed cost is
-- worth about ten jobs' share of the fetch and finish statements, so a worker of short jobs needs
-- rounds of a hundred or more to get near what the database can do, and the fetcher refills at
-- half of what it may hold. Fewer are queued when jobs are longer: only what the worker starts
-- within PREFETCH_WINDOW (tarry/worker/fetcher.lua).
M.PREFETCH_AHEAD = 256

local DELETE = { never = true, successful = true, always = true }
local LOG_LEVELS = { debug = true, info = true, warning = true, error = true }
local LOG_FORMATS = { human = true, json = true }

local function seconds(v) return type(v) == "number" and v >= 0 and v == v end
local function is_bool(v) return type(v) == "boolean" end

-- name -> { default, check(v) -> ok, what it must be }
M.SPEC = {
  queues = { nil, function(v) return type(v) == "table" end, "a list of queue names" },
  concurrency = { 1, function(v) return math.type(v) == "integer" and v >= 1 end, "an integer >= 1" },
  -- jobs held, running and taken ahead, while recent jobs are short (tarry/worker/fetcher.lua);
  -- nil: concurrency + M.PREFETCH_AHEAD
  prefetch = { nil, function(v) return math.type(v) == "integer" and v >= 0 end, "an integer >= 0" },
  prefetch_hold = { 1, seconds, "a number of seconds >= 0" },   -- then queued jobs behind long ones go back
  lean = { false, is_bool, "a boolean" },   -- no event rows for fetch and finish (tarry's schema only)
  wait = { true, is_bool, "a boolean" },
  name = { "worker", function(v) return type(v) == "string" and #v > 0 end, "a non-empty string" },
  listen_notify = { true, is_bool, "a boolean" },
  fetch_job_polling_interval = { 5, seconds, "a number of seconds >= 0" },
  abort_job_polling_interval = { nil, seconds, "a number of seconds >= 0" },   -- nil: fetch_job_polling_interval
  delete_jobs = { "never", function(v) return DELETE[v] end, '"never", "successful" or "always"' },
  shutdown_graceful_timeout = { nil, seconds, "a number of seconds >= 0" },
  install_signal_handlers = { true, is_bool, "a boolean" },
  log_format = { nil, function(v) return LOG_FORMATS[v] end, '"human" or "json"' },
  log_level = { nil, function(v) return LOG_LEVELS[v] end, '"debug", "info", "warning" or "error"' },
  log_stream = { nil, function() return true end, "a file" },
  update_heartbeat_interval = { 10, seconds, "a number of seconds >= 0" },
  stalled_worker_timeout = { 30, seconds, "a number of seconds >= 0" },
  recover_stalled = { true, is_bool, "a boolean" },
  periodic = { true, is_bool, "a boolean" },                          -- defer the app's periodic tasks
  periodic_max_delay = { Periodic.MAX_DELAY, seconds, "a number of seconds >= 0" },  -- catch-up limit
  -- blocking task bodies (tarry/worker/blocking.lua): threads (nil: the number of cores), the file
  -- each thread loads the app from (nil: run_worker's caller's), the conninfo its app then uses
  blocking_threads = { nil, function(v) return math.type(v) == "integer" and v >= 0 and v <= 1024 end,
    "an integer in [0, 1024]" },
  app_file = { nil, function(v) return type(v) == "string" and #v > 0 end, "a non-empty string (a file name)" },
  app_conninfo = { nil, function(v) return type(v) == "string" end, "a conninfo string" },
  blocking_abort_hook = { false, is_bool, "a boolean" },   -- a count hook raises a stop in pure-Lua loops
}

local function check_queues(queues, level, who)
  for _, q in ipairs(queues) do
    if type(q) ~= "string" or #q == 0 or #q > 40 then
      error(who .. ": queue names must be strings of 1 to 40 bytes", level)
    end
  end
end

--- The options with their defaults filled in; misuse raises at `level` (the caller of `who`:
-- "run_worker", the default, or "start_worker").
function M.check(o, level, who)
  level, who = level + 1, who or 'run_worker'
  if o == nil then o = {} end
  if type(o) ~= "table" then error(who .. ": options must be a table", level) end
  for k in pairs(o) do
    if not M.SPEC[k] then error(who .. ": unknown option '" .. tostring(k) .. "'", level) end
  end
  local out = {}
  for k, spec in pairs(M.SPEC) do
    local v = o[k]
    if v == nil then v = spec[1]
    elseif not spec[2](v) then error(who .. ": " .. k .. " must be " .. spec[3], level) end
    out[k] = v
  end
  if out.prefetch == nil then out.prefetch = out.concurrency + M.PREFETCH_AHEAD end
  if out.queues then
    check_queues(out.queues, level, who)
    if #out.queues == 0 then out.queues = nil end          -- every queue
  end
  return out
end

return M
