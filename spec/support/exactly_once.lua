-- Exactly once across processes: several one-shot `tarry worker` processes drain one queue of a
-- task that writes one row per run into a table `effects` (job id, worker name) of the same
-- database; afterwards every job has exactly one effect, succeeded on its first attempt, released
-- by its worker, and every process ran some.
--
--   exactly_once.run(name, { jobs = 3000, options = "-c 2 --prefetch 32",
--                            priority = "g % 5", lock = "CASE WHEN g % 7 = 0 THEN 'L' || (g % 3) END" })
local db = require "support.db"
local proc = require "support.process"
local assert = require "luassert"     -- busted's assert: a required module does not see the spec's environment

local M = {}

local TASK = [[
app:task("count", function(args, ctx)
  ctx.app.connector:execute("INSERT INTO effects VALUES ($1, $2)", ctx.job.id, ctx.worker_name)
end)
]]

-- `n` jobs of "count" in one statement; priority and lock are SQL expressions of g (1..n).
local function defer(name, n, priority, lock)
  db.psql(name, string.format([[SELECT procrastinate_defer_jobs_v1(array_agg(
    ROW('default', 'count', %s, %s, NULL, jsonb_build_object('n', g), NULL)::procrastinate_job_to_defer_v1))
    FROM generate_series(1, %d) g]], priority or "0", lock or "NULL", n))
end

--- Defer opts.jobs jobs (opts.priority, opts.lock: SQL expressions of g, default 0 and NULL),
--- drain them with opts.workers (default 3) processes started with `--one-shot` plus
--- opts.options, and assert the header's rules.
function M.run(name, opts)
  local n, nworkers = opts.jobs, opts.workers or 3
  db.psql(name, "CREATE TABLE effects (job_id bigint NOT NULL, worker text NOT NULL)")
  local app = proc.app_file(name, TASK)
  defer(name, n, opts.priority, opts.lock)
  local workers = proc.start_workers(nworkers, app, "--one-shot --log-level warning " .. opts.options)
  for i = 1, nworkers do assert.are.equal(0, workers[i]:wait(300), workers[i]:output()) end
  local all = tostring(n)
  assert.are.equal(all, db.value(name, "SELECT count(*) FROM effects"))
  assert.are.equal(all, db.value(name, "SELECT count(DISTINCT job_id) FROM effects"))
  assert.are.equal(all, db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded' "
    .. "AND attempts = 1 AND worker_id IS NULL"))
  assert.are.equal(tostring(nworkers), db.value(name, "SELECT count(DISTINCT worker) FROM effects"))
end

return M
