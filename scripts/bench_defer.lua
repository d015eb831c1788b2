-- The defer rates alone, each measured REPS times (default 3) in one process, medians printed:
-- for comparing two builds back to back on a busy machine, where scripts/bench's single runs
-- are too noisy. Run inside a throwaway PostgreSQL:
--   bash scripts/with-postgres --superuser build/bin/tarry run scripts/bench_defer.lua
-- PREP=0 runs every connector with prepared_statements = false. An older build without
-- defer_async or prepared_statements runs it too (those rows are left out).
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
local function measure(label, app, n, in_coroutine, parallel)
  local t0 = tarry.now()
  if in_coroutine then
    local per = n // parallel
    for _ = 1, parallel do
      app:spawn(function() for i = 1, per do app.tasks.noop:defer{ i = i } end end)
    end
    app:run()
  else
    for i = 1, n do app.tasks.noop:defer{ i = i } end
  end
  note(label, n, tarry.now() - t0)
end
local PREP = nil
if os.getenv("PREP") == "0" then PREP = false end
local base = tarry.App{ connector = tarry.PgConnector{ conninfo = conninfo, prepared_statements = PREP } }
base:task("noop", function() end)
local sync = base:with_connector(tarry.SyncPgConnector{ conninfo = conninfo, prepared_statements = PREP })
local async = base:with_connector(tarry.PgConnector{ conninfo = conninfo, max_size = 10, prepared_statements = PREP })
async:open()
local args = {}
for i = 1, BATCH do args[i] = { i = i } end
for _ = 1, REPS do
  measure("1 single sync, SyncPgConnector", sync, SINGLE)
  measure("2 single, open PgConnector, main thread", async, SINGLE)
  measure("3 async, 1 coroutine", async, SINGLE, true, 1)
  measure("4 async, 10 coroutines", async, SINGLE, true, 10)
  local t0 = tarry.now()
  for c = 1, BATCH, 1000 do sync.tasks.noop:batch_defer(table.move(args, c, c + 999, 1, {})) end
  note("5 batch_defer 20k in chunks of 1000", BATCH, tarry.now() - t0)
  t0 = tarry.now()
  assert(#sync.tasks.noop:batch_defer(args) == BATCH)
  note("6 batch_defer 20k, one statement", BATCH, tarry.now() - t0)
  if sync.tasks.noop.defer_async then
    local t0 = tarry.now()
    local hs = {}
    for i = 1, SINGLE * 2 do hs[i] = async.tasks.noop:defer_async{ i = i } end
    for i = 1, #hs do assert(hs[i]:result()) end
    note("7 defer_async x10k from main, then result()", SINGLE * 2, tarry.now() - t0)
  end
  if async.step then          -- a host's frame loop: 100 defer_async per step(0), until all are done
    local t0, n, done = tarry.now(), SINGLE * 2, 0
    local function count() done = done + 1 end
    local sent = 0
    while done < n do
      for _ = 1, math.min(100, n - sent) do
        sent = sent + 1
        async.tasks.noop:defer_async{ i = sent }:on_done(count)
      end
      async:step(0)
    end
    note("8 defer_async x10k from a step(0) loop, 100 a step", n, tarry.now() - t0)
  end
end
local labels = {}
for k in pairs(results) do labels[#labels + 1] = k end
table.sort(labels)
for _, k in ipairs(labels) do
  local r = results[k]
  local s = {}
  for i, v in ipairs(r) do s[i] = string.format("%.0f", v) end
  table.sort(r)
  print(string.format("%-52s median %6.0f   [%s]", k, r[(#r + 1) // 2], table.concat(s, " ")))
end
async:close()
