-- A luv (libuv) program that drives a tarry worker from its own loop: a uv poll on app:pollfd()
-- wakes it when tarry has work, a uv timer set from app:timeout() when a tarry timer is due, and
-- each wake is one app:step(0), which never blocks. luv keeps the loop, and the signals: SIGINT
-- asks the worker for a graceful stop. The program defers JOBS jobs (a few of them scheduled a
-- second later, so the timer path runs too), and exits once they all succeeded.
--
--   lua5.4 scripts/examples/luv_worker.lua CONNINFO [JOBS]      (Debian: lua-luv)
local uv = require "luv"
local tarry = require "tarry"

local conninfo, jobs = arg[1] or "", tonumber(arg[2] or "") or 20
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = conninfo } }

app:task("greet", function(args, ctx)
  ctx:sleep(0.01)                       -- parks this job only: the loop goes on
  return "hello " .. args.who
end)

-- Defer in a tarry coroutine: there the insert waits on the loop instead of blocking luv.
app:spawn(function()
  for i = 1, jobs do
    local later = i % 5 == 0 and { schedule_in = 1 } or {}
    app.tasks.greet:configure(later):defer{ who = "job " .. i }
  end
end)

-- A scheduled job is found by the fetcher's polling (a timer): every half second here.
local worker = app:start_worker{ concurrency = 4, log_level = "warning", fetch_job_polling_interval = 0.5 }
local poll, timer, sigint = uv.new_poll(app:pollfd()), uv.new_timer(), uv.new_signal()

local function step()
  app:step(0)                           -- raises if the worker failed: the program ends with it
  if worker:stopped() then
    poll:close(); timer:close(); sigint:close()       -- nothing left: uv.run returns
    return
  end
  if worker:stats().succeeded == jobs then worker:stop() end
  timer:stop()
  local t = app:timeout()
  if t then timer:start(math.ceil(t * 1000), 0, step) end
end

poll:start(app:events(), step)          -- "r": the pollfd is only ever watched for reading
sigint:start("sigint", function() worker:stop(); step() end)
step()
uv.run("default")
print(string.format("luv_worker: %d jobs succeeded, %s", worker:stats().succeeded, tostring(worker)))
