-- Bugs found by trying the worker as a new user would (issue 8, section 6).
local tarry = require "tarry"
local proc = require "support.process"

local function memory_app()
  local app = tarry.App{ connector = tarry.MemoryConnector() }
  return app
end

describe("a task's retry_errors", function()
  it("must be a function, refused at registration", function()
    local app = memory_app()
    local ok, err = pcall(app.task, app, "t", { retry = { max_attempts = 3, retry_errors = "yes" } }, function() end)
    assert.is_false(ok)
    assert.matches("retry.retry_errors must be a function", err)
  end)

  it("that raises ends the job failed, both errors logged, and the worker goes on", function()
    local app = memory_app()
    local lines = {}
    local stream = { write = function(_, ...) for _, s in ipairs { ... } do lines[#lines + 1] = s end end,
      flush = function() end, setvbuf = function() end }
    app:task("flaky", { retry = { max_attempts = 3, retry_errors = function() error("judge broke") end } },
      function() error("task broke") end)
    local ran_after = false
    app:task("after", function() ran_after = true end)
    app.tasks.flaky:defer{}
    app.tasks.after:defer{}
    app:run_worker{ wait = false, install_signal_handlers = false, log_stream = stream, concurrency = 1 }
    local out = table.concat(lines)
    local job = app.jobs:get(1)
    assert.are.equal("failed", job.status)
    assert.matches("task broke", out)
    assert.matches("judge broke", out)
    assert.is_true(ran_after)
  end)
end)

describe("a one-shot worker on a MemoryConnector with signal handlers", function()
  it("ends at once on an empty queue (no deadlock)", function()
    local app = memory_app()
    app:task("add", function() end)
    app:run_worker{ wait = false, install_signal_handlers = true, log_level = "error" }
  end)

  it("ends at once on an empty queue through `tarry worker --one-shot`", function()
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write('local tarry = require "tarry"\nlocal app = tarry.App{ connector = tarry.MemoryConnector() }\n' ..
      'app:task("add", function() end)\nreturn app\n')
    f:close()
    local p = proc.start("worker --app " .. file .. " --one-shot")
    local code = p:wait(60)
    os.remove(file)
    assert.are.equal(0, code, p:output())
    assert.not_matches("deadlock", p:output())
  end)
end)

describe("a failure of the worker's own code around a task", function()
  it("ends that job failed and frees its slot: a one-shot worker still finishes", function()
    local app = memory_app()
    local lines, broke = {}, false
    local stream = { flush = function() end, setvbuf = function() end }
    function stream.write(_, ...)
      local text = table.concat({ ... })
      if not broke and text:match("job 1 first started") then broke = true; error("the log disk is full") end
      lines[#lines + 1] = text
    end
    app:task("first", function() end)
    app:task("second", function() end)
    app.tasks.first:defer{}
    app.tasks.second:defer{}
    app:run_worker{ wait = false, install_signal_handlers = false, log_stream = stream, concurrency = 1 }
    assert.is_true(broke)
    assert.are.equal("failed", app.jobs:get(1).status)
    assert.are.equal("succeeded", app.jobs:get(2).status)
    assert.matches("the worker failed around the task: .*the log disk is full", table.concat(lines))
  end)
end)
