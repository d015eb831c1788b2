-- Deferring jobs into PostgreSQL: what lands in procrastinate_jobs, how arguments round-trip,
-- and what is refused (with which error object) without inserting anything.
local tarry = require "tarry"
local db = require "support.db"

local function new_app(name)
  local app = tarry.App{ connector = tarry.PgConnector{ conninfo = db.conninfo(name) } }
  app:task("add", { queue = "math" }, function(args) return args.a + args.b end)
  return app
end

local function count_jobs(name)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
end

--- The job's columns, as psql prints them (NULL is "").
local function job_row(name, id)
  return db.rows(name, "SELECT queue_name, task_name, priority, lock, queueing_lock, status, "
    .. "scheduled_at IS NULL FROM procrastinate_jobs WHERE id = " .. id)[1]
end

local function args_text(name, id)
  return db.value(name, "SELECT args::text FROM procrastinate_jobs WHERE id = " .. id)
end

--- The job's args as the connector decodes the jsonb column.
local function args_back(app, id)
  return app.connector:execute("SELECT args FROM procrastinate_jobs WHERE id = $1", id)[1].args
end

local error_of = require("support.expect").error_of

--- A describe's own database, dropped after each test, and an app deferring into it.
local function with_database(opts)
  local ctx = {}
  before_each(function()
    ctx.name = db.fresh(opts)
    ctx.app = new_app(ctx.name)
  end)
  after_each(function()
    ctx.app:close()
    db.drop(ctx.name)
  end)
  return ctx
end

describe("task:defer", function()
  local ctx = with_database()

  it("returns the new job's id and inserts one todo row with the task's options", function()
    local id = ctx.app.tasks.add:defer{ a = 1, b = 2 }
    assert.are.equal("integer", math.type(id))
    assert.are.same({ "math", "add", "0", "", "", "todo", "t" }, job_row(ctx.name, id))
    assert.are.equal('{"a": 1, "b": 2}', args_text(ctx.name, id))
    assert.are.equal(1, count_jobs(ctx.name))
  end)

  it("defers a task registered without options into the default queue", function()
    local id = ctx.app:task("ping", function() end):defer{}
    assert.are.same({ "default", "ping", "0", "", "", "todo", "t" }, job_row(ctx.name, id))
    assert.are.equal("{}", args_text(ctx.name, id))
  end)

  it("records the deferred event of the job", function()
    local id = ctx.app.tasks.add:defer{ a = 1, b = 2 }
    assert.are.equal("deferred", db.value(ctx.name, "SELECT string_agg(type::text, ',') FROM procrastinate_events "
      .. "WHERE job_id = " .. id))
  end)

  it("gives increasing ids, through app:defer and a SyncPgConnector app alike", function()
    local first = ctx.app.tasks.add:defer{ a = 1, b = 1 }
    local second = ctx.app:defer("add", { a = 2, b = 2 })
    local sync_app = ctx.app:with_connector(tarry.SyncPgConnector{ conninfo = db.conninfo(ctx.name), max_size = 4 })
    local third = sync_app.tasks.add:defer{ a = 3, b = 3 }
    sync_app:close()
    assert.is_true(first < second and second < third)
    assert.are.same({ "math", "add", "0", "", "", "todo", "t" }, job_row(ctx.name, third))
  end)

  it("accepts a 40-byte queue name (its NOTIFY channel fits) and a 128-character task name", function()
    local queue, task = string.rep("q", 40), string.rep("é", 128)
    local id = ctx.app:configure_task(task, { queue = queue }):defer{}
    assert.are.same({ queue, task }, { job_row(ctx.name, id)[1], job_row(ctx.name, id)[2] })
  end)
end)

describe("job arguments", function()
  local ctx = with_database()

  --- Defers { v = value } and returns the args' text in PostgreSQL and their decoded value.
  local function round_trip(value)
    local id = ctx.app.tasks.add:defer{ v = value }
    return args_text(ctx.name, id), args_back(ctx.app, id).v
  end

  it("keep 64-bit integers exact at both extremes", function()
    for _, n in ipairs { math.maxinteger, math.mininteger, 0, -1, 2 ^ 53 + 1 | 0 } do
      local text, back = round_trip(n)
      assert.are.equal(string.format('{"v": %d}', n), text)
      assert.are.equal(n, back)
      assert.are.equal("integer", math.type(back))
    end
  end)

  it("keep floats bit-exact, and a float with an integral value stays a float", function()
    for _, x in ipairs { 0.1, 1 / 3, 2.0, -1.5, 1e300, 5e-324, 2 ^ 63, 123456789.123456789 } do
      local _, back = round_trip(x)
      assert.are.equal(x, back)
      assert.are.equal("float", math.type(back))
    end
    assert.are.equal('{"v": 0.1}', (round_trip(0.1)))
    assert.are.equal('{"v": 2.0}', (round_trip(2.0)))
    assert.are.equal('{"v": 0.3333333333333333}', (round_trip(1 / 3)))
  end)

  it("store -0.0 as 0.0, since jsonb has no negative zero", function()
    local text, back = round_trip(-0.0)
    assert.are.equal('{"v": 0.0}', text)
    assert.are.equal("float", math.type(back))
    assert.are.equal("0.0", tostring(back))
  end)

  it("keep UTF-8 strings, including 4-byte characters and escapes, in values and keys", function()
    local s = "héllo ✓ 𝄞 \"quoted\" back\\slash\ttab\nline"
    local id = ctx.app.tasks.add:defer{ [s] = s, ["ключ"] = "значение" }
    local back = args_back(ctx.app, id)
    assert.are.equal(s, back[s])
    assert.are.equal("значение", back["ключ"])
    assert.are.equal("значение", db.value(ctx.name, "SELECT args->>'ключ' FROM procrastinate_jobs WHERE id = " .. id))
  end)

  it("keep nested objects and arrays, in order", function()
    local id = ctx.app.tasks.add:defer{ user = { name = "ada", tags = { "x", "y", { deep = { 1, 2, 3 } } } } }
    assert.are.equal('{"user": {"name": "ada", "tags": ["x", "y", {"deep": [1, 2, 3]}]}}', args_text(ctx.name, id))
    assert.are.same({ user = { name = "ada", tags = { "x", "y", { deep = { 1, 2, 3 } } } } }, args_back(ctx.app, id))
  end)

  it("tell the empty array (tarry.array()) from the empty object ({})", function()
    local id = ctx.app.tasks.add:defer{ list = tarry.array(), map = {} }
    assert.are.equal('{"map": {}, "list": []}', args_text(ctx.name, id))
    local back = args_back(ctx.app, id)
    assert.is_true(tarry.is_array(back.list))
    assert.is_false(tarry.is_array(back.map))
    assert.is_nil(next(back.list))
    assert.is_nil(next(back.map))
  end)

  it("carry JSON null as tarry.null, and booleans", function()
    local id = ctx.app.tasks.add:defer{ none = tarry.null, yes = true, no = false }
    assert.are.equal('{"no": false, "yes": true, "none": null}', args_text(ctx.name, id))
    assert.are.same({ none = tarry.null, yes = true, no = false }, args_back(ctx.app, id))
  end)

  it("are the empty object when none are given", function()
    assert.are.equal("{}", args_text(ctx.name, ctx.app.tasks.add:defer()))
  end)
end)

describe("invalid job arguments", function()
  local ctx = with_database()

  it("raise an invalid_args error object naming the path, and insert nothing", function()
    local cycle = { list = {} }
    cycle.list[1] = cycle
    local cases = {
      { { tags = { "a", "b", print } }, "args.tags[3]: cannot encode a function" },
      { { out = io.stdout }, "args.out: cannot encode a userdata" },
      { { co = coroutine.create(print) }, "args.co: cannot encode a thread" },
      { cycle, "args.list[1]: cycle (table contains itself)" },
      { { x = 0 / 0 }, "args.x: cannot encode NaN" },
      { { x = math.huge }, "args.x: cannot encode inf" },
      { { x = -math.huge }, "args.x: cannot encode -inf" },
      { { [true] = 1 }, "args: key of type boolean (true) is neither a string nor an array index" },
      { { a = 1, [1] = 2 }, "args: table mixes array indexes and string keys" },
      { { s = "ok", deep = { "\xc3\x28" } }, "args.deep[1]: invalid UTF-8 in string at byte 1" },
      { { ["\xff"] = 1 }, 'args["\\255"]: invalid UTF-8 in key at byte 1' },
      { { s = "a\0b" }, "args.s: NUL byte in string at byte 2 (PostgreSQL's jsonb rejects \\u0000)" },
    }
    for _, case in ipairs(cases) do
      local err = error_of(ctx.app.tasks.add.defer, ctx.app.tasks.add, case[1])
      assert.are.equal("table", type(err))
      assert.is_true(tarry.is_error(err))
      assert.are.equal("invalid_args", err.code)
      assert.are.equal("tarry: invalid_args: " .. case[2], tostring(err))
    end
    assert.are.equal(0, count_jobs(ctx.name))
  end)

  it("must be a table with string keys: other values raise invalid_args", function()
    for _, args in ipairs { 42, "text", true, print, { 1, 2 }, tarry.array() } do
      local err = error_of(ctx.app.tasks.add.defer, ctx.app.tasks.add, args)
      assert.are.equal("invalid_args", err.code)
      assert.matches("^tarry: invalid_args: args: must be a table with string keys %(a JSON object%), got ", tostring(err))
    end
    assert.are.equal(0, count_jobs(ctx.name))
  end)

  it("refuse the whole batch, naming the job", function()
    local err = error_of(ctx.app.tasks.add.batch_defer, ctx.app.tasks.add, { { a = 1 }, { a = 2 }, { a = { print } } })
    assert.are.equal("invalid_args", err.code)
    assert.are.equal("tarry: invalid_args: job #3: args.a[1]: cannot encode a function", tostring(err))
    err = error_of(ctx.app.tasks.add.batch_defer, ctx.app.tasks.add, { { a = 1 }, "not a table" })
    assert.are.equal("tarry: invalid_args: job #2: args: must be a table with string keys (a JSON object), got string",
      tostring(err))
    assert.are.equal(0, count_jobs(ctx.name))
  end)
end)

describe("task:batch_defer", function()
  local ctx = with_database()

  it("inserts every job in one statement and returns the ids in the order of the arguments", function()
    local ids = ctx.app.tasks.add:batch_defer{ { a = 1, b = 2 }, { a = 3, b = 4 }, { a = 5, b = 6 } }
    assert.are.equal(3, #ids)
    for i, id in ipairs(ids) do
      assert.are.equal(2 * i - 1, args_back(ctx.app, id).a)
      assert.are.same({ "math", "add", "0", "", "", "todo", "t" }, job_row(ctx.name, id))
    end
    assert.is_true(ids[1] < ids[2] and ids[2] < ids[3])
    -- One statement: every row was written by the same transaction.
    assert.are.equal("1", db.value(ctx.name, "SELECT count(DISTINCT xmin::text) FROM procrastinate_jobs"))
  end)

  it("applies configure's options to every job of the batch", function()
    local ids = ctx.app.tasks.add:configure{ queue = "bulk", priority = 7 }:batch_defer{ { a = 1 }, { a = 2 } }
    for _, id in ipairs(ids) do
      assert.are.same({ "bulk", "add", "7", "", "", "todo", "t" }, job_row(ctx.name, id))
    end
  end)

  it("returns an empty list for an empty batch and inserts nothing", function()
    assert.are.same({}, ctx.app.tasks.add:batch_defer{})
    assert.are.equal(0, count_jobs(ctx.name))
  end)
end)

describe("the queueing lock", function()
  local ctx = with_database()

  it("refuses a second waiting job with an already_enqueued error object", function()
    local locked = ctx.app.tasks.add:configure{ queueing_lock = "nightly" }
    locked:defer{ a = 1 }
    local err = error_of(locked.defer, locked, { a = 2 })
    assert.is_true(tarry.is_error(err))
    assert.are.equal("already_enqueued", err.code)
    assert.are.equal("23505", err.sqlstate)
    assert.are.equal("procrastinate_jobs_queueing_lock_idx_v1", err.constraint)
    assert.are.equal("tarry: already_enqueued: a job with the same queueing lock is already waiting "
      .. "(Key (queueing_lock)=(nightly) already exists.) (SQLSTATE 23505)", tostring(err))
    assert.are.equal(1, count_jobs(ctx.name))
  end)

  it("makes a batch with one conflicting job insert nothing", function()
    ctx.app.tasks.add:configure{ queueing_lock = "taken" }:defer{ a = 0 }
    local batch = ctx.app.tasks.add:configure{ queueing_lock = "taken" }
    local err = error_of(batch.batch_defer, batch, { { a = 1 } })
    assert.are.equal("already_enqueued", err.code)
    local free = ctx.app.tasks.add:configure{ queueing_lock = "free" }
    err = error_of(free.batch_defer, free, { { a = 1 }, { a = 2 } })  -- the batch conflicts with itself
    assert.are.equal("already_enqueued", err.code)
    assert.are.equal(1, count_jobs(ctx.name))
  end)

  it("is free again once the waiting job has started", function()
    local locked = ctx.app.tasks.add:configure{ queueing_lock = "nightly" }
    local first = locked:defer{ a = 1 }
    db.psql(ctx.name, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = " .. first)
    assert.are.equal("integer", math.type(locked:defer{ a = 2 }))
  end)
end)

describe("task:configure", function()
  local ctx = with_database()

  it("lands the job with the queue, priority, lock and queueing lock given", function()
    local id = ctx.app.tasks.add:configure{ queue = "q", priority = 5, lock = "l", queueing_lock = "ql" }:defer{ a = 1, b = 1 }
    assert.are.same({ "q", "add", "5", "l", "ql", "todo", "t" }, job_row(ctx.name, id))
  end)

  it("schedules the job schedule_in seconds from now, recording the scheduled event", function()
    local id = ctx.app.tasks.add:configure{ schedule_in = 30 }:defer{ a = 1, b = 1 }
    assert.are.equal("t", db.value(ctx.name, "SELECT scheduled_at BETWEEN now() + interval '25 s' AND now() + "
      .. "interval '35 s' FROM procrastinate_jobs WHERE id = " .. id))
    assert.are.equal("scheduled,deferred", db.value(ctx.name, "SELECT string_agg(type::text, ',' ORDER BY id) "
      .. "FROM procrastinate_events WHERE job_id = " .. id))
  end)

  it("schedules the job at schedule_at, a unix time, exactly", function()
    local id = ctx.app.tasks.add:configure{ schedule_at = 1893456000.25 }:defer{ a = 1, b = 1 }
    assert.are.equal("1893456000.250000", db.value(ctx.name,
      "SELECT extract(epoch from scheduled_at) FROM procrastinate_jobs WHERE id = " .. id))
    assert.are.equal("2030-01-01 00:00:00.25+00", db.value(ctx.name,
      "SELECT scheduled_at AT TIME ZONE 'UTC' || '+00' FROM procrastinate_jobs WHERE id = " .. id))
  end)

  it("clamps a schedule_at beyond year 9999 to the last second of 9999-12-31 UTC", function()
    -- Procrastinate's Python side cannot represent year 10000: the job must stay readable.
    local id = ctx.app.tasks.add:configure{ schedule_at = 1e15 }:defer{}
    assert.are.equal("9999-12-31 23:59:59", db.value(ctx.name,
      "SELECT date_trunc('second', scheduled_at AT TIME ZONE 'UTC') FROM procrastinate_jobs WHERE id = " .. id))
  end)

  it("refuses schedule_in together with schedule_at, inserting nothing", function()
    assert.matches("give schedule_in or schedule_at, not both",
      error_of(ctx.app.tasks.add.configure, ctx.app.tasks.add, { schedule_in = 30, schedule_at = 1893456000 }))
    assert.are.equal(0, count_jobs(ctx.name))
  end)

  it("leaves the task's own options for the next defer", function()
    ctx.app.tasks.add:configure{ queue = "q", priority = 5 }:defer{}
    local id = ctx.app.tasks.add:defer{}
    assert.are.same({ "math", "add", "0", "", "", "todo", "t" }, job_row(ctx.name, id))
  end)
end)

describe("app:configure_task", function()
  local ctx = with_database()

  it("defers a task this app does not know, with the options given", function()
    local id = ctx.app:configure_task("some.other.task", { queue = "q", priority = 2 }):defer{ x = 1 }
    assert.are.same({ "q", "some.other.task", "2", "", "", "todo", "t" }, job_row(ctx.name, id))
    assert.are.equal('{"x": 1}', args_text(ctx.name, id))
    id = ctx.app:configure_task("bare.task"):defer{}
    assert.are.same({ "default", "bare.task", "0", "", "", "todo", "t" }, job_row(ctx.name, id))
  end)

  it("uses a known task's options as defaults, and resolves an alias to the task's name", function()
    ctx.app:task("mul", { queue = "math", priority = 3, lock = "m", aliases = { "old.mul" } }, function() end)
    local id = ctx.app:configure_task("mul"):defer{}
    assert.are.same({ "math", "mul", "3", "m", "", "todo", "t" }, job_row(ctx.name, id))
    id = ctx.app:configure_task("old.mul", { priority = 9 }):defer{}
    assert.are.same({ "math", "mul", "9", "m", "", "todo", "t" }, job_row(ctx.name, id))
  end)
end)

describe("a database without the schema", function()
  local ctx = with_database { schema = false }

  it("raises a database error object with PostgreSQL's sqlstate", function()
    local err = error_of(ctx.app.tasks.add.defer, ctx.app.tasks.add, { a = 1, b = 2 })
    assert.is_true(tarry.is_error(err))
    assert.are.equal("database", err.code)
    -- The defer statement inserts into procrastinate_jobs (app.c's DEFER_SQL).
    assert.are.equal("42P01", err.sqlstate)
    assert.are.equal('tarry: database: relation "procrastinate_jobs" does not exist (SQLSTATE 42P01)',
      tostring(err))
  end)
end)
