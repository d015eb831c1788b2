--- The admin commands on app.jobs: `tarry jobs list|show|cancel|abort|retry|stalled|delete-old`,
-- `tarry queues|tasks|locks` and `tarry workers`. Each prints one result (tarry.cli_output): an
-- aligned table, or with --json one JSON document (a listing: an array). A job that is not there
-- or cannot be changed is a failure (exit 1) with a one-line message.
-- @module tarry.cli_jobs
local tarry = require "tarry"
local Output = require "tarry.cli_output"
local Store = require "tarry.store"

local M = {}

local ARGS_WIDTH = 40                    -- the args column of a job listing

local function manager(cli, cmd, out)
  return cli.app_for(cmd, function(text) out:note(text) end).jobs
end

-- ---- jobs as JSON and as text ----

local FIELDS = { "id", "task_name", "queue", "priority", "lock", "queueing_lock", "args", "status", "scheduled_at",
  "attempts", "abort_requested", "worker_id" }

local function or_null(v)
  if v == nil then return tarry.null end
  return v
end

-- A job as --json prints it: every field (null when NULL), its events when it has them.
local function job_value(job)
  local v = {}
  for _, k in ipairs(FIELDS) do v[k] = or_null(job[k]) end
  if job.events then
    local events = {}
    for i, e in ipairs(job.events) do events[i] = { id = e.id, type = e.type, at = e.at } end
    v.events = tarry.array(events)
  end
  return v
end

local function jobs_value(list)
  local out = {}
  for i, j in ipairs(list) do out[i] = job_value(j) end
  return tarry.array(out)
end

local function args_text(args)
  return Output.truncate(tarry.json.encode(args or {}), ARGS_WIDTH)
end

local JOB_HEADERS = { "ID", "TASK", "STATUS", "QUEUE", "PRIORITY", "ATTEMPTS", "LOCK", "SCHEDULED_AT", "WORKER",
  "ARGS" }

local function jobs_text(list, none)
  if #list == 0 then return none end
  local rows = {}
  for i, j in ipairs(list) do
    rows[i] = { j.id, j.task_name, j.status .. (j.abort_requested and " (abort requested)" or ""), j.queue,
      j.priority, j.attempts, j.lock, Output.time(j.scheduled_at), j.worker_id, args_text(j.args) }
  end
  return Output.table(JOB_HEADERS, rows)
end

local function job_text(job)
  local fields = {}
  for _, k in ipairs(FIELDS) do
    local v = job[k]
    if k == "args" then v = tarry.json.encode(v or {})
    elseif k == "scheduled_at" then v = Output.time(v)
    elseif v ~= nil then v = tostring(v) end               -- strings: a field table aligns left
    if k ~= "id" then fields[#fields + 1] = { k, v } end
  end
  local events = {}
  for i, e in ipairs(job.events or {}) do events[i] = { e.id, e.type, Output.time(e.at, true) } end
  return table.concat({ tostring(job), Output.table({ "FIELD", "VALUE" }, fields), "",
    #events > 0 and Output.table({ "EVENT", "TYPE", "AT" }, events) or "no events" }, "\n")
end

-- ---- tarry jobs ACTION ----

local ACTIONS = {}

function ACTIONS.list(cli, cmd, out)
  local jobs = manager(cli, cmd, out)
  local list, next_after = jobs:list{ queue = cmd.queue, task = cmd.task, status = cmd.status, lock = cmd.lock,
    queueing_lock = cmd.queueing_lock, worker_id = cmd.worker_id, limit = cmd.limit, after_id = cmd.after_id }
  out:result(jobs_value(list), function() return jobs_text(list, "no jobs") end)
  if next_after then out:note(string.format("more jobs follow: add --after-id %d", next_after)) end
  return 0
end

local function get(cli, jobs, id)
  local job = jobs:get(id)
  if not job then cli.failure("job %d does not exist", id) end
  return job
end

function ACTIONS.show(cli, cmd, out)
  local job = get(cli, manager(cli, cmd, out), cmd.id)
  out:result(job_value(job), function() return job_text(job) end)
  return 0
end

function ACTIONS.stalled(cli, cmd, out)
  local seconds = cmd.seconds or 30
  local list = manager(cli, cmd, out):stalled{ seconds = seconds, queue = cmd.queue, task = cmd.task }
  out:result(jobs_value(list), function()
    return jobs_text(list, string.format("no stalled jobs (no running job's worker is silent for %gs)", seconds))
  end)
  return 0
end

-- Why a cancel or an abort did not take effect, from the job as it is now.
local function refusal(cli, id, job, abort)
  if not job then cli.failure("job %d does not exist", id) end
  if job.status == "doing" then
    cli.failure("job %d was not cancelled: it is running (doing); `tarry jobs abort %d` asks its worker to stop it",
      id, id)
  end
  cli.failure("job %d was not %s: it is %s already", id, abort and "aborted" or "cancelled", job.status)
end

local OUTCOME_TEXT = {
  cancelled = "cancelled job %d (it had not started)",
  deleted = "deleted job %d (it had not started)",
  abort_requested = "abort requested for job %d: its worker stops it at its next yield point (it ends aborted)",
}

local function cancel(cli, cmd, out, abort)
  local jobs = manager(cli, cmd, out)
  local done = jobs:cancel(cmd.id, { abort = abort, delete = cmd.delete == true })
  local job = jobs:get(cmd.id)
  if not done then refusal(cli, cmd.id, job, abort) end
  local outcome = not job and "deleted" or job.status == "cancelled" and "cancelled" or "abort_requested"
  out:result({ id = cmd.id, outcome = outcome, status = or_null(job and job.status) },
    string.format(OUTCOME_TEXT[outcome], cmd.id))
  return 0
end

function ACTIONS.cancel(cli, cmd, out) return cancel(cli, cmd, out, false) end
function ACTIONS.abort(cli, cmd, out) return cancel(cli, cmd, out, true) end

function ACTIONS.retry(cli, cmd, out)
  local jobs = manager(cli, cmd, out)
  local at = cmd.at or (cmd["in"] and tarry.now() + cmd["in"])
  local ok, err = pcall(jobs.retry, jobs, cmd.id, { at = at, priority = cmd.priority, queue = cmd.queue,
    lock = cmd.lock })
  if not ok then
    if tarry.is_error(err) and (err.code == "not_found" or err.code == "cannot_retry") then
      cli.failure("%s", err.message)
    end
    error(err, 0)
  end
  local job = get(cli, jobs, cmd.id)
  out:result(job_value(job), string.format("retried job %d: %s on queue %s, scheduled at %s (attempts: %d)",
    job.id, job.status, job.queue, Output.time(job.scheduled_at) or "-", job.attempts))
  return 0
end

ACTIONS["delete-old"] = function(cli, cmd, out)
  local statuses = cmd.status or { "succeeded" }
  local n = manager(cli, cmd, out):delete_old{ max_hours = cmd.max_hours, queue = cmd.queue, statuses = statuses }
  out:result({ deleted = n, max_hours = cmd.max_hours, queue = or_null(cmd.queue), statuses = tarry.array(statuses) },
    string.format("deleted %d job%s (%s, latest event older than %g hours%s)", n, n == 1 and "" or "s",
      table.concat(statuses, ", "), cmd.max_hours, cmd.queue and (", queue " .. cmd.queue) or ""))
  return 0
end

--- Run `tarry jobs ACTION` for the parsed command `cmd`; returns the exit code.
function M.run(cli, cmd)
  return ACTIONS[cmd.action](cli, cmd, Output.new(cmd.json))
end

-- ---- tarry queues|tasks|locks, tarry workers ----

--- Run `tarry queues`, `tarry tasks` or `tarry locks`: the jobs of each per status.
function M.counts(cli, cmd)
  local out = Output.new(cmd.json)
  local jobs = manager(cli, cmd, out)
  local rows = jobs[cmd.command](jobs, { queue = cmd.queue, task = cmd.task, status = cmd.status, lock = cmd.lock })
  out:result(tarry.array(rows), function()
    if #rows == 0 then return "no " .. cmd.command end
    local headers, lines = { cmd.command:sub(1, -2):upper(), "JOBS" }, {}
    for _, s in ipairs(Store.STATUSES) do headers[#headers + 1] = s:upper() end
    for i, r in ipairs(rows) do
      lines[i] = { r.name, r.jobs_count }
      for _, s in ipairs(Store.STATUSES) do lines[i][#lines[i] + 1] = r[s] end
    end
    return Output.table(headers, lines)
  end)
  return 0
end

--- Run `tarry workers`: the registered workers, their heartbeat and running jobs.
function M.workers(cli, cmd)
  local out = Output.new(cmd.json)
  local rows = manager(cli, cmd, out):workers()
  out:result(tarry.array(rows), function()
    if #rows == 0 then return "no workers registered" end
    local lines = {}
    for i, w in ipairs(rows) do
      lines[i] = { w.id, Output.time(w.last_heartbeat), math.floor((w.heartbeat_age or 0) * 10 + 0.5) / 10, w.doing }
    end
    return Output.table({ "WORKER", "LAST_HEARTBEAT", "SECONDS_AGO", "DOING" }, lines)
  end)
  return 0
end

return M
