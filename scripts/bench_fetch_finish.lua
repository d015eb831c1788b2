-- The database time of the worker's two hot statements, fetch and finish, per batch size: the
-- statements the worker sends (tarry/pg_jobs.lua: store:finish_fetch with no outcomes to fetch,
-- store:finish to record), on one connection. For comparing versions of the schema back to back
-- on a busy machine. Run inside a throwaway PostgreSQL:
--   bash scripts/with-postgres --superuser build/bin/tarry run scripts/bench_fetch_finish.lua
--
-- What is timed: the CPU time the server's backend spent on each call (its /proc/PID/schedstat,
-- so the server must run on this machine and be readable: as root, or as its user), which other
-- processes on a shared machine disturb far less than wall-clock time; without it, the wall-clock
-- time of each round trip. Each run is a fresh database of JOBS (default 10000) no-op jobs, fetched
-- and finished in batches of SIZES (default 1,16,100); per run the median call, then the median
-- over REPS runs (default 5), the runs of all rows interleaved (A B A B ...).
--
-- MODES (default events,lean): events (the schema as it is), lean (the worker's --lean: no event
-- rows), ceiling (the update triggers dropped: no events, no abort notifications, what the
-- statements cost without any trigger). VARIANTS (optional): name=file.sql,... each a row of its
-- own, file.sql applied over the schema before the jobs are deferred (a variant of the functions).
-- OUTCOME=failed|retry|retry_at records that outcome instead of success (retry: back to todo,
-- retry_at: scheduled an hour ahead).
local tarry = require "tarry"
local schema = require "tarry.schema"
local PgJobs = require "tarry.pg_jobs"

local JOBS = tonumber(os.getenv("JOBS") or "10000")
local REPS = tonumber(os.getenv("REPS") or "5")
local OUTCOME = os.getenv("OUTCOME") or "succeeded"
local function list(env, default)
  local out = {}
  for item in (os.getenv(env) or default):gmatch("[^,%s]+") do out[#out + 1] = item end
  return out
end
local SIZES = list("SIZES", "1,16,100")
local MODES = list("MODES", "events,lean")
local VARIANTS = { { name = "schema" } }
for _, v in ipairs(list("VARIANTS", "")) do
  local name, file = v:match("^([^=]+)=(.+)$")
  local f = assert(io.open(file or v, "r"))
  VARIANTS[#VARIANTS + 1] = { name = name or v, sql = f:read("a") }
  f:close()
end

local admin = tarry.SyncPgConnector{ conninfo = "dbname=postgres" }

-- The backend's CPU time in ms so far, or nil when its /proc entry cannot be read.
local function cpu_ms(pid)
  local f = io.open("/proc/" .. pid .. "/schedstat")
  if not f then return nil end
  local ns = f:read("n")
  f:close()
  return ns and ns / 1e6
end

local function fresh(variant)
  admin:execute("DROP DATABASE IF EXISTS bench_ff WITH (FORCE)")
  admin:execute("CREATE DATABASE bench_ff")
  local c = tarry.SyncPgConnector{ conninfo = "dbname=bench_ff" }
  schema.apply(c)
  if variant.sql then c:execute(variant.sql) end
  return c
end

local function outcome(id)
  if OUTCOME == "retry" then return { id = id, retry_at = 0 } end
  if OUTCOME == "retry_at" then return { id = id, retry_at = os.time() + 3600 } end
  return { id = id, status = OUTCOME }
end

local function median(xs)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  local n = #s
  if n == 0 then return 0 end
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

-- One run: fetch and finish every job in batches of n; the medians of the two calls, in ms.
local function run(variant, mode, n)
  local c = fresh(variant)
  local app = tarry.App{ connector = c }
  app:task("noop", function() end)
  local args = {}
  for i = 1, JOBS do args[i] = {} end
  app.tasks.noop:batch_defer(args)
  c:execute("ANALYZE procrastinate_jobs")
  local store = PgJobs.new(c)
  local worker = store:register(30)
  if mode == "ceiling" then   -- after register, which checks the schema
    c:execute("DROP TRIGGER tarry_jobs_update_events ON procrastinate_jobs")
    c:execute("DROP TRIGGER tarry_jobs_note_abort_requested_set ON procrastinate_jobs")
  end
  local pid = c:execute("SELECT pg_backend_pid() AS pid")[1].pid
  local clock = cpu_ms(pid) and function() return cpu_ms(pid) end or function() return tarry.now() * 1000 end
  local lean = mode == "lean"
  local fetch_t, finish_t = {}, {}
  local batches = math.min(JOBS // n, 3000 // math.max(1, n // 16))
  for _ = 1, batches do
    local t0 = clock()
    local jobs = store:finish_fetch({}, nil, worker, n, lean)
    local t1 = clock()
    local outcomes = {}
    for i, job in ipairs(jobs) do outcomes[i] = outcome(job.id) end
    if lean then store:finish_fetch(outcomes, nil, worker, 0, true) else store:finish(outcomes) end
    local t2 = clock()
    fetch_t[#fetch_t + 1], finish_t[#finish_t + 1] = t1 - t0, t2 - t1
  end
  c:close()
  return median(fetch_t), median(finish_t), cpu_ms(pid) == nil
end

local rows, wall = {}, false
for _, n in ipairs(SIZES) do
  for _, variant in ipairs(VARIANTS) do
    for _, mode in ipairs(MODES) do rows[#rows + 1] = { n = tonumber(n), variant = variant, mode = mode, f = {}, g = {} } end
  end
end
for _ = 1, REPS do
  for _, r in ipairs(rows) do
    local f, g, was_wall = run(r.variant, r.mode, r.n)
    r.f[#r.f + 1], r.g[#r.g + 1], wall = f, g, wall or was_wall
  end
end

print(string.format("%d jobs per run, outcome %s, %d runs per row; per run the median call; %s (ms)", JOBS, OUTCOME,
  REPS, wall and "wall-clock time of the round trip" or "the server backend's CPU time"))
print("| batch | variant | mode | fetch ms | finish ms | fetch us/job | finish us/job | fetch range | finish range |")
print("|---|---|---|---|---|---|---|---|---|")
for _, r in ipairs(rows) do
  local f, g = median(r.f), median(r.g)
  table.sort(r.f); table.sort(r.g)
  print(string.format("| %d | %s | %s | %.3f | %.3f | %.1f | %.1f | %.3f-%.3f | %.3f-%.3f |", r.n, r.variant.name,
    r.mode, f, g, f * 1000 / r.n, g * 1000 / r.n, r.f[1], r.f[#r.f], r.g[1], r.g[#r.g]))
end
admin:execute("DROP DATABASE IF EXISTS bench_ff WITH (FORCE)")
