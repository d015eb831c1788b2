-- TLS: tarry connects with sslmode=verify-full to a server whose certificate a test CA signed
-- (scripts/with-postgres makes the CA, a certificate for localhost and 127.0.0.1, and turns ssl
-- on), through the SyncPgConnector, the PgConnector (open, then an async defer) and the CLI; the
-- server itself says the connection is TLS. A certificate from another CA is refused with a
-- `connection` error. (The suite's other connections use PGSSLMODE=disable.)
local tarry = require "tarry"
local db = require "support.db"
local proc = require "support.process"

local TLS_DIR = os.getenv("TARRY_TEST_TLS_DIR")
local q = db.shell_quote

local function tls_conninfo(name, opts)
  assert(TLS_DIR, "TARRY_TEST_TLS_DIR is not set: run the specs through scripts/with-postgres")
  return string.format("host=%s port=%s dbname=%s sslmode=verify-full sslrootcert=%s/%s application_name=%s",
    opts.host or "localhost", os.getenv("PGPORT") or "5432", name, TLS_DIR, opts.ca or "ca.crt", opts.app)
end

-- `tarry argv...`: stdout, stderr and the exit code.
local function run_cli(argv)
  local words = { q(proc.tarry) }
  for _, a in ipairs(argv) do words[#words + 1] = q(a) end
  local errfile = os.tmpname()
  local pipe = assert(io.popen(table.concat(words, " ") .. " 2>" .. errfile, "r"))
  local out = pipe:read("a")
  local _, _, code = pipe:close()
  local err = proc.read(errfile)
  os.remove(errfile)
  return out, err, code
end

-- Each job inserted into `name` leaves a row saying whether the inserting connection was TLS,
-- as the server sees it (pg_stat_ssl of the backend).
local RECORD_TLS = [[
  CREATE TABLE tls_seen (job_id bigint, ssl boolean, version text, app text);
  CREATE FUNCTION record_tls() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO tls_seen SELECT NEW.id, s.ssl, s.version, current_setting('application_name')
      FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid();
    RETURN NEW;
  END $$;
  CREATE TRIGGER record_tls AFTER INSERT ON procrastinate_jobs FOR EACH ROW EXECUTE FUNCTION record_tls();
]]

describe("TLS with sslmode=verify-full and the test CA", function()
  local name
  before_each(function()
    name = db.fresh()
    db.psql(name, RECORD_TLS)
  end)
  after_each(function() db.drop(name) end)

  -- "t|TLSv1.3|app" for the job: what the server saw of the connection that inserted it.
  local function seen(id)
    return db.value(name, "SELECT ssl || '|' || (version IS NOT NULL) || '|' || app FROM tls_seen WHERE job_id = " .. id)
  end

  it("SyncPgConnector: the connection is TLS, to localhost and to 127.0.0.1", function()
    for _, host in ipairs { "localhost", "127.0.0.1" } do
      local c = tarry.SyncPgConnector{ conninfo = tls_conninfo(name, { host = host, app = "tls_sync" }) }
      local row = c:execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[1]
      assert.is_true(row.ssl)
      assert.matches("^TLSv1%.[23]$", row.version)
      local app = tarry.App{ connector = c }
      local id = app:task("noop", function() end):defer{}
      assert.are.equal("true|true|tls_sync", seen(id))
      c:close()
    end
  end)

  it("PgConnector: the pool's connections are TLS, and so is an async defer", function()
    local app = tarry.App{ connector = tarry.PgConnector{ conninfo = tls_conninfo(name, { app = "tls_async" }) } }
    local task = app:task("noop", function() end)
    local opened <close> = app:open()
    -- the server's view of the pool, asked from an ordinary (non-TLS) psql session
    assert.are.equal("true|true", db.value(name, "SELECT (count(*) > 0) || '|' || bool_and(s.ssl) FROM pg_stat_ssl s " ..
      "JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'tls_async'"))
    local h = app:spawn(function()
      assert(tarry.in_coroutine())
      return task:defer{}
    end)
    app:run()
    assert.are.equal("true|true|tls_async", seen(h:result()))
  end)

  it("the CLI: tarry defer and tarry healthchecks over TLS", function()
    local out, err, code = run_cli { "--conninfo", tls_conninfo(name, { app = "tls_cli" }), "defer", "noop", "{}" }
    assert.are.equal(0, code, err)
    local id = assert(tonumber(out:match("^deferred job (%d+): noop")), out)
    assert.are.equal("true|true|tls_cli", seen(id))
    out, err, code = run_cli { "--conninfo", tls_conninfo(name, { app = "tls_cli" }), "healthchecks" }
    assert.are.equal(0, code, err)
    assert.matches("Database connection: OK", out)
  end)

  it("a server certificate the CA did not sign is refused with a connection error, by every way in", function()
    local wrong = tls_conninfo(name, { ca = "other-ca.crt", app = "tls_wrong" })
    local sync = tarry.SyncPgConnector{ conninfo = wrong }
    local ok, err = pcall(sync.execute, sync, "SELECT 1")
    assert.is_false(ok)
    assert.are.equal("connection", err.code)
    assert.matches("certificate verify failed", err.message)
    local app = tarry.App{ connector = tarry.PgConnector{ conninfo = wrong } }
    ok, err = pcall(app.open, app)
    assert.is_false(ok)
    assert.are.equal("connection", err.code)
    assert.matches("certificate verify failed", err.message)
    local _, stderr, code = run_cli { "--conninfo", wrong, "defer", "noop", "{}" }
    assert.are.equal(1, code)
    assert.matches("^tarry: connection: cannot connect to PostgreSQL: .*certificate verify failed", stderr)
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
  end)
end)
