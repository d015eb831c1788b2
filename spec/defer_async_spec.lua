-- task:defer_async: a defer that returns a tarry.PendingDefer at once, from anywhere, and
-- completes while tarry's loop turns (app:run(), h:result(), later a host's step).
local tarry = require "tarry"
local db = require "support.db"

local function new_app(name, opts)
  opts = opts or {}
  opts.conninfo = opts.conninfo or db.conninfo(name)
  local app = tarry.App{ connector = tarry.PgConnector(opts) }
  app:task("add", function() end)
  return app
end

local function job_args(name, id)
  return db.value(name, "SELECT args::text FROM procrastinate_jobs WHERE id = " .. id)
end

local function count(name)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
end

describe("task:defer_async", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("returns a pending handle at once from the main thread; result() drives the loop to the id", function()
    local app = new_app(name)
    local h = app.tasks.add:defer_async{ a = 1 }
    assert.are.equal("PendingDefer", tarry.type(h))
    assert.are.equal("<tarry.PendingDefer add pending>", tostring(h))
    assert.is_false(h:done())
    assert.is_nil(h.id)
    assert.are.equal(0, count(name))                      -- nothing sent before the loop turns
    assert.is_true(app.connector:is_open())               -- it opened the async side by itself
    local id = h:result()
    assert.are.equal(id, h.id)
    assert.is_true(h:done())
    assert.are.equal("<tarry.PendingDefer add id=" .. id .. ">", tostring(h))
    assert.are.equal('{"a": 1}', job_args(name, id))
    assert.are.equal(id, h:result())                      -- again: the same id, nothing more inserted
    assert.are.equal(1, count(name))
    app:close()
  end)

  it("connects on its own even when tarry's loop last ran long ago (its connect_timeout counts from now)", function()
    local app = new_app(name, { connect_timeout = 1 })
    app:spawn(function() end)
    app:run()                                             -- the loop's clock: now
    tarry.sleep(1.5)                                      -- blocking: the loop's clock stays behind
    local h = app.tasks.add:defer_async{ late = true }
    assert.are.equal('{"late": true}', job_args(name, h:result()))
    app:close()
  end)

  it("completes many handles during app:run(), each with its own job, nothing lost", function()
    local app = new_app(name)
    local hs = {}
    for i = 1, 500 do hs[i] = app.tasks.add:defer_async{ i = i } end
    app:run()
    local seen = {}
    for i = 1, 500 do
      assert.is_true(hs[i]:done())
      assert.is_nil(seen[hs[i].id])
      seen[hs[i].id] = true
      assert.are.equal('{"i": ' .. i .. '}', job_args(name, hs[i].id))
    end
    assert.are.equal(500, count(name))
    app:close()
  end)

  it("parks a tarry coroutine in result() and works on an app opened before", function()
    local app = new_app(name)
    app:open()
    local co = app:spawn(function()
      local h = app.tasks.add:defer_async{ from = "coroutine" }
      local pending = tostring(h)
      return pending, h:result(), tostring(h)
    end)
    app:run()
    local pending, id, done = co:result()
    assert.are.equal("<tarry.PendingDefer add pending>", pending)
    assert.are.equal("<tarry.PendingDefer add id=" .. id .. ">", done)
    assert.are.equal('{"from": "coroutine"}', job_args(name, id))
    app:close()
  end)

  it("calls on_done(id, err) from the loop, also when registered after it is done", function()
    local app = new_app(name)
    local calls = {}
    local h = app.tasks.add:defer_async{}
    assert.are.equal(h, h:on_done(function(id, err) calls[#calls + 1] = { "first", id, err } end))
    assert.are.same({}, calls)                            -- not from inside defer_async
    app:run()
    assert.are.same({ { "first", h.id } }, calls)
    h:on_done(function(id, err) calls[#calls + 1] = { "late", id, err } end)
    assert.are.equal(1, #calls)                           -- not at once either: on the next turn
    app:run()
    assert.are.same({ "late", h.id }, calls[2])
    local ok, err = pcall(h.on_done, h, "nope")
    assert.is_false(ok)
    assert.matches("on_done expects a function, got string", err)
    app:close()
  end)

  it("fails the handle, not the call, with already_enqueued for a taken queueing lock", function()
    local app = new_app(name)
    local locked = app.tasks.add:configure{ queueing_lock = "nightly" }
    local first, second = locked:defer_async{ n = 1 }, locked:defer_async{ n = 2 }
    local got
    second:on_done(function(id, err) got = { id, err } end)
    app:run()
    assert.is_number(first.id)
    assert.is_nil(second.id)
    assert.are.equal("already_enqueued", second.error.code)
    assert.are.equal("<tarry.PendingDefer add failed: already_enqueued>", tostring(second))
    assert.is_nil(got[1])
    assert.are.equal(second.error, got[2])
    local ok, err = pcall(second.result, second)
    assert.is_false(ok)
    assert.are.equal(second.error, err)                   -- the same error object defer raises
    assert.are.equal("tarry: already_enqueued: a job with the same queueing lock is already waiting "
      .. "(Key (queueing_lock)=(nightly) already exists.) (SQLSTATE 23505)", tostring(err))
    assert.are.equal(1, count(name))
    app:close()
  end)

  it("fails the handle with a connection error object when the database is down", function()
    local app = new_app(name, { conninfo = "host=127.0.0.1 port=1 dbname=nowhere", connect_timeout = 2 })
    local h = app.tasks.add:defer_async{}                 -- no raise here: the call never blocks
    assert.are.equal("<tarry.PendingDefer add pending>", tostring(h))
    local ok, err = pcall(h.result, h)
    assert.is_false(ok)
    assert.is_true(tarry.is_error(err))
    assert.are.equal("connection", err.code)
    assert.matches("^tarry: connection: cannot connect to PostgreSQL", tostring(err))
    assert.are.equal("<tarry.PendingDefer add failed: connection>", tostring(h))
    app:close()
  end)

  it("raises at the call what defer raises for bad args, inserting nothing", function()
    local app = new_app(name)
    local ok, err = pcall(app.tasks.add.defer_async, app.tasks.add, { f = print })
    assert.is_false(ok)
    assert.are.equal("invalid_args", err.code)
    assert.are.equal("args.f: cannot encode a function", err.message)
    ok, err = pcall(app.tasks.add.defer_async, app.tasks.add, 5)
    assert.are.equal("invalid_args", err.code)
    ok, err = pcall(function() local h = app.tasks.add:batch_defer_async("x"); return h end)
    assert.matches("defer_async_spec.lua:%d+: batch_defer_async expects a list of argument tables", err)
    ok, err = pcall(app.tasks.add.batch_defer_async, app.tasks.add, { {}, { g = print } })
    assert.are.equal("job #2: args.g: cannot encode a function", err.message)
    ok, err = pcall(function() return app.tasks.add:configure{ queue = ("q"):rep(41) }:defer_async{} end)
    assert.is_false(ok)
    app:run()
    assert.are.equal(0, count(name))
    app:close()
  end)

  it("defers a task this app does not know, by name, as app:defer does", function()
    local app = new_app(name)
    local h = app:defer_async("elsewhere.task", { x = 1 })
    local id = h:result()
    assert.are.equal("elsewhere.task", db.value(name, "SELECT task_name FROM procrastinate_jobs WHERE id = " .. id))
    assert.are.equal("<tarry.PendingDefer elsewhere.task id=" .. id .. ">", tostring(h))
    app:close()
  end)

  it("takes configure{} overrides, and batch_defer_async gives the ids in order", function()
    local app = new_app(name)
    local one = app.tasks.add:configure{ queue = "math", priority = 7 }:defer_async{ k = 0 }
    local batch = app.tasks.add:batch_defer_async{ { k = 1 }, { k = 2 }, { k = 3 } }
    local empty = app.tasks.add:batch_defer_async{}
    assert.are.equal("<tarry.PendingDefer add 3 jobs pending>", tostring(batch))
    local ids = batch:result()
    assert.are.same({}, empty:result())
    for k = 1, 3 do assert.are.equal('{"k": ' .. k .. '}', job_args(name, ids[k])) end
    assert.are.equal(string.format("<tarry.PendingDefer add 3 jobs ids=%d..%d>", ids[1], ids[3]), tostring(batch))
    assert.are.equal("math\t7", db.psql(name, "SELECT queue_name, priority FROM procrastinate_jobs WHERE id = "
      .. one:result()):gsub("\n$", ""))
    app:close()
  end)

  it("completes while a host loop calls app:step(0), which also runs the on_done callbacks", function()
    local app = new_app(name)
    local hs, done = {}, 0
    for i = 1, 50 do
      hs[i] = app.tasks.add:defer_async{ i = i }
      hs[i]:on_done(function(id, err) assert(id and not err); done = done + 1 end)
    end
    local host_sleep = require("tarry.core").sleep
    for _ = 1, 20000 do                                   -- a frame loop, bounded
      app:step(0)
      if done == 50 then break end
      if app:timeout() ~= 0 then host_sleep(0.001) end   -- the host's own wait for the next frame
    end
    assert.are.equal(50, done)
    for i = 1, 50 do assert.are.equal('{"i": ' .. i .. '}', job_args(name, hs[i].id)) end
    app:close()
  end)

  it("works on a MemoryConnector and a SyncPgConnector too", function()
    local mem = tarry.App{ connector = tarry.MemoryConnector() }
    mem:task("add", function() end)
    local h = mem.tasks.add:defer_async{ m = 1 }
    assert.are.equal(1, h:result())
    local sync = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = db.conninfo(name) } }
    sync:task("add", function() end)
    local s = sync.tasks.add:defer_async{ s = 1 }
    assert.are.equal('{"s": 1}', job_args(name, s:result()))
    sync:close()
  end)
end)
