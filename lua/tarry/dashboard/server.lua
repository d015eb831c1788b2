--- The dashboard's server: routes each request (a tarry.HttpServer handler, in its own coroutine)
-- to the page's files or to the JSON API (tarry/dashboard/api.lua), after the safety checks
-- (tarry/dashboard/auth.lua): basic auth, read-only mode, the same-origin rule.
--
--     local dashboard = require "tarry.dashboard.server"
--     local d = dashboard.start(app, { host = "127.0.0.1", port = 8470, base_path = "/jobs",
--                                      read_only = false, auth = "user:password" })
--     d.url      --> "http://127.0.0.1:8470/jobs/"
--     d:close()
--
-- The app's connector must be open (app:open()) so that requests use its async pool and never
-- block the loop on the database.
-- @module tarry.dashboard.server
local core = require "tarry.core"
local Api = require "tarry.dashboard.api"
local Auth = require "tarry.dashboard.auth"

local M = {}

local Dashboard = {}
Dashboard.__index = Dashboard

-- The page's files, read once from static/ beside this file.
local STATIC_DIR = debug.getinfo(1, "S").source:match("^@(.*/)server%.lua$") .. "static/"
local TYPES = { html = "text/html; charset=utf-8", js = "text/javascript; charset=utf-8",
  css = "text/css; charset=utf-8", png = "image/png", svg = "image/svg+xml" }
local files = {}

local function static_file(name)
  if files[name] == nil then
    local f = name:match("^[%w_-]+%.%w+$") and io.open(STATIC_DIR .. name, "rb")
    files[name] = f and f:read("a") or false
    if f then f:close() end
  end
  return files[name] or nil
end

local SECURITY = {
  ["Content-Security-Policy"] = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    .. "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  ["X-Content-Type-Options"] = "nosniff",
  ["Referrer-Policy"] = "no-referrer",
  ["X-Frame-Options"] = "DENY",
}

local function headers(extra)
  local h = {}
  for k, v in pairs(SECURITY) do h[k] = v end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

local function json_reply(req, status, value)
  local ok, body = pcall(core.json_encode, value)
  if not ok then status, body = 500, core.json_encode({ error = "cannot encode the answer: " .. tostring(body) }) end
  return req:respond(status, headers { ["Content-Type"] = "application/json; charset=utf-8",
    ["Cache-Control"] = "no-store" }, body .. "\n")
end

local function serve_file(req, name)
  local body = static_file(name)
  if not body then return req:respond(404, headers { ["Content-Type"] = "text/plain" }, "not found\n") end
  return req:respond(200, headers { ["Content-Type"] = TYPES[name:match("%.(%w+)$")] or "application/octet-stream",
    ["Cache-Control"] = "no-cache" }, body)
end

-- The JSON body of a POST: a table ({} when empty), or nil and the error response.
local function json_body(req)
  if req.body == "" then return {} end
  local ctype = (req.headers["content-type"] or ""):lower()
  if not ctype:match("^application/json") then return nil, 415, "a request body must be application/json" end
  local ok, v = pcall(core.json_decode, req.body)
  if not ok or type(v) ~= "table" then return nil, 400, "the body must be a JSON object" end
  return v
end

-- The API routes: (method, path) -> handler call.
function Dashboard:api(req, path)
  local m = req.method == "HEAD" and "GET" or req.method
  local ctx = self.ctx
  if m == "GET" then
    if path == "jobs" then return Api.list(ctx, req) end
    local id = path:match("^jobs/(%d+)$")
    if id then return Api.show(ctx, req, math.tointeger(tonumber(id))) end
    if path == "queues" then return Api.queues(ctx, req) end
    if path == "workers" then return Api.workers(ctx, req) end
    if path == "periodic" then return Api.periodic(ctx, req) end
    if path == "stats" then return Api.stats(ctx, req) end
    if path == "config" then
      return 200, { read_only = self.read_only, version = core.version, base_path = self.base_path,
        app = self.app_name or core.null }
    end
    return Api.fail(404, "no such API: GET /api/%s", path)
  end
  if m ~= "POST" then return Api.fail(405, "method %s not allowed", m) end
  if self.read_only then return Api.fail(403, "the dashboard is read-only (--read-only): no action allowed") end
  local body, status, why = json_body(req)
  if not body then return Api.fail(status, "%s", why) end
  if path == "jobs" then return Api.defer(ctx, req, body) end
  local id, action = path:match("^jobs/(%d+)/([%w-]+)$")
  if id then return Api.act(ctx, req, math.tointeger(tonumber(id)), action) end
  action = path:match("^jobs/(%a+)$")
  if action == "retry" or action == "cancel" or action == "delete" then return Api.bulk(ctx, req, action, body) end
  return Api.fail(404, "no such API: POST /api/%s", path)
end

local function failure_text(err)
  if core.is_error(err) then return err.message or tostring(err) end
  return tostring(err)
end

-- One request, start to end (the HttpServer's handler).
function Dashboard:handle(req)
  local path = req.path
  if self.auth and not Auth.authorized(req.headers, self.auth) then
    return req:respond(401, headers { ["WWW-Authenticate"] = 'Basic realm="tarry dashboard", charset="UTF-8"',
      ["Content-Type"] = "text/plain" }, "authentication required\n")
  end
  local base = self.base_path
  if path == base and base ~= "/" then
    return req:respond(308, headers { Location = base .. "/" }, "")
  end
  if path:sub(1, #base) ~= base then return req:respond(404, headers { ["Content-Type"] = "text/plain" }, "not found\n") end
  local rest = path:sub(#base + 1):gsub("^/", "")
  if rest == "" or rest == "index.html" then return serve_file(req, "index.html") end
  local name = rest:match("^static/(.+)$")
  if name then return serve_file(req, name) end
  local api = rest:match("^api/(.*)$")
  if not api then return req:respond(404, headers { ["Content-Type"] = "text/plain" }, "not found\n") end
  local refused = Auth.cross_site(req.method, req.headers)
  if refused then return json_reply(req, 403, { error = refused }) end
  local ok, status, value = pcall(self.api, self, req, api)
  if not ok then
    local err = status
    self.log(string.format("%s %s failed: %s", req.method, path, failure_text(err)))
    return json_reply(req, core.is_error(err) and 503 or 500, { error = failure_text(err) })
  end
  return json_reply(req, status, value)
end

local LOOPBACK = { ["127.0.0.1"] = true, ["::1"] = true, localhost = true }

--- true when `host` is reachable only from this machine.
function M.is_loopback(host) return LOOPBACK[host] == true or host:match("^127%.") ~= nil end

--- Normalise a base path: "" or "/" -> "/"; "jobs/" -> "/jobs". nil and a message when invalid.
function M.base_path(p)
  p = p or "/"
  if p:find("[^%w%-%._~/]") then return nil, "--base-path may hold only letters, digits, - . _ ~ and /" end
  p = ("/" .. p):gsub("/+", "/"):gsub("/$", "")
  return p == "" and "/" or p
end

--- Start serving the dashboard of `app` on the runtime's loop. opts: host ("127.0.0.1"), port
-- (8470; 0 for any free port), base_path ("/"), read_only, auth ("user:password"), log (a
-- function(line) for failures; default stderr). Raises an error object (code "listen") when it
-- cannot listen.
function M.start(app, opts)
  opts = opts or {}
  local base = assert(M.base_path(opts.base_path))
  local self = setmetatable({ app = app, read_only = opts.read_only == true, auth = opts.auth,
    base_path = base, app_name = opts.app_name,
    log = opts.log or function(line) io.stderr:write("tarry dashboard: ", line, "\n") end }, Dashboard)
  self.ctx = { app = app, connector = app.connector }
  local host = opts.host or "127.0.0.1"
  self.server = core.HttpServer{ host = host, port = opts.port or 8470, handler = function(req)
    local ok, err = pcall(self.handle, self, req)
    if not ok then
      self.log(string.format("%s %s failed: %s", req.method, req.path, failure_text(err)))
      req:respond(500, headers { ["Content-Type"] = "text/plain" }, "internal error\n")
    end
  end }
  local shown = host:find(":", 1, true) and ("[" .. host .. "]") or host
  self.url = string.format("http://%s:%d%s", shown, self.server:port(), base == "/" and "/" or base .. "/")
  return self
end

function Dashboard:port() return self.server:port() end

--- Stop serving (requests in progress get a 503).
function Dashboard:close() self.server:close() end

function Dashboard:__tostring() return string.format("<tarry.Dashboard %s>", self.url) end

return M
