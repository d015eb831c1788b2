--- Date-times to unix time, for `tarry defer --at`. ISO 8601 (local time unless it carries `Z` or
-- an offset, as `date` and PostgreSQL's timestamptz read it) or a unix time.
-- @module tarry.timeparse
local M = {}

-- Days since 1970-01-01 of a proleptic Gregorian date (the usual era/day-of-era arithmetic).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- Unix time of a local civil time (the TZ variable's zone; mktime picks DST), plus the fraction.
local function local_time(y, mo, d, h, mi, sec)
  local t = os.time { year = y, month = mo, day = d, hour = h, min = mi, sec = math.min(sec, 59) }
  return t + (sec > 59 and 1 or 0)
end

--- ISO 8601 to unix time: "2026-11-25T10:00:00Z", "2026-11-25 10:00:00.5+02:00",
-- "2026-11-25T10:00" or "2026-11-25". Without `Z` or an offset, the date-time is local time
-- (`TZ=UTC` makes it UTC). Returns the seconds since the epoch, or nil and a message.
-- @tparam string s the date-time
-- @treturn number|nil seconds since the epoch
-- @treturn string the reason, when nil
function M.iso8601(s)
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil, string.format("%q is not an ISO 8601 date-time (like 2026-11-25T10:00:00Z)", s) end
  local h, mi, sec, frac, tz = 0, 0, 0, "", ""
  if rest ~= "" then
    h, mi, rest = rest:match("^[T ](%d%d):(%d%d)(.*)$")
    if not h then return nil, string.format("%q: bad time part", s) end
    local s2, r2 = rest:match("^:(%d%d)(.*)$")
    if s2 then
      sec, rest = s2, r2
      local f2, r3 = rest:match("^(%.%d+)(.*)$")
      if f2 then frac, rest = f2, r3 end
    end
    tz = rest
  end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  local month_days = { 31, (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
  if mo < 1 or mo > 12 or d < 1 or d > month_days[mo] or h > 23 or mi > 59 or sec > 60 then
    return nil, string.format("%q: field out of range", s)
  end
  local offset = 0
  if tz == "" then
    local t = local_time(y, mo, d, h, mi, sec)
    return frac ~= "" and t + tonumber("0" .. frac) or t
  elseif tz ~= "Z" and tz ~= "z" then
    local sign, oh, om = tz:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then sign, oh = tz:match("^([+-])(%d%d)$"); om = "00" end
    if not sign then return nil, string.format("%q: bad UTC offset %q", s, tz) end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "+" and 1 or -1)
  end
  local t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset
  if frac ~= "" then t = t + tonumber("0" .. frac) end
  return t
end

--- What `--at` accepts: a unix time ("1893456000", "@1893456000.5") or an ISO 8601 date-time
-- (see `iso8601`). Returns the seconds since the epoch, or nil and a message.
-- @tparam string s the time
-- @treturn number|nil seconds since the epoch
-- @treturn string the reason, when nil
function M.parse(s)
  local unix = s:match("^@?(%d+%.?%d*)$")
  if unix and (s:sub(1, 1) == "@" or not s:match("^%d%d%d%d%-")) then return tonumber(unix) end
  return M.iso8601(s)
end

return M
