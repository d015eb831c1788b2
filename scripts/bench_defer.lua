-- The defer rates alone, each measured REPS times (default 3) in one process, medians printed:
-- for comparing two builds back to back on a busy machine, where scripts/bench's single runs
-- are too noisy. Run inside a throwaway PostgreSQL:
--   bash scripts/with-postgres --superuser build/bin/tarry run scripts/bench_defer.lua
-- PREP=0 runs every connector with prepared_statements = false. The cases are scripts/bench.lua's
-- (scripts/bench_lib.lua), plus defer_async from the main thread and from a step(0) loop.
local tarry = require "tarry"
local schema = require "tarry.schema"
local SINGLE = tonumber(os.getenv("BENCH_SINGLE") or "5000")
local BATCH = 20000
local REPS = tonumber(os.getenv("REPS") or "3")
local admin = tarry.SyncPgConnector{ conninfo = "dbname=postgres" }
admin:execute("DROP DATABASE IF EXISTS bench_defer WITH (FORCE)")
admin:execute("CREATE DATABASE bench_defer")
local conninfo = "dbname=bench_defer"
do local c = tarry.SyncPgConnector{ conninfo = conninfo }; schema.apply(c); c:close() end
local settings = admin:execute("SELECT current_setting('fsync') AS f, current_setting('synchronous_commit') AS s")[1]
print(string.format("fsync=%s synchronous_commit=%s, %d single defers, batches of 20,000", settings.f, settings.s, SINGLE))
local results = {}
local function note(label, n, dt) results[label] = results[label] or {}; table.insert(results[label], n / dt) end
local PREP = nil
if os.getenv("PREP") == "0" then PREP = false end
-- The cases scripts/bench.lua prints (scripts/bench_lib.lua), numbered in its order.
local cases = require("bench_lib").defer_cases(conninfo, { single = SINGLE, bulk = BATCH, prepared_statements = PREP })
local async = cases.apps.async
for _ = 1, REPS do
  for i, case in ipairs(cases) do note(string.format("%d %s", i, case.label), case.jobs, case.run()) end
  local n = #cases
  if async.tasks.noop.defer_async then
    local t0 = tarry.now()
    local hs = {}
    for i = 1, SINGLE * 2 do hs[i] = async.tasks.noop:defer_async{ i = i } end
    for i = 1, #hs do assert(hs[i]:result()) end
    note(string.format("%d defer_async x%d from main, then result()", n + 1, SINGLE * 2), SINGLE * 2, tarry.now() - t0)
  end
  if async.step then          -- a host's frame loop: 100 defer_async per step(0), until all are done
    local t0, total, done = tarry.now(), SINGLE * 2, 0
    local function count() done = done + 1 end
    local sent = 0
    while done < total do
      for _ = 1, math.min(100, total - sent) do
        sent = sent + 1
        async.tasks.noop:defer_async{ i = sent }:on_done(count)
      end
      async:step(0)
    end
    note(string.format("%d defer_async x%d from a step(0) loop, 100 a step", n + 2, total), total, tarry.now() - t0)
  end
end
local labels = {}
for k in pairs(results) do labels[#labels + 1] = k end
table.sort(labels, function(a, b) return tonumber(a:match("^%d+")) < tonumber(b:match("^%d+")) end)
for _, k in ipairs(labels) do
  local r = results[k]
  local s = {}
  for i, v in ipairs(r) do s[i] = string.format("%.0f", v) end
  table.sort(r)
  print(string.format("%-82s median %6.0f   [%s]", k, r[(#r + 1) // 2], table.concat(s, " ")))
end
cases.close()
admin:close()
