--- Tasks as an app sees them: a task definition (shared by every app over the same registry)
-- bound to one app, whose connector its defers go through.
-- @module tarry.task
local core = require "tarry.core"
local options = require "tarry.options"
local PendingDefer = require "tarry.pending_defer"

local Task = { __name = "tarry.Task" }
local Deferrer = { __name = "tarry.JobDeferrer" }

local TASK_OPTIONS = { queue = true, priority = true, lock = true, queueing_lock = true,
  retry = true, aliases = true, cron = true, timeout = true, blocking = true }
local DEFER_OPTIONS = { queue = true, priority = true, lock = true, queueing_lock = true,
  schedule_in = true, schedule_at = true }

--- Build a task definition from app:task's arguments (validated; raises at the caller's level).
function Task.definition(name, opts, fn, level)
  options.check_name(name, "app:task", level + 1)
  opts = options.check_known(opts, TASK_OPTIONS, "app:task", level + 1)
  if type(fn) ~= "function" then
    error(string.format("app:task(%q): the task must be a function, got %s", name, type(fn)), level + 1)
  end
  local what = string.format("app:task(%q)", name)
  options.check_queue(opts.queue, what, level + 1)
  options.check_priority(opts.priority, what, level + 1)
  options.check_string(opts.lock, "lock", what, level + 1)
  options.check_string(opts.queueing_lock, "queueing_lock", what, level + 1)
  local aliases = opts.aliases or {}
  if type(aliases) ~= "table" then error(what .. ": aliases must be a list of names", level + 1) end
  for _, a in ipairs(aliases) do options.check_name(a, what .. " alias", level + 1) end
  if opts.cron ~= nil then require("tarry.cron").parse(opts.cron, level + 1) end     -- a bad schedule raises here
  if opts.blocking ~= nil and type(opts.blocking) ~= "boolean" then
    error(string.format("%s: blocking must be a boolean, got %s", what, type(opts.blocking)), level + 1)
  end
  return {
    name = name, fn = fn, queue = opts.queue or "default", priority = opts.priority or 0,
    lock = opts.lock, queueing_lock = opts.queueing_lock, aliases = aliases,
    retry = options.check_retry(opts.retry, what, level + 1), cron = opts.cron,
    timeout = options.check_timeout(opts.timeout, what, level + 1),
    blocking = opts.blocking == true,      -- run on one of the worker's threads (tarry/worker/blocking.lua)
  }
end

--- A definition for a task this app does not know (app:configure_task).
function Task.unknown_definition(name, level)
  options.check_name(name, "app:configure_task", level + 1)
  return { name = name, queue = "default", priority = 0, aliases = {} }
end

--- The task of definition def, as app sees it (its defers go through app's connector).
function Task.bind(app, def)
  return setmetatable({ app = app, def = def, name = def.name }, Task)
end

local function scheduled_at(o, what, level)
  if o.schedule_in ~= nil and o.schedule_at ~= nil then
    error(what .. ": give schedule_in or schedule_at, not both", level + 1)
  end
  local function finite(v) return type(v) == "number" and v == v and v > -math.huge and v < math.huge end
  if o.schedule_in ~= nil then
    if not finite(o.schedule_in) then
      error(what .. ": schedule_in must be a finite number of seconds", level + 1)
    end
    return core.now() + o.schedule_in
  end
  if o.schedule_at ~= nil and not finite(o.schedule_at) then
    error(what .. ": schedule_at must be a unix time (a finite number of seconds)", level + 1)
  end
  return o.schedule_at
end

--- The job to insert: the task's options overridden by the defer's.
local function job(def, o, args, at)
  return {
    task_name = def.name, queue = o.queue or def.queue, priority = o.priority or def.priority,
    lock = o.lock or def.lock, queueing_lock = o.queueing_lock or def.queueing_lock,
    args = args, scheduled_at = at,
  }
end

local function new_deferrer(app, def, overrides, level)
  local what = string.format("configure(%q)", def.name)
  local o = options.check_known(overrides, DEFER_OPTIONS, what, level + 1)
  options.check_queue(o.queue, what, level + 1)
  options.check_priority(o.priority, what, level + 1)
  options.check_string(o.lock, "lock", what, level + 1)
  options.check_string(o.queueing_lock, "queueing_lock", what, level + 1)
  scheduled_at(o, what, level + 1)
  return setmetatable({ app = app, def = def, overrides = o }, Deferrer)
end
Task.new_deferrer = new_deferrer

--- task:configure{ queue=, priority=, lock=, queueing_lock=, schedule_in=, schedule_at= } -> deferrer
function Task:configure(overrides)
  return (new_deferrer(self.app, self.def, overrides, 2))   -- not a tail call: level 2 is our caller
end

--- task:defer(args) -> job id. Raises an error object when the job was not deferred.
function Task:defer(args)
  return self.app:_defer_jobs({ job(self.def, {}, args) })[1]
end

--- task:batch_defer{ args1, args2, ... } -> ids, in order; one statement, all or nothing.
function Task:batch_defer(list)
  return Deferrer.batch_defer({ app = self.app, def = self.def, overrides = {} }, list)
end

--- task:defer_async(args) -> a tarry.PendingDefer, at once: the insert completes during later
-- turns of tarry's loop (tarry/pending_defer.lua). Bad args raise here, as defer's do.
function Task:defer_async(args)
  return PendingDefer.start(self.app, self.def.name, { job(self.def, {}, args) }, true)
end

--- task:batch_defer_async{ args1, args2, ... } -> a tarry.PendingDefer whose result is the ids.
function Task:batch_defer_async(list)
  return Deferrer.batch_defer_async({ app = self.app, def = self.def, overrides = {} }, list)
end

--- Calling a task runs its function directly (no job): task(args, ctx).
function Task:__call(args, ctx)
  if not self.def.fn then error(string.format("task %q has no function in this app", self.name), 2) end
  return self.def.fn(args or {}, ctx)
end

--- Methods, then the definition's fields (name, queue, priority, lock, ...).
function Task:__index(k)
  local m = rawget(Task, k)
  if m ~= nil then return m end
  return rawget(self, "def")[k]
end

--- `<tarry.Task add queue=math>`.
function Task:__tostring()
  return string.format("<tarry.Task %s queue=%s>", self.def.name, self.def.queue)
end

Deferrer.__index = Deferrer

--- deferrer:defer(args) -> job id, with the overrides of configure().
function Deferrer:defer(args)
  local at = scheduled_at(self.overrides, "defer", 2)
  return self.app:_defer_jobs({ job(self.def, self.overrides, args, at) })[1]
end

--- deferrer:batch_defer{ args1, args2, ... } -> ids; one statement, all or nothing.
function Deferrer:batch_defer(list)
  if type(list) ~= "table" then error("batch_defer expects a list of argument tables", 2) end
  local at = scheduled_at(self.overrides, "batch_defer", 2)
  local jobs = {}
  for i = 1, #list do jobs[i] = job(self.def, self.overrides, list[i], at) end
  return self.app:_defer_jobs(jobs)
end

local function batch_jobs(d, list, what)
  if type(list) ~= "table" then error(what .. " expects a list of argument tables", 3) end
  local at = scheduled_at(d.overrides, what, 3)
  local jobs = {}
  for i = 1, #list do jobs[i] = job(d.def, d.overrides, list[i], at) end
  return jobs
end

--- deferrer:defer_async(args) -> a tarry.PendingDefer, with the overrides of configure().
function Deferrer:defer_async(args)
  local at = scheduled_at(self.overrides, "defer_async", 2)
  return PendingDefer.start(self.app, self.def.name, { job(self.def, self.overrides, args, at) }, true)
end

--- deferrer:batch_defer_async{ args1, ... } -> a tarry.PendingDefer whose result is the ids.
function Deferrer:batch_defer_async(list)
  return PendingDefer.start(self.app, self.def.name, batch_jobs(self, list, "batch_defer_async"), false)
end

--- `<tarry.JobDeferrer add queue=math>`.
function Deferrer:__tostring()
  local o = self.overrides
  return string.format("<tarry.JobDeferrer %s queue=%s>", self.def.name, o.queue or self.def.queue)
end

return Task
