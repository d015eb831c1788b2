-- The dashboard benchmark; scripts/bench-dashboard runs it inside a throwaway PostgreSQL.
-- Fills a database with BENCH_JOBS jobs (default 1,000,000: 5 queues, 10 tasks, 1% failed,
-- 0.5% todo, the rest succeeded, events spread over two days, 20,000 finished in the last
-- minutes), starts `tarry dashboard` on it and times each request with curl (median and p95 of
-- BENCH_RUNS runs, after one warm-up).
local tarry = require "tarry"
local schema = require "tarry.schema"

local build = arg[1] or "build"
local JOBS = tonumber(os.getenv("BENCH_JOBS") or "1000000")
local RUNS = tonumber(os.getenv("BENCH_RUNS") or "15")
local DB = "tarry_bench_dashboard"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local admin = tarry.SyncPgConnector{ conninfo = "dbname=postgres" }
admin:execute("DROP DATABASE IF EXISTS " .. DB .. " WITH (FORCE)")
admin:execute("CREATE DATABASE " .. DB)
local c = tarry.SyncPgConnector{ conninfo = "dbname=" .. DB, query_timeout = 900 }   -- the fill is long
schema.apply(c)

local t0 = tarry.now()
c:execute(string.format([[
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
SELECT 'queue' || (i %% 5), 'task_' || (i %% 10), jsonb_build_object('user', i %% 10000, 'n', i),
       (CASE WHEN i %% 100 = 0 THEN 'failed' WHEN i %% 200 = 1 THEN 'todo' ELSE 'succeeded' END)::procrastinate_job_status,
       CASE WHEN i %% 200 = 1 THEN 0 ELSE 1 END
FROM generate_series(1, %d) AS i]], JOBS))
c:execute("UPDATE procrastinate_events SET at = now() - interval '2 days' * random()")
-- the finished jobs' history, as their workers' triggers would have written it, over two days
c:execute([[
INSERT INTO procrastinate_events (job_id, type, at)
SELECT j.id, e.type, t.at + e.k * interval '1 second'
FROM procrastinate_jobs AS j
CROSS JOIN LATERAL (SELECT now() - interval '2 days' * random() - interval '1 hour' AS at) AS t
CROSS JOIN LATERAL (VALUES (0, 'deferred'::procrastinate_job_event_type), (1, 'started'),
                           (2, CASE WHEN j.status = 'failed' THEN 'failed' ELSE 'succeeded' END::procrastinate_job_event_type)) AS e(k, type)
WHERE j.status <> 'todo']])
-- recent activity for /api/stats: jobs deferred, started and finished in the last minutes
c:execute([[
INSERT INTO procrastinate_jobs (queue_name, task_name, args)
SELECT 'queue' || (i % 5), 'task_' || (i % 10), jsonb_build_object('user', i % 10000, 'recent', true)
FROM generate_series(1, 20000) AS i]])
c:execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE args @> '{\"recent\": true}'")
c:execute("UPDATE procrastinate_jobs SET status = CASE WHEN id % 10 = 0 THEN 'failed'::procrastinate_job_status "
  .. "ELSE 'succeeded' END, attempts = 1 WHERE args @> '{\"recent\": true}'")
c:execute("UPDATE procrastinate_events SET at = now() - interval '10 minutes' * random() WHERE at > now() - interval '1 minute'")
c:execute("VACUUM ANALYZE procrastinate_jobs")
c:execute("VACUUM ANALYZE procrastinate_events")
local total = c:execute("SELECT count(*) AS n FROM procrastinate_jobs")[1].n
local events = c:execute("SELECT count(*) AS n FROM procrastinate_events")[1].n
local some = c:execute("SELECT id FROM procrastinate_jobs WHERE status = 'failed' ORDER BY id LIMIT 1 OFFSET 500")[1].id
print(string.format("filled %d jobs, %d events in %.0f s", total, events, tarry.now() - t0))

local out = os.tmpname()
os.execute(string.format("%s/bin/tarry dashboard --port 0 --conninfo dbname=%s > %s 2>&1 & echo $! > %s.pid",
  build, DB, out, out))
local url
for _ = 1, 200 do
  local f = io.open(out)
  url = f and f:read("a"):match("listening on (http://%S+)")
  if f then f:close() end
  if url then break end
  os.execute("sleep 0.05")
end
assert(url, "the dashboard did not start")

local function time_of(path)
  return tonumber(sh(string.format("curl -s -o /dev/null -w '%%{http_code} %%{time_total}' '%s%s'", url, path))
    :match("^200 ([%d.]+)$") or error("request failed: " .. path))
end

local CASES = {
  { "page: index.html", "" },
  { "page: app.js", "static/app.js" },
  { "GET /api/jobs (first page, 50)", "api/jobs" },
  { "GET /api/jobs deep page (after_id=500000)", "api/jobs?after_id=500000" },
  { "GET /api/jobs?status=failed", "api/jobs?status=failed" },
  { "GET /api/jobs?status=todo&queue=queue1", "api/jobs?status=todo&queue=queue1" },
  { "GET /api/jobs?queue=queue3&task=task_8", "api/jobs?queue=queue3&task=task_8" },
  { "GET /api/jobs?q=user=4242 (search)", "api/jobs?q=user%3D4242" },
  { "GET /api/jobs?q={\"user\":4242,\"n\":994242}", "api/jobs?q=%7B%22user%22%3A4242%2C%22n%22%3A994242%7D" },
  { "GET /api/jobs/ID (detail)", "api/jobs/" .. some },
  { "GET /api/queues", "api/queues" },
  { "GET /api/workers", "api/workers" },
  { "GET /api/stats (15 min, 10 s buckets)", "api/stats?window=900&bucket=10" },
}

if os.getenv("BENCH_EXPLAIN") then
  local Q = require "tarry.dashboard.queries"
  local function explain(label, fn)
    local real = c.execute
    local conn = setmetatable({}, { __index = { execute = function(_, sql, ...)
      local plan = real(c, "EXPLAIN (ANALYZE, BUFFERS OFF, TIMING OFF) " .. sql, ...)
      local lines = {}
      for _, r in ipairs(plan) do lines[#lines + 1] = r["QUERY PLAN"] end
      print("-- " .. label .. "\n" .. table.concat(lines, "\n"))
      return real(c, sql, ...)
    end } })
    fn(conn)
  end
  explain("queues", function(x) Q.queues(x, 3600) end)
  explain("stats", function(x) Q.stats(x, 900, 10) end)
end

local rows = {}
for _, case in ipairs(CASES) do
  time_of(case[2])
  local ts = {}
  for i = 1, RUNS do ts[i] = time_of(case[2]) * 1000 end
  table.sort(ts)
  rows[#rows + 1] = string.format("| %-45s | %8.1f | %8.1f |", case[1], ts[math.ceil(#ts / 2)], ts[math.ceil(#ts * 0.95)])
end
-- page load in headless Chromium: from the start of navigation to the view rendered with its data
package.path = "spec/?.lua;" .. package.path
local okw, webdriver = pcall(require, "support.webdriver")
if okw and webdriver.available() then
  local browser = webdriver.start()
  for _, view in ipairs { { "page load: overview (chart, queues)", "" }, { "page load: jobs list", "?view=jobs" },
                          { "page load: a job's page", "?job=" .. some } } do
    local ts = {}
    for i = 0, RUNS do
      browser:go(url .. view[2])
      browser:wait_for("main[data-loaded]", 30)
      local ms = browser:js("return Number(document.getElementById('main').dataset.loaded) - performance.timeOrigin")
      if i > 0 then ts[#ts + 1] = ms end
    end
    table.sort(ts)
    rows[#rows + 1] = string.format("| %-45s | %8.1f | %8.1f |", view[1], ts[math.ceil(#ts / 2)], ts[math.ceil(#ts * 0.95)])
  end
  browser:quit()
end

-- the argument search again, with the optional GIN index of the README
c:execute("CREATE INDEX bench_args_gin ON procrastinate_jobs USING gin (args jsonb_path_ops)")
c:execute("ANALYZE procrastinate_jobs")
for _, case in ipairs(CASES) do
  if case[2]:find("q=", 1, true) then
    time_of(case[2])
    local ts = {}
    for i = 1, RUNS do ts[i] = time_of(case[2]) * 1000 end
    table.sort(ts)
    rows[#rows + 1] = string.format("| %-45s | %8.1f | %8.1f |", case[1]:gsub("^GET ", "GIN: "), ts[math.ceil(#ts / 2)],
      ts[math.ceil(#ts * 0.95)])
  end
end
os.execute(string.format("kill $(cat %s.pid)", out))
os.remove(out)
os.remove(out .. ".pid")
print(string.format("\nDashboard on %d jobs, %d events (ms, median and p95 of %d runs)", total, events, RUNS))
print("| request                                       |   median |      p95 |")
print("|-----------------------------------------------|----------|----------|")
for _, r in ipairs(rows) do print(r) end
c:close()
admin:execute("DROP DATABASE IF EXISTS " .. DB .. " WITH (FORCE)")
