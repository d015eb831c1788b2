-- A real headless Chromium for the browser specs, driven through chromedriver's W3C WebDriver
-- HTTP API (with curl: no npm package, no extra Lua module). Every wait is bounded; `quit`
-- ends the session and kills chromedriver (and so its Chromium).
local proc = require "support.process"
local http = require "support.http"
local tarry = require "tarry"

local M = {}

local ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

--- true when chromium and chromedriver are installed (scripts/deps installs them).
function M.available()
  return os.execute("command -v chromedriver >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1") == true
end

local Browser = {}
Browser.__index = Browser

--- Start chromedriver and open a session of headless Chromium (window 1280x900).
function M.start()
  local self = setmetatable({ profile = os.tmpname() }, Browser)
  os.remove(self.profile)
  self.driver = proc.spawn("exec chromedriver --port=0")        -- it picks a free port and says which
  self.driver:wait_for("started successfully on port %d+", 1, 30)
  self.base = "http://127.0.0.1:" .. self.driver:output():match("started successfully on port (%d+)")
  proc.until_true(function()
    local status, body = http.get(self.base .. "/status")
    return status == 200 and type(body) == "table" and body.value and body.value.ready
  end, 30, "chromedriver to be ready")
  local status, body = http.post(self.base .. "/session", { capabilities = { alwaysMatch = {
    browserName = "chrome",
    ["goog:chromeOptions"] = { binary = "/usr/bin/chromium", args = tarry.array { "--headless=new", "--no-sandbox",
      "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900", "--user-data-dir=" .. self.profile } },
  } } })
  assert(status == 200, "no WebDriver session: " .. tostring(type(body) == "table" and tarry.json.encode(body) or body))
  self.session = body.value.sessionId
  return self
end

function Browser:call(method, path, body)
  local status, res = http.request(method, self.base .. "/session/" .. self.session .. path, { body = body })
  if status ~= 200 then return nil, type(res) == "table" and res.value or res end
  return res.value
end

function Browser:must(method, path, body)
  local v, err = self:call(method, path, body)
  if v == nil and err ~= nil then error("WebDriver " .. method .. " " .. path .. ": " .. tarry.json.encode(err), 2) end
  return v
end

function Browser:go(url) self:must("POST", "/url", { url = url }) end

--- Run JavaScript in the page; returns its result.
function Browser:js(script, ...)
  return self:must("POST", "/execute/sync", { script = script, args = tarry.array { ... } })
end

--- The first element matching a CSS selector, or nil.
function Browser:find(css)
  local v = self:call("POST", "/element", { using = "css selector", value = css })
  return v and v[ELEMENT]
end

--- Wait (bounded) for an element, return its id.
function Browser:wait_for(css, limit)
  local id
  proc.until_true(function() id = self:find(css); return id ~= nil end, limit or 20, "an element " .. css, 3)
  return id
end

--- The text of the first element matching css (textContent, read in one step: the page's
-- auto-refresh may replace elements between two WebDriver calls), or nil.
function Browser:text(css)
  return self:js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null", css)
end

--- Click the first element matching css (a real WebDriver click; found again if the page's
-- refresh replaced it meanwhile).
function Browser:click(css)
  for _ = 1, 5 do
    local id = self:wait_for(css)
    local v, err = self:call("POST", "/element/" .. id .. "/click", {})
    if v ~= nil or err == nil then return end
    if not (type(err) == "table" and err.error == "stale element reference") then
      error("WebDriver click " .. css .. ": " .. tarry.json.encode(err), 2)
    end
  end
  error("WebDriver click " .. css .. ": the element kept being replaced", 2)
end

--- The text of an open alert/confirm dialog, or nil when there is none.
function Browser:alert_text()
  return (self:call("GET", "/alert/text"))
end

--- Save a PNG screenshot of the page to path.
function Browser:screenshot(path)
  local b64 = self:must("GET", "/screenshot")
  local f = assert(io.open(path .. ".b64", "w"))
  f:write(b64)
  f:close()
  assert(os.execute(string.format("base64 -d %s.b64 > %s && rm -f %s.b64", path, path, path)))
end

function Browser:quit()
  if self.session then pcall(self.call, self, "DELETE", "") end
  self.session = nil
  if self.driver and self.driver:running() then self.driver:signal("TERM") end
  os.execute("rm -rf " .. self.profile)
end

return M
