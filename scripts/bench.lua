-- The benchmark itself; scripts/bench runs it inside a throwaway PostgreSQL with `tarry run`.
local tarry = require "tarry"
local schema = require "tarry.schema"
local PgJobs = require "tarry.pg_jobs"

local build = arg[1] or "build"
local TARRY = build .. "/bin/tarry"

-- Options after the build directory: --quick (smaller runs, no retention table, under a minute),
-- --million (also: a worker's RSS over 1,000,000 jobs; takes minutes), --only SECTION (defer,
-- worker, latency, million or delete_old; or ceiling, defer_ceiling or profile, which only run
-- when named),
-- --baseline (worker runs with defaults only), --reps N (ceiling and profile: runs per case),
-- --batches LIST and --clients LIST (ceiling: jobs per statement, pgbench clients; "100,256").
local OPTS = {}
for i = 2, #arg do
  local k, v = arg[i]:match("^%-%-([%w_-]+)=?(.*)$")
  if (k == "only" or k == "reps" or k == "batches" or k == "clients") and v == "" then v = arg[i + 1] end
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
  for i, c in ipairs(cols) do out[i] = tostring(c) .. string.rep(" ", widths[i] - #tostring(c)) end
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
local APP_BASE = os.tmpname()        -- os.tmpname makes the file; the app file is beside it
local APP = APP_BASE .. ".lua"
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
  local left = app.connector:execute("SELECT count(*) AS n FROM procrastinate_jobs WHERE status <> 'succeeded'")[1].n
  local done = app.connector:execute("SELECT count(*) AS n FROM procrastinate_events WHERE type = 'succeeded'")[1].n
  -- (--lean writes no succeeded events; --delete-jobs successful leaves no succeeded jobs)
  assert(left == 0 and (done == n or done == 0), "not every job succeeded: " .. left .. " left")
  app.connector:close()
  return dt
end

-- (--baseline: defaults only, for a tarry without these options, to compare with.)
local SETTINGS = OPTS.baseline and { { "defaults", "" } } or {
  { "defaults (prefetch = concurrency + 256)", "" },
  { "--prefetch 0 (nothing taken ahead)", "--prefetch 0" },
  { "--prefetch 16 (the default before issue 10)", "--prefetch 16" },
  { "--lean (no event rows)", "--lean" },
  { "--delete-jobs successful (finished jobs deleted, as graphile-worker does)", "--delete-jobs successful" },
  { "--lean --delete-jobs successful", "--lean --delete-jobs successful" },
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
  local rollup = io.open("/proc/" .. pid .. "/smaps_rollup"):read("a")
  local function kib(field) return tonumber(rollup:match(field .. ":%s*(%d+)")) or 0 end
  local pss, private = kib("Pss"), kib("Private_Clean") + kib("Private_Dirty")
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
    { "idle worker PSS (shared library pages divided among the processes mapping them)", string.format("%.1f MiB", pss / 1024) },
    { "idle worker private memory (its own pages: what each further worker adds)", string.format("%.1f MiB", private / 1024) },
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
-- ---- the database's ceiling for the worker's own statements (--only ceiling) ----
-- pgbench, no tarry worker, sends the statements a worker sends (tarry/pg_jobs.lua, taken from the
-- store after register, so they follow pg_jobs.lua): the fetch is store:finish_fetch with no
-- outcomes (Fetcher:finish_fetch), the finish store:finish, or for --lean store:finish_fetch
-- fetching nothing (Recorder:finish); tarry's functions set tarry.update_events themselves. Each
-- pgbench client fetches n jobs, then finishes them, as its two autocommit statements, prepared
-- (-M prepared, as execute_prepared): the fetch's rows come back as the four array literals the
-- finish takes (an array_agg around the fetch, in place of the worker's encoding them).
-- Only the queues (NULL: every queue) go in as a literal: pgbench cannot bind a NULL.
-- Modes: events (the schema as is), lean (no event rows, as --lean), bare (the UPDATE triggers
-- dropped: the statements with no trigger at all, the floor). Every run a fresh queue.
-- CPU: /proc's cutime + cstime, of this process (the pgbench or worker processes it waited for)
-- and of the postmaster (the backends that exited: those of the run, and any autovacuum worker).
local PGBENCH = os.getenv("PGBENCH") or "/usr/lib/postgresql/15/bin/pgbench"
local REPS = tonumber(OPTS.reps) or 3
local CLK_TCK = tonumber(io.popen("getconf CLK_TCK"):read("l")) or 100
local POSTMASTER = (function()
  local f = io.open(admin:execute("SELECT current_setting('data_directory') AS d")[1].d .. "/postmaster.pid")
  local pid = f and f:read("l")
  if f then f:close() end
  return pid
end)()

-- CPU seconds from /proc/PID/stat (nil when it cannot be read): pid's own (utime + stime, the
-- 14th and 15th fields) or, with children, those of its waited-for children (cutime + cstime).
local function proc_cpu(pid, children)
  local f = pid and io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local fields = {}
  for x in f:read("a"):match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end   -- from field 3
  f:close()
  local k = children and 14 or 12
  return (tonumber(fields[k]) + tonumber(fields[k + 1])) / CLK_TCK
end
local function children_cpu(pid) return proc_cpu(pid, true) end
local function own_cpu() return proc_cpu("self", false) end

-- fn() run with the client's CPU (this process's children) and the server's measured: its
-- result, client CPU s, server CPU s. The backends of the run must have exited to be counted.
local function with_cpu(app, fn)
  local c0, s0 = children_cpu("self"), children_cpu(POSTMASTER)
  local result = fn()
  repeat tarry.sleep(0.02) until app.connector:execute([[SELECT count(*) AS n FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()]])[1].n == 0
  tarry.sleep(0.05)
  local c1, s1 = children_cpu("self"), children_cpu(POSTMASTER)
  return result, c1 - c0, s0 and s1 - s0
end

local function median(xs)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  if #s == 0 then return nil end
  return #s % 2 == 1 and s[(#s + 1) // 2] or (s[#s // 2] + s[#s // 2 + 1]) / 2
end

-- The pgbench script of one fetch of n (:n) and the finish of what it fetched.
local function pgbench_script(store, mode)
  local function bind(sql, values) return (sql:gsub("%$(%d+)", function(k) return values[tonumber(k)] end)) end
  local fetch = bind(store.finish_fetch_sql, { ":e", ":e", ":e", ":e", "NULL", ":w", ":n", ":lean" })
  local finish = mode == "lean" and bind(store.finish_fetch_sql, { ":ids", ":statuses", ":dels", ":ats", "NULL", ":w", ":z", ":lean" })
    or bind(store.finish_sql, { ":ids", ":statuses", ":dels", ":ats" })
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write("SELECT coalesce(array_agg(id)::text, '{}') AS ids, coalesce(array_agg('succeeded'::text)::text, '{}') AS statuses,\n"
    .. "  coalesce(array_agg(false)::text, '{}') AS dels, coalesce(array_agg(NULL::float8)::text, '{}') AS ats FROM (\n"
    .. fetch .. "\n) AS fetched\n\\gset\n" .. finish .. ";\n")
  f:close()
  return path
end

-- pgbench -n -M prepared on database db: clients (on up to 2 threads) x per transactions of the
-- script at path (removed after), with the -D definitions defs. Its rate (tps, without its
-- connection time), client and server CPU seconds (with_cpu's), and its output.
local function pgbench(app, db, clients, per, path, defs)
  local out, ccpu, scpu = with_cpu(app, function()
    local p = io.popen(string.format("%s -n -M prepared -c %d -j %d -t %d -f %s %s %s 2>&1",
      PGBENCH, clients, math.min(clients, 2), per, path, defs, db))
    local text = p:read("a")
    p:close()
    return text
  end)
  os.remove(path)
  return tonumber(out:match("tps = ([%d.]+) %(without initial connection time%)")), ccpu, scpu, out
end

-- One pgbench run: clients x transactions fetch-and-finish pairs of n jobs on a fresh queue; jobs/s
-- (pgbench's rate, without its connection time), client CPU s, server CPU s, all per run.
local function pgbench_run(mode, n, clients)
  local per = math.max(1, (n == 1 and 4000 or 20000) // (clients * n))
  local app = queue_of(20000 + 2 * clients * n)
  local store = PgJobs.new(app.connector)
  local worker = store:register(30)
  if mode == "bare" then
    app.connector:execute("DROP TRIGGER tarry_jobs_update_events ON procrastinate_jobs")
    app.connector:execute("DROP TRIGGER tarry_jobs_note_abort_requested_set ON procrastinate_jobs")
  end
  local tps, ccpu, scpu, out = pgbench(app, "bench_worker", clients, per, pgbench_script(store, mode),
    string.format("-D w=%d -D n=%d -D z=0 -D 'e={}' -D lean=%s", worker, n, mode == "lean"))
  local done = succeeded(app)
  assert(tps and done == clients * per * n, "pgbench did not finish every job it fetched: " .. done .. "\n" .. out)
  app.connector:close()
  return tps * n, ccpu / done * 1e6, scpu and scpu / done * 1e6
end

-- One worker run on a fresh queue of WORKER_JOBS jobs: wall, worker CPU and server CPU, in seconds.
-- before(): called once the queue is ready, just before the worker starts.
local function worker_run(options, before)
  local app = queue_of(WORKER_JOBS)
  if before then before() end
  local dt, ccpu, scpu = with_cpu(app, function()
    local t0 = tarry.now()
    local cmd = string.format("%s worker --app %s --one-shot --log-level warning %s", TARRY, APP, options)
    assert(os.execute(cmd))
    return tarry.now() - t0
  end)
  assert(succeeded(app) == WORKER_JOBS, "not every job succeeded")
  app.connector:close()
  return dt, ccpu, scpu
end

-- A list of numbers from an option's "a,b,c" (nil without one).
local function numbers(list)
  if type(list) ~= "string" then return nil end
  local out = {}
  for x in list:gmatch("%d+") do out[#out + 1] = tonumber(x) end
  return out
end

local function load_avg() return io.open("/proc/loadavg"):read("a"):match("^(%S+ %S+ %S+)") end

if OPTS.only == "ceiling" then
  local MODES = { events = "defaults (event rows)", lean = "lean (no event rows)", bare = "UPDATE triggers dropped" }
  local cases = {}
  for _, mode in ipairs { "events", "lean", "bare" } do
    for _, n in ipairs(numbers(OPTS.batches) or OPTS.quick and { 16, 100 } or { 1, 16, 100, 256 }) do
      for _, clients in ipairs(numbers(OPTS.clients) or OPTS.quick and { 1, 2 } or { 1, 2, 10 }) do
        cases[#cases + 1] = { label = MODES[mode], mode = mode, n = n, clients = clients,
          run = function() return pgbench_run(mode, n, clients) end }
      end
    end
  end
  for _, w in ipairs { { "-c 10", "events" }, { "-c 10 --lean", "lean" }, { "-c 100", "events" }, { "-c 100 --lean", "lean" } } do
    cases[#cases + 1] = { label = "tarry worker " .. w[1], mode = w[2], worker = true,
      run = function()
        local dt, ccpu, scpu = worker_run(w[1])
        return WORKER_JOBS / dt, ccpu / WORKER_JOBS * 1e6, scpu and scpu / WORKER_JOBS * 1e6
      end }
  end
  local loads = { load_avg() }
  for _ = 1, REPS do   -- every case once per repetition: the machine's load falls on all alike
    for _, case in ipairs(cases) do
      local r, c, s = case.run()
      case.rate, case.client, case.server = case.rate or {}, case.client or {}, case.server or {}
      table.insert(case.rate, r); table.insert(case.client, c); table.insert(case.server, s or 0)
    end
    loads[#loads + 1] = load_avg()
  end
  local rows, best = {}, {}
  for _, case in ipairs(cases) do
    local r = median(case.rate)
    table.sort(case.rate)
    if not case.worker then best[case.mode] = math.max(best[case.mode] or 0, r) end
    if case.clients == 2 then best[case.mode .. "2"] = math.max(best[case.mode .. "2"] or 0, r) end
    rows[#rows + 1] = { case.label, case.worker and "" or case.n, case.worker and "" or case.clients, rate(r, 1),
      string.format("%s-%s", rate(case.rate[1], 1), rate(case.rate[#case.rate], 1)),
      string.format("%.0f", median(case.server)), string.format("%.0f", median(case.client)) }
  end
  table_print(string.format("Database ceiling: the worker's fetch + finish statements from pgbench (no worker), "
    .. "fresh queue of 20,000+ jobs per run; medians of %d runs (load average before and after each round: %s)",
    REPS, table.concat(loads, " / ")),
    { "statements", "jobs/statement", "pgbench clients", "jobs/s", "range", "server CPU us/job", "client CPU us/job" }, rows)
  for _, case in ipairs(cases) do
    if case.worker then
      local r, b, b2 = median(case.rate), best[case.mode], best[case.mode .. "2"]
      print(string.format("%s: %s jobs/s, %.0f%% of the best pgbench row of its mode (%s jobs/s)%s", case.label,
        rate(r, 1), 100 * r / b, rate(b, 1), b2 and string.format(", %.0f%% of the best with 2 clients, as many "
        .. "statements in flight as the worker's fetcher and recorder (%s jobs/s)", 100 * r / b2, rate(b2, 1)) or ""))
    end
  end
end


-- ---- the database's ceiling for the defer statement (--only defer_ceiling) ----
-- pgbench sends tarry's own defer statement (core.DEFER_SQL, prepared, the JSON text of its
-- parameter made by tarry's encoder, app:_encode_jobs) with 1, 10 or 1,000 jobs per statement, one
-- statement a transaction, from 1 or 10 clients: what the database allows each defer path. Next
-- to it, the tarry paths that send those statements (scripts/bench_lib.lua's cases), each case
-- once per round, medians of --reps rounds. Jobs/s counts the jobs inserted; server CPU as in
-- the worker's ceiling above; client CPU: pgbench's, or this process's own during tarry's defers.
if OPTS.only == "defer_ceiling" then
  local core = require "tarry.core"
  local conninfo = fresh_db("bench_defer_ceiling")
  local lib = require("bench_lib")
  local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = conninfo } }
  local function jobs_of(n)
    local jobs = {}
    for i = 1, n do jobs[i] = { task_name = "noop", queue = "default", priority = 0, args = { i = i } } end
    return jobs
  end
  local function count() return app.connector:execute("SELECT count(*) AS n FROM procrastinate_jobs")[1].n end
  local function pgbench_defer(n, clients)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write((core.DEFER_SQL:gsub("%$1", ":jobs")), ";\n")
    f:close()
    local per = math.max(1, (n == 1 and SINGLE or BATCH) // (clients * n))
    local before = count()
    local tps, ccpu, scpu, out = pgbench(app, "bench_defer_ceiling", clients, per, path,
      string.format("-D 'jobs=%s'", app:_encode_jobs(jobs_of(n))))
    local done = count() - before
    assert(tps and done == clients * per * n, "pgbench did not insert every job: " .. done .. "\n" .. out)
    return tps * n, ccpu / done * 1e6, scpu and scpu / done * 1e6
  end
  local cases = {}
  for _, c in ipairs { { 1, 1 }, { 1, 10 }, { 10, 1 }, { 1000, 1 } } do
    cases[#cases + 1] = { label = "defer statement from pgbench", n = c[1], clients = c[2],
      run = function() return pgbench_defer(c[1], c[2]) end }
  end
  -- tarry's paths: SyncPgConnector one defer a call (1 job a statement), 10 coroutines on an
  -- open PgConnector (up to 10 a statement, coalesced), bulk chunks of 1,000.
  -- Their connectors are made and closed inside each run, so that the server CPU of their
  -- backends is counted (with_cpu counts exited backends); the rate counts the defers only.
  local labels = lib.defer_cases(conninfo, { single = SINGLE, bulk = BATCH })
  local picked = {}
  for i, case in ipairs(labels) do
    if case.label:find("^SyncPgConnector, one defer") or case.label:find("10 coroutines")
      or case.label:find("^bulk defer") then picked[#picked + 1] = i end
  end
  assert(#picked == 3, "scripts/bench_lib.lua's defer cases changed their labels")
  for _, i in ipairs(picked) do
    local jobs = labels[i].jobs
    cases[#cases + 1] = { label = "tarry: " .. labels[i].label, run = function()
      local ccpu
      local dt, _, scpu = with_cpu(app, function()
        local d = lib.defer_cases(conninfo, { single = SINGLE, bulk = BATCH })
        local c0 = own_cpu()
        local seconds = d[i].run()
        ccpu = own_cpu() - c0
        d.close()
        return seconds
      end)
      return jobs / dt, ccpu / jobs * 1e6, scpu and scpu / jobs * 1e6
    end }
  end
  labels.close()
  local loads = { load_avg() }
  for _ = 1, REPS do
    for _, case in ipairs(cases) do
      local r, c, s = case.run()
      case.rate, case.client, case.server = case.rate or {}, case.client or {}, case.server or {}
      table.insert(case.rate, r); table.insert(case.client, c); table.insert(case.server, s or 0)
    end
    app.connector:execute("TRUNCATE procrastinate_jobs CASCADE")
    loads[#loads + 1] = load_avg()
  end
  local rows = {}
  for _, case in ipairs(cases) do
    local r = median(case.rate)
    table.sort(case.rate)
    rows[#rows + 1] = { case.label, case.n or "", case.clients or "", rate(r, 1),
      string.format("%s-%s", rate(case.rate[1], 1), rate(case.rate[#case.rate], 1)),
      string.format("%.1f", median(case.server)), string.format("%.1f", median(case.client)) }
  end
  table_print(string.format("Database ceiling for deferring: tarry's defer statement from pgbench, next to tarry's "
    .. "defer paths; medians of %d rounds (load average before and after each round: %s)", REPS, table.concat(loads, " / ")),
    { "sender", "jobs/statement", "pgbench clients", "jobs/s", "range", "server CPU us/job", "client CPU us/job" }, rows)
  app.connector:close()
end

-- ---- where a worker's time goes (--only profile) ----
-- One worker at -c 10 (defaults, then --lean) on a fresh queue with pg_stat_statements on (the
-- throwaway server was started with it preloaded, track = all: the statements inside tarry's
-- functions and triggers count too, as nested ones): per statement its calls, time and rows
-- against the run's wall time, and the worker's and the server's CPU; medians of --reps runs.
-- Then auto_explain of one fetch of 100 (the worker's statement, prepared, after warm-up calls).
local function statement_label(q)
  return (q:gsub("%s+", " "):sub(1, 90))
end

local function explain_fetch(n)
  local app = queue_of(20000)
  local store = PgJobs.new(app.connector)
  local worker = store:register(30)
  local sql = os.tmpname()
  local f = assert(io.open(sql, "w"))
  local execute = string.format("EXECUTE worker_fetch('{}', '{}', '{}', '{}', NULL, %d, %d, false);\n", worker, n)
  f:write("LOAD 'auto_explain';\nSET auto_explain.log_analyze = on;\nSET auto_explain.log_buffers = on;\n"
    .. "SET auto_explain.log_nested_statements = on;\nSET auto_explain.log_level = notice;\n"
    .. "PREPARE worker_fetch AS " .. store.finish_fetch_sql .. ";\n" .. string.rep(execute, 6)
    .. "SET auto_explain.log_min_duration = 0;\n" .. execute)
  f:close()
  local p = io.popen(string.format("psql -X -q -v ON_ERROR_STOP=1 -d bench_worker -f %s 2>&1 >/dev/null", sql))
  local out = p:read("a")
  local ok = p:close()
  os.remove(sql)
  app.connector:close()
  assert(ok, "psql failed:\n" .. out)
  print(string.format("\nauto_explain of the worker's fetch of %d jobs (the 7th call on its connection; "
    .. "every plan it ran, nested ones first; the durations include auto_explain's own work for every nested "
    .. "plan, such as each foreign-key check: read the nodes' actual times):", n))
  local groups, order = {}, {}   -- the plans of one statement text together, in the order they ended
  for duration, plan in (out .. "\npsql:"):gmatch("duration: ([%d.]+) ms%s+plan:\n(.-)\npsql:") do
    local label = statement_label(plan:match("Query Text: ([^\n]*)") or "?")
    if not groups[label] then groups[label], order[#order + 1] = { n = 0, ms = 0 }, label end
    local g = groups[label]
    g.n, g.ms, g.plan = g.n + 1, g.ms + tonumber(duration), plan
  end
  for _, label in ipairs(order) do
    local g = groups[label]
    print(string.format("  %4d x %8.3f ms  %s", g.n, g.ms, label))
    for line in g.plan:gmatch("[^\n]+") do   -- the nodes of the plans that took some time (the last one)
      if g.ms / g.n >= 0.1 and (line:match("actual") or line:match("Buffers")) then print("                    " .. line) end
    end
  end
end

if OPTS.only == "profile" then
  local preload = admin:execute("SELECT current_setting('shared_preload_libraries') AS v")[1].v
  assert(preload:match("pg_stat_statements"), "--only profile needs pg_stat_statements preloaded: run it through scripts/bench")
  admin:execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
  local loads = { load_avg() }
  local cases = { { "-c 10", "defaults" }, { "-c 10 --lean", "--lean" } }
  for _ = 1, REPS do
    for _, case in ipairs(cases) do
      local dt, ccpu, scpu = worker_run(case[1], function() admin:execute("SELECT pg_stat_statements_reset()") end)
      case.runs = case.runs or {}
      local run = { wall = dt, worker = ccpu, server = scpu or 0, statements = {} }
      for _, s in ipairs(admin:execute([[
          SELECT s.toplevel, s.query, s.calls, s.total_exec_time AS ms, s.rows
          FROM pg_stat_statements AS s JOIN pg_database AS d ON d.oid = s.dbid
          WHERE d.datname = 'bench_worker']])) do
        run.statements[(s.toplevel and "" or "  (nested) ") .. statement_label(s.query)] = s
      end
      table.insert(case.runs, run)
    end
    loads[#loads + 1] = load_avg()
  end
  local nproc = tonumber(io.popen("nproc"):read("l"))
  for _, case in ipairs(cases) do
    local function med(get)
      local xs = {}
      for _, r in ipairs(case.runs) do xs[#xs + 1] = get(r) end
      return median(xs)
    end
    local wall = med(function(r) return r.wall end)
    local labels, rows = {}, {}
    for label in pairs(case.runs[1].statements) do labels[#labels + 1] = label end
    local function stat(label, k) return med(function(r) local s = r.statements[label]; return s and s[k] or 0 end) end
    table.sort(labels, function(a, b) return stat(a, "ms") > stat(b, "ms") end)
    for _, label in ipairs(labels) do
      local ms = stat(label, "ms")
      if ms >= wall * 1000 * 0.005 then
        local calls = stat(label, "calls")
        rows[#rows + 1] = { label, string.format("%.0f", calls), string.format("%.0f", ms), string.format("%.3f", ms / calls),
          string.format("%.0f", stat(label, "rows")), string.format("%.4f", ms / WORKER_JOBS),
          string.format("%.0f%%", 100 * ms / (wall * 1000)) }
      end
    end
    table_print(string.format("Where the time goes: `tarry worker --one-shot %s` (%s), %d no-op jobs, pg_stat_statements "
      .. "(track = all), medians of %d runs; wall %.2f s (%s jobs/s) (load average: %s)", case[1], case[2], WORKER_JOBS,
      REPS, wall, rate(WORKER_JOBS, wall), table.concat(loads, " / ")),
      { "statement (nested: inside a function or trigger)", "calls", "total ms", "mean ms", "rows", "ms per job",
        "share of wall (summed over connections)" }, rows)
    local worker, server = med(function(r) return r.worker end), med(function(r) return r.server end)
    table_print("CPU against wall time (medians)", { "measure", "seconds", "per job", "share" }, {
      { "wall", string.format("%.2f", wall), string.format("%.1f us", wall / WORKER_JOBS * 1e6), "" },
      { "worker process CPU (user + system)", string.format("%.2f", worker),
        string.format("%.1f us", worker / WORKER_JOBS * 1e6), string.format("%.0f%% of one core", 100 * worker / wall) },
      { "server CPU (its backends and autovacuum)", string.format("%.2f", server),
        string.format("%.1f us", server / WORKER_JOBS * 1e6), string.format("%.0f%% of one core", 100 * server / wall) },
      { "both, of the machine's " .. nproc .. " cores", string.format("%.2f", worker + server), "",
        string.format("%.0f%%", 100 * (worker + server) / (wall * nproc)) },
    })
  end
  explain_fetch(100)
end

os.remove(APP)
os.remove(APP_BASE)
if (not OPTS.quick and want("delete_old")) then bench_delete_old() end
admin:close()
