-- app:step(0) times with a worker at concurrency 10 running no-op jobs, in two host loops:
--   pollfd   luv wakes the host when app:pollfd() is readable or app:timeout() passed (an event loop)
--   60 Hz    the host steps once per 16.7 ms frame, whatever happens (a game)
-- Each mode defers its jobs first (one batch), starts the worker with app:start_worker and steps
-- until every job succeeded. scripts/bench-step runs it inside a throwaway PostgreSQL.
-- "waits in steps" counts the voluntary context switches (getrusage) during the steps: a step that
-- blocked (on a socket, a lock, a sleep) makes one; preemption by other processes does not, and
-- shows as "worst ms" far above "worst CPU ms".
local tarry = require "tarry"
local schema = require "tarry.schema"
local uv = require "luv"

local JOBS = tonumber(arg[1] or "") or 5000
local FRAME_JOBS = math.min(JOBS, 1000)

local function fresh_db(name)
  local admin = tarry.SyncPgConnector{ conninfo = "dbname=postgres" }
  admin:execute("DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  admin:execute("CREATE DATABASE " .. name)
  admin:close()
  local c = tarry.SyncPgConnector{ conninfo = "dbname=" .. name }
  schema.apply(c)
  c:close()
  return "dbname=" .. name
end

local function setup(name, n)
  local app = tarry.App{ connector = tarry.PgConnector{ conninfo = fresh_db(name), max_size = 10 } }
  app:task("noop", function() end)
  local jobs = {}
  for i = 1, n do jobs[i] = {} end
  app.tasks.noop:batch_defer(jobs)
  return app
end

local waits, worst_cpu = 0, 0

-- One timed step; its milliseconds go to times (and to busy when it resumed something).
local function timed_step(app, times, busy)
  local sw0, c0, t0 = uv.getrusage().nvcsw, os.clock(), uv.hrtime()
  local n = app:step(0)
  local ms = (uv.hrtime() - t0) / 1e6
  worst_cpu = math.max(worst_cpu, (os.clock() - c0) * 1000)
  waits = waits + uv.getrusage().nvcsw - sw0
  times[#times + 1] = ms
  if n > 0 then busy[#busy + 1] = ms end
end

-- The luv host: a poll on the pollfd and a timer from app:timeout(); a step on either.
local function drive_pollfd(app, w, n, times, busy)
  local poll, timer = uv.new_poll(app:pollfd()), uv.new_timer()
  local function step()
    timed_step(app, times, busy)
    timer:stop()
    if w:stats().succeeded >= n then poll:stop(); return end
    local t = app:timeout()
    if t then timer:start(math.ceil(t * 1000), 0, step) end
  end
  poll:start("r", step)
  step()
  uv.run("default")
  poll:close(); timer:close(); uv.run("nowait")
end

local function drive_frames(app, w, n, times, busy)
  while w:stats().succeeded < n do
    local frame_end = uv.hrtime() + 1e9 / 60
    timed_step(app, times, busy)
    local left = (frame_end - uv.hrtime()) / 1e9
    if left > 0 then tarry.sleep(left) end
  end
end

local function pct(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

local function run(mode, drive, n)
  local app = setup("bench_step_" .. mode:lower():gsub("%W", ""), n)
  local times, busy = {}, {}
  waits, worst_cpu = 0, 0
  local t0 = uv.hrtime()
  local w = app:start_worker{ concurrency = 10, log_level = "error" }
  drive(app, w, n, times, busy)
  local seconds = (uv.hrtime() - t0) / 1e9
  w:stop()
  while not w:stopped() do app:step(0.05) end
  table.sort(times); table.sort(busy)
  return { mode, n, #times, #busy, string.format("%.3f", pct(times, 0.5)), string.format("%.3f", pct(busy, 0.5)),
    string.format("%.3f", pct(times, 0.99)), string.format("%.3f", times[#times]),
    string.format("%.3f", worst_cpu), waits, string.format("%.0f", n / seconds) }
end

local header = { "host loop", "jobs", "steps", "steps that resumed", "median ms", "median ms (resumed)",
  "p99 ms", "worst ms", "worst CPU ms", "waits in steps", "jobs/s" }
local rows = { run("pollfd (luv)", drive_pollfd, JOBS), run("60 Hz frames", drive_frames, FRAME_JOBS) }

local widths = {}
for i, h in ipairs(header) do widths[i] = #h end
for _, r in ipairs(rows) do for i, c in ipairs(r) do widths[i] = math.max(widths[i], #tostring(c)) end end
local function line(cols)
  local out = {}
  for i, c in ipairs(cols) do out[i] = string.format("%-" .. widths[i] .. "s", tostring(c)) end
  print("| " .. table.concat(out, " | ") .. " |")
end
print("\napp:step(0) with app:start_worker{ concurrency = 10 } running no-op jobs")
line(header)
local dashes = {}
for i, wd in ipairs(widths) do dashes[i] = string.rep("-", wd) end
print("|-" .. table.concat(dashes, "-|-") .. "-|")
for _, r in ipairs(rows) do line(r) end
