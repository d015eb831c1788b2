-- In a REPL every tarry value prints usefully: the module, an app's tasks, a handle's state.
local tarry = require "tarry"

describe("tostring of tarry's values", function()
  it("names the module, its version and what it offers", function()
    local s = tostring(tarry)
    assert.matches("^<tarry " .. tarry.version:gsub("%.", "%%.") .. ": ", s)
    assert.matches("App", s)
    assert.matches("PgConnector", s)
  end)

  it("lists an app's tasks by name", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    assert.are.equal("<tarry.tasks: none>", tostring(app.tasks))
    app:task("b.second", function() end)
    app:task("a.first", { aliases = { "first" } }, function() end)
    assert.are.equal("<tarry.tasks 2: a.first, b.second>", tostring(app.tasks))
  end)

  it("says a cancelled handle is cancelled, and a failed one failed", function()
    local app = tarry.App{ connector = tarry.MemoryConnector() }
    local h = app:spawn(function() tarry.sleep(60) end)
    local own = app:spawn(function() tarry.sleep(60) end)
    assert.matches("^<tarry%.Coroutine running ", tostring(h))
    -- cancelled once they run (parked on their sleep), from another coroutine
    app:spawn(function() tarry.sleep(0); h:cancel(); own:cancel("stopped by hand") end)
    app:run()
    assert.matches("^<tarry%.Coroutine cancelled ", tostring(h))
    assert.matches("^<tarry%.Coroutine failed ", tostring(own))   -- a cancel with an error of your own
    local f = app:spawn(function() error("boom") end)
    pcall(app.run, app)
    assert.matches("^<tarry%.Coroutine failed ", tostring(f))
  end)
end)
