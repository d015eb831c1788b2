--- Cron expressions, read as Procrastinate's croniter reads them, evaluated in UTC (as
-- Procrastinate evaluates them by default, so both sides agree on every tick).
--
--     local cron = require "tarry.cron"
--     local s = cron.parse("*/15 9-17 * * mon-fri")   -- or "... 30" with seconds, or "@hourly"
--     s:next(1700000000)                              --> the first tick after that time
--     for t in s:ticks(from, to) do ... end            --> each tick in (from, to]
--
-- Fields: minute hour day-of-month month day-of-week, and an optional sixth, the second (last,
-- as croniter has it). Each is `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from a
-- to the field's end), or a comma-separated list of those. Months and days of the week may be
-- named (jan..dec, sun..sat, any case); day of week 0 and 7 are Sunday, and a range may end on
-- Sunday (`fri-sun`). `L` in the day of month is the month's last day. Shorthands: `@yearly`,
-- `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. When both the day of month and the
-- day of week are restricted, a day matches if either does (as in cron); a field that lists
-- every value counts as `*`. Not supported (refused with the position): croniter's `#`
-- (nth weekday), `L` in the day of week, hashed `H` fields.
--
-- A tick is a whole number of unix seconds. Without a seconds field ticks fall on minutes.
local core = require "tarry.core"

local M = {}

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9, oct = 10,
  nov = 11, dec = 12 }
local DAYS = { sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6 }
local FIELDS = {
  { name = "minute", min = 0, max = 59 },
  { name = "hour", min = 0, max = 23 },
  { name = "day of month", min = 1, max = 31, last = true },
  { name = "month", min = 1, max = 12, names = MONTHS },
  { name = "day of week", min = 0, max = 7, names = DAYS },
  { name = "second", min = 0, max = 59 },
}
local DOM, MONTH, DOW = 3, 4, 5
local SHORTHANDS = {
  ["@yearly"] = "0 0 1 1 *", ["@annually"] = "0 0 1 1 *", ["@monthly"] = "0 0 1 * *",
  ["@weekly"] = "0 0 * * 0", ["@daily"] = "0 0 * * *", ["@midnight"] = "0 0 * * *", ["@hourly"] = "0 * * * *",
}
local MONTH_DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }   -- at most (February: leap years)

-- ---- parsing ----

-- A parse error, raised as a table that M.parse turns into a message at its caller's level:
-- `cron: field 3 (day of month), character 5 of "0 0 32 * *": 32 is out of range (1-31)`.
local function fail(ctx, index, column, fmt, ...)
  error({ cron_error = string.format("cron: field %d (%s), character %d of %q: ", index, FIELDS[index].name,
    column, ctx.expr) .. string.format(fmt, ...) }, 0)
end

local function whole(fmt, ...)
  error({ cron_error = "cron: " .. string.format(fmt, ...) }, 0)
end

-- One value of a field at `column`: a number, a name, or L (day of month).
local function value(ctx, index, text, column)
  local f = FIELDS[index]
  local n = text:match("^%d+$") and tonumber(text)
  if not n and f.names then n = f.names[text:lower()] end
  if not n and f.last and text:upper() == "L" then return "L" end
  if not n then
    if text == "" then fail(ctx, index, column, "a value is missing") end
    local hash = text:find("#", 1, true)
    if hash then fail(ctx, index, column + hash - 1, "'#' (nth weekday) is not supported") end
    local names = f.names and (index == MONTH and " or a name (jan..dec)" or " or a name (sun..sat)") or ""
    fail(ctx, index, column, "expected a number%s, got %q", names, text)
  end
  if n < f.min or n > f.max then fail(ctx, index, column, "%s is out of range (%d-%d)", text, f.min, f.max) end
  return n
end

-- The bounds of `*`, `a` or `a-b` (nil lo: the L of the day of month).
local function bounds(ctx, index, range, column, stepped)
  local f = FIELDS[index]
  if range == "*" then return f.min, f.max end
  local a, b = range:match("^([^-]*)-(.*)$")
  local lo = value(ctx, index, a or range, column)
  local hi = lo
  if a then hi = value(ctx, index, b, column + #a + 1) elseif stepped then hi = f.max end
  if lo == "L" then
    if a or stepped then fail(ctx, index, column, "L (the last day) cannot start a range or a step") end
    return nil
  end
  if hi == "L" then hi = f.max end
  if index == DOW and hi == 0 and lo > 0 then hi = 7 end                 -- fri-sun
  if lo > hi then fail(ctx, index, column, "the range %d-%d goes backwards", lo, hi) end
  return lo, hi
end

-- Add one list item (`*`, `a`, `a-b`, with an optional `/step`) to the field's set.
local function item(ctx, index, set, text, column)
  local range, step = text:match("^([^/]*)/(.*)$")
  range = range or text
  local stepn = 1
  if step then
    stepn = step:match("^%d+$") and tonumber(step)
    if not stepn or stepn < 1 then
      fail(ctx, index, column + #range + 1, "the step must be a whole number of at least 1, got %q", step)
    end
  end
  local lo, hi = bounds(ctx, index, range, column, step ~= nil)
  if lo == nil then set.last = true; return end
  for v = lo, hi, stepn do set[(index == DOW and v == 7) and 0 or v] = true end
end

local function field(ctx, index, text, column)
  local set, pos = {}, 1
  while true do
    local comma = text:find(",", pos, true)
    local part = text:sub(pos, (comma or #text + 1) - 1)
    if part == "" then fail(ctx, index, column + pos - 1, "an empty list item") end
    item(ctx, index, set, part, column + pos - 1)
    if not comma then break end
    pos = comma + 1
  end
  local f = FIELDS[index]
  local top = index == DOW and 6 or f.max                   -- 7 is stored as 0
  local all = not set.last
  for v = f.min, top do all = all and set[v] == true end
  set.star = all                                            -- every value listed counts as *
  return set
end

-- A day-of-month restriction that no chosen month can ever satisfy ("30 2") never fires.
local function check_days(ctx, sets, column)
  local dom, dow = sets[DOM], sets[DOW]
  if dom.star or dom.last or not dow.star then return end
  for m = 1, 12 do
    if sets[MONTH][m] then
      for d = 1, MONTH_DAYS[m] do if dom[d] then return end end
    end
  end
  fail(ctx, DOM, column, "no chosen month has such a day, so this schedule would never fire")
end

local function build(expr)
  local ctx = { expr = expr }
  local text = expr
  local trimmed = expr:match("^%s*(.-)%s*$")
  if trimmed:sub(1, 1) == "@" then
    text = SHORTHANDS[trimmed:lower()] or whole("unknown shorthand %q (known: @yearly, @annually, "
      .. "@monthly, @weekly, @daily, @midnight, @hourly)", trimmed)
  end
  local parts = {}
  for column, word in text:gmatch("()(%S+)") do parts[#parts + 1] = { text = word, column = column } end
  if #parts ~= 5 and #parts ~= 6 then
    whole("expected 5 fields (minute hour day-of-month month day-of-week) or 6 (then the second, last), "
      .. "got %d in %q", #parts, expr)
  end
  local sets = {}
  for i, p in ipairs(parts) do sets[i] = field(ctx, i, p.text, p.column) end
  check_days(ctx, sets, parts[DOM].column)
  if #parts == 5 then sets[6] = { [0] = true } end
  return { expr = expr, sets = sets, seconds = #parts == 6 }
end

local Schedule = core.newmetatable("tarry.CronSchedule")
Schedule.__index = Schedule

--- cron.parse(expr [, level]) -> schedule. A malformed expression raises an error naming the
-- field and the character (counted from 1 in `expr`), blaming the caller (or the function
-- `level` levels up, as error() counts).
function M.parse(expr, level)
  level = (level or 1) + 1
  if type(expr) ~= "string" then error("cron: the expression must be a string, got " .. type(expr), level) end
  local ok, s = pcall(build, expr)
  if not ok then
    if type(s) == "table" and s.cron_error then error(s.cron_error, level) end
    error(s, 0)
  end
  return setmetatable(s, Schedule)
end

-- ---- evaluating (UTC) ----

-- Days since 1970-01-01 of a proleptic Gregorian date (March-based years, 400-year eras).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

local function is_leap(y) return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) end
local function days_in(y, m) return (m == 2 and not is_leap(y)) and 28 or MONTH_DAYS[m] end

local function unix(y, m, d, h, mi, s)
  return days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + s
end

function Schedule:day_matches(t)
  local dom, dow = self.sets[DOM], self.sets[DOW]
  local dom_ok = dom.star or dom[t.day] or (dom.last and t.day == days_in(t.year, t.month))
  local dow_ok = dow.star or dow[t.wday - 1]
  if dom.star or dow.star then return dom_ok and dow_ok end
  return dom_ok or dow_ok
end

-- The smallest value >= v in a field's set, or nil.
local function next_in(set, v, max)
  for x = v, max do if set[x] then return x end end
  return nil
end

-- One step of the search from t: t itself when it matches, else a later candidate (never
-- skipping a match).
function Schedule:advance(t)
  local sets, c = self.sets, os.date("!*t", t)
  if not sets[MONTH][c.month] then
    local y, m = c.year, c.month + 1
    if m > 12 then y, m = y + 1, 1 end
    return false, unix(y, m, 1, 0, 0, 0)
  end
  local midnight = unix(c.year, c.month, c.day, 0, 0, 0)
  if not self:day_matches(c) then return false, midnight + 86400 end
  local h = next_in(sets[2], c.hour, 23)
  if not h then return false, midnight + 86400 end
  if h > c.hour then return false, midnight + h * 3600 end
  local mi = next_in(sets[1], c.min, 59)
  if not mi then return false, midnight + (h + 1) * 3600 end
  if mi > c.min then return false, midnight + h * 3600 + mi * 60 end
  local s = next_in(sets[6], c.sec, 59)
  if not s then return false, midnight + h * 3600 + (mi + 1) * 60 end
  return true, midnight + h * 3600 + mi * 60 + s
end

--- schedule:next(after) -> the first tick strictly after `after` (unix seconds, UTC).
function Schedule:next(after)
  if type(after) ~= "number" or after ~= after or after == math.huge or after == -math.huge then
    error("schedule:next: the time must be a finite number of unix seconds", 2)
  end
  local t = math.floor(after) + 1
  if not self.seconds then t = t + (60 - t % 60) % 60 end
  for _ = 1, 100000 do                      -- a match comes within 8 years (29 February): far fewer steps
    local ok, nt = self:advance(t)
    if ok then return nt end
    t = nt
  end
  error("cron: no tick found after " .. tostring(after) .. " for " .. self.expr)
end

--- for t in schedule:ticks(from, to) do ... end: every tick in (from, to], in order.
function Schedule:ticks(from, to)
  local t = from
  return function()
    local n = self:next(t)
    if n <= to then
      t = n
      return n
    end
    return nil
  end
end

function Schedule:__tostring()
  return string.format("<tarry.CronSchedule %s>", self.expr)
end

return M
