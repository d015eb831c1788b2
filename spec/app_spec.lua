-- The App object: registering tasks, reaching them, the options they accept, how misuse is
-- reported, and how everything prints. No database: the app defers into a MemoryConnector.
local tarry = require "tarry"

local function new_app()
  return tarry.App{ connector = tarry.MemoryConnector() }
end

local error_of = require("support.expect").error_of

-- Errors from misuse name the line of the caller, here this file.
local HERE = "app_spec%.lua:%d+: "

describe("app:task", function()
  it("registers a task under its name and returns it", function()
    local app = new_app()
    local add = app:task("add", { queue = "math" }, function(args) return args.a + args.b end)
    assert.are.equal(add, app.tasks.add)
    assert.are.equal("add", add.name)
    assert.are.equal("math", add.queue)
    assert.are.equal(0, add.priority)
    assert.are.equal("<tarry.Task add queue=math>", tostring(add))
  end)

  it("takes the function without options: queue default, priority 0, no locks, no retry", function()
    local app = new_app()
    local ping = app:task("ping", function() return "pong" end)
    assert.are.equal("default", ping.queue)
    assert.are.equal(0, ping.priority)
    assert.is_nil(ping.lock)
    assert.is_nil(ping.queueing_lock)
    assert.is_nil(ping.retry)
    assert.are.equal("pong", ping())
  end)

  it("keeps every option it is given", function()
    local app = new_app()
    local t = app:task("t", { queue = "q", priority = -3, lock = "l", queueing_lock = "ql", aliases = { "old.t" } },
      function() end)
    assert.are.same({ "q", -3, "l", "ql" }, { t.queue, t.priority, t.lock, t.queueing_lock })
    assert.are.equal(t.def, app.tasks["old.t"].def)
  end)

  it("normalizes retry: true, an integer, or a table of max_attempts and waits", function()
    local app = new_app()
    local forever = app:task("forever", { retry = true }, function() end)
    local three = app:task("three", { retry = 3 }, function() end)
    local custom = app:task("custom", { retry = { max_attempts = 5, wait = 2, exponential_wait = 1.5 } },
      function() end)
    local never = app:task("never", { retry = false }, function() end)
    assert.are.same({ max_attempts = math.maxinteger, wait = 0, linear_wait = 0, exponential_wait = 0 }, forever.retry)
    assert.are.same({ max_attempts = 3, wait = 0, linear_wait = 0, exponential_wait = 0 }, three.retry)
    assert.are.same({ max_attempts = 5, wait = 2, linear_wait = 0, exponential_wait = 1.5 }, custom.retry)
    assert.is_nil(never.retry)
  end)
end)

describe("app.tasks", function()
  local app
  before_each(function()
    app = new_app()
    app:task("b.second", function() end)
    app:task("a.first", { aliases = { "legacy.first" } }, function() end)
  end)

  it("iterates the registered tasks with pairs, by name, without the aliases", function()
    local seen = {}
    for name, task in pairs(app.tasks) do seen[#seen + 1] = name .. "=" .. tostring(task) end
    assert.are.same({ "a.first=<tarry.Task a.first queue=default>", "b.second=<tarry.Task b.second queue=default>" },
      seen)
  end)

  it("finds a task by an alias, and gives nil for a name nobody registered", function()
    assert.are.equal("a.first", app.tasks["legacy.first"].name)
    assert.are.equal("a.first", app:find_task("legacy.first").name)
    assert.is_nil(app.tasks.nope)
    assert.is_nil(app:find_task("nope"))
  end)

  it("is read-only, as is the app itself", function()
    assert.matches("app.tasks is read%-only", error_of(function() app.tasks.x = 1 end))
    assert.matches("cannot set field 'x' of a tarry.App", error_of(function() app.x = 1 end))
  end)
end)

describe("calling a task", function()
  it("runs its function directly, with the arguments and context given, and defers nothing", function()
    local connector = tarry.MemoryConnector()
    local app = tarry.App{ connector = connector }
    local add = app:task("add", function(args, ctx) return args.a + args.b, ctx end)
    local sum, ctx = add({ a = 1, b = 2 }, "ctx")
    assert.are.equal(3, sum)
    assert.are.equal("ctx", ctx)
    assert.are.same({}, connector:list_jobs())
  end)
end)

describe("registering a name twice", function()
  local app
  before_each(function()
    app = new_app()
    app:task("add", { aliases = { "sum" } }, function() end)
  end)

  it("is an error, whether the name is a task's or an alias's", function()
    assert.matches(HERE .. 'app:task: a task named "add" is already registered',
      error_of(function() app:task("add", function() end) end))
    assert.matches('a task named "sum" is already registered', error_of(function() app:task("sum", function() end) end))
    assert.matches('a task named "add" is already registered',
      error_of(function() app:task("plus", { aliases = { "add" } }, function() end) end))
    assert.matches('a task named "sum" is already registered',
      error_of(function() app:task("plus", { aliases = { "sum" } }, function() end) end))
  end)

  it("is an error within one registration too (an alias repeating the name or another alias)", function()
    assert.matches('a task named "x" is already registered',
      error_of(function() app:task("x", { aliases = { "x" } }, function() end) end))
    assert.matches('a task named "y" is already registered',
      error_of(function() app:task("x", { aliases = { "y", "y" } }, function() end) end))
    assert.is_nil(app.tasks.x)
  end)

  it("is an error across apps made with with_connector, which share one registry", function()
    local other = app:with_connector(tarry.MemoryConnector())
    assert.matches('a task named "add" is already registered', error_of(function() other:task("add", function() end) end))
  end)
end)

describe("task names and queue names", function()
  local app
  before_each(function() app = new_app() end)

  it("accept a task name of 1 to 128 characters, counted as UTF-8 characters", function()
    assert.are.equal(128, utf8.len(app:task(string.rep("é", 128), function() end).name))
    assert.matches(HERE .. "app:task: task name must be a string of 1 to 128 characters, got \"ééé",
      error_of(function() app:task(string.rep("é", 129), function() end) end))
    assert.matches("task name must be a string of 1 to 128 characters, got \"\"",
      error_of(function() app:task("", function() end) end))
    assert.matches("task name must be a string of 1 to 128 characters, got number",
      error_of(function() app:task(42, function() end) end))
  end)

  it("accept a queue name of 1 to 40 bytes (the NOTIFY channel limit), counted as bytes", function()
    assert.are.equal(40, #app:task("a", { queue = string.rep("q", 40) }, function() end).queue)
    assert.are.equal(40, #app:task("b", { queue = string.rep("é", 20) }, function() end).queue)
    assert.matches(HERE .. 'app:task%("c"%): queue must be a string of 1 to 40 bytes %(it names a NOTIFY channel%)',
      error_of(function() app:task("c", { queue = string.rep("q", 41) }, function() end) end))
    assert.matches("queue must be a string of 1 to 40 bytes",
      error_of(function() app:task("c", { queue = string.rep("é", 21) }, function() end) end))
    assert.matches("queue must be a string of 1 to 40 bytes",
      error_of(function() app:task("c", { queue = "" }, function() end) end))
  end)

  it("are checked again when a defer overrides the queue", function()
    local add = app:task("add", function() end)
    assert.matches(HERE .. 'configure%("add"%): queue must be a string of 1 to 40 bytes',
      error_of(function() add:configure{ queue = string.rep("q", 41) } end))
    assert.matches(HERE .. "app:configure_task: task name must be a string of 1 to 128 characters",
      error_of(function() app:configure_task(string.rep("x", 129)) end))
  end)
end)

describe("task options", function()
  local app
  before_each(function() app = new_app() end)

  it("refuses an unknown option, listing the known ones", function()
    assert.matches(HERE .. "app:task: unknown option 'queu' %(known: aliases, blocking, cron, lock, priority, queue, "
      .. "queueing_lock, retry, timeout%)", error_of(function() app:task("t", { queu = "q" }, function() end) end))
  end)

  it("refuses wrong types with a clear message at the caller's line", function()
    local cases = {               -- each message follows 'app:task("t")'
      { { priority = 1.5 }, ": priority must be a 32%-bit integer, got 1.5" },
      { { priority = 2 ^ 31 | 0 }, ": priority must be a 32%-bit integer, got 2147483648" },
      { { priority = "1" }, ": priority must be a 32%-bit integer, got 1" },
      { { lock = 1 }, ": lock must be a string, got number" },
      { { queueing_lock = {} }, ": queueing_lock must be a string, got table" },
      { { queue = 7 }, ": queue must be a string of 1 to 40 bytes .*, got number" },
      { { aliases = "old" }, ": aliases must be a list of names" },
      { { aliases = { 5 } }, " alias: task name must be a string of 1 to 128 characters, got number" },
      { { retry = "yes" }, ": retry must be true, false, a whole number >= 0 or a table, got string" },
      { { retry = -1 }, ": retry must be true, false, a whole number >= 0 or a table, got %-1$" },
      { { retry = { max_attempts = 1.5 } }, ": retry%.max_attempts must be an integer >= 0" },
      { { retry = { wait = -1 } }, ": retry%.wait must be a number >= 0" },
      { { retry = { tries = 3 } }, " retry: unknown option 'tries'" },
    }
    for _, case in ipairs(cases) do
      assert.matches(HERE .. 'app:task%("t"%)' .. case[2], error_of(function() app:task("t", case[1], function() end) end))
    end
    assert.matches(HERE .. "app:task: options must be a table, got string",
      error_of(function() app:task("t", "math", function() end) end))
    assert.matches(HERE .. 'app:task%("t"%): the task must be a function, got nil',
      error_of(function() app:task("t", { queue = "q" }) end))
    assert.is_nil(app.tasks.t)
  end)
end)

describe("defer options (configure)", function()
  local app, add
  before_each(function()
    app = new_app()
    add = app:task("add", { queue = "math" }, function() end)
  end)

  it("refuses an unknown option, listing the known ones", function()
    assert.matches(HERE .. "configure%(\"add\"%): unknown option 'retry' %(known: lock, priority, queue, "
      .. "queueing_lock, schedule_at, schedule_in%)", error_of(function() add:configure{ retry = 1 } end))
    assert.matches(HERE .. 'configure%("other"%): unknown option \'bogus\'',
      error_of(function() app:configure_task("other", { bogus = 1 }) end))
  end)

  it("refuses schedule_in together with schedule_at", function()
    assert.matches(HERE .. 'configure%("add"%): give schedule_in or schedule_at, not both',
      error_of(function() add:configure{ schedule_in = 1, schedule_at = 2 } end))
  end)

  it("refuses schedules and priorities that are not finite numbers or integers", function()
    local C = 'configure%("add"%): '
    assert.matches(HERE .. C .. "schedule_in must be a finite number of seconds",
      error_of(function() add:configure{ schedule_in = "30" } end))
    assert.matches(HERE .. C .. "schedule_in must be a finite number of seconds",
      error_of(function() add:configure{ schedule_in = 0 / 0 } end))
    assert.matches(HERE .. C .. "schedule_in must be a finite number of seconds",
      error_of(function() add:configure{ schedule_in = math.huge } end))
    assert.matches(HERE .. C .. "schedule_at must be a unix time",
      error_of(function() add:configure{ schedule_at = "2030-01-01" } end))
    assert.matches(HERE .. C .. "schedule_at must be a unix time",
      error_of(function() add:configure{ schedule_at = -math.huge } end))
    assert.matches(HERE .. C .. "priority must be a 32%-bit integer",
      error_of(function() add:configure{ priority = 0.5 } end))
    assert.matches(HERE .. C .. "options must be a table, got number", error_of(function() add:configure(5) end))
  end)

  it("refuses a batch that is not a table", function()
    assert.matches(HERE .. "batch_defer expects a list of argument tables", error_of(function() add:batch_defer(5) end))
  end)

  it("do not change the task's own options", function()
    local deferrer = add:configure{ queue = "q", priority = 9 }
    assert.are.equal("<tarry.JobDeferrer add queue=q>", tostring(deferrer))
    assert.are.equal("math", add.queue)
    assert.are.equal(0, add.priority)
  end)
end)

describe("tarry.App", function()
  it("needs a table with a connector and nothing else", function()
    assert.matches(HERE .. "tarry.App expects a table", error_of(function() tarry.App("dbname=x") end))
    assert.matches(HERE .. "tarry.App needs a connector", error_of(function() tarry.App{} end))
    assert.matches(HERE .. "tarry.App: unknown option 'conninfo'",
      error_of(function() tarry.App{ connector = tarry.MemoryConnector(), conninfo = "x" } end))
    assert.matches("expected a connector", error_of(function() tarry.App{ connector = "dbname=x" } end))
    assert.matches(HERE .. "bad argument #1 to 'with_connector' %(expected a connector",
      error_of(function() new_app():with_connector({}) end))
  end)

  it("prints its task count and connector", function()
    local app = new_app()
    assert.are.equal("<tarry.App 0 tasks, connector <tarry.MemoryConnector 0 jobs>>", tostring(app))
    app:task("add", function() end)
    app.tasks.add:defer{}
    assert.are.equal("<tarry.App 1 task, connector <tarry.MemoryConnector 1 job>>", tostring(app))
    assert.matches("^<tarry%.App 1 task, connector <tarry%.PgConnector",
      tostring(app:with_connector(tarry.PgConnector{ conninfo = "dbname=x" })))
  end)
end)

describe("app:with_connector", function()
  it("makes an app over the same tasks that defers through the other connector only", function()
    local first, second = tarry.MemoryConnector(), tarry.MemoryConnector()
    local app = tarry.App{ connector = first }
    app:task("add", { queue = "math" }, function() end)
    local other = app:with_connector(second)
    assert.are.equal(second, other.connector)
    assert.are.equal(first, app.connector)
    assert.are.equal(1, other.tasks.add:defer{ a = 1 })
    assert.are.equal(2, other:defer("add", { a = 2 }))
    assert.are.same({}, first:list_jobs())
    assert.are.same({ { a = 1 }, { a = 2 } }, { second:list_jobs()[1].args, second:list_jobs()[2].args })
    assert.are.equal("math", second:list_jobs()[1].queue_name)
  end)
end)

describe("error objects", function()
  it("are tables with a code and a message that print as 'tarry: code: message'", function()
    local app = new_app()
    local add = app:task("add", function() end)
    local err = error_of(add.defer, add, { f = print })
    assert.is_true(tarry.is_error(err))
    assert.are.equal("table", type(err))
    assert.are.equal("invalid_args", err.code)
    assert.are.equal("args.f: cannot encode a function", err.message)
    assert.are.equal("tarry: invalid_args: args.f: cannot encode a function", tostring(err))
    assert.is_false(tarry.is_error("tarry: invalid_args"))
    assert.is_false(tarry.is_error({ code = "invalid_args" }))
  end)
end)
