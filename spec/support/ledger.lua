-- Exactly-once bookkeeping for the fault specs. The tasks of ledger:tasks() append one line
-- "<job id>" to a file each time they start (outside PostgreSQL, which the specs break), and
-- ledger:check(name) compares those runs with procrastinate_jobs: no job lost, none `doing`,
-- each run exactly as often as its recorded attempts say (one run per attempt), none twice.
local db = require "support.db"

local L = {}
local Ledger = {}
Ledger.__index = Ledger

function L.new()
  local path = os.tmpname()
  return setmetatable({ path = path }, Ledger)
end

--- Lua source for proc.app_file: the tasks, each noting its run first.
---   work {s = seconds}        sleeps s (default 0) and succeeds
---   gate {file = path}        waits until the file exists (at most 120 s), then succeeds
---   flaky {s = seconds}       like work, retried (at once) when the worker's shutdown cuts it
function Ledger:tasks()
  return string.format([[
local runs = assert(io.open(%q, "a"))
local function ran(ctx) runs:write(ctx.job.id, "\n"); runs:flush() end
app:task("work", function(args, ctx) ran(ctx); if args.s then ctx:sleep(args.s) end return true end)
app:task("gate", function(args, ctx)
  ran(ctx)
  local deadline = os.time() + 120
  while not io.open(args.file) and os.time() < deadline do ctx:sleep(0.02) end
  return true
end)
app:task("flaky", { retry = { max_attempts = 3, wait = 0 } }, function(args, ctx)
  ran(ctx)
  if ctx.job.attempts == 0 and args.s then ctx:sleep(args.s) end
  return true
end)
]], self.path)
end

--- job id -> number of runs noted so far.
function Ledger:runs()
  local runs = {}
  local f = io.open(self.path)
  if not f then return runs end
  for line in f:lines() do
    local id = tonumber(line)
    if id then runs[id] = (runs[id] or 0) + 1 end
  end
  f:close()
  return runs
end

--- Whether jobs 1..n have each begun their body (noted a run). A job `doing` may only be
--- prefetched, and a worker's stop puts such a job back to todo: wait for this before a signal.
function Ledger:started(n)
  local runs = self:runs()
  for id = 1, n do if not runs[id] then return false end end
  return true
end

--- Defer `n` jobs of `task` in one statement, each with args `args` (a JSON object text) plus
--- {"n": 1..n}. Returns nothing; the ids are 1..n on a fresh database.
function L.defer(name, n, task, args)
  db.psql(name, string.format([[SELECT procrastinate_defer_jobs_v1(array_agg(
    ROW('default', '%s', 0, NULL, NULL, '%s'::jsonb || jsonb_build_object('n', g), NULL)
    ::procrastinate_job_to_defer_v1)) FROM generate_series(1, %d) g]], task, args or "{}", n))
end

--- { todo =, doing =, succeeded =, failed = } counts, or nil while the server cannot answer.
function L.counts(name)
  local ok, rows = pcall(db.rows, name, "SELECT status, count(*) FROM procrastinate_jobs GROUP BY status")
  if not ok then return nil end
  local c = { todo = 0, doing = 0, succeeded = 0, failed = 0 }
  for _, r in ipairs(rows) do c[r[1]] = tonumber(r[2]) end
  return c
end

--- The number of jobs with this status (nil while the server cannot answer).
function L.count(name, status)
  local c = L.counts(name)
  return c and c[status]
end

local function first(list)
  local shown = {}
  for i = 1, math.min(#list, 10) do shown[i] = list[i] end
  return table.concat(shown, ", ") .. (#list > 10 and string.format(" ... (%d in all)", #list) or "")
end

--- Check every job of database `name` against the runs noted (see the file's header).
--- opts.jobs: how many jobs there must be. opts.status: the status each must have (a string, or
--- a table of allowed ones; default "succeeded"). opts.retried: jobs may have run more than once
--- (each run then a recorded attempt). Raises naming the faulty jobs; returns the status counts.
function Ledger:check(name, opts)
  opts = opts or {}
  local allowed = opts.status or "succeeded"
  if type(allowed) == "string" then allowed = { [allowed] = true }
  else local set = {} for _, s in ipairs(allowed) do set[s] = true end allowed = set end
  local runs = self:runs()
  local rows = db.rows(name, "SELECT id, status, attempts FROM procrastinate_jobs ORDER BY id")
  local bad = { doing = {}, status = {}, runs = {}, twice = {}, unknown = {} }
  local counts, ids = {}, {}
  for _, r in ipairs(rows) do
    local id, status, attempts = tonumber(r[1]), r[2], tonumber(r[3])
    ids[id] = true
    counts[status] = (counts[status] or 0) + 1
    local ran = runs[id] or 0
    if status == "doing" then bad.doing[#bad.doing + 1] = id end
    if not allowed[status] then bad.status[#bad.status + 1] = id .. " " .. status end
    if status ~= "doing" and ran ~= attempts then
      bad.runs[#bad.runs + 1] = string.format("%d ran %d time(s) for %d recorded attempt(s)", id, ran, attempts)
    end
    if ran > 1 and not opts.retried then bad.twice[#bad.twice + 1] = id .. " ran " .. ran .. " times" end
  end
  for id in pairs(runs) do if not ids[id] then bad.unknown[#bad.unknown + 1] = id end end
  if opts.jobs then
    assert(#rows == opts.jobs, string.format("%d job(s) in procrastinate_jobs, expected %d", #rows, opts.jobs))
  end
  assert(#bad.doing == 0, "jobs left doing: " .. first(bad.doing))
  assert(#bad.twice == 0, "jobs run more than once: " .. first(bad.twice))
  assert(#bad.runs == 0, "runs and recorded attempts differ: " .. first(bad.runs))
  assert(#bad.status == 0, "jobs in an unexpected status: " .. first(bad.status))
  assert(#bad.unknown == 0, "runs of jobs that are not in the table: " .. first(bad.unknown))
  return counts
end

return L
