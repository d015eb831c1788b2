-- PROTOCOL.md §8.1 (catalog identity) for lua/tarry/schema.sql, for every object but the triggers.
-- The expected values are written out from PROTOCOL.md §2-§4 in the form PostgreSQL 15's catalog
-- functions print them, so any drift of the schema file fails here.
local db = require("support.db")

describe("tarry schema catalog", function()
  local name

  setup(function() name = db.fresh() end)
  teardown(function() if name then db.drop(name) end end)

  -- rows as "a|b|c" strings, for compact literal comparisons
  local function lines(sql)
    local out = {}
    for _, row in ipairs(db.rows(name, sql)) do out[#out + 1] = table.concat(row, "|") end
    return out
  end

  it("has the two enums with their labels in order", function()
    local function labels(typ)
      return lines("SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = '" .. typ
        .. "'::regtype ORDER BY e.enumsortorder")
    end
    assert.same({ "todo", "doing", "succeeded", "failed", "cancelled", "aborting", "aborted" },
      labels("procrastinate_job_status"))
    assert.same({ "deferred", "started", "deferred_for_retry", "failed", "succeeded", "cancelled",
      "abort_requested", "aborted", "scheduled", "retried" }, labels("procrastinate_job_event_type"))
  end)

  it("has the composite procrastinate_job_to_defer_v1 with its fields in order", function()
    assert.same({
      "queue_name|character varying",
      "task_name|character varying",
      "priority|integer",
      "lock|text",
      "queueing_lock|text",
      "args|jsonb",
      "scheduled_at|timestamp with time zone",
    }, lines([[SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
      WHERE attrelid = 'procrastinate_job_to_defer_v1'::regclass AND attnum > 0 AND NOT attisdropped
      ORDER BY attnum]]))
  end)

  -- name|type|not null|default|identity ("a" = GENERATED ALWAYS)
  local function columns(tbl)
    return lines([[SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
        coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), coalesce(nullif(a.attidentity, ''), '-')
      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = ']] .. tbl .. [['::regclass AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum]])
  end

  it("has the tables with their columns in physical order", function()
    assert.same({
      "id|bigint|t|-|a",
      "last_heartbeat|timestamp with time zone|t|now()|-",
    }, columns("procrastinate_workers"))
    assert.same({
      "id|bigint|t|nextval('procrastinate_jobs_id_seq'::regclass)|-",
      "queue_name|character varying(128)|t|-|-",
      "task_name|character varying(128)|t|-|-",
      "priority|integer|t|0|-",
      "lock|text|f|-|-",
      "queueing_lock|text|f|-|-",
      "args|jsonb|t|'{}'::jsonb|-",
      "status|procrastinate_job_status|t|'todo'::procrastinate_job_status|-",
      "scheduled_at|timestamp with time zone|f|-|-",
      "attempts|integer|t|0|-",
      "abort_requested|boolean|t|false|-",
      "worker_id|bigint|f|-|-",
    }, columns("procrastinate_jobs"))
    assert.same({
      "id|bigint|t|nextval('procrastinate_periodic_defers_id_seq'::regclass)|-",
      "task_name|character varying(128)|t|-|-",
      "defer_timestamp|bigint|f|-|-",
      "job_id|bigint|f|-|-",
      "periodic_id|character varying(128)|t|''::character varying|-",
    }, columns("procrastinate_periodic_defers"))
    assert.same({
      "id|bigint|t|nextval('procrastinate_events_id_seq'::regclass)|-",
      "job_id|bigint|t|-|-",
      "type|procrastinate_job_event_type|f|-|-",
      "at|timestamp with time zone|f|now()|-",
    }, columns("procrastinate_events"))
  end)

  it("has exactly the four procrastinate tables", function()
    assert.same({ "procrastinate_events", "procrastinate_jobs", "procrastinate_periodic_defers",
      "procrastinate_workers" },
      lines([[SELECT relname FROM pg_class WHERE relname LIKE 'procrastinate%' AND relkind = 'r'
        AND relnamespace = 'public'::regnamespace ORDER BY relname]]))
  end)

  it("has every constraint, by name, with its definition", function()
    assert.same({
      "check_not_todo_abort_requested|CHECK ((NOT ((status = 'todo'::procrastinate_job_status) AND (abort_requested = true))))",
      "procrastinate_events_job_id_fkey|FOREIGN KEY (job_id) REFERENCES procrastinate_jobs(id) ON DELETE CASCADE",
      "procrastinate_events_pkey|PRIMARY KEY (id)",
      "procrastinate_jobs_pkey|PRIMARY KEY (id)",
      "procrastinate_jobs_worker_id_fkey|FOREIGN KEY (worker_id) REFERENCES procrastinate_workers(id) ON DELETE SET NULL",
      "procrastinate_periodic_defers_job_id_fkey|FOREIGN KEY (job_id) REFERENCES procrastinate_jobs(id)",
      "procrastinate_periodic_defers_pkey|PRIMARY KEY (id)",
      "procrastinate_periodic_defers_unique|UNIQUE (task_name, periodic_id, defer_timestamp)",
      "procrastinate_workers_pkey|PRIMARY KEY (id)",
    }, lines([[SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
      WHERE conrelid::regclass::text LIKE 'procrastinate%' ORDER BY conname]]))
    -- the FKs are neither deferrable nor NOT VALID
    assert.same({ "0" }, lines([[SELECT count(*) FROM pg_constraint
      WHERE conrelid::regclass::text LIKE 'procrastinate%' AND (condeferrable OR NOT convalidated)]]))
  end)

  it("has every index, by name, with its definition (tarry's own tarry_* indexes aside)", function()
    local p = "public.procrastinate_"
    assert.same({
      "idx_procrastinate_jobs_worker_not_null|CREATE INDEX idx_procrastinate_jobs_worker_not_null ON "
        .. p .. "jobs USING btree (worker_id) WHERE ((worker_id IS NOT NULL) AND (status = 'doing'::procrastinate_job_status))",
      "idx_procrastinate_workers_last_heartbeat|CREATE INDEX idx_procrastinate_workers_last_heartbeat ON "
        .. p .. "workers USING btree (last_heartbeat)",
      "procrastinate_events_job_id_fkey_v1|CREATE INDEX procrastinate_events_job_id_fkey_v1 ON "
        .. p .. "events USING btree (job_id)",
      "procrastinate_events_pkey|CREATE UNIQUE INDEX procrastinate_events_pkey ON "
        .. p .. "events USING btree (id)",
      "procrastinate_jobs_id_lock_idx_v1|CREATE INDEX procrastinate_jobs_id_lock_idx_v1 ON "
        .. p .. "jobs USING btree (id, lock) WHERE (status = ANY (ARRAY['todo'::procrastinate_job_status, 'doing'::procrastinate_job_status]))",
      "procrastinate_jobs_lock_idx_v1|CREATE UNIQUE INDEX procrastinate_jobs_lock_idx_v1 ON "
        .. p .. "jobs USING btree (lock) WHERE (status = 'doing'::procrastinate_job_status)",
      "procrastinate_jobs_pkey|CREATE UNIQUE INDEX procrastinate_jobs_pkey ON "
        .. p .. "jobs USING btree (id)",
      "procrastinate_jobs_priority_idx_v1|CREATE INDEX procrastinate_jobs_priority_idx_v1 ON "
        .. p .. "jobs USING btree (priority DESC, id) WHERE (status = 'todo'::procrastinate_job_status)",
      "procrastinate_jobs_queue_name_idx_v1|CREATE INDEX procrastinate_jobs_queue_name_idx_v1 ON "
        .. p .. "jobs USING btree (queue_name)",
      "procrastinate_jobs_queueing_lock_idx_v1|CREATE UNIQUE INDEX procrastinate_jobs_queueing_lock_idx_v1 ON "
        .. p .. "jobs USING btree (queueing_lock) WHERE (status = 'todo'::procrastinate_job_status)",
      "procrastinate_periodic_defers_job_id_fkey_v1|CREATE INDEX procrastinate_periodic_defers_job_id_fkey_v1 ON "
        .. p .. "periodic_defers USING btree (job_id)",
      "procrastinate_periodic_defers_pkey|CREATE UNIQUE INDEX procrastinate_periodic_defers_pkey ON "
        .. p .. "periodic_defers USING btree (id)",
      "procrastinate_periodic_defers_unique|CREATE UNIQUE INDEX procrastinate_periodic_defers_unique ON "
        .. p .. "periodic_defers USING btree (task_name, periodic_id, defer_timestamp)",
      "procrastinate_workers_pkey|CREATE UNIQUE INDEX procrastinate_workers_pkey ON "
        .. p .. "workers USING btree (id)",
    }, lines([[SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
      WHERE indrelid::regclass::text LIKE 'procrastinate%' AND indexrelid::regclass::text NOT LIKE 'tarry%'
      ORDER BY 1]]))
  end)

  it("has the four bigint sequences, each owned by its id column", function()
    assert.same({
      "procrastinate_events_id_seq|bigint|procrastinate_events.id",
      "procrastinate_jobs_id_seq|bigint|procrastinate_jobs.id",
      "procrastinate_periodic_defers_id_seq|bigint|procrastinate_periodic_defers.id",
      "procrastinate_workers_id_seq|bigint|procrastinate_workers.id",
    }, lines([[SELECT c.relname, s.seqtypid::regtype, d.refobjid::regclass || '.' || a.attname
      FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
      JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
      WHERE c.relkind = 'S' ORDER BY c.relname]]))
  end)

  it("has exactly the 3.9 functions, with argument names, results and attributes", function()
    -- name|identity arguments|result|volatility|strict|security definer|parallel|language
    local attrs = "|v|f|f|u|plpgsql"
    local retry_args = "job_id bigint, retry_at timestamp with time zone, new_priority integer, "
      .. "new_queue_name character varying, new_lock character varying"
    assert.same({
      "procrastinate_cancel_job_v1|job_id bigint, abort boolean, delete_job boolean|bigint" .. attrs,
      "procrastinate_defer_jobs_v1|jobs procrastinate_job_to_defer_v1[]|bigint[]" .. attrs,
      "procrastinate_defer_periodic_job_v2|_queue_name character varying, _lock character varying, "
        .. "_queueing_lock character varying, _task_name character varying, _priority integer, "
        .. "_periodic_id character varying, _defer_timestamp bigint, _args jsonb|bigint" .. attrs,
      "procrastinate_fetch_job_v2|target_queue_names character varying[], p_worker_id bigint|procrastinate_jobs" .. attrs,
      "procrastinate_finish_job_v1|job_id bigint, end_status procrastinate_job_status, delete_job boolean|void" .. attrs,
      "procrastinate_notify_queue_abort_job_v1||trigger" .. attrs,
      "procrastinate_notify_queue_job_inserted_v1||trigger" .. attrs,
      "procrastinate_prune_stalled_workers_v1|seconds_since_heartbeat double precision|TABLE(worker_id bigint)" .. attrs,
      "procrastinate_register_worker_v1||TABLE(worker_id bigint)" .. attrs,
      "procrastinate_retry_job_v1|" .. retry_args .. "|void" .. attrs,
      "procrastinate_retry_job_v2|" .. retry_args .. "|void" .. attrs,
      "procrastinate_trigger_abort_requested_events_procedure_v1||trigger" .. attrs,
      "procrastinate_trigger_function_scheduled_events_v1||trigger" .. attrs,
      "procrastinate_trigger_function_status_events_insert_v1||trigger" .. attrs,
      "procrastinate_trigger_function_status_events_update_v1||trigger" .. attrs,
      "procrastinate_unlink_periodic_defers_v1||trigger" .. attrs,
      "procrastinate_unregister_worker_v1|worker_id bigint|void" .. attrs,
      "procrastinate_update_heartbeat_v1|worker_id bigint|void" .. attrs,
    }, lines([[SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
        p.provolatile, p.proisstrict, p.prosecdef, p.proparallel, l.lanname
      FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
      WHERE p.proname LIKE 'procrastinate%' ORDER BY p.proname]]))
    -- (the exact list above also rules out procrastinate_defer_job_v1, _fetch_job_v1, etc.)
  end)

  it("leaves plpgsql installed and needs nothing else", function()
    assert.same({ "plpgsql" }, lines("SELECT extname FROM pg_extension ORDER BY 1"))
  end)

  it("is a plain statement file that one PQexec can run (no psql meta-commands)", function()
    local f = assert(io.open("lua/tarry/schema.sql"))
    local text = f:read("a")
    f:close()
    assert.is_nil(text:find("\\", 1, true))
    assert.is_nil(text:upper():find("%f[%w]BEGIN;"))
    assert.is_nil(text:upper():find("%f[%w]COMMIT;"))
    assert.truthy(text:find("^%-%-"))
  end)
end)
