-- A cqueues program that drives a tarry worker: the tarry app has cqueues' own pollable
-- interface (pollfd, events, timeout), so a cqueues coroutine just waits on the app itself with
-- cqueues.poll(app) and calls app:step(0) when it wakes. Another cqueues coroutine shows the
-- loop is shared: it ticks while the jobs run. Defers JOBS jobs and exits once they succeeded.
--
--   lua5.4 scripts/examples/cqueues_worker.lua CONNINFO [JOBS]      (Debian: lua-cqueues)
local cqueues = require "cqueues"
local tarry = require "tarry"

local conninfo, jobs = arg[1] or "", tonumber(arg[2] or "") or 20
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = conninfo } }
app:task("greet", function(args, ctx)
  ctx:sleep(0.01)
  return "hello " .. args.who
end)
app:spawn(function()                    -- defer on tarry's loop: nothing blocks cqueues
  for i = 1, jobs do app.tasks.greet:defer{ who = "job " .. i } end
end)
local worker = app:start_worker{ concurrency = 4, log_level = "warning" }

local cq = cqueues.new()
local ticks = 0
cq:wrap(function()                      -- tarry's driver
  while not worker:stopped() do
    cqueues.poll(app)                   -- until app:pollfd() is readable or app:timeout() passed
    app:step(0)
    if worker:stats().succeeded == jobs then worker:stop() end
  end
end)
cq:wrap(function()                      -- the host's own work, on the same loop
  while not worker:stopped() do ticks = ticks + 1; cqueues.sleep(0.01) end
end)
assert(cq:loop())
print(string.format("cqueues_worker: %d jobs succeeded, %s (the host ticked %s)", worker:stats().succeeded,
  tostring(worker), ticks > 0 and "too" or "never"))
