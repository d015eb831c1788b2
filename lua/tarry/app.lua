--- The Lua side of tarry.App: registering tasks and reaching them. The object itself, its
-- connector, with_connector() and the defer path are C (runtime/app.c); these methods are
-- installed into its method table.
-- @module tarry.app
local core = require "tarry.core"
local Task = require "tarry.task"
local Jobs = require "tarry.jobs"
local Periodic = require "tarry.periodic"

local M = {}

local function registry(app) return app.registry end

-- A registered task, or one every app knows (the builtin retention task).
local function lookup(reg, name)
  return reg.tasks[name] or (reg.aliases[name] and reg.tasks[reg.aliases[name]])
    or Jobs.builtin_tasks[name] or Jobs.builtin_tasks[Jobs.builtin_aliases[name] or false]
end

local function schedules(reg)
  reg.periodic = reg.periodic or {}
  return reg.periodic
end

local function tasks_proxy(app)
  local reg = registry(app)
  return setmetatable({}, {
    __index = function(t, name)
      local def = lookup(reg, name)
      if not def then return nil end
      local task = Task.bind(app, def)
      rawset(t, name, task)
      return task
    end,
    __pairs = function(t)
      local names = {}
      for name in pairs(reg.tasks) do names[#names + 1] = name end
      table.sort(names)
      local i = 0
      return function()
        i = i + 1
        if names[i] then return names[i], t[names[i]] end
      end
    end,
    __newindex = function() error("app.tasks is read-only: register tasks with app:task()", 2) end,
    __tostring = function()
      local names = {}
      for name in pairs(reg.tasks) do names[#names + 1] = name end
      table.sort(names)
      if #names == 0 then return "<tarry.tasks: none>" end
      return string.format("<tarry.tasks %d: %s>", #names, table.concat(names, ", "))
    end,
  })
end

--- Install the Lua-side methods (task, configure_task, defer, find_task) into the C App's method table.
function M.install(methods)
  --- app:task(name, [opts,] fn) -> task. Options: queue, priority, lock, queueing_lock,
  -- retry, aliases, cron (a schedule: see app:periodic), timeout (seconds: see the worker).
  -- Registering a name (or alias) twice is an error.
  function methods:task(name, opts, fn)
    if fn == nil and type(opts) == "function" then opts, fn = nil, opts end
    local def = Task.definition(name, opts, fn, 2)
    local reg, seen = registry(self), {}
    for _, n in ipairs { name, table.unpack(def.aliases) } do
      if lookup(reg, n) or seen[n] then error(string.format("app:task: a task named %q is already registered", n), 2) end
      seen[n] = true
    end
    if def.cron then Periodic.register(schedules(reg), def.cron, def, nil, 2) end
    reg.tasks[name] = def
    for _, a in ipairs(def.aliases) do reg.aliases[a] = name end
    return self.tasks[name]
  end

  --- app:periodic(cron, task_name, { periodic_id = "", args = {}, queue =, priority =, lock =,
  -- queueing_lock = }) -> the schedule entry: defer task_name at every tick of `cron` (see
  -- tarry/cron.lua), with args plus `timestamp` (the tick, unix seconds). The task must be
  -- registered (or builtin); queue, priority and locks default to the task's. Each schedule of
  -- one task needs its own periodic_id. A malformed cron raises at once, naming the position.
  function methods:periodic(cron, task_name, opts)
    local def = type(task_name) == "string" and lookup(registry(self), task_name)
    if not def then
      error(string.format("app:periodic: no task named %s is registered (register it with app:task first)",
        type(task_name) == "string" and string.format("%q", task_name) or tostring(task_name)), 2)
    end
    return (Periodic.register(schedules(registry(self)), cron, def, opts, 2))
  end

  --- app:periodic_tasks() -> the registered schedules, in registration order: { cron=, task_name=,
  -- periodic_id=, args=, queue=, priority=, lock=, queueing_lock=, schedule= }.
  function methods:periodic_tasks()
    local out = {}
    for i, e in ipairs(schedules(registry(self))) do out[i] = e end
    return out
  end

  --- app:configure_task(name, overrides) -> deferrer, also for tasks this app does not know.
  function methods:configure_task(name, overrides)
    local def = lookup(registry(self), name) or Task.unknown_definition(name, 2)
    return (Task.new_deferrer(self, def, overrides, 2))   -- not a tail call: level 2 is our caller
  end

  --- app:defer(name, args) -> id: defer by task name.
  function methods:defer(name, args)
    return methods.configure_task(self, name):defer(args)
  end

  --- app:defer_async(name, args) -> a tarry.PendingDefer: defer_async by task name.
  function methods:defer_async(name, args)
    return methods.configure_task(self, name):defer_async(args)
  end

  --- The task definition registered under a name or alias, or nil.
  function methods:find_task(name)
    return lookup(registry(self), name)
  end

  -- Driving tarry from a host's loop (runtime/pollfd.c): every app of a Lua state shares one loop.
  --- app:pollfd() -> a file descriptor, readable whenever app:step() has work (watch it for "r").
  methods.pollfd = core.app_pollfd
  --- app:events() -> "r", what to watch the pollfd for (cqueues' name).
  methods.events = core.app_events
  --- app:timeout() -> seconds until tarry needs app:step() even if the pollfd stays quiet (0 when
  -- coroutines are ready), or nil when only the pollfd can bring work.
  methods.timeout = core.app_timeout
  --- app:step([timeout]) -> coroutines resumed: runs what is ready, waiting at most timeout
  -- seconds (default 0: never blocks) when nothing is; raises a spawned coroutine's unseen error.
  methods.step = core.app_step

  --- app:start_worker(opts) -> worker at once (w:stop(), w:stopped(), w:stats()); the host keeps
  -- calling app:step(). Options: run_worker's, but signals stay the host's (see tarry/worker.lua).
  function methods:start_worker(opts)
    return require("tarry.worker").start(self, opts)
  end

  methods.__fallback = function(app, key)
    if key == "tasks" then
      local proxy = tasks_proxy(app)
      core.app_fields(app).tasks = proxy
      return proxy
    elseif key == "jobs" then             -- app.jobs: the job manager (tarry/jobs.lua)
      local manager = Jobs.new(app)
      core.app_fields(app).jobs = manager
      return manager
    end
  end
end

return M
