-- tarry.MemoryConnector: deferring without a database, with PostgreSQL's rules (ids from 1,
-- all-or-nothing batches, the queueing-lock conflict, the same argument validation).
local tarry = require "tarry"

local function new_app()
  local app = tarry.App{ connector = tarry.PgConnector{ conninfo = "dbname=never_used" } }
  app:task("add", { queue = "math" }, function(args) return args.a + args.b end)
  local memory = tarry.MemoryConnector()
  return app:with_connector(memory), memory
end

local error_of = require("support.expect").error_of

describe("MemoryConnector deferring", function()
  it("gives ids from 1 and keeps each job with its options and decoded arguments", function()
    local app, memory = new_app()
    assert.are.equal(1, app.tasks.add:defer{ a = 1, b = 2 })
    assert.are.equal(2, app.tasks.add:configure{ queue = "q", priority = 5, lock = "l", queueing_lock = "ql",
      schedule_at = 1893456000 }:defer{ a = 3, b = 4 })
    local jobs = memory:list_jobs()
    assert.are.same({
      id = 1, task_name = "add", queue_name = "math", priority = 0, status = "todo", attempts = 0,
      args = { a = 1, b = 2 },
    }, jobs[1])
    assert.are.same({
      id = 2, task_name = "add", queue_name = "q", priority = 5, lock = "l", queueing_lock = "ql",
      scheduled_at = 1893456000, status = "todo", attempts = 0, args = { a = 3, b = 4 },
    }, jobs[2])
  end)

  it("stores arguments as they come back from JSON: arrays, empty objects, null, exact numbers", function()
    local app, memory = new_app()
    app.tasks.add:defer{ list = { 1, "two", { three = 3 } }, empty = tarry.array(), obj = {}, none = tarry.null,
      big = math.maxinteger, f = 2.0 }
    local args = memory:list_jobs()[1].args
    assert.are.same({ 1, "two", { three = 3 } }, { args.list[1], args.list[2], args.list[3] })
    assert.is_true(tarry.is_array(args.empty))
    assert.is_false(tarry.is_array(args.obj))
    assert.are.equal(tarry.null, args.none)
    assert.are.equal(math.maxinteger, args.big)
    assert.are.equal("float", math.type(args.f))
  end)

  it("defers tasks it does not know through configure_task and app:defer", function()
    local app, memory = new_app()
    app:configure_task("some.other.task", { queue = "q" }):defer{ x = 1 }
    app:defer("add", { a = 1, b = 1 })
    assert.are.same({ "some.other.task", "q" }, { memory:list_jobs()[1].task_name, memory:list_jobs()[1].queue_name })
    assert.are.same({ "add", "math" }, { memory:list_jobs()[2].task_name, memory:list_jobs()[2].queue_name })
  end)

  it("lists one task's jobs, forgets them all on reset(), and counts them when printed", function()
    local app, memory = new_app()
    app.tasks.add:defer{ a = 1, b = 1 }
    app:defer("other", {})
    assert.are.equal("<tarry.MemoryConnector 2 jobs>", tostring(memory))
    local adds = memory:list_jobs("add")
    assert.are.equal(1, #adds)
    assert.are.equal("add", adds[1].task_name)
    memory:reset()
    assert.are.same({}, memory:list_jobs())
    assert.are.equal(1, app.tasks.add:defer{ a = 1, b = 1 })
  end)

  it("runs no SQL", function()
    local _, memory = new_app()
    assert.matches("tarry.MemoryConnector runs no SQL", error_of(memory.execute, memory, "SELECT 1"))
  end)
end)

describe("MemoryConnector batch_defer", function()
  it("returns the ids in the order of the arguments", function()
    local app, memory = new_app()
    assert.are.same({ 1, 2, 3 }, app.tasks.add:batch_defer{ { a = 1 }, { a = 2 }, { a = 3 } })
    assert.are.same({ 1, 2, 3 }, { memory:list_jobs()[1].args.a, memory:list_jobs()[2].args.a, memory:list_jobs()[3].args.a })
    assert.are.same({}, app.tasks.add:batch_defer{})
  end)

  it("stores nothing when one job's queueing lock conflicts, within the batch or with a waiting job", function()
    local app, memory = new_app()
    local locked = app.tasks.add:configure{ queueing_lock = "once" }
    local err = error_of(locked.batch_defer, locked, { { a = 1 }, { a = 2 } })
    assert.are.equal("already_enqueued", err.code)
    assert.are.same({}, memory:list_jobs())
    locked:defer{ a = 0 }
    err = error_of(locked.batch_defer, locked, { { a = 1 } })
    assert.are.equal("already_enqueued", err.code)
    assert.are.equal(1, #memory:list_jobs())
  end)

  it("stores nothing when one job's arguments are invalid, and names that job", function()
    local app, memory = new_app()
    local err = error_of(app.tasks.add.batch_defer, app.tasks.add, { { a = 1 }, { a = print } })
    assert.are.equal("invalid_args", err.code)
    assert.are.equal("tarry: invalid_args: job #2: args.a: cannot encode a function", tostring(err))
    assert.are.same({}, memory:list_jobs())
  end)
end)

describe("MemoryConnector queueing lock conflict", function()
  it("raises the same error object PostgreSQL's unique index gives", function()
    local app, memory = new_app()
    local locked = app.tasks.add:configure{ queueing_lock = "ql" }
    assert.are.equal(1, locked:defer{ a = 1 })
    local err = error_of(locked.defer, locked, { a = 2 })
    assert.is_true(tarry.is_error(err))
    assert.are.equal("already_enqueued", err.code)
    assert.are.equal("23505", err.sqlstate)
    assert.are.equal("procrastinate_jobs_queueing_lock_idx_v1", err.constraint)
    assert.are.equal("tarry: already_enqueued: a job with the same queueing lock is already waiting "
      .. "(Key (queueing_lock)=(ql) already exists.) (SQLSTATE 23505)", tostring(err))
    assert.are.equal(1, #memory:list_jobs())
    assert.are.equal(2, app.tasks.add:configure{ queueing_lock = "other" }:defer{ a = 3 })
  end)
end)

describe("MemoryConnector argument validation", function()
  it("refuses what PostgreSQL would refuse, with the same error, and stores nothing", function()
    local app, memory = new_app()
    local cycle = {}
    cycle.self = cycle
    local cases = {
      { { tags = { 1, 2, print } }, "args.tags[3]: cannot encode a function" },
      { { f = io.stdout }, "args.f: cannot encode a userdata" },
      { { co = coroutine.create(print) }, "args.co: cannot encode a thread" },
      { cycle, "args.self: cycle (table contains itself)" },
      { { x = 0 / 0 }, "args.x: cannot encode NaN" },
      { { x = math.huge }, "args.x: cannot encode inf" },
      { { s = "a\0b" }, "args.s: NUL byte in string at byte 2 (PostgreSQL's jsonb rejects \\u0000)" },
      { { s = "\xff" }, "args.s: invalid UTF-8 in string at byte 1" },
      { 42, "args: must be a table with string keys (a JSON object), got number" },
    }
    for _, case in ipairs(cases) do
      local err = error_of(app.tasks.add.defer, app.tasks.add, case[1])
      assert.are.equal("invalid_args", err.code)
      assert.are.equal("tarry: invalid_args: " .. case[2], tostring(err))
    end
    assert.are.same({}, memory:list_jobs())
  end)
end)
