--- The dashboard's JSON API (under the base path):
--
--   GET  /api/jobs?status=&queue=&task=&lock=&q=&after_id=&limit=&order=desc|asc
--   GET  /api/jobs/ID                      fields, events, attempts' errors
--   POST /api/jobs/ID/retry|cancel|abort|delete|run-now
--   POST /api/jobs/retry|cancel|delete     on everything a filter matches (the same filters)
--   POST /api/jobs                         defer: { task=, args=, queue=, priority=, lock=,
--                                          queueing_lock=, schedule_in= }
--   GET  /api/queues, /api/workers, /api/periodic, /api/stats?window=&bucket=
--
-- Each handler gets the request's context and returns a status and a JSON value. Listing jobs
-- never counts them (keyset pagination); /api/queues counts only the live jobs exactly and the
-- finished ones over a recent window (15 minutes, the newest 10,000 at most); /api/stats adds the
-- planner's estimates of the totals and the latency of the newest 1,000 starts.
-- @module tarry.dashboard.api
local core = require "tarry.core"
local Q = require "tarry.dashboard.queries"
local Errors = require "tarry.dashboard.errors"
local cron = require "tarry.cron"

local M = {}

local MAX_LIMIT, DEFAULT_LIMIT = 500, 50
local BULK_STEP = 500              -- jobs changed per statement by a bulk action

--- An error response: status and { error = message }.
local function fail(status, fmt, ...)
  return status, { error = string.format(fmt, ...) }
end
M.fail = fail

local function positive_int(v)
  local n = math.tointeger(tonumber(v))
  return n and n >= 1 and n or nil
end

local function text_filter(v, name)
  if v == nil or v == "" then return nil end
  if type(v) ~= "string" or #v > 1024 then return nil, name .. " must be a text of at most 1024 bytes" end
  return v
end

--- The filter of a query (or of a bulk request's body): { status=, queue=, task=, lock=,
-- search= }, or nil and a message.
function M.filter(p)
  local f = {}
  if p.status ~= nil and p.status ~= "" then
    if not Q.IS_STATUS[p.status] then
      return nil, "status must be one of " .. table.concat(Q.STATUSES, ", ") .. ", got " .. tostring(p.status)
    end
    f.status = p.status
  end
  for _, k in ipairs { "queue", "task", "lock" } do
    local v, err = text_filter(p[k], k)
    if err then return nil, err end
    f[k] = v
  end
  local q, err = text_filter(p.q, "q")
  if err then return nil, err end
  if q then
    local search, why = Q.search_value(q)
    if not search then return nil, why end
    f.search = search
  end
  return f
end

local function job_json(r)
  r.args = r.args or {}
  if core.is_error(r.args) then r.args = { undecodable = r.args.message } end
  return r
end

-- GET /api/jobs
function M.list(ctx, req)
  local p = req.query
  local f, err = M.filter(p)
  if not f then return fail(400, "%s", err) end
  f.limit = DEFAULT_LIMIT
  if p.limit and p.limit ~= "" then
    f.limit = positive_int(p.limit)
    if not f.limit or f.limit > MAX_LIMIT then return fail(400, "limit must be a whole number from 1 to %d", MAX_LIMIT) end
  end
  if p.after_id and p.after_id ~= "" then
    f.after_id = positive_int(p.after_id)
    if not f.after_id then return fail(400, "after_id must be a job id") end
  end
  if p.order and p.order ~= "" and p.order ~= "asc" and p.order ~= "desc" then
    return fail(400, "order must be asc or desc")
  end
  f.order = p.order
  local rows, next_after = Q.list_jobs(ctx.connector, f)
  for i, r in ipairs(rows) do rows[i] = job_json(r) end
  return 200, { jobs = core.array(rows), next_after_id = next_after or core.null }
end

-- GET /api/jobs/ID
function M.show(ctx, req, id)
  local job = ctx.app.jobs:get(id)
  if not job then return fail(404, "job %d does not exist", id) end
  local out = {}
  for k, v in pairs(job) do out[k] = v end
  out.events = core.array(job.events or {})
  out.errors = core.array(Errors.of_job(ctx.connector, id))
  return 200, job_json(out)
end

-- POST /api/jobs/ID/ACTION
local ACTIONS = {
  retry = function(ctx, id)
    local ok, err = pcall(ctx.app.jobs.retry, ctx.app.jobs, id)
    if ok then return true end
    if core.is_error(err) and (err.code == "cannot_retry" or err.code == "not_found") then return false, err.message end
    error(err, 0)
  end,
  cancel = function(ctx, id) return ctx.app.jobs:cancel(id), "only a todo job can be cancelled" end,
  abort = function(ctx, id) return ctx.app.jobs:cancel(id, { abort = true }), "only a todo or doing job can be aborted" end,
  delete = function(ctx, id) return Q.delete_job(ctx.connector, id), "a running job cannot be deleted (abort it first)" end,
  ["run-now"] = function(ctx, id) return Q.run_now(ctx.connector, id), "only a todo job scheduled later can be run now" end,
}
M.ACTIONS = ACTIONS

function M.act(ctx, req, id, action)
  local fn = ACTIONS[action]
  if not fn then return fail(404, "no action %s (use retry, cancel, abort, delete or run-now)", action) end
  local existed = ctx.app.jobs:get(id)
  if not existed then return fail(404, "job %d does not exist", id) end
  local done, why = fn(ctx, id)
  if not done then return fail(409, "job %d (%s): %s", id, existed.status, why) end
  local after = ctx.app.jobs:get(id)
  return 200, { ok = true, id = id, status = after and after.status or "deleted" }
end

-- POST /api/jobs/retry|cancel|delete: the filter in the JSON body (or the query). Walks the
-- matching jobs in id order, BULK_STEP at a time, so a bulk action on millions of jobs is many
-- short statements, never one long lock.
function M.bulk(ctx, req, action, body)
  local f, err = M.filter(next(body) and body or req.query)
  if not f then return fail(400, "%s", err) end
  local after, matched, changed = 0, 0, 0
  while true do
    local ids = Q.matching_ids(ctx.connector, f, after, BULK_STEP)
    if #ids == 0 then break end
    matched = matched + #ids
    changed = changed + Q.bulk(ctx.connector, action, ids)
    after = ids[#ids]
    if #ids < BULK_STEP then break end
  end
  return 200, { ok = true, action = action, matched = matched, changed = changed }
end

-- POST /api/jobs: defer one job.
local DEFER_KEYS = { task = true, args = true, queue = true, priority = true, lock = true, queueing_lock = true,
  schedule_in = true }

function M.defer(ctx, req, body)
  for k in pairs(body) do
    if not DEFER_KEYS[k] then return fail(400, "unknown field %s (task, args, queue, priority, lock, "
      .. "queueing_lock, schedule_in)", tostring(k)) end
  end
  if type(body.task) ~= "string" or body.task == "" then return fail(400, "task must be a task name") end
  local args = body.args
  if args == nil or args == core.null then args = {} end
  if type(args) ~= "table" or (core.is_array(args) and next(args) ~= nil) then
    return fail(400, "args must be a JSON object")
  end
  local overrides = {}
  for _, k in ipairs { "queue", "priority", "lock", "queueing_lock", "schedule_in" } do
    if body[k] ~= nil and body[k] ~= core.null and body[k] ~= "" then overrides[k] = body[k] end
  end
  local ok, id = pcall(function()
    return ctx.app:configure_task(body.task, overrides):defer(core.is_array(args) and {} or args)
  end)
  if not ok then
    if core.is_error(id) and id.code == "already_enqueued" then return fail(409, "%s", id.message) end
    if core.is_error(id) then error(id, 0) end
    return fail(400, "%s", (tostring(id):gsub("^[^:]*:%d+: ", "")))
  end
  return 201, { ok = true, id = id }
end

-- GET /api/queues
function M.queues(ctx, req)
  local window = positive_int(req.query.window) or 900
  local queues, capped = Q.queues(ctx.connector, window)
  return 200, { queues = core.array(queues), finished_window = window, finished_capped = capped }
end

-- GET /api/workers
function M.workers(ctx)
  local workers = ctx.app.jobs:workers()
  local running = Q.running(ctx.connector)
  for _, w in ipairs(workers) do w.running = core.array(running[w.id] or {}) end
  return 200, { workers = core.array(workers) }
end

-- GET /api/periodic: the app's schedules (--app), each with its last deferred tick and the next.
function M.periodic(ctx)
  local out = {}
  local now = core.now()
  for i, e in ipairs(ctx.app:periodic_tasks()) do
    local last = Q.last_tick(ctx.connector, e.task_name, e.periodic_id)
    local schedule = e.schedule or cron.parse(e.cron)
    out[i] = { task_name = e.task_name, periodic_id = e.periodic_id, cron = e.cron, queue = e.queue or core.null,
      last_tick = last or core.null, next_tick = schedule:next(math.floor(now)) }
  end
  return 200, { periodic = core.array(out) }
end

-- GET /api/stats?window=900&bucket=10
function M.stats(ctx, req)
  local window = positive_int(req.query.window) or 900
  local bucket = positive_int(req.query.bucket) or 10
  if window > 86400 or bucket > window then return fail(400, "window: at most 86400 s; bucket: at most window") end
  local s = Q.stats(ctx.connector, window, bucket)
  return 200, { window = window, bucket = bucket, now = core.now(), throughput = core.array(s.throughput),
    latency = core.array(s.latency), estimates = Q.estimates(ctx.connector) }
end

return M
