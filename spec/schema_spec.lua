-- tarry.schema (lua/tarry/schema.lua): the schema text, inspecting what a database holds, and
-- applying the schema only where there is none.  Also home of the other schema specs' index:
--   schema_catalog_spec.lua    catalog identity of every object but the triggers (§8.1)
--   schema_functions_spec.lua  behaviour and errors of the §4 functions
--   schema_events_spec.lua     §5 event rows, tarry's triggers vs Procrastinate's row-level ones
--   schema_notify_spec.lua     §5 notifications
local db = require("support.db")
local schema = require("tarry.schema")
local psql_conn = require("support.psql_conn")

-- Everything in the public schema that applying could have created or changed.
local function snapshot(name)
  return db.psql(name, [[
    SELECT 'class ' || relname || ' ' || relkind::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
    UNION ALL SELECT 'type ' || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace
    UNION ALL SELECT 'function ' || oid::regprocedure || ' ' || md5(prosrc) FROM pg_proc
      WHERE pronamespace = 'public'::regnamespace
    UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
      WHERE connamespace = 'public'::regnamespace
    ORDER BY 1]])
end

describe("tarry.schema", function()
  local names = {}
  local function fresh(opts)
    local name = db.fresh(opts)
    names[#names + 1] = name
    return name, psql_conn.new(name)
  end
  teardown(function()
    for _, name in ipairs(names) do db.drop(name) end
  end)

  it("sql() returns the text of lua/tarry/schema.sql", function()
    local f = assert(io.open("lua/tarry/schema.sql"))
    local text = f:read("a")
    f:close()
    assert.equal(text, schema.sql())
  end)

  it("sql() finds schema.sql beside schema.lua in an install directory", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir .. "/share/tarry && cp lua/tarry/schema.lua lua/tarry/schema.sql "
      .. dir .. "/share/tarry/"))
    local p = assert(io.popen("cd / && lua5.4 -e " .. db.shell_quote(
      "package.path = '" .. dir .. "/share/?.lua'; io.write(#require('tarry.schema').sql())") .. " 2>&1"))
    local out = p:read("a")
    p:close()
    os.execute("rm -rf " .. dir)
    assert.equal(tostring(#schema.sql()), out)
  end)

  it("applies the schema to an empty database, and then finds it present and changes nothing", function()
    local name, conn = fresh({ schema = false })
    db.psql(name, "CREATE TABLE unrelated (x int)")  -- other tables do not matter
    assert.equal("absent", schema.inspect(conn))
    assert.equal("applied", schema.apply(conn))
    -- applied in one transaction, as one multi-statement string (one PQexec)
    assert.matches("^BEGIN;\n", conn.statements[#conn.statements])
    assert.matches("\nCOMMIT;$", conn.statements[#conn.statements])
    assert.equal("tarry", schema.inspect(conn))
    assert.equal("t", db.value(name, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL"))
    local before = snapshot(name)
    local ran = #conn.statements
    local state, which = schema.apply(conn)
    assert.equal("present", state)
    assert.equal("tarry", which)
    assert.equal(before, snapshot(name))
    -- only catalog queries ran the second time
    for i = ran + 1, #conn.statements do
      assert.matches("^SELECT", conn.statements[i])
    end
  end)

  it("gives the same catalog as the spec template (psql -f of schema.sql)", function()
    local name, conn = fresh({ schema = false })
    schema.apply(conn)
    local template = fresh()
    assert.equal(snapshot(template), snapshot(name))
  end)

  it("recognises a database with Procrastinate's row-level triggers and leaves it alone", function()
    local name, conn = fresh()
    db.apply_schema_file(name, "spec/fixtures/procrastinate_triggers.sql")
    assert.equal("procrastinate", schema.inspect(conn))
    local before = snapshot(name)
    local state, which = schema.apply(conn)
    assert.equal("present", state)
    assert.equal("procrastinate", which)
    assert.equal(before, snapshot(name))
  end)

  it("reports a partial schema with what is missing, and apply refuses it naming the missing objects", function()
    local name, conn = fresh()
    db.psql(name, "DROP FUNCTION procrastinate_retry_job_v1")
    local state, missing = schema.inspect(conn)
    assert.equal("partial", state)
    assert.same({ "function procrastinate_retry_job_v1(job_id bigint, retry_at timestamp with time zone, "
      .. "new_priority integer, new_queue_name character varying, new_lock character varying)" }, missing)
    local before = snapshot(name)
    local ok, err = pcall(schema.apply, conn)
    assert.is_false(ok)
    assert.matches("^tarry schema: ", err)
    assert.truthy(err:find("procrastinate_retry_job_v1", 1, true))
    assert.equal(before, snapshot(name))
  end)

  it("treats functions with other arguments (another Procrastinate version) as missing", function()
    local name, conn = fresh()
    db.psql(name, [[DROP FUNCTION procrastinate_fetch_job_v2;
      CREATE FUNCTION procrastinate_fetch_job_v2(queues character varying[], worker bigint)
        RETURNS procrastinate_jobs LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$]])
    local state, missing = schema.inspect(conn)
    assert.equal("partial", state)
    assert.same({ "function procrastinate_fetch_job_v2(target_queue_names character varying[], p_worker_id bigint)" },
      missing)
  end)

  it("reports missing or mixed triggers as partial", function()
    local name, conn = fresh()
    db.psql(name, "DROP TRIGGER tarry_jobs_update_events ON procrastinate_jobs")
    local state, missing = schema.inspect(conn)
    assert.equal("partial", state)
    assert.same({ "trigger tarry_jobs_update_events" }, missing)
    local other, other_conn = fresh()
    db.apply_schema_file(other, "spec/fixtures/procrastinate_triggers.sql")
    db.psql(other, "DROP TRIGGER procrastinate_trigger_delete_jobs_v1 ON procrastinate_jobs")
    state, missing = schema.inspect(other_conn)
    assert.equal("partial", state)
    assert.same({ "trigger procrastinate_trigger_delete_jobs_v1" }, missing)
    db.psql(other, [[CREATE TRIGGER tarry_jobs_unlink_periodic_defers BEFORE DELETE ON procrastinate_jobs
      FOR EACH ROW EXECUTE FUNCTION procrastinate_unlink_periodic_defers_v1()]])
    state = schema.inspect(other_conn)
    assert.equal("partial", state)
    assert.has_error(function() schema.apply(other_conn) end)
  end)

  it("tarry_functions() gives every tarry_* function of the schema, as the database holds it", function()
    local name = fresh()
    local got = {}
    for _, f in ipairs(schema.tarry_functions()) do
      assert.matches("^CREATE OR REPLACE FUNCTION " .. f.name .. "%(", f.sql)
      got[#got + 1] = f.name .. " " .. f.config .. " " .. f.body
    end
    table.sort(got)
    local held = {}
    for _, row in ipairs(db.rows(name, [[SELECT proname || ' ' || coalesce(array_to_string(proconfig, ','), '')
        || ' ' || md5(prosrc) FROM pg_proc WHERE proname LIKE 'tarry\_%' ORDER BY 1]])) do
      held[#held + 1] = row[1]
    end
    local want = {}
    for i, line in ipairs(got) do
      local head, body = line:match("^(%S+ %S*) (.*)$")
      want[i] = head .. " " .. db.value(name, "SELECT md5(" .. "$tarry_body$" .. body .. "$tarry_body$)")
    end
    assert.is_true(#held >= 8)
    assert.same(held, want)
  end)

  it("on tarry's schema, replaces the tarry functions that differ from schema.sql's, and only those", function()
    local name, conn = fresh()
    local function definitions()
      return db.psql(name, [[SELECT oid::regprocedure || ' ' || coalesce(array_to_string(proconfig, ','), '')
        || ' ' || md5(prosrc) FROM pg_proc WHERE proname LIKE 'tarry\_%' ORDER BY 1]])
    end
    local current = definitions()
    -- an older tarry's: another body, and a function without its SET clauses
    db.psql(name, [[CREATE OR REPLACE FUNCTION tarry_jobs_note_abort_requested_set() RETURNS trigger
      LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('tarry.abort_requested_in_set', 'on', true); RETURN NULL; END $$;
      ALTER FUNCTION tarry_fetch_jobs_v1(character varying[], bigint, integer) RESET ALL]])
    assert.are_not.equal(current, definitions())
    local before = snapshot(name)
    local state, which, updated = schema.apply(conn)
    assert.same({ "present", "tarry", { "tarry_jobs_note_abort_requested_set", "tarry_fetch_jobs_v1" } },
      { state, which, updated })
    assert.matches("^BEGIN;\nCREATE OR REPLACE FUNCTION tarry_jobs_note_abort_requested_set%(%).*\nCOMMIT;$",
      conn.statements[#conn.statements])
    assert.equal(current, definitions())
    assert.are_not.equal(before, snapshot(name))
    -- the trigger still uses the function it replaced (same oid), and a second apply changes nothing
    assert.equal("tarry", schema.inspect(conn))
    local after = snapshot(name)
    state, which, updated = schema.apply(conn)
    assert.same({ "present", "tarry", {} }, { state, which, updated })
    assert.equal(after, snapshot(name))
  end)

  it("rolls everything back when applying fails half-way", function()
    local name, conn = fresh({ schema = false })
    -- not one of the objects inspect looks for, but in the way of the schema's last part
    db.psql(name, "CREATE FUNCTION tarry_jobs_update_events() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")
    assert.equal("absent", schema.inspect(conn))
    local ok, err = pcall(schema.apply, conn)
    assert.is_false(ok)
    assert.matches("^tarry schema: applying the schema failed", err)
    assert.equal("absent", schema.inspect(conn))
    assert.is_nil(db.value(name, "SELECT to_regclass('procrastinate_jobs')"))
  end)
end)
