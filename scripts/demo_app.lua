-- The demo's app: what a user's tasks module looks like. `tarry worker --app scripts/demo_app.lua`
local tarry = require "tarry"

-- No conninfo: libpq's PG* environment variables say where the database is.
local app = tarry.App{ connector = tarry.PgConnector{} }

app:task("add", { queue = "math" }, function(args, ctx)
  local sum = args.a + args.b
  print(string.format("  [job %d] add(%d, %d) = %d", ctx.job.id, args.a, args.b, sum))
  return sum
end)

app:task("fetch_page", { queue = "io", retry = { max_attempts = 2 } }, function(args, ctx)
  ctx:sleep(0.2)                       -- stands for network I/O: parks this job only
  print(string.format("  [job %d] fetched %s (attempt %d)", ctx.job.id, args.url, ctx.job.attempts + 1))
end)

app:task("fan_out", function(args, ctx)
  -- Deferring from a task yields only this job's coroutine while the insert runs.
  local ids = ctx.app.tasks.add:batch_defer{ { a = args.n, b = 1 }, { a = args.n, b = 2 } }
  print(string.format("  [job %d] fan_out deferred jobs %d and %d", ctx.job.id, ids[1], ids[2]))
end)

return app
