-- The `tarry` command line, run as a user runs it: its output, its exit code, and the rows it
-- leaves in PostgreSQL. Exit codes: 0 done, 1 the work failed, 2 the command line is wrong.
local tarry = require "tarry"
local db = require "support.db"

local cli = require "support.cli"
local run, run_on, read_file, write_file = cli.run, cli.run_on, cli.read_file, cli.write_file
local q = db.shell_quote

local function count_jobs(name)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
end

--- The newest job's columns, as psql prints them (NULL is "").
local function last_job(name)
  return db.rows(name, "SELECT id, queue_name, task_name, priority, lock, queueing_lock, args::text "
    .. "FROM procrastinate_jobs ORDER BY id DESC LIMIT 1")[1]
end

local function fresh_database(opts)
  local ctx = {}
  before_each(function() ctx.name = db.fresh(opts) end)
  after_each(function() db.drop(ctx.name) end)
  return ctx
end

describe("tarry --help, help and version", function()
  it("print the usage on stdout and exit 0", function()
    for _, argv in ipairs { { "--help" }, { "-h" }, { "help" } } do
      local r = run(argv)
      assert.are.equal(0, r.code)
      assert.matches("^Usage: tarry %[%-h%] %[%-%-version%] %[%-%-conninfo CONNINFO%]", r.out)
      for _, command in ipairs { "worker", "defer", "schema", "healthchecks", "run", "help", "version", "completion" } do
        assert.matches("\n   " .. command .. " ", r.out)
      end
      assert.are.equal("", r.err)
    end
  end)

  it("print the version tarry was built as", function()
    for _, argv in ipairs { { "version" }, { "--version" } } do
      local r = run(argv)
      assert.are.equal(0, r.code)
      assert.are.equal("tarry " .. tarry.version .. "\n", r.out)
    end
  end)

  it("print the usage on stderr and exit 2 when no command is given", function()
    local r = run {}
    assert.are.equal(2, r.code)
    assert.are.equal("", r.out)
    assert.matches("^Usage: tarry", r.err)
  end)
end)

describe("tarry defer", function()
  local ctx = fresh_database()

  it("defers one job of the task with the JSON arguments and prints its id", function()
    local r = run_on(ctx.name, { "defer", "add", '{"a": 1, "b": [2, 3], "c": {"d": null}}' })
    assert.are.equal(0, r.code)
    local row = last_job(ctx.name)
    assert.are.equal('deferred job ' .. row[1] .. ': add {"a":1,"b":[2,3],"c":{"d":null}}\n', r.out)
    assert.are.same({ "default", "add", "0", "", "", '{"a": 1, "b": [2, 3], "c": {"d": null}}' },
      { table.unpack(row, 2) })
    assert.are.equal("", r.err)
  end)

  it("defers with empty arguments when no JSON is given", function()
    assert.are.equal(0, run_on(ctx.name, { "defer", "ping" }).code)
    assert.are.equal("{}", last_job(ctx.name)[7])
  end)

  it("lands the job with --queue, --lock, --queueing-lock and --priority, in both spellings", function()
    assert.are.equal(0, run_on(ctx.name, { "defer", "--queue", "q", "--lock", "l", "--queueing-lock", "ql",
      "--priority", "5", "add", '{"a":1}' }).code)
    assert.are.same({ "q", "add", "5", "l", "ql", '{"a": 1}' }, { table.unpack(last_job(ctx.name), 2) })
    assert.are.equal(0, run_on(ctx.name, { "defer", "--queue=r", "--priority=-2", "add" }).code)
    assert.are.same({ "r", "add", "-2" }, { table.unpack(last_job(ctx.name), 2, 4) })
  end)

  it("schedules the job --at a date-time or --in seconds", function()
    assert.are.equal(0, run_on(ctx.name, { "defer", "--at", "2030-01-01T00:00:00Z", "add" }).code)
    assert.are.equal("1893456000.000000", db.value(ctx.name, "SELECT extract(epoch from scheduled_at) "
      .. "FROM procrastinate_jobs ORDER BY id DESC LIMIT 1"))
    assert.are.equal(0, run_on(ctx.name, { "defer", "--in", "30", "add" }).code)
    assert.are.equal("t", db.value(ctx.name, "SELECT scheduled_at BETWEEN now() + interval '25 s' AND now() + "
      .. "interval '35 s' FROM procrastinate_jobs ORDER BY id DESC LIMIT 1"))
  end)

  it("refuses arguments PostgreSQL cannot store as malformed JSON arguments, exit 2", function()
    local r = run_on(ctx.name, { "defer", "add", '{"s": "a\\u0000b"}' })
    assert.are.equal(2, r.code)
    assert.are.equal("tarry: JSON arguments: args.s: NUL byte in string at byte 2 (PostgreSQL's jsonb rejects "
      .. "\\u0000)\n", r.err)
    assert.are.equal(0, count_jobs(ctx.name))
  end)
end)

describe("tarry defer --at", function()
  local ctx = fresh_database()

  local function epoch_of(at)
    local r = run_on(ctx.name, { "defer", "--at", at, "add" })
    assert.are.equal(0, r.code, r.err)
    return db.value(ctx.name, "SELECT extract(epoch from scheduled_at) FROM procrastinate_jobs ORDER BY id DESC LIMIT 1")
  end

  it("reads ISO 8601 dates and date-times, UTC unless an offset is given", function()
    assert.are.equal("1893456000.000000", epoch_of("2030-01-01"))
    assert.are.equal("1893456000.000000", epoch_of("2030-01-01T00:00"))
    assert.are.equal("1893456000.000000", epoch_of("2030-01-01 00:00:00"))
    assert.are.equal("1893456000.000000", epoch_of("2030-01-01T02:00:00+02:00"))
    assert.are.equal("1893456000.000000", epoch_of("2029-12-31T19:00:00-0500"))
    assert.are.equal("1893456000.000000", epoch_of("2030-01-01T01:00:00+01"))
    assert.are.equal("1893456000.250000", epoch_of("2030-01-01T00:00:00.25Z"))
    assert.are.equal("951782400.000000", epoch_of("2000-02-29T00:00:00Z"))
  end)

  it("refuses what is not a date-time, with one line and exit 2", function()
    for _, at in ipairs { "tomorrow", "2030-02-30", "2031-02-29", "2030-13-01", "2030-01-01T24:00:00Z",
      "2030-01-01T00:00:001Z", "2030-01-01T00:00:00.Z", "2030-01-01T00:00:00+1" } do
      local r = run_on(ctx.name, { "defer", "--at", at, "add" })
      assert.are.equal(2, r.code, at)
      assert.are.equal(1, r.err_lines, at)
      assert.matches("^tarry: %-%-at: ", r.err)
    end
    assert.are.equal(0, count_jobs(ctx.name))
  end)
end)

describe("tarry defer --app", function()
  local ctx = fresh_database()
  local app_file
  before_each(function()
    app_file = os.tmpname()
    write_file(app_file, string.format([[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = %q } }
      app:task("known", { queue = "app_queue", priority = 4 }, function() end)
      return app
    ]], db.conninfo(ctx.name)))
  end)
  after_each(function() os.remove(app_file) end)

  it("defers a task of the app with the task's options, through the app's connector", function()
    local r = run { "defer", "--app", app_file, "known", '{"x":1}' }
    assert.are.equal(0, r.code)
    assert.are.same({ "app_queue", "known", "4", "", "", '{"x": 1}' }, { table.unpack(last_job(ctx.name), 2) })
    assert.are.equal(0, run({ "defer", "--app", app_file, "--queue", "other", "known" }).code)
    assert.are.same({ "other", "known", "4" }, { table.unpack(last_job(ctx.name), 2, 4) })
  end)

  it("refuses a task the app does not know (exit 2) unless --unknown is given", function()
    local r = run { "defer", "--app", app_file, "stranger", '{"x":1}' }
    assert.are.equal(2, r.code)
    assert.are.equal(1, r.err_lines)
    assert.matches('task "stranger" is not in .* %(pass %-%-unknown to defer it anyway%)', r.err)
    assert.are.equal(0, count_jobs(ctx.name))
    assert.are.equal(0, run({ "defer", "--app", app_file, "--unknown", "stranger", '{"x":1}' }).code)
    assert.are.same({ "default", "stranger" }, { table.unpack(last_job(ctx.name), 2, 3) })
  end)

  it("refuses a file that does not return an app, with one line and exit 2", function()
    write_file(app_file, "return 42")
    local r = run { "defer", "--app", app_file, "known" }
    assert.are.equal(2, r.code)
    assert.are.equal("tarry: --app " .. app_file .. " must return a tarry.App (it returned number)\n", r.err)
  end)
end)

describe("tarry defer with a queueing lock already taken", function()
  local ctx = fresh_database()
  before_each(function()
    assert.are.equal(0, run_on(ctx.name, { "defer", "--queueing-lock", "once", "add", '{"n":1}' }).code)
  end)

  it("fails with exit 1 and one already_enqueued line on stderr", function()
    local r = run_on(ctx.name, { "defer", "--queueing-lock", "once", "add", '{"n":2}' })
    assert.are.equal(1, r.code)
    assert.are.equal("", r.out)
    assert.are.equal("tarry: already_enqueued: a job with the same queueing lock is already waiting "
      .. "(Key (queueing_lock)=(once) already exists.) (SQLSTATE 23505)\n", r.err)
    assert.are.equal(1, count_jobs(ctx.name))
  end)

  it("succeeds with exit 0 and inserts nothing when --ignore-already-enqueued is given", function()
    local r = run_on(ctx.name, { "defer", "--queueing-lock", "once", "--ignore-already-enqueued", "add", '{"n":2}' })
    assert.are.equal(0, r.code)
    assert.are.equal('not deferred: a job of task add with queueing lock "once" is already waiting\n', r.out)
    assert.are.equal("", r.err)
    assert.are.equal(1, count_jobs(ctx.name))
  end)
end)

describe("a wrong command line", function()
  local ctx = fresh_database()

  it("prints exactly one line on stderr, nothing on stdout, exits 2 and defers nothing", function()
    local cases = {
      { { "defer", "add", '{"a":' }, "^tarry: JSON arguments are malformed: invalid JSON: " },
      { { "defer", "add", "[1, 2]" }, "^tarry: JSON arguments must be an object" },
      { { "defer", "add", "5" }, "^tarry: JSON arguments must be an object" },
      { { "defer", "add", '"text"' }, "^tarry: JSON arguments must be an object" },
      { { "defer", "add", "null" }, "^tarry: JSON arguments must be an object" },
      { { "defer", "--bogus", "add" }, "^tarry: unknown option '%-%-bogus'\n$" },
      { { "defer", "-x", "add" }, "^tarry: unknown option '%-x'" },
      { { "defer", "add", "--queue" }, "^tarry: option '%-%-queue' requires an argument\n$" },
      { { "defer", "--ignore-already-enqueued=yes", "add" }, "^tarry: option '%-%-ignore%-already%-enqueued' does not take arguments" },
      { { "frobnicate" }, "^tarry: unknown command 'frobnicate'\n$" },
      { { "defer" }, "^tarry: missing argument 'TASK'\n$" },
      { { "defer", "add", "{}", "extra" }, "^tarry: too many arguments\n$" },
      { { "defer", "" }, '^tarry: TASK must be a string of 1 to 128 characters, got ""\n$' },
      { { "defer", "--priority", "high", "add" }, "^tarry: %-%-priority must be a whole number from %-2147483648 to 2147483647, got 'high'\n$" },
      { { "defer", "--priority", "99999999999", "add" }, "%-%-priority must be a whole number from" },
      { { "defer", "--queue", string.rep("q", 41), "add" }, "^tarry: %-%-queue: a queue name is 1 to 40 bytes" },
      { { "defer", "--in", "soon", "add" }, "^tarry: %-%-in must be a number of seconds >= 0, got 'soon'\n$" },
      { { "defer", "--in", "1e999", "add" }, "^tarry: %-%-in must be a number of seconds >= 0, got '1e999'\n$" },
      { { "defer", "--in", "3", "--at", "2030-01-01", "add" }, "^tarry: give %-%-at or %-%-in, not both\n$" },
      { { "schema" }, "^tarry: schema needs exactly one of %-%-apply or %-%-read\n$" },
      { { "schema", "--apply", "--read" }, "^tarry: schema needs exactly one of" },
      { { "run" }, "^tarry: missing argument 'SCRIPT'\n$" },
      { { "run", "/nonexistent/script.lua" }, "^tarry: cannot load /nonexistent/script.lua: " },
    }
    for _, case in ipairs(cases) do
      local r = case[1][1] == "run" and run(case[1]) or run_on(ctx.name, case[1])   -- run takes no --conninfo
      local what = table.concat(case[1], " ")
      assert.are.equal(2, r.code, what)
      assert.are.equal(1, r.err_lines, what .. ": " .. r.err)
      assert.matches(case[2], r.err)
      assert.are.equal("", r.out, what)
    end
    for _, argv in ipairs { { "--frob", "defer", "add" }, { "--conninfo" } } do
      local r = run(argv)
      assert.are.equal(2, r.code)
      assert.are.equal(1, r.err_lines)
    end
    assert.are.equal(0, count_jobs(ctx.name))
  end)
end)

describe("TARRY_<OPTION> environment variables", function()
  local ctx = fresh_database()

  it("stand in for options missing from the command line", function()
    assert.are.equal(0, run({ "defer", "add" }, { TARRY_CONNINFO = db.conninfo(ctx.name), TARRY_QUEUE = "envq",
      TARRY_PRIORITY = "3", TARRY_LOCK = "envlock", TARRY_QUEUEING_LOCK = "envql" }).code)
    assert.are.same({ "envq", "add", "3", "envlock", "envql" }, { table.unpack(last_job(ctx.name), 2, 6) })
  end)

  it("lose to the command line", function()
    local r = run({ "--conninfo", db.conninfo(ctx.name), "defer", "--queue", "cli", "add" },
      { TARRY_CONNINFO = "host=127.0.0.1 port=1 dbname=nowhere", TARRY_QUEUE = "envq" })
    assert.are.equal(0, r.code)
    assert.are.equal("cli", last_job(ctx.name)[2])
  end)

  it("set flags, unless they are 0 or false", function()
    run_on(ctx.name, { "defer", "--queueing-lock", "once", "add" })
    assert.are.equal(0, run_on(ctx.name, { "defer", "--queueing-lock", "once", "add" },
      { TARRY_IGNORE_ALREADY_ENQUEUED = "1" }).code)
    assert.are.equal(1, run_on(ctx.name, { "defer", "--queueing-lock", "once", "add" },
      { TARRY_IGNORE_ALREADY_ENQUEUED = "false" }).code)
    assert.are.equal(1, count_jobs(ctx.name))
  end)

  it("schedule the job with TARRY_AT", function()
    assert.are.equal(0, run_on(ctx.name, { "defer", "add" }, { TARRY_AT = "2030-01-01T00:00:00Z" }).code)
    assert.are.equal("1893456000.000000", db.value(ctx.name, "SELECT extract(epoch from scheduled_at) "
      .. "FROM procrastinate_jobs ORDER BY id DESC LIMIT 1"))
  end)
end)

describe("tarry schema", function()
  local ctx = fresh_database { schema = false }

  --- A fingerprint of every object in the database: changes if anything is created or re-created.
  local function catalog(name)
    return db.value(name, [[SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
      SELECT 'c' || oid || relname AS x FROM pg_class WHERE relnamespace = 'public'::regnamespace
      UNION ALL SELECT 'p' || oid || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
      UNION ALL SELECT 't' || oid || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace
      UNION ALL SELECT 'g' || oid || tgname FROM pg_trigger WHERE NOT tgisinternal) AS objects]])
  end

  it("--read prints the SQL of the schema, schema.sql as shipped", function()
    local r = run { "schema", "--read" }
    assert.are.equal(0, r.code)
    assert.are.equal(read_file("lua/tarry/schema.sql"), r.out)
    assert.matches("procrastinate_defer_jobs_v1", r.out)
  end)

  it("--apply creates the schema in an empty database, and a second --apply changes nothing", function()
    local empty = catalog(ctx.name)
    local r = run_on(ctx.name, { "schema", "--apply" })
    assert.are.equal(0, r.code)
    assert.are.equal("schema applied\n", r.out)
    assert.are.equal("0", db.value(ctx.name, "SELECT count(*) FROM procrastinate_jobs"))
    local applied = catalog(ctx.name)
    assert.are_not.equal(empty, applied)
    r = run_on(ctx.name, { "schema", "--apply" })
    assert.are.equal(0, r.code)
    assert.matches("^schema already present %(tarry%): nothing changed\n$", r.out)
    assert.are.equal(applied, catalog(ctx.name))
    assert.are.equal(0, run_on(ctx.name, { "defer", "add" }).code)
  end)
end)

describe("tarry healthchecks", function()
  local ctx = fresh_database()

  it("reports the connection and the jobs table and exits 0", function()
    local r = run_on(ctx.name, { "healthchecks" })
    assert.are.equal(0, r.code)
    assert.are.equal("Database connection: OK\nSchema: OK (tarry)\n", r.out)
    assert.are.equal("", r.err)
  end)

  it("exits 1 on a database without the schema", function()
    local bare = db.fresh { schema = false }
    local r = run_on(bare, { "healthchecks" })
    db.drop(bare)
    assert.are.equal(1, r.code)
    assert.are.equal("Database connection: OK\n", r.out)
    assert.are.equal("tarry: schema: not found: apply it with `tarry schema --apply`\n", r.err)
    assert.are.equal(1, r.err_lines)
  end)
end)

describe("a database that is down", function()
  local DOWN = "host=127.0.0.1 port=1 dbname=x"

  it("makes every command that needs it exit 1 with one connection line on stderr", function()
    for _, argv in ipairs { { "defer", "add" }, { "healthchecks" }, { "schema", "--apply" } } do
      local r = run({ "--conninfo", DOWN, table.unpack(argv) })
      local what = table.concat(argv, " ")
      assert.are.equal(1, r.code, what)
      assert.are.equal(1, r.err_lines, what .. ": " .. r.err)
      assert.matches("^tarry: connection: cannot connect to PostgreSQL: .*127%.0%.0%.1", r.err)
      assert.are.equal("", r.out, what)
    end
  end)
end)

describe("tarry run", function()
  local ctx = fresh_database()
  local script
  before_each(function() script = os.tmpname() end)
  after_each(function() os.remove(script) end)

  it("runs a Lua script with arg and ... set, where require 'tarry' works", function()
    write_file(script, [[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.SyncPgConnector{ conninfo = os.getenv("TARRY_CONNINFO") } }
      app:configure_task("from_script"):defer{ args = { arg[1], arg[2] } }
      io.write(select("#", ...), "|", table.concat({ ... }, "|"), "|", arg[1], "|", arg[2], "\n")
    ]])
    local r = run({ "run", script, "a", "b c" }, { TARRY_CONNINFO = db.conninfo(ctx.name) })
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("2|a|b c|a|b c\n", r.out)
    assert.are.same({ "default", "from_script", "0", "", "", '{"args": ["a", "b c"]}' },
      { table.unpack(last_job(ctx.name), 2) })
  end)

  it("sets arg[0] to the script and exits with the integer the script returns", function()
    write_file(script, "io.write(arg[0]) return 3")
    local r = run { "run", script }
    assert.are.equal(3, r.code)
    assert.are.equal(script, r.out)
  end)

  it("exits 1 with the error when the script fails", function()
    write_file(script, "error('boom')")
    local r = run { "run", script }
    assert.are.equal(1, r.code)
    assert.matches(":1: boom", r.err)
  end)
end)
