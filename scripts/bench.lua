-- The benchmark itself; scripts/bench runs it inside a throwaway PostgreSQL with `tarry run`.
local tarry = require "tarry"
local schema = require "tarry.schema"

local build = arg[1] or "build"
local TARRY = build .. "/bin/tarry"

-- Options after the build directory: --quick (smaller runs, no retention table, under a minute),
-- --million (also: a worker's RSS over 1,000,000 jobs; takes minutes), --only SECTION (defer,
-- worker, latency, million or delete_old), --baseline (worker runs with defaults only).
local OPTS = {}
for i = 2, #arg do
  local k, v = arg[i]:match("^%-%-([%w_-]+)=?(.*)$")
  if k == "only" and v == "" then k, v = "only", arg[i + 1] end
  if k then OPTS[k] = v ~= "" and v or true end
end

local SINGLE = tonumber(os.getenv("BENCH_SINGLE") or (OPTS.quick and "1000" or "5000"))
local BATCH = 20000
local WORKER_JOBS = OPTS.quick and 5000 or 20000

local admin = tarry.SyncPgConnector{ conninfo = "dbname=postgres" }

local function fresh_db(name)
  admin:execute("DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  admin:execute("CREATE DATABASE " .. name)
  local c = tarry.SyncPgConnector{ conninfo = "dbname=" .. name }
  schema.apply(c)
  c:close()
  return "dbname=" .. name
end

local function row(cols, widths)
  local out = {}
  for i, c in ipairs(cols) do out[i] = string.format("%-" .. widths[i] .. "s", tostring(c)) end
  print("| " .. table.concat(out, " | ") .. " |")
end

local function table_print(title, header, rows)
  local widths = {}
  for i, h in ipairs(header) do widths[i] = #h end
  for _, r in ipairs(rows) do for i, c in ipairs(r) do widths[i] = math.max(widths[i], #tostring(c)) end end
  print("\n" .. title)
  row(header, widths)
  local dashes = {}
  for i, w in ipairs(widths) do dashes[i] = string.rep("-", w) end
  print("|-" .. table.concat(dashes, "-|-") .. "-|")
  for _, r in ipairs(rows) do row(r, widths) end
end

local function rate(n, seconds) return string.format("%.0f", n / seconds) end


-- ---- retention: app.jobs:delete_old on a large table of finished jobs ----
-- The rows are written directly, as workers would have left them: N succeeded jobs, each with its
-- deferred, started and succeeded events, all 100 hours old.
local function bench_delete_old()
  local N = tonumber(os.getenv("BENCH_DELETE_OLD_N") or "") or (OPTS.quick and 100000 or 1000000)
  local conninfo = fresh_db("bench_retention")
  local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = conninfo } }
  local c = app.connector
  local t0 = tarry.now()
  c:execute([[INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
    SELECT 'default', 'noop', '{}', 'succeeded', 1 FROM generate_series(1, $1::integer)]], N)
  c:execute([[INSERT INTO procrastinate_events (job_id, type, at)
    SELECT j.id, e.type::procrastinate_job_event_type, now() - interval '100 hours' + e.n * interval '1 ms'
    FROM procrastinate_jobs AS j, (VALUES ('deferred', 0), ('started', 1), ('succeeded', 2)) AS e (type, n)]])
  c:execute("VACUUM ANALYZE procrastinate_jobs")
  c:execute("VACUUM ANALYZE procrastinate_events")
  local setup = tarry.now() - t0
  local rows = {}
  local function measure(label, hours)
    local t = tarry.now()
    local n = app.jobs:delete_old{ max_hours = hours }
    rows[#rows + 1] = { label, n, string.format("%.3f", tarry.now() - t) }
  end
  measure("nothing old enough (max_hours = 200)", 200)
  do  -- for comparison: the statement as PROTOCOL.md 6.2 describes it, each job's latest event first
    local t = tarry.now()
    local n = c:execute([[SELECT count(*) AS n FROM procrastinate_jobs AS j WHERE j.status = 'succeeded'
      AND (SELECT max(e.at) FROM procrastinate_events AS e WHERE e.job_id = j.id) < now() - interval '200 hours']])[1].n
    rows[#rows + 1] = { "nothing old enough, selected by each job's latest event (PROTOCOL.md 6.2's shape)", n,
      string.format("%.3f", tarry.now() - t) }
  end
  c:execute("DROP INDEX tarry_events_at_idx_v1")
  c:execute("ANALYZE procrastinate_events")
  measure("nothing old enough, without tarry_events_at_idx_v1 (a schema Procrastinate applied)", 200)
  c:execute("CREATE INDEX tarry_events_at_idx_v1 ON procrastinate_events (at)")
  c:execute("ANALYZE procrastinate_events")
  measure("all of them (max_hours = 72): jobs and their events deleted", 72)
  assert(rows[#rows][2] == N, "not every job was deleted")
  c:close()
  table_print(string.format("Retention: app.jobs:delete_old on %d succeeded jobs with 3 events each "
    .. "(set-up %.0f s, not counted)", N, setup), { "run", "jobs deleted", "seconds" }, rows)
end

-- ---- the PostgreSQL settings every number below was measured with ----
do
  local rows = {}
  for _, s in ipairs { "server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_connections" } do
    rows[#rows + 1] = { s, admin:execute("SELECT current_setting($1) AS v", s)[1].v }
  end
  local cpu = io.open("/proc/cpuinfo"):read("a"):match("model name%s*:%s*([^\n]+)") or "?"
  local nproc = io.popen("nproc"):read("l")
  rows[#rows + 1] = { "machine", string.format("%s cores, %s", nproc, cpu) }
  table_print("PostgreSQL settings (same for every run)", { "setting", "value" }, rows)
end
local function want(section) return OPTS.only == nil or OPTS.only == section end

-- ---- defer ----
local defer_rows = {}
if want("defer") then
  local cases = require("bench_lib").defer_cases(fresh_db("bench_defer"), { single = SINGLE, bulk = BATCH, memory = true })
  for _, case in ipairs(cases) do
    local dt = case.run()
    defer_rows[#defer_rows + 1] = { case.label, case.jobs, string.format("%.2f", dt), rate(case.jobs, dt) }
  end
  cases.close()
  table_print("Deferring jobs (no-op task, args {i=n})", { "path", "jobs", "seconds", "jobs/s" }, defer_rows)
end

-- ---- worker throughput ----
local APP = os.tmpname() .. ".lua"
local function write_app(conninfo)
  local f = assert(io.open(APP, "w"))
  f:write(string.format([[
local tarry = require "tarry"
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = %q } }
app:task("noop", function() end)
return app
]], conninfo))
  f:close()
end

local function rss_kib(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local kib = tonumber(f:read("a"):match("VmRSS:%s*(%d+)"))
  f:close()
  return kib
end

-- A fresh database with n no-op jobs (table ANALYZEd: just after a bulk insert the planner
-- believes it empty and scans the wrong index), and a sync app on it.
local function queue_of(n)
  local conninfo = fresh_db("bench_worker")
  write_app(conninfo)
  local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = conninfo } }
  app:task("noop", function() end)
  local args = {}
  for i = 1, n do args[i] = {} end
  for first = 1, n, 50000 do app.tasks.noop:batch_defer(table.move(args, first, math.min(n, first + 49999), 1, {})) end
  app.connector:execute("ANALYZE procrastinate_jobs")
  return app
end

local function succeeded(app)
  return app.connector:execute("SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'")[1].n
end

-- `processes` one-shot workers at once on one queue of n jobs: seconds from start to the last exit.
local function run_workers(n, processes, options)
  local app = queue_of(n)
  local t0 = tarry.now()
  local cmd = {}
  for i = 1, processes do
    cmd[i] = string.format("%s worker --app %s --one-shot --log-level warning --name w%d %s", TARRY, APP, i, options)
  end
  assert(os.execute("(" .. table.concat(cmd, " & ") .. " & wait)"))
  local dt = tarry.now() - t0
  local done = succeeded(app)
  assert(done == n, "not every job succeeded: " .. done)
  app.connector:close()
  return dt
end

-- (--baseline: defaults only, for a tarry without these options, to compare with.)
local SETTINGS = OPTS.baseline and { { "defaults", "" } } or {
  { "defaults (prefetch = concurrency + 256)", "" },
  { "--prefetch 0 (nothing taken ahead)", "--prefetch 0" },
  { "--prefetch 16 (the default before issue 10)", "--prefetch 16" },
  { "--lean (no event rows)", "--lean" },
}
local worker_rows = {}
for _, c in ipairs(want("worker") and { 1, 10, 100 } or {}) do
  for _, setting in ipairs(SETTINGS) do
    local dt = run_workers(WORKER_JOBS, 1, string.format("-c %d %s", c, setting[2]))
    worker_rows[#worker_rows + 1] = { c, setting[1], WORKER_JOBS, string.format("%.2f", dt), rate(WORKER_JOBS, dt) }
  end
end
if want("worker") then table_print(string.format("Worker throughput: %d pre-deferred no-op jobs, one `tarry worker --one-shot` process",
  WORKER_JOBS), { "concurrency", "settings", "jobs", "seconds (process start to exit)", "jobs/s" }, worker_rows) end

local scale_rows = {}
for _, processes in ipairs(want("worker") and { 1, 2, 4 } or {}) do
  local dt = run_workers(WORKER_JOBS, processes, "-c 10")
  scale_rows[#scale_rows + 1] = { processes, WORKER_JOBS, string.format("%.2f", dt), rate(WORKER_JOBS, dt) }
end
if want("worker") then table_print(string.format("Scaling out: %d jobs, N `tarry worker --one-shot -c 10` processes on one queue (defaults)",
  WORKER_JOBS), { "processes", "jobs", "seconds (first start to last exit)", "jobs/s" }, scale_rows) end

-- ---- latency and idle RSS ----
local function start_worker(conninfo, options)
  write_app(conninfo)
  local pidfile = os.tmpname()
  os.execute(string.format("sh -c '%s worker --app %s --log-level warning %s & echo $! > %s' ",
    TARRY, APP, options or "", pidfile))
  local pid = io.open(pidfile):read("l")
  os.remove(pidfile)
  local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = conninfo } }
  app:task("noop", function() end)
  repeat tarry.sleep(0.05) until app.connector:execute(
    "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()")[1].n > 0
  return pid, app
end

if want("latency") then
  local pid, app = start_worker(fresh_db("bench_latency"), "--fetch-job-polling-interval 5")
  tarry.sleep(0.5)
  local rss = rss_kib(pid)
  local N = 200
  for _ = 1, N do
    app.tasks.noop:defer{}
    tarry.sleep(0.02)
  end
  repeat tarry.sleep(0.05) until succeeded(app) == N
  local q = app.connector:execute([[
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99, max(ms) AS max
    FROM (SELECT extract(epoch FROM s.at - d.at) * 1000 AS ms
          FROM procrastinate_events d JOIN procrastinate_events s ON s.job_id = d.job_id
          WHERE d.type = 'deferred' AND s.type = 'started') x]])[1]
  os.execute("kill -TERM " .. pid)
  app.connector:close()
  table_print("Idle worker (LISTEN/NOTIFY on, polling every 5 s)", { "measure", "value" }, {
    { "defer -> start latency p50 (200 jobs, 20 ms apart; event timestamps)", string.format("%.2f ms", q.p50) },
    { "defer -> start latency p99", string.format("%.2f ms", q.p99) },
    { "defer -> start latency max", string.format("%.2f ms", q.max) },
    { "idle worker RSS", string.format("%.1f MiB", rss / 1024) },
  })
end

-- ---- RSS over 1,000,000 jobs (--million) ----
-- One waiting worker at concurrency 10 (defaults otherwise); jobs deferred in batches of 100,000
-- while it runs; its RSS read after each batch is done.
if (OPTS.million and want("million")) or OPTS.only == "million" then
  local conninfo = fresh_db("bench_million")
  local pid, app = start_worker(conninfo, "-c 10 --delete-jobs successful")
  local rows = { { 0, string.format("%.1f", rss_kib(pid) / 1024) } }
  local total = tonumber(os.getenv("BENCH_MILLION_N") or "") or 1000000
  local per = total // 10
  local args = {}
  for i = 1, per do args[i] = {} end
  local t0 = tarry.now()
  for round = 1, 10 do
    for first = 1, per, 50000 do app.tasks.noop:batch_defer(table.move(args, first, math.min(per, first + 49999), 1, {})) end
    repeat tarry.sleep(0.2) until app.connector:execute(
      "SELECT count(*) AS n FROM procrastinate_jobs WHERE status <> 'succeeded'")[1].n == 0
    rows[#rows + 1] = { round * per, string.format("%.1f", rss_kib(pid) / 1024) }
  end
  local dt = tarry.now() - t0
  os.execute("kill -TERM " .. pid)
  app.connector:close()
  table_print(string.format("Worker RSS over %d jobs (one waiting worker, -c 10, --delete-jobs successful; "
    .. "%.0f jobs/s overall, deferring included)", total, total / dt), { "jobs done", "RSS MiB" }, rows)
end
os.remove(APP)
if (not OPTS.quick and want("delete_old")) then bench_delete_old() end
admin:close()
