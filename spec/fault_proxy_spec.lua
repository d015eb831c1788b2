-- Fault injection: a TCP proxy between tarry workers and PostgreSQL (spec/support/tcp_proxy.c)
-- that pauses, blackholes (holds everything, closes nothing) and resets connections.
local db = require "support.db"
local proc = require "support.process"
local ledger = require "support.ledger"
local proxy = require "support.proxy"
local tarry = require "tarry"

-- psql through the proxy, in the background (the SQL goes through a file: it may be long).
local function psql_via(p, name, sql, opts)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(sql, "\n")
  f:close()
  return proc.spawn(string.format("psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d -d %s -f %s", p.port,
    db.shell_quote((opts or "") .. " dbname=" .. name), file))
end

describe("the fault suite's TCP proxy", function()
  local name, p
  before_each(function() name = db.fresh({ schema = false }); p = proxy.start() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("listens on 127.0.0.1 only", function()
    local f = assert(io.open("/proc/net/tcp"))
    local listening = {}
    for line in f:lines() do
      local addr, port, state = line:match("^%s*%d+: (%x+):(%x+) %x+:%x+ (%x+)")
      if port and tonumber(port, 16) == p.port and state == "0A" then listening[#listening + 1] = addr end
    end
    f:close()
    assert.are.same({ "0100007F" }, listening)
  end)

  it("forwards a session both ways and closes it when the client does", function()
    local s = psql_via(p, name, "SELECT 40 + 2")
    assert.are.equal(0, s:wait(30), s:output())
    assert.are.equal("42\n", s:output())
    p:wait_for("close", 1, 10)
    assert.are.equal(1, p:count("accept"))
    assert.are.equal(0, p:stop())
  end)

  it("carries megabytes both ways intact", function()
    local s = psql_via(p, name, "SELECT length('" .. ("q"):rep(1024 * 1024) .. "'), repeat('ab', 1500000)")
    assert.are.equal(0, s:wait(60), s:output():sub(1, 300))
    assert.are.equal("1048576|" .. ("ab"):rep(1500000) .. "\n", s:output())
  end)

  it("holds a session without closing it and delivers what it held, in order, on forward", function()
    p:hold()
    local s = psql_via(p, name, "SELECT 40 + 2")
    p:wait_for("held 1 client", 1, 10)       -- psql's startup packet got as far as the proxy
    assert.is_true(s:running())
    p:forward()
    assert.are.equal(0, s:wait(30), s:output())
    assert.are.equal("42\n", s:output())
  end)

  it("drops what a client sent during a hold once the client gives up", function()
    p:hold()
    local s = psql_via(p, name, "SELECT 1", "connect_timeout=2")
    p:wait_for("held 1 client", 1, 10)
    assert.are_not.equal(0, s:wait(30))       -- psql's own connect_timeout
    p:wait_for("drop", 1, 10)
    p:forward()
    local again = psql_via(p, name, "SELECT 2")
    assert.are.equal(0, again:wait(30), again:output())
  end)

  it("resets every open connection on cut, and goes on accepting new ones", function()
    local s = psql_via(p, name, "SELECT pg_sleep(60)")
    proc.until_true(function() return db.value(name, "SELECT count(*) FROM pg_stat_activity " ..
      "WHERE datname = current_database() AND query = 'SELECT pg_sleep(60)'") == "1" end, 30, "the session")
    p:cut()
    assert.are_not.equal(0, s:wait(30))
    assert.matches("server closed the connection", s:output())
    local again = psql_via(p, name, "SELECT 2")
    assert.are.equal(0, again:wait(30), again:output())
  end)
end)

-- The worker's log lines about the database going away and coming back, whatever their case.
local function lines_with(w, ...)
  local n = 0
  for line in w:output():lower():gmatch("[^\n]+") do
    for _, s in ipairs { ... } do
      if line:find(s, 1, true) then n = n + 1; break end
    end
  end
  return n
end
local function lost(w) return lines_with(w, "lost the database") end
local function back(w) return lines_with(w, "database is back", "reconnected") end

describe("a tarry worker behind a proxy that pauses", function()
  local name, p, book
  before_each(function() name = db.fresh(); p = proxy.start(); book = ledger.new() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("carries on once forwarding resumes: no job lost, none run twice, a NOTIFY sent meanwhile arrives", function()
    local app = proc.app_file(name, book:tasks(), { conninfo = p:conninfo(name) })
    ledger.defer(name, 1000, "work", '{"s": 0.005}')
    local w = proc.start("worker --app " .. app .. " -c 4 --fetch-job-polling-interval 600")
    proc.until_true_while({ w }, function() return ledger.count(name, "succeeded") >= 100 end, 60, "the worker to make progress")
    p:hold()
    p:wait_for("held", 1, 30)                -- the pause caught the worker's queries or their replies
    p:forward()
    proc.until_true_while({ w }, function() return ledger.count(name, "succeeded") == 1000 end, 60, "the queue to drain")
    -- Idle now, and polling only every 10 minutes: a job deferred during a pause is found by its
    -- NOTIFY, which the proxy held on the LISTEN connection and delivers on forward.
    p:hold()
    ledger.defer(name, 1, "work")
    p:forward()
    proc.until_true_while({ w }, function() return ledger.count(name, "succeeded") == 1001 end, 60, "the job deferred in the pause")
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
    book:check(name, { jobs = 1001 })
    assert.are.equal(0, lost(w), w:output())
    assert.are.equal(0, w:count(" WARNING ") + w:count(" ERROR "), w:output())
  end)
end)

-- These rely on the per-query deadline (PgConnector's query_timeout, here 2 s, also the CLI's
-- --query-timeout / TARRY_QUERY_TIMEOUT) and on the worker logging "lost the database" once when
-- it notices and "database is back" (or "reconnected") once when it gets it back.
describe("a tarry worker behind a proxy that blackholes", function()
  local name, p, book, gate
  local DEADLINE = 2
  before_each(function()
    name = db.fresh(); p = proxy.start(); book = ledger.new()
    gate = os.tmpname(); os.remove(gate)
  end)
  after_each(function() proc.kill_all(); db.drop(name); os.remove(gate) end)

  local function start_worker(args)
    local app = proc.app_file(name, book:tasks(), { conninfo = p:conninfo(name),
      connector = { query_timeout = DEADLINE } })
    return proc.start("worker --app " .. app .. " --fetch-job-polling-interval 0.5 --log-level info " .. args,
      "TARRY_QUERY_TIMEOUT=" .. DEADLINE .. " ")
  end

  it("notices within its query deadline, reconnects once forwarding resumes and drains", function()
    ledger.defer(name, 1, "gate", string.format('{"file": %q}', gate))
    local w = start_worker("-c 1")
    proc.until_true_while({ w }, function() return book:started(1) end, 30, "the job to start")
    p:hold()                                  -- while the job runs, nothing is in flight
    ledger.defer(name, 20, "work")            -- straight into PostgreSQL: they wait for the worker
    local t0 = tarry.now()
    assert(io.open(gate, "w")):close()        -- the job ends: recording it meets the blackhole
    proc.until_true_while({ w }, function() return lost(w) > 0 end, 15 * DEADLINE, "the worker to notice the blackhole")
    if os.getenv("TARRY_SPEC_VERBOSE") then
      io.stderr:write(string.format("blackhole noticed after %.2f s (query_timeout %d s)\n", tarry.now() - t0, DEADLINE))
    end
    assert.are.same({ doing = 1, todo = 20, succeeded = 0, failed = 0 }, ledger.counts(name))
    p:forward()
    proc.until_true_while({ w }, function() return back(w) > 0 end, 60, "the worker to get the database back")
    proc.until_true_while({ w }, function() return ledger.count(name, "succeeded") == 21 end, 60, "the queue to drain")
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
    book:check(name, { jobs = 21 })
    assert.are.equal(1, lost(w), w:output())
    assert.are.equal(1, back(w), w:output())
  end)

  it("stops on one SIGTERM while cut off, when it has nothing left to record", function()
    ledger.defer(name, 5, "work")
    local w = start_worker("-c 2")
    proc.until_true_while({ w }, function() return ledger.count(name, "succeeded") == 5 end, 30, "the jobs to run")
    p:hold()
    proc.until_true_while({ w }, function() return lost(w) > 0 end, 15 * DEADLINE, "the worker to notice the blackhole")
    w:signal("TERM")
    assert.are.equal(0, w:wait(60), w:output())
    p:forward()
    book:check(name, { jobs = 5 })
  end)

  it("stops at once on a second SIGTERM while cut off, with a job running", function()
    ledger.defer(name, 1, "gate", string.format('{"file": %q}', gate))   -- never opened
    local w = start_worker("-c 1")
    proc.until_true_while({ w }, function() return book:started(1) end, 30, "the job to start")
    p:hold()
    w:signal("TERM")
    w:wait_for("stopping after the running jobs", 1, 30)
    w:signal("TERM")
    w:wait_for("stopping at once", 1, 30)
    assert.are.equal(0, w:wait(30), w:output())
    p:forward()
    -- Its failure could not be recorded while cut off: the job stays doing, for stalled-job
    -- recovery (it ran once, and nothing else ran).
    assert.are.same({ doing = 1, todo = 0, succeeded = 0, failed = 0 }, ledger.counts(name))
    assert.are.same({ [1] = 1 }, book:runs())
  end)
end)
