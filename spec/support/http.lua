-- HTTP for the dashboard specs: requests through curl (a real client on a real socket), and a
-- `tarry dashboard` process started on a free port.
local db = require "support.db"
local proc = require "support.process"
local tarry = require "tarry"
local luassert = require "luassert"   -- busted's assert (a required module does not see the spec's)

local M = {}

--- request(method, url, { body = table|string, headers = { Name = value }, user = "u:p" })
--- -> status, decoded JSON body (or the raw text), raw text, response headers text.
function M.request(method, url, opts)
  opts = opts or {}
  local bodyfile, outfile, hdrfile = os.tmpname(), os.tmpname(), os.tmpname()
  local args = { "curl", "-s", "--max-time", "30", "-X", method, "-o", outfile, "-D", hdrfile, "-w", "%{http_code}" }
  local headers = opts.headers or {}
  if opts.body ~= nil then
    local f = assert(io.open(bodyfile, "w"))
    f:write(type(opts.body) == "string" and opts.body or tarry.json.encode(opts.body))
    f:close()
    args[#args + 1] = "--data-binary"
    args[#args + 1] = "@" .. bodyfile
    if headers["Content-Type"] == nil then headers["Content-Type"] = "application/json" end
  elseif method == "POST" then
    args[#args + 1] = "--data-binary"
    args[#args + 1] = ""
  end
  for k, v in pairs(headers) do
    args[#args + 1] = "-H"
    args[#args + 1] = k .. ": " .. v
  end
  if opts.user then args[#args + 1] = "-u"; args[#args + 1] = opts.user end
  args[#args + 1] = url
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = db.shell_quote(a) end
  local p = io.popen(table.concat(quoted, " "))
  local status = tonumber(p:read("a"))
  p:close()
  local text = proc.read(outfile) or ""
  local head = proc.read(hdrfile) or ""
  os.remove(bodyfile); os.remove(outfile); os.remove(hdrfile)
  local ok, value = pcall(tarry.json.decode, text)
  return status, ok and value or text, text, head
end

function M.get(url, opts) return M.request("GET", url, opts) end
function M.post(url, body, opts)
  opts = opts or {}
  opts.body = body
  return M.request("POST", url, opts)
end

--- Start `tarry dashboard --port 0 <args>` on database `name`; returns the process and its URL
--- (read from its "listening on" line).
function M.start_dashboard(name, args)
  local p = proc.start(string.format("dashboard --port 0 --conninfo %s %s", db.shell_quote(db.conninfo(name)),
    args or ""))
  p:wait_for("listening on http://", 1, 30)
  return p, p:output():match("listening on (http://%S+)")
end

--- Stop a dashboard of start_dashboard (nil: nothing to stop) with SIGTERM, and assert that it
--- stopped cleanly: exit code 0 (and, under ASan, no leak).
function M.stop_dashboard(p)
  if not p then return end
  p:signal("TERM")
  luassert.equal(0, p:wait(30), p:output())
end

return M
