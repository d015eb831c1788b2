-- Security: the suite itself runs as an ordinary database role, and no password given to tarry
-- in a conninfo or URI ever shows in what tarry prints: tostring of its objects, error objects,
-- and the output and logs of `tarry healthchecks`, `tarry defer` and `tarry worker`, whether
-- the server is reachable, refuses the password, cannot be reached, or the conninfo is malformed
-- (libpq's messages about a conninfo it cannot parse quote it).
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"

local q = db.shell_quote
local SECRET = "S3cr3t-xyz"
-- Pieces of it: a message that quotes part of the password leaks too.
local PIECES = { SECRET, "S3cr3t", "cr3t-xyz", "3t-x" }

-- Fails the spec if text (something tarry printed or raised; never empty) shows the password.
local function assert_no_secret(text, where)
  text = tostring(text)
  if text == "" or text == "nil" then error(where .. " printed nothing: nothing was checked", 2) end
  for _, piece in ipairs(PIECES) do
    if text:find(piece, 1, true) then error(where .. " shows the password (" .. piece .. "):\n" .. text, 2) end
  end
end

describe("the test suite's database role", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("is an ordinary role: no superuser, no CREATEDB, no CREATEROLE", function()
    local c = tarry.SyncPgConnector{ conninfo = db.conninfo(name) }
    local me = c:execute("SELECT current_user AS name, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles " ..
      "WHERE rolname = current_user")[1]
    assert.are.equal(os.getenv("PGUSER"), me.name)
    assert.is_false(me.rolsuper)
    assert.is_false(me.rolcreatedb)
    assert.is_false(me.rolcreaterole)
    local ok, err = pcall(c.execute, c, "CREATE DATABASE tarry_not_allowed")
    assert.is_false(ok)
    assert.are.equal("42501", err.sqlstate)
    ok, err = pcall(c.execute, c, "CREATE ROLE tarry_not_allowed")
    assert.is_false(ok)
    assert.are.equal("42501", err.sqlstate)
    c:close()
  end)

  it("owns the spec's database and its tables, and no database but its own", function()
    local owned = db.rows(name, "SELECT datname FROM pg_database WHERE datdba = " ..
      "(SELECT oid FROM pg_roles WHERE rolname = current_user) ORDER BY datname")
    for _, row in ipairs(owned) do
      assert.matches("^tarry_", row[1])                 -- tarry_test, tarry_template, tarry_spec_*
    end
    assert.are.equal(os.getenv("PGUSER"), db.value(name, "SELECT pg_get_userbyid(datdba) FROM pg_database " ..
      "WHERE datname = current_database()"))
    assert.are.equal(os.getenv("PGUSER"), db.value(name, "SELECT tableowner FROM pg_tables " ..
      "WHERE tablename = 'procrastinate_jobs'"))
  end)
end)

-- `tarry argv...` with extra environment; returns stdout and stderr together, and the exit code.
local function run_cli(argv, env)
  local words = { "exec env" }
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. q(v) end
  words[#words + 1] = q(proc.tarry)
  for _, a in ipairs(argv) do words[#words + 1] = q(a) end
  local pipe = assert(io.popen(table.concat(words, " ") .. " 2>&1", "r"))
  local out = pipe:read("a")
  local _, how, code = pipe:close()
  assert(how == "exit", "tarry was killed by signal " .. tostring(code) .. ":\n" .. out)
  return out, code
end

local function app_file(conninfo)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(string.format([[
local tarry = require "tarry"
local app = tarry.App{ connector = tarry.PgConnector{ conninfo = %q, connect_timeout = 2 } }
app:task("noop", function() end)
return app
]], conninfo))
  f:close()
  return path
end

-- What `tarry worker --one-shot` prints for the app at conninfo, in both log formats. It exits
-- when the queue is empty or the database cannot be had; a worker that waits for the database
-- instead gets SIGTERM once its log says it could not connect.
local function worker_output(conninfo, format)
  local path = app_file(conninfo)
  local p = proc.start(string.format("worker --app %s --one-shot --log-format %s", q(path), format))
  proc.until_true(function()
    return proc.read(p.exitfile) or p:output():find("connect", 1, true)
  end, 60, "the worker to finish or to report the connection")
  if not proc.read(p.exitfile) then p:signal("TERM") end
  p:wait(60)
  os.remove(path)
  return p:output()
end

--- The error object of a blocking query on conninfo.
local function sync_error(conninfo)
  local c = tarry.SyncPgConnector{ conninfo = conninfo, connect_timeout = 2 }
  local ok, err = pcall(c.execute, c, "SELECT 1")
  c:close()
  assert(not ok, "the query worked")
  return err
end

-- Calls f(...); if it raises, the error must not show the password. Returns pcall's results.
local function check_raised(where, f, ...)
  local res = table.pack(pcall(f, ...))
  if not res[1] then assert_no_secret(res[2], where) end
  return table.unpack(res, 1, res.n)
end

-- Every channel, for one conninfo: tostring of the connectors and of an app; the error objects
-- of a blocking query, of open(), of an async defer on an opened pool (min_size = 0, so the
-- pool connects on the loop), and of a listener; and the CLI's output.
local function check_every_channel(conninfo)
  local sync = tarry.SyncPgConnector{ conninfo = conninfo, connect_timeout = 2 }
  local async = tarry.PgConnector{ conninfo = conninfo, connect_timeout = 2, min_size = 0 }
  local app = tarry.App{ connector = async }
  local task = app:task("noop", function() end)
  assert_no_secret(tostring(sync), "tostring(SyncPgConnector)")
  assert_no_secret(tostring(async), "tostring(PgConnector)")
  assert_no_secret(tostring(app), "tostring(App)")

  check_raised("a SyncPgConnector query", sync.execute, sync, "SELECT 1")
  sync:close()
  local other = tarry.App{ connector = tarry.PgConnector{ conninfo = conninfo, connect_timeout = 2 } }
  if check_raised("open()", other.open, other) then other:close() end
  check_raised("a blocking defer", task.defer, task, {})
  if check_raised("open() with min_size = 0", app.open, app) then
    local h = app:spawn(function() return task:defer{} end)
    check_raised("app:run()", app.run, app)
    check_raised("an async defer", h.result, h)
    assert_no_secret(tostring(async), "tostring(PgConnector) when open")
    app:close()
  end
  local listening, listener = check_raised("listen()", async.listen, async, { "tarry_security" })
  if listening then listener:close() end

  assert_no_secret(run_cli { "--conninfo", conninfo, "healthchecks" }, "tarry healthchecks")
  assert_no_secret(run_cli({ "healthchecks" }, { TARRY_CONNINFO = conninfo }), "tarry healthchecks (TARRY_CONNINFO)")
  assert_no_secret(run_cli { "--conninfo", conninfo, "defer", "noop", "{}" }, "tarry defer")
  assert_no_secret(worker_output(conninfo, "human"), "tarry worker")
  assert_no_secret(worker_output(conninfo, "json"), "tarry worker --log-format json")
end

describe("a password in a conninfo or URI", function()
  local name, host, port
  setup(function()
    -- Creating a role takes the superuser; the role gets what the specs' role has.
    db.superuser_psql("postgres", "DROP ROLE IF EXISTS tarry_secret")
    db.superuser_psql("postgres", "CREATE ROLE tarry_secret LOGIN PASSWORD '" .. SECRET .. "' IN ROLE " ..
      os.getenv("PGUSER"))
    host, port = "localhost", os.getenv("PGPORT") or "5432"
  end)
  teardown(function() db.superuser_psql("postgres", "DROP ROLE IF EXISTS tarry_secret") end)
  before_each(function() name = db.fresh() end)
  after_each(function()
    proc.kill_all()
    db.drop(name)
  end)

  local function reachable()
    return {
      string.format("host=%s port=%s dbname=%s user=tarry_secret password=%s", host, port, name, SECRET),
      string.format("host=%s port=%s dbname=%s user=tarry_secret password='%s'", host, port, name, SECRET),
      string.format("postgresql://tarry_secret:%s@%s:%s/%s", SECRET, host, port, name),
      string.format("postgresql://%s:%s/%s?user=tarry_secret&password=%s", host, port, name, SECRET),
    }
  end

  it("is usable, and never shown, when the server accepts it", function()
    for _, conninfo in ipairs(reachable()) do
      local c = tarry.SyncPgConnector{ conninfo = conninfo }
      assert.are.equal("tarry_secret", c:execute("SELECT current_user AS u")[1].u)
      c:close()
      check_every_channel(conninfo)
    end
    -- each conninfo deferred three jobs (blocking, async, CLI), and the workers ran them all
    assert.are.equal("12", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"))
    assert.are.equal("12", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
  end)

  it("is never shown when the server refuses it", function()
    local wrong = {
      string.format("host=%s port=%s dbname=%s user=%s password=%s", host, port, name, os.getenv("PGUSER"), SECRET),
      string.format("postgresql://%s:%s@%s:%s/%s", os.getenv("PGUSER"), SECRET, host, port, name),
    }
    for _, conninfo in ipairs(wrong) do
      local err = sync_error(conninfo)
      assert.are.equal("connection", err.code)
      assert.matches("password authentication failed", err.message)
      check_every_channel(conninfo)
    end
  end)

  it("is never shown when the server cannot be reached", function()
    for _, conninfo in ipairs {
      "host=127.0.0.1 port=1 dbname=x user=u password=" .. SECRET,
      "postgresql://u:" .. SECRET .. "@127.0.0.1:1/x",
    } do
      local err = sync_error(conninfo)
      assert.are.equal("connection", err.code)
      check_every_channel(conninfo)
    end
  end)

  it("is never shown when libpq cannot parse the conninfo and quotes it", function()
    for _, conninfo in ipairs {
      "postgresql://u:" .. SECRET .. "@[::1/x",                     -- libpq quotes the whole URI
      "postgresql://u:" .. SECRET .. "%zz@127.0.0.1:1/x",           -- ... the bad percent token
      "postgresql://127.0.0.1:1/x?password=" .. SECRET .. "=more",   -- ... the query parameter
      "postgresql://u:S3/cr3t-xyz@127.0.0.1:1/x",                   -- a raw '/': libpq misreads it
      "dbname=postgresql://u:" .. SECRET .. "@127.0.0.1:1/x",       -- a URI as a database name
    } do
      local err = sync_error(conninfo)
      assert.are.equal("connection", err.code)
      check_every_channel(conninfo)
    end
  end)

  it("is masked, not dropped: the messages still say what is wrong", function()
    local err = sync_error("postgresql://u:" .. SECRET .. "%zz@127.0.0.1:1/x")
    assert.are.equal('cannot connect to PostgreSQL: invalid percent-encoded token: "***"', err.message)
    assert.are.equal("<tarry.PgConnector dbname=postgresql://u:***@127.0.0.1:1/x, not open>",
      tostring(tarry.PgConnector{ conninfo = "dbname=postgresql://u:" .. SECRET .. "@127.0.0.1:1/x" }))
  end)
end)
