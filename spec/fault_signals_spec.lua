-- Fault injection: SIGTERM and double SIGTERM while tarry workers run long jobs, alone and in the
-- middle of draining a queue. (The one-job cases are in worker_process_spec.lua.)
local db = require "support.db"
local proc = require "support.process"
local ledger = require "support.ledger"

local function worker(app, args)
  return proc.start("worker --app " .. app .. " --fetch-job-polling-interval 0.5 " .. (args or ""))
end

local function drain(app)
  local w = worker(app, "--one-shot -c 50 --log-level warning")
  assert.are.equal(0, w:wait(120), w:output())
end

describe("tarry worker on SIGTERM while long jobs run", function()
  local name, book, app, gate
  before_each(function()
    name = db.fresh()
    book = ledger.new()
    app = proc.app_file(name, book:tasks())
    gate = os.tmpname()
    os.remove(gate)
  end)
  after_each(function() proc.kill_all(); db.drop(name); os.remove(gate) end)

  it("lets every running job finish after the first and starts no other; the rest wait for the next worker", function()
    ledger.defer(name, 4, "gate", string.format('{"file": %q}', gate))
    ledger.defer(name, 20, "work")
    local w = worker(app, "-c 4")
    proc.until_true_while({ w }, function() return book:started(4) end, 30, "4 jobs to start")
    w:signal("TERM")
    w:wait_for("stopping after the running jobs", 1, 30)
    assert(io.open(gate, "w")):close()               -- only now may the long jobs end
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.same({ succeeded = 4, todo = 20 }, book:check(name, { jobs = 24, status = { "succeeded", "todo" } }))
    assert.are.equal("1,2,3,4", db.value(name, "SELECT string_agg(id::text, ',' ORDER BY id) " ..
      "FROM procrastinate_jobs WHERE status = 'succeeded'"))
    drain(app)
    book:check(name, { jobs = 24 })
  end)

  it("cuts every running job on the second: failed, or waiting again if its task retries; none left doing", function()
    ledger.defer(name, 2, "gate", string.format('{"file": %q}', gate))   -- never opened: they run until cut
    ledger.defer(name, 2, "flaky", '{"s": 600}')                        -- long on their first attempt only
    local w = worker(app, "-c 4")
    proc.until_true_while({ w }, function() return book:started(4) end, 30, "4 jobs to start")
    w:signal("TERM")
    w:wait_for("stopping after the running jobs", 1, 30)
    w:signal("TERM")
    assert.are.equal(0, w:wait(30), w:output())
    assert.are.equal(4, w:count("interrupted by the shutdown"))
    assert.are.same({ failed = 2, todo = 2 }, book:check(name, { jobs = 4, status = { "failed", "todo" } }))
    assert.are.same({ { "1", "failed", "1" }, { "2", "failed", "1" }, { "3", "todo", "1" }, { "4", "todo", "1" } },
      db.rows(name, "SELECT id, status, attempts FROM procrastinate_jobs ORDER BY id"))
    drain(app)                                        -- the retried ones run again, once
    assert.are.same({ failed = 2, succeeded = 2 },
      book:check(name, { jobs = 4, status = { "failed", "succeeded" }, retried = true }))
    assert.are.same({ [1] = 1, [2] = 1, [3] = 2, [4] = 2 }, book:runs())
  end)
end)

describe("tarry workers stopped by signals in the middle of draining a queue", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  -- Each of 3 workers gets SIGTERM (then waits for it to say so) `signals` times; a worker that
  -- stopped after the first is not signalled again. With two, 3 jobs run 10 minutes on their first
  -- attempt, so some worker is still busy when the second comes.
  for _, signals in ipairs { 1, 2 } do
    it(string.format("leave nothing doing after %s; the next worker runs what is left, each job once",
      signals == 1 and "one SIGTERM" or "two SIGTERMs"), function()
      local book = ledger.new()
      local app = proc.app_file(name, book:tasks())
      local long = signals == 2 and 3 or 0
      if long > 0 then ledger.defer(name, long, "flaky", '{"s": 600}') end
      ledger.defer(name, 300, "flaky", '{"s": 0.3}')           -- 0.3 s on their first attempt
      local jobs = long + 300
      local workers = {}
      for i = 1, 3 do workers[i] = worker(app, "-c 4 --name w" .. i) end
      proc.until_true_while(workers, function() return ledger.count(name, "succeeded") >= 60 end, 60, "the workers to make progress")
      for k = 1, signals do
        for i = 1, 3 do if workers[i]:running() then workers[i]:signal("TERM") end end
        for i = 1, 3 do
          proc.until_true(function() return workers[i]:count("received SIGTERM") >= k or not workers[i]:running() end,
            30, "worker " .. i .. " to take signal " .. k)
        end
      end
      for i = 1, 3 do assert.are.equal(0, workers[i]:wait(60), workers[i]:output()) end
      local counts = book:check(name, { jobs = jobs, status = { "succeeded", "todo" }, retried = true })
      assert.is_true((counts.todo or 0) > 0, "the signals must come while jobs are left")
      local cut = 0
      for i = 1, 3 do cut = cut + workers[i]:count("interrupted by the shutdown") end
      assert.are.equal(tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE attempts = 1 " ..
        "AND status = 'todo'")), cut)
      if signals == 1 then assert.are.equal(0, cut) else assert.is_true(cut >= long) end
      drain(app)
      book:check(name, { jobs = jobs, retried = signals == 2 })
    end)
  end
end)
