-- The coroutine scheduler's ready queue: a coroutine that was woken (or spawned) but not yet
-- resumed can be cancelled and collected without the queue touching it again.
local tarry = require "tarry"

describe("the ready queue", function()
  it("forgets a spawned coroutine that is cancelled before it ever ran, even once collected", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local ran = {}
    local handles = {}
    for i = 1, 50 do handles[i] = app:spawn(function() ran[#ran + 1] = i end) end
    for i = 1, 50, 2 do handles[i]:cancel() end
    for i = 1, 50, 2 do handles[i] = nil end
    collectgarbage(); collectgarbage()
    app:run()
    assert.are.equal(25, #ran)
    for _, i in ipairs(ran) do assert.are.equal(0, i % 2) end
  end)

  it("forgets a woken coroutine that another one cancels before it is resumed", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local ev = tarry.Event()
    local victims = {}
    for i = 1, 20 do victims[i] = app:spawn(function() ev:wait(); return i end) end
    local results = {}
    app:spawn(function()
      tarry.sleep(0.01)                 -- every victim waits on ev now
      ev:set()                          -- all woken: in the ready queue, none resumed yet
      for i = 1, 20, 2 do victims[i]:cancel() end
      for i = 1, 20, 2 do victims[i] = nil end
      collectgarbage(); collectgarbage()
    end)
    app:run()
    for i = 2, 20, 2 do results[#results + 1] = victims[i]:result() end
    assert.are.same({ 2, 4, 6, 8, 10, 12, 14, 16, 18, 20 }, results)
  end)

  it("lets a coroutine that yields in a loop share the loop with a timer", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local spins, stop = 0, false
    app:spawn(function() while not stop do spins = spins + 1; coroutine.yield() end end)
    app:spawn(function() tarry.sleep(0.05); stop = true end)
    app:run()
    assert.is_true(spins > 1)
  end)
end)

-- A coroutine that returned gives its thread to the next spawn (runtime.c, keep_spare): its
-- handle must keep its own outcome and its methods must not reach the thread's new coroutine.
describe("threads reused after a coroutine returns", function()
  it("keep each handle's outcome, and a finished handle's methods leave the new coroutine alone", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local first_thread, second_thread
    local first = app:spawn(function() first_thread = coroutine.running(); return "one", 1 end)
    app:run()
    local ev = tarry.Event()
    local second = app:spawn(function()
      second_thread = coroutine.running()
      ev:wait()
      return "two"
    end)
    app:spawn(function()
      tarry.sleep(0.01)                                     -- second waits on ev now
      first:cancel()                                        -- no-ops: first has finished
      first:interrupt()
      assert.are.equal("running", second:status())
      ev:set()
    end)
    app:run()
    assert.are.equal(first_thread, second_thread)           -- the thread was reused
    assert.are.same({ "one", 1 }, { first:result() })
    assert.are.equal("succeeded", first:status())
    assert.are.equal("two", second:result())
    assert.matches("^<tarry.Coroutine succeeded", tostring(first))
  end)

  it("do not carry a hook set inside one coroutine into the next", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local hooked, seen = 0, nil
    app:spawn(function() debug.sethook(function() hooked = hooked + 1 end, "", 1) end)
    app:run()
    app:spawn(function() seen = debug.gethook() end)
    app:run()
    assert.is_nil(seen)
  end)

  it("are not reused after a failure or a cancel (their stacks are not clean)", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local threads = {}
    local failed = app:spawn(function() threads.failed = coroutine.running(); error("boom") end)
    local cancelled = app:spawn(function() threads.cancelled = coroutine.running(); tarry.sleep(10) end)
    local seen_thread
    local seen = app:spawn(function()
      seen_thread = coroutine.running()
      tarry.sleep(0.01)
      cancelled:cancel()
      return pcall(failed.result, failed)     -- seen: app:run() does not raise it
    end)
    app:run()
    assert.is_false((seen:result()))
    local next_threads = {}                   -- more at once than there can be spares
    for i = 1, 5 do app:spawn(function() next_threads[coroutine.running()] = i; tarry.sleep(0) end) end
    app:run()
    assert.is_nil(next_threads[threads.failed])
    assert.is_nil(next_threads[threads.cancelled])
    assert.is_not_nil(next_threads[seen_thread])   -- what did return was reused
  end)
end)
