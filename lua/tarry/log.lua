--- The worker's log: one line per event, human-readable or JSON lines, filtered by level.
local core = require "tarry.core"

local LEVELS = { debug = 10, info = 20, warning = 30, error = 40 }

local Log = {}
Log.__index = Log

--- log.new{ format = "human"|"json", level = "info", stream = io.stderr }
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

function Log:enabled(level) return LEVELS[level] >= self.min end

--- log:write(level, event, message, fields): fields go into JSON lines; `traceback` is printed
-- under the human line.
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

for name in pairs(LEVELS) do
  Log[name] = function(self, event, message, fields) return self:write(name, event, message, fields) end
end

return Log
