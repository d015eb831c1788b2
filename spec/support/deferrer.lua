-- A process that defers jobs one at a time until told to stop, noting each outcome, for the
-- fault specs: `tarry run spec/support/deferrer.lua CONNINFO MODE TAG OUT STOP`.
--   MODE  "blocking": defers from the main thread (the connector's blocking path);
--         "async": app:open(), then 4 tarry coroutines defer concurrently through the pool.
--   OUT   gets one line per defer: "ok <n> <job id>", or "err <n> <code> <message>" (code "raw" when
--         what was raised is not a tarry error object). Every job has args {tag = TAG, n = n}.
--   STOP  deferring stops once this file exists (or after 120 s, a guard).
local tarry = require "tarry"
local conninfo, mode, tag, out_path, stop_path = ...

local app = tarry.App{ connector = tarry.PgConnector{ conninfo = conninfo } }
local mark = app:task("mark", function() end)
local out = assert(io.open(out_path, "w"))
out:setvbuf("line")
local n, deadline = 0, os.time() + 120

local function stopped()
  local f = io.open(stop_path)
  if f then f:close() end
  return f ~= nil or os.time() > deadline
end

local function defer_one()
  n = n + 1
  local i = n
  local ok, res = pcall(mark.defer, mark, { tag = tag, n = i })
  if ok then
    out:write(string.format("ok %d %d\n", i, res))
  else
    local code = tarry.is_error(res) and res.code or "raw"
    out:write(string.format("err %d %s %s\n", i, code, (tostring(res):gsub("%s+", " "))))
    tarry.sleep(0.01)      -- the server is down: do not spin
  end
end

if mode == "async" then
  app:open()
  for _ = 1, 4 do
    app:spawn(function() while not stopped() do defer_one() end end)
  end
  app:run()
  app:close()
else
  while not stopped() do defer_one() end
end
out:close()
return 0
