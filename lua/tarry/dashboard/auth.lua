--- The dashboard's safety checks: HTTP basic auth (--auth USER:PASSWORD), the same-origin rule
-- for state-changing requests, and read-only mode.
-- @module tarry.dashboard.auth
local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local DECODE = {}
for i = 1, #B64 do DECODE[B64:sub(i, i)] = i - 1 end

--- The base64 text s decoded, or nil when it is not base64.
function M.base64_decode(s)
  s = s:gsub("=+$", "")
  if s:find("[^%w%+/]") then return nil end
  local out, bits, n = {}, 0, 0
  for ch in s:gmatch(".") do
    bits, n = (bits << 6) | DECODE[ch], n + 6
    if n >= 8 then
      n = n - 8
      out[#out + 1] = string.char((bits >> n) & 0xff)
    end
  end
  return table.concat(out)
end

--- true when a equals b, in a time that depends only on their lengths (not on where they differ).
function M.equal(a, b)
  local diff = #a ~ #b
  for i = 1, math.max(#a, #b) do
    diff = diff | ((a:byte(i) or 0) ~ (b:byte(i) or 0))
  end
  return diff == 0
end

--- true when the request carries the credentials "user:password" (Authorization: Basic).
function M.authorized(headers, credentials)
  local given = (headers.authorization or ""):match("^[Bb]asic%s+(%S+)%s*$")
  local decoded = given and M.base64_decode(given)
  return decoded ~= nil and M.equal(decoded, credentials)
end

local SAFE = { GET = true, HEAD = true, OPTIONS = true }

--- nil when the request may change state, else why not. A browser names where a request comes
-- from: Sec-Fetch-Site must be same-origin (or none: typed by the user), and Origin, when sent,
-- must be this server (scheme://Host). A client that sends neither is not a browser, so no other
-- site can make it act. JSON bodies also need a CORS preflight, which this server never grants.
function M.cross_site(method, headers)
  if SAFE[method] then return nil end
  local site = headers["sec-fetch-site"]
  if site and site ~= "same-origin" and site ~= "none" then
    return "cross-site request refused (Sec-Fetch-Site: " .. site .. ")"
  end
  local origin = headers.origin
  if origin and origin ~= "null" then
    local host = (origin:match("^https?://([^/]+)$"))
    if not host or host:lower() ~= (headers.host or ""):lower() then
      return "cross-origin request refused (Origin: " .. origin .. ")"
    end
  elseif origin == "null" then
    return "cross-origin request refused (Origin: null)"
  end
  return nil
end

M.SAFE = SAFE

return M
