-- Cron expressions (tarry/cron.lua) as Procrastinate's croniter reads them, in UTC: the next ticks
-- of each expression after a given time, the ticks of a span, and the position of every mistake.
local cron = require "tarry.cron"
local error_of = require("support.expect").error_of

-- GNU date is the independent clock here: ISO (UTC) -> unix seconds and back.
local function utc(iso)
  local p = assert(io.popen("date -u -d '" .. iso .. " UTC' +%s"))
  local t = tonumber(p:read("l"))
  p:close()
  return assert(t, iso)
end
local function iso(t) return os.date("!%Y-%m-%d %H:%M:%S", t) end

local function next_ticks(expr, from, n)
  local s, t, out = cron.parse(expr), utc(from), {}
  for i = 1, n do
    t = s:next(t)
    out[i] = iso(t)
  end
  return out
end

describe("cron.parse(expr):next(after)", function()
  local cases = {
    -- expression, after, the next three ticks (UTC)
    { "* * * * *", "2024-01-01 00:00:00", { "2024-01-01 00:01:00", "2024-01-01 00:02:00", "2024-01-01 00:03:00" } },
    { "* * * * *", "2024-01-01 00:00:30", { "2024-01-01 00:01:00", "2024-01-01 00:02:00", "2024-01-01 00:03:00" } },
    { "*/15 * * * *", "2024-01-01 10:07:00", { "2024-01-01 10:15:00", "2024-01-01 10:30:00", "2024-01-01 10:45:00" } },
    { "0 9-17/4 * * mon-fri", "2024-01-05 12:00:00",          -- a Friday
      { "2024-01-05 13:00:00", "2024-01-05 17:00:00", "2024-01-08 09:00:00" } },
    { "0 0 29 2 *", "2024-03-01 00:00:00", { "2028-02-29 00:00:00", "2032-02-29 00:00:00", "2036-02-29 00:00:00" } },
    { "0 0 29 2 *", "2096-03-01 00:00:00", { "2104-02-29 00:00:00", "2108-02-29 00:00:00", "2112-02-29 00:00:00" } },
    { "0 0 31 * *", "2024-01-31 00:00:00", { "2024-03-31 00:00:00", "2024-05-31 00:00:00", "2024-07-31 00:00:00" } },
    { "0 0 L * *", "2024-01-31 00:00:00", { "2024-02-29 00:00:00", "2024-03-31 00:00:00", "2024-04-30 00:00:00" } },
    -- both day fields restricted: either matches (the 13th, and Fridays)
    { "0 0 13 * fri", "2024-10-01 00:00:00", { "2024-10-04 00:00:00", "2024-10-11 00:00:00", "2024-10-13 00:00:00" } },
    { "0 0 */2 * mon", "2024-01-06 00:00:00", { "2024-01-07 00:00:00", "2024-01-08 00:00:00", "2024-01-09 00:00:00" } },
    -- a field that lists every value is *: then only the day of week restricts
    { "0 0 1-31 * mon", "2024-01-02 00:00:00", { "2024-01-08 00:00:00", "2024-01-15 00:00:00", "2024-01-22 00:00:00" } },
    { "0 0 * * 0-6", "2024-01-02 00:00:00", { "2024-01-03 00:00:00", "2024-01-04 00:00:00", "2024-01-05 00:00:00" } },
    -- Sunday is 0, 7 and sun; a range may end on it
    { "0 0 * * 7", "2024-01-01 00:00:00", { "2024-01-07 00:00:00", "2024-01-14 00:00:00", "2024-01-21 00:00:00" } },
    { "0 0 * * SUN", "2024-01-01 00:00:00", { "2024-01-07 00:00:00", "2024-01-14 00:00:00", "2024-01-21 00:00:00" } },
    { "0 12 * * fri-sun", "2024-01-01 00:00:00", { "2024-01-05 12:00:00", "2024-01-06 12:00:00", "2024-01-07 12:00:00" } },
    { "0 0 1,15 jan,Jul *", "2024-01-10 00:00:00", { "2024-01-15 00:00:00", "2024-07-01 00:00:00", "2024-07-15 00:00:00" } },
    { "5-10/5,59 23 31 dec *", "2024-12-31 23:06:00", { "2024-12-31 23:10:00", "2024-12-31 23:59:00", "2025-12-31 23:05:00" } },
    { "10/20 * * * *", "2024-01-01 00:00:00", { "2024-01-01 00:10:00", "2024-01-01 00:30:00", "2024-01-01 00:50:00" } },
    -- seconds: the sixth field, last
    { "30 * * * * */20", "2024-01-01 00:29:50", { "2024-01-01 00:30:00", "2024-01-01 00:30:20", "2024-01-01 00:30:40" } },
    { "* * * * * 15,45", "2024-01-01 00:00:45", { "2024-01-01 00:01:15", "2024-01-01 00:01:45", "2024-01-01 00:02:15" } },
    { "* * * * * *", "2024-12-31 23:59:58", { "2024-12-31 23:59:59", "2025-01-01 00:00:00", "2025-01-01 00:00:01" } },
    -- shorthands
    { "@hourly", "2024-01-01 23:59:59", { "2024-01-02 00:00:00", "2024-01-02 01:00:00", "2024-01-02 02:00:00" } },
    { "@daily", "2024-12-31 12:00:00", { "2025-01-01 00:00:00", "2025-01-02 00:00:00", "2025-01-03 00:00:00" } },
    { "@midnight", "2024-12-31 12:00:00", { "2025-01-01 00:00:00", "2025-01-02 00:00:00", "2025-01-03 00:00:00" } },
    { "@weekly", "2024-01-01 00:00:00", { "2024-01-07 00:00:00", "2024-01-14 00:00:00", "2024-01-21 00:00:00" } },
    { "@monthly", "2024-01-15 00:00:00", { "2024-02-01 00:00:00", "2024-03-01 00:00:00", "2024-04-01 00:00:00" } },
    { "@yearly", "2024-06-01 00:00:00", { "2025-01-01 00:00:00", "2026-01-01 00:00:00", "2027-01-01 00:00:00" } },
    { "@Annually", "2024-06-01 00:00:00", { "2025-01-01 00:00:00", "2026-01-01 00:00:00", "2027-01-01 00:00:00" } },
    { "  0   0  *  *  *  ", "2024-01-01 00:00:00", { "2024-01-02 00:00:00", "2024-01-03 00:00:00", "2024-01-04 00:00:00" } },
  }
  for _, c in ipairs(cases) do
    it(string.format("%q after %s", c[1], c[2]), function()
      assert.are.same(c[3], next_ticks(c[1], c[2], 3))
    end)
  end

  it("takes fractional times, and gives whole seconds strictly after them", function()
    local s = cron.parse("* * * * * *")
    assert.are.equal(utc("2024-01-01 00:00:01"), s:next(utc("2024-01-01 00:00:00") + 0.999))
    assert.are.equal("integer", math.type(s:next(1.5)))
  end)
end)

describe("schedule:ticks(from, to)", function()
  it("gives every tick after from, up to and including to", function()
    local out = {}
    for t in cron.parse("*/20 * * * *"):ticks(utc("2024-01-01 10:00:00"), utc("2024-01-01 11:00:00")) do
      out[#out + 1] = iso(t)
    end
    assert.are.same({ "2024-01-01 10:20:00", "2024-01-01 10:40:00", "2024-01-01 11:00:00" }, out)
  end)

  it("gives nothing for an empty span", function()
    local n = 0
    for _ in cron.parse("@hourly"):ticks(utc("2024-01-01 10:00:00"), utc("2024-01-01 10:59:59")) do n = n + 1 end
    assert.are.equal(0, n)
  end)
end)

describe("cron.parse of a malformed expression", function()
  local cases = {
    { "*/0 * * * *", 'cron: field 1 (minute), character 3 of "*/0 * * * *": the step must be a whole number of '
      .. 'at least 1, got "0"' },
    { "60 * * * *", 'cron: field 1 (minute), character 1 of "60 * * * *": 60 is out of range (0-59)' },
    { "0 24 * * *", 'cron: field 2 (hour), character 3 of "0 24 * * *": 24 is out of range (0-23)' },
    { "* * 0 * *", 'cron: field 3 (day of month), character 5 of "* * 0 * *": 0 is out of range (1-31)' },
    { "* * * 13 *", 'cron: field 4 (month), character 7 of "* * * 13 *": 13 is out of range (1-12)' },
    { "* * * * 8", 'cron: field 5 (day of week), character 9 of "* * * * 8": 8 is out of range (0-7)' },
    { "* * * * * 60", 'cron: field 6 (second), character 11 of "* * * * * 60": 60 is out of range (0-59)' },
    { "99999999999999999999 * * * *", 'cron: field 1 (minute), character 1 of "99999999999999999999 * * * *": '
      .. '99999999999999999999 is out of range (0-59)' },
    { "1,,2 * * * *", 'cron: field 1 (minute), character 3 of "1,,2 * * * *": an empty list item' },
    { "1, * * * *", 'cron: field 1 (minute), character 3 of "1, * * * *": an empty list item' },
    { "5-1 * * * *", 'cron: field 1 (minute), character 1 of "5-1 * * * *": the range 5-1 goes backwards' },
    { "0 0 1-x * *", 'cron: field 3 (day of month), character 7 of "0 0 1-x * *": expected a number, got "x"' },
    { "0 0 * foo *", 'cron: field 4 (month), character 7 of "0 0 * foo *": expected a number or a name '
      .. '(jan..dec), got "foo"' },
    { "0 0 * * mon-funday", 'cron: field 5 (day of week), character 13 of "0 0 * * mon-funday": expected a number '
      .. 'or a name (sun..sat), got "funday"' },
    { "0 0 * * mon#2", 'cron: field 5 (day of week), character 12 of "0 0 * * mon#2": \'#\' (nth weekday) is not '
      .. 'supported' },
    { "0 0 * * L", 'cron: field 5 (day of week), character 9 of "0 0 * * L": expected a number or a name '
      .. '(sun..sat), got "L"' },
    { "0 0 L-3 * *", 'cron: field 3 (day of month), character 5 of "0 0 L-3 * *": L (the last day) cannot start a '
      .. 'range or a step' },
    { "0 0 */x * *", 'cron: field 3 (day of month), character 7 of "0 0 */x * *": the step must be a whole number '
      .. 'of at least 1, got "x"' },
    { "0 0 30 2 *", 'cron: field 3 (day of month), character 5 of "0 0 30 2 *": no chosen month has such a day, so '
      .. 'this schedule would never fire' },
    { "0 0 31 4,6 *", 'cron: field 3 (day of month), character 5 of "0 0 31 4,6 *": no chosen month has such a day, '
      .. 'so this schedule would never fire' },
    { "* * *", 'cron: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (then the second, last), '
      .. 'got 3 in "* * *"' },
    { "* * * * * * *", 'cron: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (then the '
      .. 'second, last), got 7 in "* * * * * * *"' },
    { "", 'cron: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (then the second, last), '
      .. 'got 0 in ""' },
    { "@often", 'cron: unknown shorthand "@often" (known: @yearly, @annually, @monthly, @weekly, @daily, '
      .. '@midnight, @hourly)' },
  }
  for _, c in ipairs(cases) do
    it(string.format("%q names the place", c[1]), function()
      assert.are.equal("cron_spec.lua:" .. debug.getinfo(1, "l").currentline + 1 .. ": " .. c[2],
        (error_of(function() cron.parse(c[1]) end):gsub("^spec/", "")))
    end)
  end

  it("blames the caller it is told to", function()
    local function register(expr) cron.parse(expr, 2) end
    local err = error_of(function()
      register("61 * * * *")                      -- this line is blamed
    end)
    assert.matches("^spec/cron_spec%.lua:" .. debug.getinfo(1, "l").currentline - 2 .. ": cron: field 1", err)
    assert.matches("cron: the expression must be a string, got number", error_of(cron.parse, 5))
  end)
end)

describe("a schedule", function()
  it("prints its expression", function()
    assert.are.equal("<tarry.CronSchedule */5 * * * *>", tostring(cron.parse("*/5 * * * *")))
  end)

  it("refuses a time that is not a finite number", function()
    local s = cron.parse("@hourly")
    assert.matches("schedule:next: the time must be a finite number of unix seconds", error_of(s.next, s, 0 / 0))
    assert.matches("schedule:next: the time must be a finite number", error_of(s.next, s, "now"))
  end)
end)
