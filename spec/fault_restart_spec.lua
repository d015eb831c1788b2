-- Fault injection: PostgreSQL restarted (fast shutdown: every session terminated, open
-- transactions rolled back) under tarry workers draining a queue, and under processes deferring.
local db = require "support.db"
local proc = require "support.process"
local ledger = require "support.ledger"

local JOBS = 4000

-- A spec that failed half-way through a restart must not leave the server down for the next ones.
local function server_up() pcall(db.server, "start") end

describe("tarry workers draining a queue while PostgreSQL restarts twice", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); server_up(); db.drop(name) end)

  it("run every job exactly once; none is lost or left doing", function()
    local book = ledger.new()
    local app = proc.app_file(name, book:tasks())
    ledger.defer(name, JOBS, "work", '{"s": 0.03}')
    local workers = proc.start_workers(3, app, "-c 4 --log-level warning --fetch-job-polling-interval 0.5")
    for round = 1, 2 do
      local before = ledger.count(name, "succeeded") or 0
      proc.until_true_while(workers, function() return (ledger.count(name, "succeeded") or 0) >= before + 300 end, 60,
        "the workers to make progress before restart " .. round)
      assert.is_true(ledger.count(name, "todo") > 0, "the restart must hit a queue still being drained")
      db.server("restart", "fast")
    end
    proc.until_true_while(workers, function() return ledger.count(name, "succeeded") == JOBS end, 120, "the queue to drain")
    for i = 1, 3 do workers[i]:signal("TERM") end
    for i = 1, 3 do assert.are.equal(0, workers[i]:wait(60), workers[i]:output()) end
    book:check(name, { jobs = JOBS })
    for i = 1, 3 do
      assert.are.equal(0, workers[i]:count("a worker loop failed"), workers[i]:output())
    end
  end)
end)

describe("processes deferring while PostgreSQL restarts", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); server_up(); db.drop(name) end)

  -- The outcome lines of a deferrer (see spec/support/deferrer.lua).
  local function outcomes(path)
    local ok, err, after_err = {}, {}, 0
    local f = io.open(path)
    for line in (f and f:lines() or function() end) do
      local n, id = line:match("^ok (%d+) (%d+)$")
      if n then
        ok[#ok + 1] = { n = tonumber(n), id = tonumber(id) }
        if #err > 0 then after_err = after_err + 1 end
      else
        local en, code, msg = line:match("^err (%d+) (%S+) ?(.*)$")
        if en then err[#err + 1] = { n = tonumber(en), code = code, message = msg } end
      end
    end
    if f then f:close() end
    return ok, err, after_err
  end

  it("leave no row for a defer that raised, and exactly one for each id returned", function()
    local stop = os.tmpname()
    os.remove(stop)
    local runs = {}
    for _, mode in ipairs { "blocking", "async" } do
      local out = os.tmpname()
      runs[mode] = { out = out, p = proc.start(string.format("run spec/support/deferrer.lua %s %s %s %s %s",
        db.shell_quote(db.conninfo(name)), mode, mode, out, stop)) }
    end
    local function wait_for_defers(what, enough)
      for mode, r in pairs(runs) do
        proc.until_true(function() return enough(r) or not r.p:running() end, 60, mode .. " defers " .. what)
        assert(r.p:running(), mode .. " deferrer exited " .. what .. ":\n" .. r.p:output())
      end
    end
    wait_for_defers("before the restart", function(r) return #outcomes(r.out) >= 100 end)
    db.server("restart", "fast")
    wait_for_defers("after the restart", function(r) local _, _, after = outcomes(r.out) return after >= 100 end)
    assert(io.open(stop, "w")):close()
    local total = 0
    for mode, r in pairs(runs) do
      assert.are.equal(0, r.p:wait(60), r.p:output())
      local ok, err = outcomes(r.out)
      assert.is_true(#err > 0, mode .. ": the restart must make some defers fail")
      for _, e in ipairs(err) do
        assert.is_true(e.code == "connection" or e.code == "database", mode .. ": not a clear error: " .. e.message)
      end
      local rows = {}
      for _, row in ipairs(db.rows(name, "SELECT (args->>'n')::int, id, count(*) OVER (PARTITION BY args->>'n') " ..
        "FROM procrastinate_jobs WHERE args->>'tag' = '" .. mode .. "'")) do
        rows[tonumber(row[1])] = { id = tonumber(row[2]), copies = tonumber(row[3]) }
      end
      for _, o in ipairs(ok) do
        local row = rows[o.n]
        assert(row, mode .. ": defer " .. o.n .. " returned id " .. o.id .. " but left no row")
        assert.are.same({ id = o.id, copies = 1 }, row, mode .. ": defer " .. o.n)
      end
      for _, e in ipairs(err) do
        assert(not rows[e.n], mode .. ": defer " .. e.n .. " raised (" .. e.message .. ") but left job " ..
          tostring(rows[e.n] and rows[e.n].id))
      end
      total = total + #ok
    end
    assert.are.equal(tostring(total), db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
  end)
end)
