--- The worker's log: one line per event, human-readable or JSON lines, filtered by level.
-- @module tarry.log
local core = require "tarry.core"

local LEVELS = { debug = 10, info = 20, warning = 30, error = 40 }

local Log = {}
Log.__index = Log

--- A new log.
-- @tparam[opt] table opts `{ format = "human"|"json", level = "info", stream = io.stderr }`
-- @return the log
function Log.new(opts)
  opts = opts or {}
  local level = opts.level or "info"
  if not LEVELS[level] then error("log level must be one of debug, info, warning, error", 2) end
  if opts.format and opts.format ~= "human" and opts.format ~= "json" then
    error("log format must be human or json", 2)
  end
  local stream = opts.stream or io.stderr
  stream:setvbuf("line")
  return setmetatable({ format = opts.format or "human", min = LEVELS[level], stream = stream }, Log)
end

local function timestamp()
  local t = core.now()
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. string.format(".%03dZ", math.floor(t % 1 * 1000))
end

--- true when lines of `level` are written (to skip building a costly message).
function Log:enabled(level) return LEVELS[level] >= self.min end

--- What an error value says, as one readable text: a string as it is, a value with `__tostring`
-- through it, a plain table as `a table: {json}`, nil as `nil (error() without a message)`.
-- @param e any error value
-- @treturn string
function Log.error_text(e)
  if type(e) == "string" then return e end
  if e == nil then return "nil (error() without a message)" end
  local mt = getmetatable(e)
  if type(mt) == "table" and mt.__tostring then return tostring(e) end
  if type(e) == "table" then
    local ok, json = pcall(core.json_encode, e)
    return "a table: " .. (ok and json or tostring(e))
  end
  return string.format("a %s: %s", type(e), tostring(e))
end

--- Write one line: `fields` go into JSON lines; `fields.traceback` is printed under the human line.
-- @tparam string level debug, info, warning or error
-- @tparam string event a stable name (job_started, fetch_failed, ...)
-- @tparam string message the human text
-- @tparam[opt] table fields
function Log:write(level, event, message, fields)
  if LEVELS[level] < self.min then return end
  if self.format == "json" then
    local rec = { ts = timestamp(), level = level, event = event, message = message }
    for k, v in pairs(fields or {}) do
      if rec[k] == nil and type(v) ~= "function" and type(v) ~= "userdata" then rec[k] = v end
    end
    local ok, line = pcall(core.json_encode, rec)
    self.stream:write(ok and line or core.json_encode{ ts = rec.ts, level = level, event = event,
      message = message }, "\n")
  else
    self.stream:write(timestamp(), " ", string.format("%-7s", level:upper()), " ", message, "\n")
    if fields and fields.traceback then
      self.stream:write("    ", (fields.traceback:gsub("\n", "\n    ")), "\n")
    end
  end
end

--- `log:debugf(event, fmt, ...)`: a debug line whose message is formatted only when debug is on.
function Log:debugf(event, fmt, ...)
  if LEVELS.debug >= self.min then self:write("debug", event, string.format(fmt, ...)) end
end

-- log:debug(event, message, fields), log:info(...), log:warning(...), log:error(...): Log:write
-- at that level.
for name in pairs(LEVELS) do
  Log[name] = function(self, event, message, fields) return self:write(name, event, message, fields) end
end

return Log
