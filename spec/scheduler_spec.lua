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
