-- Blocking task bodies, measured: (1) how long an ordinary job waits to start while CPU-bound
-- jobs run, with those marked `blocking = true` (on threads) and not (on the loop); (2) the
-- speed-up of N CPU-bound blocking jobs with 1 and 2 threads. Times come from the database's clock.
--
--   bash scripts/with-postgres --superuser build/bin/tarry run scripts/bench-blocking.lua build
--
-- Environment: BENCH_JOBS (N, default 4), BENCH_WORK (loop iterations per job, default 1e8; the
-- jobs that run while ordinary ones are deferred do 4 times as many).
local tarry = require "tarry"
local schema = require "tarry.schema"

local build = arg[1] or "build"
local TARRY = build .. "/bin/tarry"
local N = tonumber(os.getenv("BENCH_JOBS") or "4")
local WORK = tonumber(os.getenv("BENCH_WORK") or "1e8")

local admin = tarry.SyncPgConnector{ conninfo = "dbname=postgres" }

local function fresh_db(name)
  admin:execute("DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  admin:execute("CREATE DATABASE " .. name)
  local c = tarry.SyncPgConnector{ conninfo = "dbname=" .. name }
  schema.apply(c)
  c:execute("CREATE TABLE marks (job_id bigint, what text, at timestamptz DEFAULT clock_timestamp())")
  c:close()
  return "dbname=" .. name
end

local TASKS = [[
local tarry = require "tarry"
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = %q } }
local function mark(ctx, what) ctx.app.connector:execute("INSERT INTO marks (job_id, what) VALUES ($1, $2)", ctx.job.id, what) end
local function work(n) local s = 0 for i = 1, n do s = s + i %% 7 end return s end
app:task("crunch", { blocking = true }, function(args, ctx) mark(ctx, "start"); work(args.n); mark(ctx, "end") end)
app:task("crunch_on_loop", function(args, ctx) mark(ctx, "start"); work(args.n); mark(ctx, "end") end)
app:task("quick", function(args, ctx) mark(ctx, "start") end)
return app
]]

-- Every temporary file made below, removed at the end.
local temp = {}
local function tmpname()
  local name = os.tmpname()
  temp[#temp + 1] = name
  return name
end

local function app_file(conninfo)
  local path = tmpname() .. ".lua"
  temp[#temp + 1] = path
  local f = assert(io.open(path, "w"))
  f:write(string.format(TASKS, conninfo))
  f:close()
  return path
end

local function worker(file, args)
  local pidfile = tmpname()
  assert(os.execute(string.format("%s worker --app %s %s >/dev/null 2>&1 & echo $! > %s", TARRY, file, args, pidfile)))
  local f = assert(io.open(pidfile))
  local pid = f:read("n")
  f:close()
  return pid
end

local function stop(pid)
  os.execute("kill -TERM " .. pid .. "; while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
end

local function value(c, sql, ...) local r = c:execute(sql, ...)[1]; return r and select(2, next(r)) end

local function wait_until(fn, limit)
  local deadline = tarry.now() + (limit or 120)
  while not fn() do
    if tarry.now() > deadline then error("gave up waiting", 2) end
    os.execute("sleep 0.02")
  end
end

-- (1) ordinary jobs deferred one by one while two CPU-bound jobs run: their defer -> start delays.
local function start_delays(task, threads)
  local conninfo = fresh_db("bench_blocking")
  local c = tarry.SyncPgConnector{ conninfo = conninfo }
  local app = tarry.App{ connector = c }
  local pid = worker(app_file(conninfo), "-c 3 --blocking-threads " .. threads .. " --fetch-job-polling-interval 600")
  wait_until(function() return value(c, "SELECT count(*) AS n FROM procrastinate_workers") == 1 end)
  os.execute("sleep 0.3")                                    -- its LISTEN is up
  local big = {}
  if task then
    for i = 1, 2 do big[i] = app:defer(task, { n = WORK * 4 }) end
    wait_until(function() return value(c, "SELECT count(*) AS n FROM marks WHERE what = 'start'") == 2 end)
  end
  local delays = {}
  for i = 1, 5 do
    local id = app:defer("quick", {})
    wait_until(function() return value(c, "SELECT count(*) AS n FROM marks WHERE job_id = $1", id) == 1 end)
    delays[i] = tonumber(value(c, [[SELECT extract(epoch FROM m.at - e.at) * 1000 AS ms FROM marks m, procrastinate_events e
      WHERE m.job_id = $1 AND e.job_id = $1 AND e.type = 'deferred']], id))
    os.execute("sleep 0.1")
  end
  local still = task and value(c, "SELECT count(*) AS n FROM marks WHERE what = 'end'") or 0
  stop(pid)
  c:close()
  table.sort(delays)
  return delays, still
end

-- (2) N CPU-bound blocking jobs on `threads` threads: seconds from the first start to the last end.
local function span(threads)
  local conninfo = fresh_db("bench_blocking")
  local c = tarry.SyncPgConnector{ conninfo = conninfo }
  local app = tarry.App{ connector = c }
  local list = {}
  for i = 1, N do list[i] = { n = WORK } end
  local file = app_file(conninfo)
  for _, args in ipairs(list) do app:defer("crunch", args) end
  assert(os.execute(string.format("%s worker --app %s --one-shot --blocking-threads %d >/dev/null 2>&1", TARRY, file,
    threads)))
  local s = tonumber(value(c, "SELECT extract(epoch FROM max(at) - min(at)) AS s FROM marks"))
  c:close()
  return s
end

local function fmt(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = string.format("%.1f", v) end
  return table.concat(out, " ")
end

print(string.format("cores: %d; CPU-bound job: %g loop iterations; workers run with -c 3",
  require("tarry.core").ncpus(), WORK))
print("\nstart delay of an ordinary job (defer -> start, ms, 5 jobs sorted):")
local d0 = start_delays(nil, 2)
print("  worker idle:                                    " .. fmt(d0))
local d1, ended1 = start_delays("crunch", 2)
print("  while 2 blocking CPU-bound jobs run (2 threads): " .. fmt(d1) .. string.format("  (%d ended meanwhile)", ended1))
local d2 = start_delays("crunch_on_loop", 2)
print("  while 2 CPU-bound jobs run on the loop:          " .. fmt(d2))
print(string.format("\n%d CPU-bound blocking jobs:", N))
local t1 = span(1)
print(string.format("  1 thread:  %.2f s", t1))
local t2 = span(2)
print(string.format("  2 threads: %.2f s   speed-up %.2fx", t2, t1 / t2))
admin:execute("DROP DATABASE IF EXISTS bench_blocking WITH (FORCE)")
for _, name in ipairs(temp) do os.remove(name) end
