-- The TCP proxy of spec/support/tcp_proxy.c (built into $TARRY_BUILD_DIR/bin), between a worker
-- and the throwaway PostgreSQL, listening on 127.0.0.1 only:
--
--   local p = proxy.start()              -- to 127.0.0.1:$PGPORT, on a port the kernel picked
--   proc.app_file(name, body, { conninfo = p:conninfo(name) })
--   p:hold()      -- nothing gets through either way; sockets stay open (no FIN, no RST)
--   p:forward()   -- what was held is delivered, and forwarding goes on
--   p:cut()       -- reset every open connection
--   proxy.start(nil, { withhold_server_fin = true })   -- a server's close is not passed on
--                 -- ("withheld N"): its last words arrive, its FIN does not
--   p:stop()
--
-- Each switch returns once the proxy has acknowledged it. p:count("accept") and friends count
-- the proxy's event lines (see the C file's header); proc.kill_all() kills a proxy left running.
local proc = require "support.process"

local M = {}
M.executable = (os.getenv("TARRY_BUILD_DIR") or "build") .. "/bin/tcp_proxy"

local Proxy = {}
Proxy.__index = Proxy

--- Start a proxy to 127.0.0.1:`target_port` (default: $PGPORT, the throwaway server).
--- opts.withhold_server_fin: see the C file's --withhold-server-fin.
function M.start(target_port, opts)
  target_port = target_port or os.getenv("PGPORT") or "5432"
  local f = io.open(M.executable)
  assert(f, M.executable .. " is missing: build it with scripts/build")
  f:close()
  local self = setmetatable({ acks = {} }, Proxy)
  local flags = opts and opts.withhold_server_fin and " --withhold-server-fin" or ""
  self.process = proc.spawn(M.executable .. flags .. " " .. tostring(target_port))
  self.process:wait_for("^listening ", 1, 10)
  self.port = tonumber(self.process:output():match("listening 127%.0%.0%.1:(%d+)"))
  return self
end

--- A libpq conninfo for database `name` through the proxy.
function Proxy:conninfo(name)
  return string.format("host=127.0.0.1 port=%d dbname=%s", self.port, name)
end

--- How many event lines of this kind the proxy printed ("accept", "held", "drop", "close", ...).
function Proxy:count(event)
  return self.process:count("^" .. event .. "%f[%s%z]")
end

--- Wait for the n-th line of this kind (default: one more than there are now).
function Proxy:wait_for(event, n, limit)
  self.process:wait_for("^" .. event .. "%f[%s%z]", n or self:count(event) + 1, limit or 30)
end

local function switch(self, signal, ack)
  self.acks[ack] = (self.acks[ack] or 0) + 1
  self.process:signal(signal)
  self.process:wait_for("^" .. ack .. "$", self.acks[ack], 10)
end

function Proxy:hold() switch(self, "USR1", "mode hold") end
function Proxy:forward() switch(self, "USR2", "mode forward") end

function Proxy:cut()
  local n = self:count("cut")
  self.process:signal("HUP")
  self:wait_for("cut", n + 1, 10)
end

--- Stop the proxy; returns its exit code (0 unless it failed).
function Proxy:stop()
  self.process:signal("TERM")
  return self.process:wait(10)
end

function Proxy:output() return self.process:output() end

return M
