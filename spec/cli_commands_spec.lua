-- The command line as a new user meets it (issue 7): help per command, what --conninfo does with
-- --app, what belongs to a script, errors without tarry's internals, --json, --from, completions.
local db = require "support.db"

local cli = require "support.cli"
local BIN = cli.BIN
local run, read_file, write_file = cli.run, cli.read_file, cli.write_file
local q = db.shell_quote

local function tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir)))
  return dir
end

local function fresh_database()
  local ctx = {}
  before_each(function() ctx.name = db.fresh(); ctx.dir = tmpdir() end)
  after_each(function() db.drop(ctx.name); os.execute("rm -rf " .. q(ctx.dir)) end)
  return ctx
end

local function count_jobs(name, where)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs " .. (where or "")))
end

describe("help for one command", function()
  it("comes from tarry CMD --help, -h and tarry help CMD, on stdout, exit 0", function()
    for _, command in ipairs { "worker", "defer", "schema", "healthchecks", "run", "completion" } do
      for _, argv in ipairs { { command, "--help" }, { command, "-h" }, { "help", command } } do
        local r = run(argv)
        assert.are.equal(0, r.code, table.concat(argv, " "))
        assert.matches("^Usage: tarry " .. command .. " ", r.out)
        assert.are.equal("", r.err)
      end
    end
    local r = run { "worker", "--help" }
    for _, option in ipairs { "--app", "--queues", "--concurrency", "--one-shot", "--no-listen-notify",
      "--delete-jobs", "--shutdown-graceful-timeout", "--fetch-job-polling-interval", "--log-format", "--log-level",
      "--verbose", "--conninfo" } do
      assert.truthy(r.out:find(option, 1, true), option)
    end
    r = run { "defer", "--help" }
    for _, option in ipairs { "--from", "--json", "--unknown", "--at", "--in", "--ignore-already-enqueued" } do
      assert.truthy(r.out:find(option, 1, true), option)
    end
  end)

  it("even where the command's own arguments are missing", function()
    local r = run { "defer", "--queue", "q", "--help" }
    assert.are.equal(0, r.code)
    assert.matches("^Usage: tarry defer ", r.out)
  end)

  it("refuses an unknown topic as a usage error", function()
    local r = run { "help", "frobnicate" }
    assert.are.equal(2, r.code)
    assert.are.equal(1, r.err_lines)
  end)

  it("names every option of the help in README's command line section", function()
    local readme = read_file("README.md")
    for _, command in ipairs { "worker", "defer" } do
      for option in run({ command, "--help" }).out:gmatch("%s(%-%-[%w-]+)") do
        if option ~= "--help" then assert.truthy(readme:find(option, 1, true), option .. " is not in README.md") end
      end
    end
  end)
end)

describe("shell completions", function()
  it("are generated from the parser for bash, zsh and fish", function()
    local bash = run { "completion", "bash" }
    assert.are.equal(0, bash.code)
    assert.matches("complete %-F _tarry", bash.out)
    for _, word in ipairs { "worker", "defer", "--queueing-lock", "--one-shot", "never successful always" } do
      assert.truthy(bash.out:find(word, 1, true), word)
    end
    local zsh = run { "completion", "zsh" }
    assert.matches("^#compdef tarry", zsh.out)
    assert.truthy(zsh.out:find("--from", 1, true))
    local fish = run { "completion", "fish" }
    assert.matches("complete %-c tarry", fish.out)
    assert.truthy(fish.out:find("healthchecks", 1, true))
  end)

  it("load in bash and complete a command and an option's values", function()
    local script = os.tmpname()
    write_file(script, run({ "completion", "bash" }).out .. [[
COMP_WORDS=(tarry wor); COMP_CWORD=1; _tarry; echo "${COMPREPLY[@]}"
COMP_WORDS=(tarry worker --delete-jobs s); COMP_CWORD=3; _tarry; echo "${COMPREPLY[@]}"
]])
    local p = io.popen("bash " .. q(script) .. " 2>&1")
    local out = p:read("a")
    p:close()
    os.remove(script)
    assert.are.equal("worker workers\nsuccessful\n", out)
  end)
end)

describe("--conninfo with --app", function()
  local ctx = fresh_database()

  local function app_on(conninfo, kind)
    return write_file(ctx.dir .. "/app.lua", string.format([[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.%s{ conninfo = %q } }
      app:task("mark", function(args) assert(args.n) end)
      return app
    ]], kind or "PgConnector", conninfo))
  end

  it("replaces the conninfo of the app's connector for defer, and says so on stderr", function()
    local other = db.fresh()
    local app = app_on(db.conninfo(other))
    for _, how in ipairs { "flag", "env" } do
      local r = how == "flag" and run { "--conninfo", db.conninfo(ctx.name), "defer", "--app", app, "mark", '{"n":1}' }
        or run({ "defer", "--app", app, "mark", '{"n":1}' }, { TARRY_CONNINFO = db.conninfo(ctx.name) })
      assert.are.equal(0, r.code, r.err)
      assert.matches("^tarry: using the conninfo of " .. (how == "flag" and "%-%-conninfo" or "TARRY_CONNINFO")
        .. " %(dbname=" .. ctx.name .. "%) instead of the app's <tarry%.PgConnector dbname=" .. other, r.err)
    end
    assert.are.equal(2, count_jobs(ctx.name))
    assert.are.equal(0, count_jobs(other))
    db.drop(other)
  end)

  it("makes the worker run the jobs of the database it was given", function()
    local other = db.fresh()
    assert.are.equal(0, run({ "--conninfo", db.conninfo(ctx.name), "defer", "mark", '{"n":1}' }).code)
    assert.are.equal(0, run({ "--conninfo", db.conninfo(other), "defer", "stranger" }).code)
    local r = run { "--conninfo", db.conninfo(ctx.name), "worker", "--app", app_on(db.conninfo(other)), "--one-shot" }
    assert.are.equal(0, r.code, r.err)
    assert.matches("using the conninfo of %-%-conninfo", r.err)
    assert.are.equal(1, count_jobs(ctx.name, "WHERE status = 'succeeded'"))
    assert.are.equal(1, count_jobs(other, "WHERE status = 'todo'"))  -- the other database is untouched
    db.drop(other)
  end)

  it("keeps the app's connector type: a SyncPgConnector app still cannot run a worker", function()
    local r = run { "--conninfo", db.conninfo(ctx.name), "worker", "--app", app_on("dbname=x", "SyncPgConnector") }
    assert.are.equal(2, r.code)
    assert.are.equal(1, r.err_lines - 1)     -- the note, then one usage line
    assert.matches("\ntarry: a worker needs an app on a tarry%.PgConnector %(or a tarry%.MemoryConnector%); the "
      .. "connector of %-%-app .* is <tarry%.SyncPgConnector", r.err)
  end)
end)

describe("tarry run", function()
  local dir, script
  before_each(function()
    dir = tmpdir()
    script = write_file(dir .. "/args.lua", "io.write(#arg, ':', table.concat(arg, '|'), ':', select('#', ...))")
  end)
  after_each(function() os.execute("rm -rf " .. q(dir)) end)

  it("gives every word after the script to the script, options and -- too", function()
    assert.are.equal("3:a|b|--help:3", run({ "run", script, "a", "b", "--help" }).out)
    assert.are.equal("3:--conninfo|foo|x:3", run({ "run", script, "--conninfo", "foo", "x" }).out)
    assert.are.equal("2:--|--help:2", run({ "run", script, "--", "--help" }).out)   -- as lua5.4 does
    assert.are.equal("1:-5:1", run({ "run", "--", script, "-5" }).out)
  end)

  it("shows its own help only before the script", function()
    local r = run { "run", "--help" }
    assert.are.equal(0, r.code)
    assert.matches("^Usage: tarry run ", r.out)
  end)

  it("puts the script's directory on package.path", function()
    write_file(dir .. "/helper.lua", "return { answer = 42 }")
    write_file(dir .. "/main.lua", "io.write(require('helper').answer)")
    assert.are.equal("42", run({ "run", dir .. "/main.lua" }, nil, "/").out)
  end)

  it("refuses --conninfo, which a script would not see, instead of ignoring it", function()
    local r = run { "--conninfo", "dbname=x", "run", script }
    assert.are.equal(2, r.code)
    assert.matches("^tarry: %-%-conninfo does not apply to run", r.err)
  end)
end)

describe("an error in the user's code", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf " .. q(dir)) end)

  local function no_internals(err)
    assert.is_nil(err:find("tarry/cli", 1, true), err)
    assert.is_nil(err:find("[C]", 1, true), err)
    assert.is_nil(err:find("error object is a", 1, true), err)
  end

  it("prints the user's message and the user's own frames, exit 1", function()
    local app = write_file(dir .. "/app.lua", "local function setup()\n  error('no config')\nend\nsetup()\n")
    for _, argv in ipairs { { "worker", "--app", app }, { "defer", "--app", app, "x" } } do
      local r = run(argv)
      assert.are.equal(1, r.code)
      assert.matches("^tarry: " .. dir:gsub("%p", "%%%0") .. "/app%.lua:2: no config\nstack traceback:\n", r.err)
      assert.matches("app%.lua:2: in %a+ 'setup'\n", r.err)
      assert.matches("app%.lua:4: in main chunk\n$", r.err)
      no_internals(r.err)
    end
  end)

  it("shows a table error's contents, and a script's error the same way", function()
    local app = write_file(dir .. "/app.lua", "error({ code = 1 })")
    local r = run { "worker", "--app", app }
    assert.are.equal(1, r.code)
    assert.matches('^tarry: a table: {"code":1}\nstack traceback:\n', r.err)
    no_internals(r.err)
    local script = write_file(dir .. "/s.lua", "local t = nil\nprint(t.x)")
    r = run { "run", script }
    assert.are.equal(1, r.code)
    assert.matches("s%.lua:2: attempt to index a nil value %(local 't'%)\nstack traceback:\n.*s%.lua:2: in main chunk", r.err)
    no_internals(r.err)
  end)

  it("blames the user's line for a misuse of tarry's API at load", function()
    local app = write_file(dir .. "/app.lua", "local tarry = require 'tarry'\nlocal app = tarry.App{ connectr = 1 }\nreturn app")
    local r = run { "worker", "--app", app }
    assert.are.equal(1, r.code)
    assert.matches("app%.lua:2: tarry%.App: unknown option 'connectr'", r.err)
    no_internals(r.err)
  end)

  it("lets an app require the modules beside it, from any directory", function()
    write_file(dir .. "/tasks.lua", "return function(app) app:task('beside', function() end) end")
    local app = write_file(dir .. "/app.lua", [[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.MemoryConnector() }
      require("tasks")(app)
      return app
    ]])
    local r = run({ "defer", "--app", app, "beside" }, nil, "/")    -- worker --app loads it the same way
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("deferred job 1: beside {}\n", r.out)
  end)
end)

describe("usage errors of the worker", function()
  local app
  before_each(function()
    app = write_file(os.tmpname(), "return require('tarry').App{ connector = require('tarry').MemoryConnector() }")
  end)
  after_each(function() os.remove(app) end)

  it("are one line and exit 2", function()
    local cases = {
      { { "-c", "-3" }, "^tarry: %-%-concurrency must be a whole number >= 1, got '%-3'\n$" },
      { { "-c", "0" }, "^tarry: %-%-concurrency must be a whole number >= 1, got '0'\n$" },
      { { "-q", string.rep("x", 41) }, "^tarry: %-%-queues: a queue name is 1 to 40 bytes" },
      { { "-q", "" }, "^tarry: %-%-queues needs at least one queue name" },
      { { "-q", "a,,b" }, "^tarry: %-%-queues: a queue name is 1 to 40 bytes %(it names a NOTIFY channel%), got ''" },
      { { "--delete-jobs", "sometimes" }, "must be one of 'never', 'successful', 'always'" },
      { { "--fetch-job-polling-interval", "-1" }, "must be a number of seconds >= 0, got '%-1'" },
      { { "--log-level", "loud" }, "must be one of" },
    }
    for _, case in ipairs(cases) do
      local argv = { "worker", "--app", app, table.unpack(case[1]) }
      local r = run(argv)
      assert.are.equal(2, r.code, table.concat(argv, " "))
      assert.are.equal(1, r.err_lines, r.err)
      assert.matches(case[2], r.err)
    end
    local r = run({ "worker", "--app", app }, { TARRY_CONCURRENCY = "0" })
    assert.are.equal(2, r.code)
    assert.matches("^tarry: TARRY_CONCURRENCY: %-%-concurrency must be a whole number >= 1", r.err)
  end)

  it("include a missing --app", function()
    local r = run { "worker" }
    assert.are.equal(2, r.code)
    assert.are.equal("tarry: worker needs --app FILE (or TARRY_APP)\n", r.err)
  end)
end)

describe("tarry defer --json", function()
  local ctx = fresh_database()

  it("prints the job as one JSON object", function()
    local r = run { "--conninfo", db.conninfo(ctx.name), "defer", "--json", "--queue", "q", "--priority", "-2",
      "add", '{"a":1}' }
    assert.are.equal(0, r.code, r.err)
    local job = require("tarry").json.decode(r.out)
    local id = tonumber(db.value(ctx.name, "SELECT max(id) FROM procrastinate_jobs"))
    assert.are.equal(id, job.id)
    assert.are.same({ "add", "q", -2, 1 }, { job.task, job.queue, job.priority, job.args.a })
    assert.are.equal(require("tarry").null, job.lock)
  end)

  it("says what it skipped with --ignore-already-enqueued", function()
    local argv = { "--conninfo", db.conninfo(ctx.name), "defer", "--json", "--queueing-lock", "once",
      "--ignore-already-enqueued", "add" }
    assert.are.equal(0, run(argv).code)
    local job = require("tarry").json.decode(run(argv).out)
    assert.are.equal("already_enqueued", job.skipped)
    assert.are.equal(require("tarry").null, job.id)
    assert.are.equal(1, count_jobs(ctx.name))
  end)

  it("is in healthchecks too", function()
    local r = run { "--conninfo", db.conninfo(ctx.name), "healthchecks", "--json" }
    assert.are.equal(0, r.code)
    assert.are.equal('{"connection":"ok","missing":[],"schema":"tarry"}\n', r.out)
  end)
end)

describe("tarry defer --from", function()
  local ctx = fresh_database()

  local function lines(n, bad)
    local t = {}
    for i = 1, n do t[i] = i == bad and '{"n": ' or string.format('{"n": %d}', i) end
    return write_file(ctx.dir .. "/jobs.jsonl", table.concat(t, "\n") .. "\n")
  end

  it("defers one job per line in batches and prints a summary line", function()
    local file = lines(5)
    local r = run { "--conninfo", db.conninfo(ctx.name), "defer", "add", "--from", file, "--batch-size", "2" }
    assert.are.equal(0, r.code, r.err)
    local first = tonumber(db.value(ctx.name, "SELECT min(id) FROM procrastinate_jobs"))
    assert.are.equal(string.format("deferred 5 jobs of add from %s in 3 batches (ids %d to %d)\n", file, first,
      first + 4), r.out)
    assert.are.equal("", r.err)
    assert.are.equal("1,2,3,4,5", db.value(ctx.name, "SELECT string_agg(args->>'n', ',' ORDER BY id) FROM procrastinate_jobs"))
  end)

  it("reads stdin for -, skips blank lines, and prints ids with --json", function()
    local file = write_file(ctx.dir .. "/in.jsonl", '{"n": 1}\n\n{"n": 2}\n')
    local r = run({ "--conninfo", db.conninfo(ctx.name), "defer", "add", "--from", "-", "--json" }, nil, nil, file)
    assert.are.equal(0, r.code, r.err)
    local res = require("tarry").json.decode(r.out)
    assert.are.same({ 2, 0, 1 }, { res.deferred, res.skipped, res.batches })
    assert.are.same(db.value(ctx.name, "SELECT string_agg(id::text, ',' ORDER BY id) FROM procrastinate_jobs"),
      table.concat(res.ids, ","))
  end)

  it("stops at a bad line, naming it, and inserts nothing of its batch", function()
    local file = lines(7, 5)
    local r = run { "--conninfo", db.conninfo(ctx.name), "defer", "add", "--from", file, "--batch-size", "3" }
    assert.are.equal(2, r.code)
    assert.are.equal(1, r.err_lines)
    assert.matches("^tarry: " .. file:gsub("%p", "%%%0") .. ":5: JSON arguments are malformed: .*%(lines 4%-5 not "
      .. "deferred; 3 jobs from the lines before were deferred%)\n$", r.err)
    assert.are.equal("1,2,3", db.value(ctx.name, "SELECT string_agg(args->>'n', ',' ORDER BY id) FROM procrastinate_jobs"))
    file = write_file(ctx.dir .. "/nul.jsonl", '{"n": 1}\n[1]\n')
    r = run { "--conninfo", db.conninfo(ctx.name), "defer", "other", "--from", file }
    assert.are.equal(2, r.code)
    assert.matches(":2: JSON arguments must be an object", r.err)
    assert.are.equal(0, count_jobs(ctx.name, "WHERE task_name = 'other'"))
  end)

  it("refuses JSON arguments beside --from, and a file it cannot open", function()
    local r = run { "--conninfo", db.conninfo(ctx.name), "defer", "add", "{}", "--from", "-" }
    assert.are.equal(2, r.code)
    assert.are.equal("tarry: give JSON arguments or --from FILE, not both\n", r.err)
    r = run { "--conninfo", db.conninfo(ctx.name), "defer", "add", "--from", "/nonexistent.jsonl" }
    assert.are.equal(2, r.code)
    assert.matches("^tarry: %-%-from: /nonexistent%.jsonl: No such file", r.err)
  end)

  it("draws a progress bar on a terminal (a real pseudo-terminal, through script)", function()
    local file = lines(4)
    local out = os.tmpname()
    local cmd = string.format("%s --conninfo %s defer add --from %s --batch-size 2", BIN, q(db.conninfo(ctx.name)), file)
    assert(os.execute(string.format("script -qec %s /dev/null >%s 2>&1 </dev/null", q(cmd), out)))
    local screen = read_file(out)
    os.remove(out)
    assert.matches("\r%[###############%-%-%-%-%-%-%-%-%-%-%-%-%-%-%-%]  50%%  2 jobs", screen)
    assert.matches("\r%[##############################%] 100%%  4 jobs\r?\n", screen)
    assert.matches("deferred 4 jobs of add", screen)
    assert.are.equal(4, count_jobs(ctx.name))
  end)
end)

describe("tarry defer --at and --in", function()
  local ctx = fresh_database()

  local function scheduled(argv, env)
    local full = { "--conninfo", db.conninfo(ctx.name), "defer", "add" }
    for _, a in ipairs(argv) do full[#full + 1] = a end
    local r = run(full, env)
    assert.are.equal(0, r.code, r.err)
    return db.value(ctx.name, "SELECT extract(epoch from scheduled_at) FROM procrastinate_jobs ORDER BY id DESC LIMIT 1")
  end

  it("reads a date-time without an offset as local time (TZ), and Z or an offset as given", function()
    assert.are.equal("1893474000.000000", scheduled({ "--at", "2030-01-01T00:00" }, { TZ = "America/New_York" }))
    assert.are.equal("1893456000.000000", scheduled({ "--at", "2030-01-01T00:00" }, { TZ = "UTC" }))
    assert.are.equal("1893456000.000000", scheduled({ "--at", "2030-01-01T00:00Z" }, { TZ = "America/New_York" }))
    assert.are.equal("1909108800.000000", scheduled({ "--at", "2030-07-01" }, { TZ = "America/New_York" }))  -- EDT
  end)

  it("takes unix times", function()
    assert.are.equal("1893456000.000000", scheduled { "--at", "1893456000" })
    assert.are.equal("1893456000.500000", scheduled { "--at", "@1893456000.5" })
  end)

  it("refuses a negative --in and times after the year 9999", function()
    for _, argv in ipairs { { "--in", "-60" }, { "--in", "1e30" }, { "--at", "@1e30" }, { "--at", "99999999999999" } } do
      local r = run { "--conninfo", db.conninfo(ctx.name), "defer", "add", table.unpack(argv) }
      assert.are.equal(2, r.code, table.concat(argv, " "))
      assert.are.equal(1, r.err_lines)
    end
    assert.are.equal(0, count_jobs(ctx.name))
  end)
end)

describe("a schema missing one of tarry's objects", function()
  local ctx = fresh_database()

  it("fails healthchecks and schema --apply, naming the object", function()
    db.psql(ctx.name, "DROP FUNCTION tarry_fetch_jobs_v1")
    local r = run { "--conninfo", db.conninfo(ctx.name), "healthchecks" }
    assert.are.equal(1, r.code)
    assert.are.equal("Database connection: OK\n", r.out)
    assert.are.equal("tarry: schema: incomplete, missing: function tarry_fetch_jobs_v1(target_queue_names "
      .. "character varying[], p_worker_id bigint, max_jobs integer)\n", r.err)
    r = run { "--conninfo", db.conninfo(ctx.name), "schema", "--apply" }
    assert.are.equal(1, r.code)
    assert.are.equal(1, r.err_lines)
    assert.truthy(r.err:find("function tarry_fetch_jobs_v1(", 1, true))
  end)

  it("stops the worker with that message instead of retrying", function()
    db.psql(ctx.name, "DROP FUNCTION procrastinate_fetch_job_v2")
    local app = write_file(ctx.dir .. "/app.lua", "return require('tarry').App{ connector = require('tarry')."
      .. "PgConnector{ conninfo = " .. string.format("%q", db.conninfo(ctx.name)) .. " } }")
    local r = run { "worker", "--app", app }         -- not --one-shot: it would wait forever
    assert.are.equal(1, r.code)
    assert.matches("tarry: schema: the database's schema is incomplete, missing: function procrastinate_fetch_job_v2%(", r.err)
  end)
end)

describe("the worker's log", function()
  local ctx = fresh_database()

  local function app_file(body)
    return write_file(ctx.dir .. "/app.lua", string.format([[
      local tarry = require "tarry"
      local app = tarry.App{ connector = tarry.PgConnector{ conninfo = %q } }
      %s
      return app
    ]], db.conninfo(ctx.name), body))
  end

  it("has debug lines with -v: fetches and outcome batches", function()
    local app = app_file("app:task('t', function() end)")
    assert.are.equal(0, run({ "--conninfo", db.conninfo(ctx.name), "defer", "t" }).code)
    local r = run { "worker", "--app", app, "--one-shot", "-v", "--log-format", "json" }
    assert.are.equal(0, r.code, r.err)
    local events = {}
    for line in r.err:gmatch("[^\n]+") do
      local rec = require("tarry").json.decode(line)
      events[rec.event] = events[rec.event] or rec
    end
    assert.are.equal("fetched 1 job(s) for 1 free slot(s)", events.fetched.message)
    assert.are.equal("debug", events.fetched.level)
    assert.are.equal("recording 1 job outcome(s) in one statement", events.finish_batch.message)
    assert.matches('^worker "worker" %(id %d+%) started', events.worker_started.message)
    r = run { "worker", "--app", app, "--one-shot" }
    assert.is_nil(r.err:find("DEBUG", 1, true))
  end)

  it("says what a table error or error(nil) holds, and prints the message once", function()
    local app = app_file([[
      app:task("table_error", function() error({ code = 1 }) end)
      app:task("nil_error", function() error(nil) end)
      app:task("string_error", function() error("boom") end)]])
    for _, t in ipairs { "table_error", "nil_error", "string_error" } do
      assert.are.equal(0, run({ "--conninfo", db.conninfo(ctx.name), "defer", t }).code)
    end
    local r = run { "worker", "--app", app, "--one-shot" }
    assert.are.equal(0, r.code, r.err)
    assert.matches('table_error failed: a table: {"code":1} %(', r.err)
    assert.matches("nil_error failed: nil %(error%(%) without a message%) %(", r.err)
    local _, n = r.err:gsub("boom", "")
    assert.are.equal(1, n)
    assert.matches("string_error failed: .*app%.lua:%d+: boom %([%d.]+ ms%)\n    stack traceback:\n", r.err)
  end)
end)
