--- Periodic (cron) tasks: their registration on an app, and the deferrer's arithmetic.
--
-- `app:periodic(cron, task_name, opts)` and the task option `cron = "..."` register a schedule
-- (validated at once); `app:periodic_tasks()` lists them. Deferring them is the worker's job
-- (tarry/worker/periodic.lua): at each tick it calls `Periodic.defer_due(store, entries, state,
-- now)`, the entry point below, which defers every due tick through `store:defer_periodic` — at most
-- once per tick across all workers and machines (see tarry/store.lua). A task receives its tick
-- as `args.timestamp` (unix seconds), as Procrastinate passes it.
local core = require "tarry.core"
-- tarry.cron is loaded by the first schedule (an app without one never needs it).
local options = require "tarry.options"

local M = {}

--- Procrastinate's periodic_max_delay: a tick later than this many seconds is skipped.
M.MAX_DELAY = 600
-- A newest tick further ahead than this was deferred by a machine whose clock runs fast: it is
-- ignored rather than allowed to hold the task back until then.
local FUTURE_SLACK = 60

local OPTIONS = { periodic_id = true, args = true, queue = true, priority = true, lock = true,
  queueing_lock = true }

local function check_args(args, what, level)
  if args == nil then return {} end
  if type(args) ~= "table" or core.is_array(args) or args[1] ~= nil then
    error(what .. ": args must be a table of named arguments (a JSON object)", level + 1)
  end
  if args.timestamp ~= nil then
    error(what .. ": args must not hold 'timestamp': each job receives its tick there", level + 1)
  end
  local ok, err = pcall(core.json_encode, args)
  if not ok then
    error(what .. ": args cannot be stored as JSON: " .. tostring(err):gsub("^value", "args"), level + 1)
  end
  local copy = {}
  for k, v in pairs(args) do copy[k] = v end
  return copy
end

--- Validate a schedule of task `def` and add it to `list` (the app registry's). Raises at `level`.
function M.register(list, expr, def, opts, level)
  local what = string.format("app:periodic(%q, %q)", tostring(expr), def.name)
  local schedule = require("tarry.cron").parse(expr, level + 1)
  opts = options.check_known(opts, OPTIONS, what, level + 1)
  local pid = opts.periodic_id or ""
  if type(pid) ~= "string" or (utf8.len(pid) or 129) > 128 then
    error(what .. ": periodic_id must be a string of at most 128 characters", level + 1)
  end
  options.check_queue(opts.queue, what, level + 1)
  options.check_priority(opts.priority, what, level + 1)
  options.check_string(opts.lock, "lock", what, level + 1)
  options.check_string(opts.queueing_lock, "queueing_lock", what, level + 1)
  for _, e in ipairs(list) do
    if e.task_name == def.name and e.periodic_id == pid then
      error(string.format("%s: task %q already has a schedule with periodic_id %q (give each schedule of "
        .. "one task its own periodic_id)", what, def.name, pid), level + 1)
    end
  end
  local entry = {
    cron = expr, schedule = schedule, task_name = def.name, periodic_id = pid,
    args = check_args(opts.args, what, level + 1),
    queue = opts.queue or def.queue, priority = opts.priority or def.priority or 0,
    lock = opts.lock or def.lock, queueing_lock = opts.queueing_lock or def.queueing_lock,
  }
  list[#list + 1] = entry
  return entry
end

--- The ticks of `schedule` to defer at `now`, oldest first, and the first tick skipped for being
-- older than now - max_delay (nil if none).
-- `last` is the newest tick already deferred (the database's newest marker, then the worker's
-- own). With no `last` (never deferred) only the latest past tick is due, if it is recent
-- enough, as Procrastinate does at a worker's start: a new schedule does not replay its past.
function M.due(schedule, now, last, max_delay)
  now = math.floor(now)
  local oldest = now - (max_delay or M.MAX_DELAY)
  if last ~= nil and last > now + FUTURE_SLACK then last = nil end
  if last == nil then
    local latest
    for t in schedule:ticks(oldest - 1, now) do latest = t end
    return { latest }, nil
  end
  local ticks, skipped = {}, nil
  local first = schedule:next(last)
  if first < oldest then skipped = first end
  for t in schedule:ticks(math.max(last, oldest - 1), now) do ticks[#ticks + 1] = t end
  return ticks, skipped
end

--- The job a schedule defers (the store adds args.timestamp).
function M.job(entry)
  return { task_name = entry.task_name, queue = entry.queue, priority = entry.priority, lock = entry.lock,
    queueing_lock = entry.queueing_lock, args = entry.args }
end

--- One pass of the periodic deferrer, for the worker's loop: defer the due ticks of every entry.
-- `state` is a table the caller keeps between passes (the newest tick handled per entry; on the
-- first pass it is read from the store). Returns a list of what happened, for the log:
-- { entry=, tick=, id= } (deferred), { entry=, tick=, skipped = "already_deferred" |
-- "already_enqueued" }, and { entry=, tick=, late = true } (the first of the ticks skipped for
-- being older than max_delay). Store errors are raised; the ticks handled so far are kept in
-- `state`, so the next pass goes on from there.
function M.defer_due(store, entries, state, now, max_delay)
  local report = {}
  for _, entry in ipairs(entries) do
    local last = state[entry]                 -- false: never deferred, as the store said before
    if last == nil then last = store:last_tick(entry.task_name, entry.periodic_id) end
    if last == false then last = nil end
    local ticks, late = M.due(entry.schedule, now, last, max_delay)
    if late then report[#report + 1] = { entry = entry, tick = late, late = true } end
    for _, tick in ipairs(ticks) do
      local id, why = store:defer_periodic(M.job(entry), entry.periodic_id, tick)
      report[#report + 1] = { entry = entry, tick = tick, id = id, skipped = why }
      state[entry] = tick
    end
    if state[entry] == nil then state[entry] = last or false end
  end
  return report
end

--- The next tick of any entry after `now` (when the deferrer has something to do), or nil.
function M.next_tick(entries, now)
  local soonest
  for _, e in ipairs(entries) do
    local t = e.schedule:next(now)
    if soonest == nil or t < soonest then soonest = t end
  end
  return soonest
end

return M
