-- --query-timeout S (TARRY_QUERY_TIMEOUT), on every command that takes --conninfo: the default
-- query_timeout of every connector that does not set its own, the CLI's and the --app file's
-- (README "Connection options and failures", "The command line").
local db = require "support.db"
local proc = require "support.process"
local cli = require "support.cli"
local run, run_on = cli.run, cli.run_on

local COMMANDS = { { "worker" }, { "defer" }, { "schema" }, { "healthchecks" }, { "jobs", "list" },
  { "jobs", "retry" }, { "queues" }, { "workers" }, { "shell" }, { "dashboard" } }

local LATE = "no answer from PostgreSQL within 1 s %(query_timeout%): connection dropped"

local function count_jobs(name)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
end

local function with_database()
  local ctx = {}
  before_each(function() ctx.name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(ctx.name) end)
  return ctx
end

describe("--query-timeout", function()
  it("is an option, with its help, of every command that takes --conninfo, and in the completions", function()
    for _, argv in ipairs(COMMANDS) do
      local words = { table.unpack(argv) }
      words[#words + 1] = "--help"
      local r = run(words)
      assert.are.equal(0, r.code, table.concat(argv, " "))
      assert.matches("%-%-query%-timeout S +Seconds a database query may wait for its answer", r.out)
    end
    local help = run { "run", "--help" }
    assert.is_nil(help.out:find("--query-timeout", 1, true))          -- a script makes its own connectors
    for _, shell in ipairs { "bash", "zsh", "fish" } do
      assert.truthy(run({ "completion", shell }).out:find("query-timeout", 1, true), shell)
    end
  end)
end)

describe("a malformed --query-timeout", function()
  local ctx = with_database()

  it("is one line on stderr and exit 2, from the flag or TARRY_QUERY_TIMEOUT, and nothing is deferred", function()
    local cases = {
      { { "defer", "--query-timeout", "soon", "add" }, nil,
        "^tarry: %-%-query%-timeout must be a number of seconds >= 0, got 'soon'\n$" },
      { { "defer", "--query-timeout=-1", "add" }, nil,
        "^tarry: %-%-query%-timeout must be a number of seconds >= 0, got '%-1'\n$" },
      { { "defer", "--query-timeout", "1e7", "add" }, nil,
        "^tarry: %-%-query%-timeout must be at most 1000000 seconds, got '1e7'\n$" },
      { { "defer", "--query-timeout", "nan", "add" }, nil, "^tarry: %-%-query%-timeout must be a number of seconds" },
      { { "defer", "--query-timeout" }, nil, "^tarry: option '%-%-query%-timeout' requires an argument\n$" },
      { { "defer", "add" }, { TARRY_QUERY_TIMEOUT = "abc" },
        "^tarry: TARRY_QUERY_TIMEOUT: %-%-query%-timeout must be a number of seconds >= 0, got 'abc'\n$" },
    }
    for _, case in ipairs(cases) do
      local r = run_on(ctx.name, case[1], case[2])
      local what = table.concat(case[1], " ")
      assert.are.equal(2, r.code, what)
      assert.are.equal(1, r.err_lines, what .. ": " .. r.err)
      assert.matches(case[3], r.err)
      assert.are.equal("", r.out, what)
    end
    assert.are.equal(0, count_jobs(ctx.name))
  end)

  it("in the environment of a script is a clear error when it makes a connector that sets none", function()
    local script = cli.write_file(os.tmpname() .. ".lua", 'local tarry = require "tarry"\n'
      .. 'tarry.SyncPgConnector{ conninfo = "dbname=x" }\n')
    local r = run({ "run", script }, { TARRY_QUERY_TIMEOUT = "abc" })
    os.remove(script)
    assert.are.equal(1, r.code, r.err)
    assert.matches("option 'query_timeout': TARRY_QUERY_TIMEOUT in the environment must be a number of seconds "
      .. "from 0 to 1000000, got 'abc'", r.err)
  end)
end)

describe("a query that outlasts --query-timeout", function()
  local ctx = with_database()

  -- Another session holds an ACCESS EXCLUSIVE lock on the jobs table for a minute: every query on
  -- it waits. Returns once the lock is granted.
  local function lock_jobs_table()
    proc.spawn(string.format("psql -X -q -d %s -c %s", db.shell_quote(ctx.name), db.shell_quote(
      "BEGIN; LOCK TABLE procrastinate_jobs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT")))
    proc.until_true(function()
      return db.value(ctx.name, "SELECT count(*) FROM pg_locks WHERE relation = 'procrastinate_jobs'::regclass "
        .. "AND mode = 'AccessExclusiveLock' AND granted") == "1"
    end, 30, "the other session's lock")
  end

  it("fails a command with the timeout error, one line on stderr and exit 1 (flag and TARRY_QUERY_TIMEOUT)",
     function()
    lock_jobs_table()
    for _, case in ipairs { { { "jobs", "list", "--query-timeout", "1" } },
                            { { "queues" }, { TARRY_QUERY_TIMEOUT = "1" } },
                            { { "tasks", "--query-timeout", "1" } } } do
      local r = run_on(ctx.name, case[1], case[2])
      local what = table.concat(case[1], " ")
      assert.are.equal(1, r.code, what .. ": " .. r.err)
      assert.are.equal(1, r.err_lines, what .. ": " .. r.err)
      assert.matches("^tarry: connection: " .. LATE .. "\n$", r.err)
    end
  end)

  it("is the default of an --app's connector that sets no query_timeout; one that sets its own keeps it", function()
    lock_jobs_table()
    local plain = proc.app_file(ctx.name, 'app:task("add", function() end)')
    local r = run({ "jobs", "list", "--app", plain, "--query-timeout", "1" })
    assert.are.equal(1, r.code, r.err)
    assert.matches("^tarry: connection: " .. LATE .. "\n$", r.err)
    local own = proc.app_file(ctx.name, 'app:task("add", function() end)', { connector = { query_timeout = 1 } })
    r = run({ "tasks", "--app", own, "--query-timeout", "600" })          -- the app's 1 s, not 600 s
    assert.are.equal(1, r.code, r.err)
    assert.matches("^tarry: connection: " .. LATE .. "\n$", r.err)
  end)

  it("fails a worker's job whose query outlasts it, with the timeout error recorded, and the worker goes on",
     function()
    local app = proc.app_file(ctx.name, [[
app:task("slow", function(args, ctx) ctx.app.connector:execute("SELECT pg_sleep(60)") end)
app:task("quick", function() end)
]])
    local ids = db.value(ctx.name, [[SELECT string_agg(id::text, ',' ORDER BY id) FROM unnest(procrastinate_defer_jobs_v1(
      ARRAY[ROW('default', 'slow', 1, NULL, NULL, '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1,
            ROW('default', 'quick', 0, NULL, NULL, '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])) AS id]])
    local slow, quick = ids:match("^(%d+),(%d+)$")
    local w = proc.start(string.format("worker --app %s --conninfo %s --query-timeout 1 --one-shot --log-level warning",
      app, db.shell_quote(db.conninfo(ctx.name))))
    assert.are.equal(0, w:wait(60), w:output())
    assert.are.same({ { slow, "failed" }, { quick, "succeeded" } },
      db.rows(ctx.name, "SELECT id, status FROM procrastinate_jobs ORDER BY id"))
    assert.matches(LATE, db.value(ctx.name, "SELECT message FROM tarry_job_errors_v1 WHERE job_id = " .. slow))
  end)
end)
