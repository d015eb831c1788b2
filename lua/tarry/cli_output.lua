--- How CLI commands print: one result per command on stdout, human-readable or, with `--json`,
-- one JSON document (an object; a command that lists things prints an array); notes and progress
-- on stderr, so stdout stays machine-readable. New commands follow the same pattern (an Output
-- made from their --json flag, then one result call with the value and its text).
-- @module tarry.cli_output
local tarry = require "tarry"

local Output = {}
Output.__index = Output

--- An output for one command: `json` true prints JSON, else text.
-- @tparam boolean json whether --json was given
function Output.new(json)
  return setmetatable({ json = json or false }, Output)
end

--- Print the command's result: `value` as JSON with --json, else the text `human` (a string,
-- or a function of value returning one).
function Output:result(value, human)
  if self.json then
    io.stdout:write(tarry.json.encode(value), "\n")
  else
    io.stdout:write(type(human) == "function" and human(value) or human, "\n")
  end
  io.stdout:flush()
end

--- A note for the user on stderr ("tarry: <text>"), never mixed into the result.
function Output:note(text)
  io.stderr:write("tarry: ", text, "\n")
end

--- true when file descriptor fd (2: stderr) is a terminal.
function Output.is_terminal(fd)
  return os.execute(string.format("test -t %d", fd or 2)) == true
end

-- ---- tables ----

local function width(s)
  return utf8.len(s) or #s
end

--- An aligned text table: `headers` a list of column titles, `rows` a list of lists of cells
-- (strings or numbers; nil shows as "-"). A column of numbers aligns right, the others left;
-- columns are two spaces apart, lines carry no trailing blanks. Returns the text, without a final
-- newline.
function Output.table(headers, rows)
  local widths, right, cells = {}, {}, {}
  for i, h in ipairs(headers) do widths[i] = width(h) end
  for r, row in ipairs(rows) do
    cells[r] = {}
    for i = 1, #headers do
      local v = row[i]
      if type(v) == "number" then right[i] = true end
      cells[r][i] = v == nil and "-" or tostring(v)
      widths[i] = math.max(widths[i], width(cells[r][i]))
    end
  end
  local function line(list)
    local parts = {}
    for i, text in ipairs(list) do
      local pad = string.rep(" ", widths[i] - width(text))
      parts[i] = right[i] and (pad .. text) or (text .. pad)
    end
    return (table.concat(parts, "  "):gsub("%s+$", ""))
  end
  local out = { line(headers) }
  for r = 1, #cells do out[r + 1] = line(cells[r]) end
  return table.concat(out, "\n")
end

--- A unix time as ISO 8601 in UTC (`2030-01-01T10:00:00Z`; with `ms`, milliseconds too), nil for nil.
function Output.time(t, ms)
  if t == nil then return nil end
  local s = math.floor(t)
  local text = os.date("!%Y-%m-%dT%H:%M:%S", s)
  if ms then text = text .. string.format(".%03d", math.floor((t - s) * 1000)) end
  return text .. "Z"
end

--- `text` cut to `max` characters, an ellipsis at the end when it was longer.
function Output.truncate(text, max)
  if width(text) <= max then return text end
  return text:sub(1, (utf8.offset(text, max) or (max + 1)) - 1) .. "…"
end

local Bar = {}
Bar.__index = Bar
local WIDTH = 30

--- A progress bar on stderr when it is a terminal (nil otherwise): `total` bytes to read, or nil
-- when unknown (stdin), then only the count shows.
function Output:progress(total)
  if not Output.is_terminal(2) then return nil end
  return setmetatable({ total = total, shown = -1 }, Bar)
end

--- Redraw the bar: `done` bytes read so far, `jobs` deferred so far.
function Bar:update(done, jobs)
  local text
  if self.total and self.total > 0 then
    local frac = math.min(done / self.total, 1)
    local filled = math.floor(frac * WIDTH + 0.5)
    text = string.format("\r[%s%s] %3d%%  %d jobs", string.rep("#", filled), string.rep("-", WIDTH - filled),
      math.floor(frac * 100), jobs)
  else
    text = string.format("\r%d jobs", jobs)
  end
  if text ~= self.last then io.stderr:write(text); io.stderr:flush(); self.last = text end
end

--- End the bar's line.
function Bar:finish()
  io.stderr:write("\n")
end

return Output
