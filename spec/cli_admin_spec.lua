-- The admin commands (issue 8, section 5): `tarry jobs list|show|cancel|abort|retry|stalled|
-- delete-old`, `tarry queues|tasks|locks|workers` and `tarry shell`, as real `tarry` processes on
-- a real PostgreSQL. The jobs are made in-process through an app (defers, a one-shot worker, the
-- store's worker calls for running jobs); what the commands print and what they change in the
-- tables is checked from outside.
local tarry = require "tarry"
local Store = require "tarry.store"
local db = require "support.db"
local W = require "support.worker"

local cli = require "support.cli"
local run, read_file, write_file = cli.run, cli.read_file, cli.write_file
local q = db.shell_quote
local decode = tarry.json.decode

local function ids(list)
  local out = {}
  for i, j in ipairs(list) do out[i] = j.id end
  return out
end

local function lines_of(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

local function column(name, sql)
  return db.value(name, sql)
end

-- Jobs 1-3 add (math; 2 holds lock L), 1-3 succeeded; 4 boom (q2) failed; 5 add todo in the future.
local function some_jobs(app)
  local add = app:task("add", { queue = "math" }, function(args) return args.a + args.b end)
  local boom = app:task("boom", { queue = "q2" }, function() error("boom") end)
  add:defer{ a = 1, b = 2 }
  add:configure{ lock = "L" }:defer{ a = 2, b = 2 }
  add:defer{ a = 3, b = 3 }
  boom:defer{}
  W.run(app, { log_stream = io.tmpfile() })
  add:configure{ schedule_at = 4102444800 }:defer{ a = 0, b = 0 }
end

describe("tarry jobs list", function()
  local t = W.with_database(before_each, after_each)
  local function jobs(argv, env)
    local r = run({ "jobs", "list", "--conninfo", db.conninfo(t.name), table.unpack(argv) }, env)
    assert.are.equal(0, r.code, r.err)
    return r
  end
  local function listed(argv, env) return ids(decode(jobs({ "--json", table.unpack(argv) }, env).out)) end

  it("prints every job as a JSON array with --json, each with every field", function()
    some_jobs(t.app)
    local list = decode(jobs({ "--json" }).out)
    assert.are.same({ 1, 2, 3, 4, 5 }, ids(list))
    local j = list[2]
    assert.are.same({ 2, "add", "math", 0, "L", tarry.null, "succeeded", 1, false, tarry.null, 2, 2 },
      { j.id, j.task_name, j.queue, j.priority, j.lock, j.queueing_lock, j.status, j.attempts, j.abort_requested,
        j.worker_id, j.args.a, j.args.b })
    assert.are.equal(4102444800, list[5].scheduled_at)
  end)

  it("filters by queue, task, status and lock, as the manager does", function()
    some_jobs(t.app)
    assert.are.same({ 1, 2, 3 }, listed { "--queue", "math", "--status", "succeeded" })
    assert.are.same({ 4 }, listed { "--task", "boom" })
    assert.are.same({ 4, 5 }, listed { "--status", "failed,todo" })
    assert.are.same({ 2 }, listed { "--lock", "L" })
    assert.are.same({}, listed { "--queue", "nowhere" })
    assert.are.equal("[]\n", jobs({ "--json", "--queue", "nowhere" }).out)
  end)

  it("pages with --limit and --after-id, saying on stderr where the next page starts", function()
    some_jobs(t.app)
    local r = jobs { "--json", "--limit", "2" }
    assert.are.same({ 1, 2 }, ids(decode(r.out)))
    assert.are.equal("tarry: more jobs follow: add --after-id 2\n", r.err)
    assert.are.same({ 3, 4 }, listed { "--limit", "2", "--after-id", "2" })
    r = jobs { "--json", "--limit", "2", "--after-id", "4" }
    assert.are.same({ 5 }, ids(decode(r.out)))
    assert.are.equal("", r.err)
  end)

  it("reads TARRY_<OPTION> for each option, the command line winning", function()
    some_jobs(t.app)
    assert.are.same({ 4 }, listed({}, { TARRY_QUEUE = "q2" }))
    assert.are.same({ 1, 2, 3, 5 }, listed({ "--queue", "math" }, { TARRY_QUEUE = "q2" }))
    assert.are.same({ 1 }, listed({}, { TARRY_LIMIT = "1" }))
    local r = run({ "jobs", "list" }, { TARRY_CONNINFO = db.conninfo(t.name), TARRY_JSON = "1", TARRY_STATUS = "failed" })
    assert.are.same({ 4 }, ids(decode(r.out)))
  end)

  it("prints an aligned table otherwise, one job per line", function()
    some_jobs(t.app)
    local lines = lines_of(jobs({}).out)
    assert.are.equal(6, #lines)
    assert.matches("^ID  TASK  STATUS     QUEUE  PRIORITY  ATTEMPTS  LOCK  SCHEDULED_AT  +WORKER  ARGS$", lines[1])
    assert.matches('^ 2  add   succeeded  math          0         1  L     %-  +%-       {"[ab]":2,"[ab]":2}$', lines[3])
    assert.matches("^ 4  boom  failed     q2            0         1  %-", lines[5])
    assert.matches("2100%-01%-01T00:00:00Z", lines[6])
    local status_at = lines[1]:find("STATUS", 1, true)
    for i = 2, #lines do assert.matches("^%l", lines[i]:sub(status_at)) end
    assert.are.equal("no jobs\n", jobs({ "--task", "nothing" }).out)
  end)
end)

describe("tarry jobs show", function()
  local t = W.with_database(before_each, after_each)

  it("prints the job with its events, as JSON or as text", function()
    some_jobs(t.app)
    local r = run { "jobs", "show", "4", "--json", "--conninfo", db.conninfo(t.name) }
    assert.are.equal(0, r.code, r.err)
    local job = decode(r.out)
    assert.are.same({ 4, "boom", "failed", "q2" }, { job.id, job.task_name, job.status, job.queue })
    local types = {}
    for i, e in ipairs(job.events) do
      types[i] = e.type
      assert.are.equal("number", type(e.at))
      assert.are.equal("number", type(e.id))
    end
    assert.are.same({ "deferred", "started", "failed" }, types)

    r = run { "jobs", "show", "1", "--conninfo", db.conninfo(t.name) }
    assert.are.equal(0, r.code, r.err)
    local lines = lines_of(r.out)
    assert.are.equal("<tarry.Job #1 add succeeded queue=math attempts=1>", lines[1])
    assert.truthy(r.out:find("\nargs             {", 1, true), r.out)
    assert.truthy(r.out:find("\nabort_requested  false\n", 1, true), r.out)
    assert.matches("\nEVENT  TYPE       AT\n    %d+  deferred   %d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ\n", r.out)
  end)

  it("exits 1 with one line when there is no such job", function()
    local r = run { "jobs", "show", "999", "--conninfo", db.conninfo(t.name) }
    assert.are.same({ 1, "", "tarry: job 999 does not exist\n" }, { r.code, r.out, r.err })
    r = run { "jobs", "show", "999", "--json", "--conninfo", db.conninfo(t.name) }
    assert.are.same({ 1, "", "tarry: job 999 does not exist\n" }, { r.code, r.out, r.err })
  end)
end)

describe("tarry jobs cancel and abort", function()
  local t = W.with_database(before_each, after_each)
  local function jobs(...) return run { "jobs", "--conninfo", db.conninfo(t.name), ... } end
  local function status(id)
    return column(t.name, "SELECT status || ' ' || abort_requested FROM procrastinate_jobs WHERE id = " .. id)
  end

  it("cancels a job that has not started", function()
    some_jobs(t.app)
    local r = jobs("cancel", "5")
    assert.are.same({ 0, "cancelled job 5 (it had not started)\n", "" }, { r.code, r.out, r.err })
    assert.are.equal("cancelled false", status(5))
    r = jobs("cancel", "5")
    assert.are.same({ 1, "", "tarry: job 5 was not cancelled: it is cancelled already\n" }, { r.code, r.out, r.err })
    r = jobs("cancel", "1")
    assert.are.same({ 1, "tarry: job 1 was not cancelled: it is succeeded already\n" }, { r.code, r.err })
    assert.are.same({ 1, "tarry: job 999 does not exist\n" }, { jobs("cancel", "999").code, jobs("cancel", "999").err })
  end)

  it("deletes it instead with --delete, and says so in JSON", function()
    some_jobs(t.app)
    local r = jobs("cancel", "5", "--delete", "--json")
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ id = 5, outcome = "deleted", status = tarry.null }, decode(r.out))
    assert.is_nil(status(5))
    -- a destructive flag is not read from the environment
    t.app.tasks.add:defer{ a = 9, b = 9 }
    assert.are.equal(0, run({ "jobs", "cancel", "6" }, { TARRY_CONNINFO = db.conninfo(t.name), TARRY_DELETE = "1" }).code)
    assert.are.equal("cancelled false", status(6))
  end)

  it("asks the worker of a running job to abort it; cancel alone refuses a running job", function()
    some_jobs(t.app)
    local store = Store.of(t.app.connector)
    local worker = store:register(30)
    local running = t.app.tasks.add:defer{ a = 7, b = 7 }
    assert.are.same({ running }, ids(store:fetch({ "math" }, worker, 5)))  -- 5 is scheduled later
    local r = jobs("cancel", tostring(running))
    assert.are.same({ 1, "tarry: job 6 was not cancelled: it is running (doing); `tarry jobs abort 6` asks its worker "
      .. "to stop it\n" }, { r.code, r.err })
    assert.are.equal("doing false", status(running))

    r = jobs("abort", tostring(running), "--json")
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ id = 6, outcome = "abort_requested", status = "doing" }, decode(r.out))
    assert.are.equal("doing true", status(running))
    assert.are.equal("abort_requested", column(t.name, "SELECT type FROM procrastinate_events WHERE job_id = 6 "
      .. "ORDER BY id DESC LIMIT 1"))

    r = jobs("abort", "5")                     -- not started: cancelled
    assert.are.same({ 0, "cancelled job 5 (it had not started)\n" }, { r.code, r.out })
    assert.are.equal("cancelled true", status(5))      -- procrastinate_cancel_job_v1 sets the flag either way
    r = jobs("abort", "4")
    assert.are.same({ 1, "tarry: job 4 was not aborted: it is failed already\n" }, { r.code, r.err })
  end)
end)

describe("tarry jobs retry", function()
  local t = W.with_database(before_each, after_each)
  local function jobs(...) return run { "jobs", "--conninfo", db.conninfo(t.name), ... } end

  it("puts a failed job back to todo, now or later, on another queue, lock or priority", function()
    some_jobs(t.app)
    local r = jobs("retry", "4")
    assert.are.equal(0, r.code, r.err)
    assert.matches("^retried job 4: todo on queue q2, scheduled at %d%d%d%d%-[%d:T%-]+Z %(attempts: 2%)\n$", r.out)
    assert.are.same({ "todo", 2 }, W.state(t.name, 4))    -- procrastinate_retry_job_v2 counts an attempt
    assert.are.equal("t", column(t.name, "SELECT scheduled_at <= now() FROM procrastinate_jobs WHERE id = 4"))

    W.run(t.app, { log_stream = io.tmpfile() })                                   -- fails again
    assert.are.same({ "failed", 3 }, W.state(t.name, 4))
    r = jobs("retry", "4", "--in", "3600", "--queue", "later", "--priority", "-5", "--lock", "LL", "--json")
    assert.are.equal(0, r.code, r.err)
    local job = decode(r.out)
    assert.are.same({ 4, "todo", "later", -5, "LL" }, { job.id, job.status, job.queue, job.priority, job.lock })
    assert.are.equal("later -5 LL true", column(t.name, "SELECT queue_name || ' ' || priority || ' ' || lock || ' ' || "
      .. "(scheduled_at BETWEEN now() + interval '3500 s' AND now() + interval '3700 s') FROM procrastinate_jobs WHERE id = 4"))

    W.run(t.app, { queues = { "later" }, log_stream = io.tmpfile() })             -- not due yet: stays todo
    db.psql(t.name, "UPDATE procrastinate_jobs SET status = 'failed' WHERE id = 4")
    assert.are.equal(0, jobs("retry", "4", "--at", "2030-01-01T00:00:00Z").code)
    assert.are.equal("1893456000", column(t.name, "SELECT extract(epoch FROM scheduled_at)::bigint FROM "
      .. "procrastinate_jobs WHERE id = 4"))
  end)

  it("exits 1 with one line for a job it cannot retry, 2 for a wrong command line", function()
    some_jobs(t.app)
    local r = jobs("retry", "1")
    assert.are.same({ 1, "", "tarry: job 1 is succeeded: only failed jobs, and doing ones whose worker is gone (see "
      .. "jobs:stalled), can be retried\n" }, { r.code, r.out, r.err })
    r = jobs("retry", "999")
    assert.are.same({ 1, "tarry: job 999 does not exist\n" }, { r.code, r.err })
    r = jobs("retry", "4", "--at", "2030-01-01", "--in", "5")
    assert.are.same({ 2, "tarry: give --at or --in, not both\n" }, { r.code, r.err })
    assert.are.same({ "failed", 1 }, W.state(t.name, 4))
  end)
end)

describe("tarry jobs stalled", function()
  local t = W.with_database(before_each, after_each)

  it("lists the running jobs whose worker is silent for --seconds (default 30)", function()
    some_jobs(t.app)
    local store = Store.of(t.app.connector)
    local add = t.app.tasks.add
    local dead, live = store:register(30), store:register(30)
    local lost = add:defer{ a = 1, b = 1 }
    assert.are.same({ lost }, ids(store:fetch(nil, dead, 1)))
    local fine = add:defer{ a = 2, b = 1 }
    assert.are.same({ fine }, ids(store:fetch(nil, live, 1)))
    db.psql(t.name, "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = " .. dead)

    local function stalled(...)
      local r = run { "jobs", "stalled", "--conninfo", db.conninfo(t.name), ... }
      assert.are.equal(0, r.code, r.err)
      return r
    end
    local list = decode(stalled("--json").out)
    assert.are.same({ lost }, ids(list))
    assert.are.same({ "doing", dead }, { list[1].status, list[1].worker_id })
    local r = run { "jobs", "list", "--json", "--worker-id", tostring(live), "--conninfo", db.conninfo(t.name) }
    assert.are.same({ fine }, ids(decode(r.out)))
    assert.are.same({}, ids(decode(stalled("--json", "--seconds", "7200").out)))
    assert.are.same({}, ids(decode(stalled("--json", "--task", "boom").out)))
    local lines = lines_of(stalled().out)
    assert.are.equal(2, #lines)
    assert.matches("^ ?" .. lost .. "  add   doing  ", lines[2])
    assert.are.equal("no stalled jobs (no running job's worker is silent for 7200s)\n", stalled("--seconds", "7200").out)
  end)
end)

describe("tarry jobs delete-old", function()
  local t = W.with_database(before_each, after_each)
  local function count() return tonumber(column(t.name, "SELECT count(*) FROM procrastinate_jobs")) end

  it("deletes the finished jobs older than --max-hours and prints how many", function()
    some_jobs(t.app)
    db.psql(t.name, "UPDATE procrastinate_events SET at = at - interval '100 hours' WHERE job_id IN (1, 2, 4)")
    local r = run { "jobs", "delete-old", "--max-hours", "72", "--conninfo", db.conninfo(t.name) }
    assert.are.same({ 0, "deleted 2 jobs (succeeded, latest event older than 72 hours)\n", "" }, { r.code, r.out, r.err })
    assert.are.equal("3,4,5", column(t.name, "SELECT string_agg(id::text, ',' ORDER BY id) FROM procrastinate_jobs"))
    assert.are.equal("0", column(t.name, "SELECT count(*) FROM procrastinate_events WHERE job_id IN (1, 2)"))

    r = run({ "jobs", "delete-old", "--status", "cancelled,failed", "--queue", "q2", "--json" },
      { TARRY_CONNINFO = db.conninfo(t.name), TARRY_MAX_HOURS = "72" })
    assert.are.equal(0, r.code, r.err)
    local v = decode(r.out)
    assert.are.same({ 1, 72, "q2", { "cancelled", "failed" } }, { v.deleted, v.max_hours, v.queue, v.statuses })
    assert.are.equal(2, count())
    assert.are.equal("deleted 0 jobs (succeeded, latest event older than 72 hours)\n",
      run({ "jobs", "delete-old", "--max-hours", "72", "--conninfo", db.conninfo(t.name) }).out)
  end)

  it("needs --max-hours and finished statuses only", function()
    some_jobs(t.app)
    db.psql(t.name, "UPDATE procrastinate_events SET at = at - interval '100 hours'")
    local r = run { "jobs", "delete-old", "--conninfo", db.conninfo(t.name) }
    assert.are.same({ 2, "", "tarry: jobs delete-old needs --max-hours H (or TARRY_MAX_HOURS): the age of the jobs "
      .. "to delete\n" }, { r.code, r.out, r.err })
    r = run { "jobs", "delete-old", "--max-hours", "1", "--status", "todo", "--conninfo", db.conninfo(t.name) }
    assert.are.same({ 2, "tarry: --status: 'todo' is not one of succeeded, failed, cancelled, aborted\n" },
      { r.code, r.err })
    assert.are.equal(5, count())
  end)
end)

describe("tarry queues, tasks, locks and workers", function()
  local t = W.with_database(before_each, after_each)
  local function admin(...)
    local r = run { "--conninfo", db.conninfo(t.name), ... }
    assert.are.equal(0, r.code, r.err)
    return r
  end

  it("count the jobs per queue, task and lock and status", function()
    some_jobs(t.app)
    assert.are.same({
      { name = "math", jobs_count = 4, todo = 1, doing = 0, succeeded = 3, failed = 0, cancelled = 0, aborted = 0 },
      { name = "q2", jobs_count = 1, todo = 0, doing = 0, succeeded = 0, failed = 1, cancelled = 0, aborted = 0 },
    }, decode(admin("queues", "--json").out))
    assert.are.same({
      "QUEUE  JOBS  TODO  DOING  SUCCEEDED  FAILED  CANCELLED  ABORTED",
      "math      4     1      0          3       0          0        0",
      "q2        1     0      0          0       1          0        0",
    }, lines_of(admin("queues").out))
    local tasks = decode(admin("tasks", "--json", "--status", "succeeded").out)
    assert.are.same({ "add", 3 }, { tasks[1].name, tasks[1].jobs_count })
    assert.are.equal(1, #tasks)
    assert.matches("^TASK  JOBS", admin("tasks").out)
    assert.are.same({ { name = "L", jobs_count = 1, todo = 0, doing = 0, succeeded = 1, failed = 0, cancelled = 0,
      aborted = 0 } }, decode(admin("locks", "--json").out))
    assert.are.equal("no locks\n", admin("locks", "--queue", "q2").out)
  end)

  it("list the registered workers with their heartbeat and running jobs", function()
    assert.are.equal("no workers registered\n", admin("workers").out)
    assert.are.equal("[]\n", admin("workers", "--json").out)
    some_jobs(t.app)
    local store = Store.of(t.app.connector)
    local worker = store:register(30)
    t.app.tasks.add:defer{ a = 1, b = 1 }
    store:fetch(nil, worker, 1)
    local list = decode(admin("workers", "--json").out)
    assert.are.same({ worker, 1 }, { list[1].id, list[1].doing })
    assert.is_true(list[1].heartbeat_age < 3600 and list[1].last_heartbeat > 0)
    local lines = lines_of(admin("workers").out)
    assert.are.equal("WORKER  LAST_HEARTBEAT        SECONDS_AGO  DOING", lines[1])
    assert.matches("^ +" .. worker .. "  %d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ +[%d.]+ +1$", lines[2])
  end)
end)

describe("the admin commands' --app and --conninfo", function()
  local t = W.with_database(before_each, after_each)

  it("work on the app's connector, and a CLI conninfo replaces it as for defer", function()
    some_jobs(t.app)
    local other = db.fresh()
    local app = write_file(os.tmpname() .. ".lua", string.format([[
      local tarry = require "tarry"
      return tarry.App{ connector = tarry.SyncPgConnector{ conninfo = %q } }]], db.conninfo(other)))
    local r = run { "jobs", "list", "--json", "--app", app }
    assert.are.same({ 0, "[]\n" }, { r.code, r.out })
    r = run { "--conninfo", db.conninfo(t.name), "queues", "--json", "--app", app }
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(2, #decode(r.out))
    assert.matches("^tarry: using the conninfo of %-%-conninfo %(dbname=" .. t.name .. "%) instead of the app's "
      .. "<tarry%.SyncPgConnector dbname=" .. other, r.err)
    os.remove(app)
    db.drop(other)
  end)

  it("work on a MemoryConnector app too (its jobs live in the process)", function()
    local app = write_file(os.tmpname() .. ".lua", [[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.MemoryConnector() }
      app:task("hello", function() end):defer{ who = "you" }
      return app]])
    local r = run { "jobs", "show", "1", "--json", "--app", app }
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ "hello", "you", "todo" }, { decode(r.out).task_name, decode(r.out).args.who, decode(r.out).status })
    os.remove(app)
  end)
end)

describe("the admin commands' usage errors", function()
  it("exit 2 with one line on stderr and nothing on stdout", function()
    local cases = {
      { { "jobs" }, "jobs needs an action: list, show, stalled, cancel, abort, retry, delete%-old" },
      { { "jobs", "frobnicate" }, "unknown command 'frobnicate'" },
      { { "jobs", "show" }, "missing argument 'ID'" },
      { { "jobs", "show", "abc" }, "ID must be a whole number >= 1, got 'abc'" },
      { { "jobs", "cancel", "0" }, "ID must be a whole number >= 1, got '0'" },
      { { "jobs", "list", "--status", "done" }, "%-%-status: 'done' is not one of todo, doing, succeeded, failed, "
        .. "cancelled, aborted" },
      { { "jobs", "list", "--limit", "0" }, "%-%-limit must be a whole number >= 1, got '0'" },
      { { "jobs", "list", "--queue", "" }, "%-%-queue must not be empty" },
      { { "jobs", "retry", "1", "--at", "tomorrow" }, "%-%-at: " },
      { { "jobs", "retry", "1", "--priority", "x" }, "%-%-priority must be a whole number" },
      { { "jobs", "stalled", "--seconds", "-1" }, "%-%-seconds must be a number of seconds >= 0, got '%-1'" },
      { { "jobs", "delete-old", "--max-hours", "many" }, "%-%-max%-hours must be a number of hours >= 0, got 'many'" },
      { { "queues", "--lock" }, "option '%-%-lock' requires an argument" },
      { { "workers", "extra" }, "too many arguments" },
      { { "shell", "--json" }, "unknown option '%-%-json'" },
    }
    for _, c in ipairs(cases) do
      local r = run(c[1])
      assert.are.equal(2, r.code, table.concat(c[1], " ") .. ": " .. r.err)
      assert.are.equal("", r.out)
      assert.are.equal(1, r.err_lines, r.err)
      assert.matches("^tarry: .*" .. c[2], r.err)
    end
    local r = run({ "jobs", "list" }, { TARRY_LIMIT = "lots" })
    assert.are.same({ 2, "tarry: TARRY_LIMIT: --limit must be a whole number >= 1, got 'lots'\n" }, { r.code, r.err })
  end)
end)

describe("the admin commands' help and completions", function()
  local COMMANDS = { { "jobs" }, { "jobs", "list" }, { "jobs", "show" }, { "jobs", "cancel" }, { "jobs", "abort" },
    { "jobs", "retry" }, { "jobs", "stalled" }, { "jobs", "delete-old" }, { "queues" }, { "tasks" }, { "locks" },
    { "workers" }, { "shell" } }

  it("come from the parser: COMMAND --help, help COMMAND", function()
    for _, c in ipairs(COMMANDS) do
      local r = run { c[1], c[2] or "--help", c[2] and "--help" or nil }
      assert.are.equal(0, r.code, table.concat(c, " "))
      assert.matches("^Usage: tarry " .. table.concat(c, " "):gsub("%-", "%%-") .. " ", r.out)
    end
    assert.matches("^Usage: tarry jobs %[%-h%] <command>", run({ "help", "jobs" }).out)
    assert.truthy(run({ "jobs", "retry", "--help" }).out:find("--priority N", 1, true))
    for _, c in ipairs { "jobs", "queues", "workers", "shell" } do
      assert.matches("\n   " .. c .. " ", run({ "--help" }).out)
    end
  end)

  it("are named in README's command line section, every option of every command", function()
    local readme = read_file("README.md")
    for _, c in ipairs(COMMANDS) do
      local help = run({ c[1], c[2] or "--help", c[2] and "--help" or nil }).out
      assert.truthy(readme:find("tarry " .. table.concat(c, " "), 1, true), table.concat(c, " ") .. " is not in README.md")
      for option in help:gmatch("%s(%-%-[%w-]+)") do
        if option ~= "--help" then assert.truthy(readme:find(option, 1, true), option .. " is not in README.md") end
      end
    end
  end)

  it("complete the new commands and actions in bash", function()
    local bash = run({ "completion", "bash" }).out
    for _, word in ipairs { "jobs", "queues", "workers", "shell", "delete-old", "--after-id", "--max-hours" } do
      assert.truthy(bash:find(word, 1, true), word)
    end
    local script = write_file(os.tmpname(), bash .. [[
COMP_WORDS=(tarry jo); COMP_CWORD=1; _tarry; echo "${COMPREPLY[@]}"
COMP_WORDS=(tarry jobs de); COMP_CWORD=2; _tarry; echo "${COMPREPLY[@]}"
COMP_WORDS=(tarry jobs retry 4 --pr); COMP_CWORD=4; _tarry; echo "${COMPREPLY[@]}"
]])
    local p = io.popen("bash " .. q(script) .. " 2>&1")
    local out = p:read("a")
    p:close()
    os.remove(script)
    assert.are.equal("jobs\ndelete-old\n--priority\n", out)
  end)
end)

describe("tarry shell", function()
  local t = W.with_database(before_each, after_each)

  local function session(text, argv, env)
    local input = write_file(os.tmpname(), text)
    local r = run({ "shell", table.unpack(argv or { "--conninfo", db.conninfo(t.name) }) }, env, nil, input)
    os.remove(input)
    return r
  end

  it("runs lines from stdin with app, jobs and tarry preloaded, printing results", function()
    some_jobs(t.app)
    local r = session(table.concat({
      "print(jobs:get(1))",
      "jobs:get(4).status, jobs:get(4).attempts",
      "tostring(app.connector):match('^<tarry.PgConnector')",
      "tarry.version",
      "x = 40",
      "x + 2",
      "jobs:get(2).args",
      "#jobs:list{ status = 'succeeded' }",
      "jobs:get(999)",
      "jobs:cancel(5)",
    }, "\n") .. "\n")
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.err)
    assert.are.same({
      "<tarry.Job #1 add succeeded queue=math attempts=1>",
      "failed\t1",
      "<tarry.PgConnector",
      tarry.version,
      "42",
      '{ a = 2, b = 2 }',
      "3",
      "nil",
      "true",
    }, lines_of(r.out))
    assert.are.equal("cancelled", column(t.name, "SELECT status FROM procrastinate_jobs WHERE id = 5"))
  end)

  it("reads a chunk over several lines, as lua5.4 does, and shows lists one item per line", function()
    some_jobs(t.app)
    local r = session([[
for i = 1, 2 do
  print("line", i)
end
function f(a,
                 b)
  return a * b
end
print(f(6,
  7))
jobs:list{ limit = 3 }
]])
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.err)
    assert.are.equal(table.concat({ "line\t1", "line\t2", "42", "{",
      "  <tarry.Job #1 add succeeded queue=math attempts=1>,",
      "  <tarry.Job #2 add succeeded queue=math attempts=1>,",
      "  <tarry.Job #3 add succeeded queue=math attempts=1>,",
      "}\t3", "" }, "\n"), r.out)                  -- and the next page's after_id
  end)

  it("prints an error on stderr and goes on; ends at the end of input", function()
    local r = session(table.concat({
      "error('boom')",
      "jobs:get('x')",
      "error(setmetatable({}, { __tostring = function() return 'an object' end }))",
      "error({})",
      "y = 1 +",
      "+ 2",
      "1 +",
      "print('still here')",
      "if true then",
    }, "\n") .. "\n")
    assert.are.equal(0, r.code)
    assert.are.equal("still here\n", r.out)
    assert.are.same({
      "stdin:1: boom",
      "jobs:get: the job id must be an integer, got x",     -- a tail call: no line, as in lua5.4
      "an object",
      "(error object is a table value)",
      "stdin:2: unexpected symbol near '+'",
      "stdin:1: unexpected symbol near '1'",
      "stdin:1: 'end' expected near <eof>",
    }, lines_of(r.err))
  end)

  it("loads --app, whose tasks and connector it uses", function()
    local app = write_file(os.tmpname() .. ".lua", [[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.MemoryConnector() }
      app:task("hello", function(args) return args.who end)
      return app]])
    local r = session([[
app.tasks.hello:defer{ who = "you" }
app:run_worker{ wait = false, install_signal_handlers = false, log_level = "error" }
jobs:get(1)
]], { "--app", app })
    os.remove(app)
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ "1", "<tarry.Job #1 hello succeeded queue=default attempts=1>" }, lines_of(r.out))
  end)
end)
