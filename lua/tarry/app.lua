--- The Lua side of tarry.App: registering tasks and reaching them. The object itself, its
-- connector, with_connector() and the defer path are C (runtime/app.c); these methods are
-- installed into its method table.
-- @module tarry.app
local core = require "tarry.core"
local Task = require "tarry.task"

local M = {}

local function registry(app) return app.registry end

local function lookup(reg, name)
  return reg.tasks[name] or (reg.aliases[name] and reg.tasks[reg.aliases[name]])
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
  -- retry, aliases. Registering a name (or alias) twice is an error.
  function methods:task(name, opts, fn)
    if fn == nil and type(opts) == "function" then opts, fn = nil, opts end
    local def = Task.definition(name, opts, fn, 2)
    local reg, seen = registry(self), {}
    for _, n in ipairs { name, table.unpack(def.aliases) } do
      if lookup(reg, n) or seen[n] then error(string.format("app:task: a task named %q is already registered", n), 2) end
      seen[n] = true
    end
    reg.tasks[name] = def
    for _, a in ipairs(def.aliases) do reg.aliases[a] = name end
    return self.tasks[name]
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

  --- The task definition registered under a name or alias, or nil.
  function methods:find_task(name)
    return lookup(registry(self), name)
  end

  methods.__fallback = function(app, key)
    if key == "tasks" then
      local proxy = tasks_proxy(app)
      core.app_fields(app).tasks = proxy
      return proxy
    end
  end
end

return M
