-- Fault injection: a storm of pg_terminate_backend on every connection tarry workers hold (their
-- pool and their LISTEN connections) while they drain a queue.
local db = require "support.db"
local proc = require "support.process"
local ledger = require "support.ledger"

local JOBS = 3000

-- For about 4 s, every 20 ms: terminate every backend of the database that a tarry process opened
-- (application_name "tarry"; the spec's own psql sessions are spared). Returns how many it ended.
local function storm(name)
  db.psql(name, [[
CREATE TABLE storm (killed int);
DO $$
DECLARE total int := 0; k int;
BEGIN
  FOR i IN 1..200 LOOP
    PERFORM pg_stat_clear_snapshot();
    SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) INTO k FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'tarry' AND pid <> pg_backend_pid();
    total := total + k;
    PERFORM pg_sleep(0.02);
  END LOOP;
  INSERT INTO storm VALUES (total);
END $$]])
  return tonumber(db.value(name, "SELECT killed FROM storm"))
end

describe("tarry workers under a storm of pg_terminate_backend", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("run every job exactly once; none is lost or left doing", function()
    local book = ledger.new()
    local app = proc.app_file(name, book:tasks())
    ledger.defer(name, JOBS, "work", '{"s": 0.02}')
    local workers = proc.start_workers(3, app, "-c 4 --log-level warning --fetch-job-polling-interval 0.5")
    proc.until_true_while(workers, function() return ledger.count(name, "succeeded") >= 200 end, 60, "the workers to start")
    assert.is_true(ledger.count(name, "todo") > 0, "the storm must hit a queue still being drained")
    local killed = storm(name)
    assert.is_true(killed >= 20, "the storm ended only " .. killed .. " connection(s)")
    for i = 1, 3 do assert.is_true(workers[i]:running(), "worker " .. i .. " died:\n" .. workers[i]:output()) end
    proc.until_true_while(workers, function() return ledger.count(name, "succeeded") == JOBS end, 120, "the queue to drain")
    for i = 1, 3 do workers[i]:signal("TERM") end
    for i = 1, 3 do assert.are.equal(0, workers[i]:wait(60), workers[i]:output()) end
    book:check(name, { jobs = JOBS })
    for i = 1, 3 do assert.are.equal(0, workers[i]:count("a worker loop failed"), workers[i]:output()) end
  end)
end)
