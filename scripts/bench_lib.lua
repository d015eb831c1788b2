-- The defer measurements, shared by scripts/bench.lua (each case once, in its defer table) and
-- scripts/bench_defer.lua (each case REPS times, medians): one list of cases, so the two report
-- the same runs under the same labels. `tarry run` puts this directory on package.path.
local tarry = require "tarry"

local M = {}

local function thousands(n)
  return (tostring(n):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

--- Seconds to defer n no-op jobs one call at a time through app: from the main thread, or spread
-- over `coroutines` tarry coroutines (then app:run() drives them; n a multiple of coroutines).
function M.single(app, n, coroutines)
  local t0 = tarry.now()
  if coroutines then
    local per = n // coroutines
    for _ = 1, coroutines do
      app:spawn(function() for i = 1, per do app.tasks.noop:defer{ i = i } end end)
    end
    app:run()
  else
    for i = 1, n do app.tasks.noop:defer{ i = i } end
  end
  return tarry.now() - t0
end

--- Seconds to batch_defer the argument list args through app in chunks of `chunk` jobs
-- (#args: one statement).
function M.bulk(app, args, chunk)
  local t0, n = tarry.now(), 0
  for first = 1, #args, chunk do
    n = n + #app.tasks.noop:batch_defer(table.move(args, first, math.min(#args, first + chunk - 1), 1, {}))
  end
  assert(n == #args, "batch_defer returned too few ids")
  return tarry.now() - t0
end

--- The defer cases on the database at conninfo, in the order the tables print them: a list of
-- { label =, jobs =, run = function() -> seconds }. opts: single (defers per single-defer case),
-- bulk (jobs per batch case), prepared_statements (nil: the default), memory (add the
-- MemoryConnector case). close() releases the connectors.
function M.defer_cases(conninfo, opts)
  local single, bulk, prep = opts.single, opts.bulk, opts.prepared_statements
  local base = tarry.App{ connector = tarry.PgConnector{ conninfo = conninfo, prepared_statements = prep } }
  base:task("noop", function() end)
  local sync = base:with_connector(tarry.SyncPgConnector{ conninfo = conninfo, prepared_statements = prep })
  local async = base:with_connector(tarry.PgConnector{ conninfo = conninfo, max_size = 10,
    prepared_statements = prep })
  async:open()
  local args = {}
  for i = 1, bulk do args[i] = { i = i } end
  local cases = {
    { label = "PgConnector, not opened (its sync connector), one defer per call", jobs = single,
      run = function() return M.single(base, single) end },
    { label = "SyncPgConnector, one defer per call", jobs = single, run = function() return M.single(sync, single) end },
    { label = "PgConnector, open, main thread (blocking)", jobs = single,
      run = function() return M.single(async, single) end },
    { label = "PgConnector, open, 1 coroutine (async)", jobs = single,
      run = function() return M.single(async, single, 1) end },
    { label = "PgConnector, open, 10 coroutines (async)", jobs = single,
      run = function() return M.single(async, single, 10) end },
  }
  if opts.memory then
    local mem = base:with_connector(tarry.MemoryConnector())
    cases[#cases + 1] = { label = "MemoryConnector", jobs = single, run = function() return M.single(mem, single) end }
  end
  cases[#cases + 1] = { label = string.format("bulk defer, %s jobs in chunks of 1,000 (batch_defer of 1,000, %d times)",
    thousands(bulk), bulk // 1000), jobs = bulk, run = function() return M.bulk(sync, args, 1000) end }
  cases[#cases + 1] = { label = string.format("batch_defer of %s (SyncPgConnector, 1 statement)", thousands(bulk)),
    jobs = bulk, run = function() return M.bulk(sync, args, bulk) end }
  cases.apps = { base = base, sync = sync, async = async }
  function cases.close()
    async.connector:close()
    sync.connector:close()
    base.connector:close()
  end
  return cases
end

return M
