--- ISO 8601 date-times to unix time, for `tarry defer --at`.
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

--- "2026-11-25T10:00:00Z", "2026-11-25 10:00:00.5+02:00", "2026-11-25T10:00" or "2026-11-25"
-- -> seconds since the epoch. Without an offset, the time is UTC. Returns nil, message on error.
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
  if tz ~= "" and tz ~= "Z" and tz ~= "z" then
    local sign, oh, om = tz:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then sign, oh = tz:match("^([+-])(%d%d)$"); om = "00" end
    if not sign then return nil, string.format("%q: bad UTC offset %q", s, tz) end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "+" and 1 or -1)
  end
  local t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset
  if frac ~= "" then t = t + tonumber("0" .. frac) end
  return t
end

return M
