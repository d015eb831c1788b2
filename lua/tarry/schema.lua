--- tarry.schema: the text of tarry's database schema (schema.sql beside this file), and a check
--- of what a database already holds, so that tarry applies the schema only to an empty database.
--- @module tarry.schema
---
--- `conn` is any object with `conn:execute(sql, ...)` returning rows as arrays of tables keyed by
--- column name (raising on a database error); multi-statement SQL is allowed without parameters.
local schema = {}

-- Everything of PROTOCOL.md §2-§4 by kind and name: a database is "complete" when all exist.
-- Functions carry their identity arguments, so an older or newer Procrastinate whose functions
-- differ counts as partial rather than complete.
local CORE = {
  { "type", "procrastinate_job_status" },
  { "type", "procrastinate_job_event_type" },
  { "type", "procrastinate_job_to_defer_v1" },
  { "table", "procrastinate_workers" },
  { "table", "procrastinate_jobs" },
  { "table", "procrastinate_periodic_defers" },
  { "table", "procrastinate_events" },
  { "sequence", "procrastinate_workers_id_seq" },
  { "sequence", "procrastinate_jobs_id_seq" },
  { "sequence", "procrastinate_periodic_defers_id_seq" },
  { "sequence", "procrastinate_events_id_seq" },
  { "constraint", "procrastinate_workers_pkey" },
  { "constraint", "procrastinate_jobs_pkey" },
  { "constraint", "check_not_todo_abort_requested" },
  { "constraint", "procrastinate_jobs_worker_id_fkey" },
  { "constraint", "procrastinate_periodic_defers_pkey" },
  { "constraint", "procrastinate_periodic_defers_unique" },
  { "constraint", "procrastinate_periodic_defers_job_id_fkey" },
  { "constraint", "procrastinate_events_pkey" },
  { "constraint", "procrastinate_events_job_id_fkey" },
  { "index", "idx_procrastinate_workers_last_heartbeat" },
  { "index", "procrastinate_jobs_queueing_lock_idx_v1" },
  { "index", "procrastinate_jobs_lock_idx_v1" },
  { "index", "idx_procrastinate_jobs_worker_not_null" },
  { "index", "procrastinate_jobs_queue_name_idx_v1" },
  { "index", "procrastinate_jobs_id_lock_idx_v1" },
  { "index", "procrastinate_jobs_priority_idx_v1" },
  { "index", "procrastinate_periodic_defers_job_id_fkey_v1" },
  { "index", "procrastinate_events_job_id_fkey_v1" },
  { "function", "procrastinate_defer_jobs_v1", "jobs procrastinate_job_to_defer_v1[]" },
  { "function", "procrastinate_defer_periodic_job_v2",
    "_queue_name character varying, _lock character varying, _queueing_lock character varying, "
      .. "_task_name character varying, _priority integer, _periodic_id character varying, "
      .. "_defer_timestamp bigint, _args jsonb" },
  { "function", "procrastinate_fetch_job_v2", "target_queue_names character varying[], p_worker_id bigint" },
  { "function", "procrastinate_finish_job_v1",
    "job_id bigint, end_status procrastinate_job_status, delete_job boolean" },
  { "function", "procrastinate_cancel_job_v1", "job_id bigint, abort boolean, delete_job boolean" },
  { "function", "procrastinate_retry_job_v2",
    "job_id bigint, retry_at timestamp with time zone, new_priority integer, "
      .. "new_queue_name character varying, new_lock character varying" },
  { "function", "procrastinate_retry_job_v1",
    "job_id bigint, retry_at timestamp with time zone, new_priority integer, "
      .. "new_queue_name character varying, new_lock character varying" },
  { "function", "procrastinate_register_worker_v1", "" },
  { "function", "procrastinate_unregister_worker_v1", "worker_id bigint" },
  { "function", "procrastinate_update_heartbeat_v1", "worker_id bigint" },
  { "function", "procrastinate_prune_stalled_workers_v1", "seconds_since_heartbeat double precision" },
  { "function", "procrastinate_notify_queue_job_inserted_v1", "" },
  { "function", "procrastinate_notify_queue_abort_job_v1", "" },
  { "function", "procrastinate_trigger_function_status_events_insert_v1", "" },
  { "function", "procrastinate_trigger_function_status_events_update_v1", "" },
  { "function", "procrastinate_trigger_function_scheduled_events_v1", "" },
  { "function", "procrastinate_trigger_abort_requested_events_procedure_v1", "" },
  { "function", "procrastinate_unlink_periodic_defers_v1", "" },
}

-- The two ways the event log and notifications can be produced (triggers on procrastinate_jobs).
local TARRY_TRIGGERS = {
  { "trigger", "tarry_jobs_insert_events" },
  { "trigger", "tarry_jobs_note_abort_requested_set" },
  { "trigger", "tarry_jobs_update_events" },
  { "trigger", "tarry_jobs_unlink_periodic_defers" },
}
-- tarry's own functions: a "tarry" schema is complete only with them (they are not looked at to
-- tell an empty database, nor a schema Procrastinate applied, which has none of them).
local TARRY_FUNCTIONS = {
  { "function", "tarry_jobs_insert_events", "" },
  { "function", "tarry_jobs_note_abort_requested_set", "" },
  { "function", "tarry_jobs_update_events", "" },
  { "function", "tarry_fetch_jobs_v1", "target_queue_names character varying[], p_worker_id bigint, max_jobs integer" },
  { "function", "tarry_finish_jobs_v1", "job_ids bigint[], end_statuses procrastinate_job_status[], "
      .. "delete_jobs boolean[], retry_at_epochs double precision[]" },
}
local PROCRASTINATE_TRIGGERS = {
  { "trigger", "procrastinate_jobs_notify_queue_job_inserted_v1" },
  { "trigger", "procrastinate_jobs_notify_queue_job_aborted_v1" },
  { "trigger", "procrastinate_trigger_status_events_insert_v1" },
  { "trigger", "procrastinate_trigger_status_events_update_v1" },
  { "trigger", "procrastinate_trigger_scheduled_events_v1" },
  { "trigger", "procrastinate_trigger_abort_requested_events_v1" },
  { "trigger", "procrastinate_trigger_delete_jobs_v1" },
}

-- One catalog lookup per kind, by the names of that kind (an index scan on the catalog's name);
-- each row found is (kind, name, identity arguments or ''). Only objects visible through search_path count,
-- as the protocol's statements are never schema-qualified. (One VALUES list with a test per row
-- was planned as a hashed subplan over all of pg_proc, visibility and identity arguments computed
-- for every function: 45 ms of every worker's start.)
local LOOKUP = {
  type = "SELECT 'type', t.typname::text, '' FROM pg_type AS t WHERE t.typname = ANY(%s::name[])"
    .. " AND pg_type_is_visible(t.oid)",
  table = "SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'S' THEN 'sequence' ELSE 'index' END,"
    .. " c.relname::text, '' FROM pg_class AS c WHERE c.relname = ANY(%s::name[]) AND c.relkind IN ('r', 'S', 'i')"
    .. " AND pg_table_is_visible(c.oid)",
  constraint = "SELECT 'constraint', k.conname::text, '' FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid"
    .. " WHERE k.conname = ANY(%s::name[]) AND pg_table_is_visible(c.oid)",
  ["function"] = "SELECT 'function', p.proname::text, pg_get_function_identity_arguments(p.oid) FROM pg_proc AS p"
    .. " WHERE p.proname = ANY(%s::name[]) AND pg_function_is_visible(p.oid)",
  trigger = "SELECT 'trigger', g.tgname::text, '' FROM pg_trigger AS g WHERE g.tgname = ANY(%s::name[])"
    .. " AND NOT g.tgisinternal AND g.tgrelid = to_regclass('procrastinate_jobs')",
}
-- The kinds looked up together (tables, sequences and indexes are all pg_class).
local LOOKUP_OF = { type = "type", table = "table", sequence = "table", index = "table", constraint = "constraint",
  ["function"] = "function", trigger = "trigger" }

local function quote(s)
  return "'" .. s:gsub("'", "''") .. "'"
end

local function label(object)
  if object[1] == "function" then
    return string.format("function %s(%s)", object[2], object[3])
  end
  return object[1] .. " " .. object[2]
end

-- Returns { [label] = true } for the objects (of all three lists) that exist.
local function present_objects(conn)
  local names, order = {}, {}
  for _, list in ipairs({ CORE, TARRY_TRIGGERS, TARRY_FUNCTIONS, PROCRASTINATE_TRIGGERS }) do
    for _, object in ipairs(list) do
      local lookup = LOOKUP_OF[object[1]]
      if not names[lookup] then names[lookup], order[#order + 1] = {}, lookup end
      table.insert(names[lookup], quote(object[2]))
    end
  end
  local selects = {}
  for i, lookup in ipairs(order) do
    selects[i] = string.format(LOOKUP[lookup], "ARRAY[" .. table.concat(names[lookup], ", ") .. "]")
  end
  local sql = "SELECT kind, name, args FROM (" .. table.concat(selects, " UNION ALL ") .. ") AS f (kind, name, args)"
  local found = {}
  for _, row in ipairs(conn:execute(sql)) do found[row.kind .. "\0" .. row.name .. "\0" .. row.args] = true end
  local present = {}
  for _, list in ipairs({ CORE, TARRY_TRIGGERS, TARRY_FUNCTIONS, PROCRASTINATE_TRIGGERS }) do
    for _, object in ipairs(list) do
      if found[object[1] .. "\0" .. object[2] .. "\0" .. (object[3] or "")] then present[label(object)] = true end
    end
  end
  return present
end

local function missing_from(list, present)
  local missing = {}
  for _, object in ipairs(list) do
    if not present[label(object)] then missing[#missing + 1] = label(object) end
  end
  return missing
end

--- What the database holds:
---   "absent"        no object of the schema at all;
---   "tarry"         the complete schema with tarry's statement-level triggers;
---   "procrastinate" the complete schema with Procrastinate's row-level triggers;
---   "partial", list the schema is incomplete, mixed or foreign: list names what is missing
---                   ("kind name", functions with their arguments).
function schema.inspect(conn)
  local present = present_objects(conn)
  local missing_core = missing_from(CORE, present)
  local missing_tarry = missing_from(TARRY_TRIGGERS, present)
  local missing_procrastinate = missing_from(PROCRASTINATE_TRIGGERS, present)
  local has_tarry = #missing_tarry < #TARRY_TRIGGERS
  local has_procrastinate = #missing_procrastinate < #PROCRASTINATE_TRIGGERS

  if #missing_core == #CORE and not has_tarry and not has_procrastinate then
    return "absent"
  end
  if #missing_core > 0 then
    return "partial", missing_core
  end
  if #missing_tarry == 0 and not has_procrastinate then
    local missing_functions = missing_from(TARRY_FUNCTIONS, present)
    if #missing_functions > 0 then return "partial", missing_functions end
    return "tarry"
  end
  if #missing_procrastinate == 0 and not has_tarry then return "procrastinate" end
  -- Incomplete or mixed triggers: name what completes the set that is (mostly) there; with both
  -- kinds present the jobs would get every event twice, so list both.
  if has_tarry and has_procrastinate then
    local both = {}
    for _, name in ipairs(missing_tarry) do both[#both + 1] = name end
    for _, name in ipairs(missing_procrastinate) do both[#both + 1] = name end
    both[#both + 1] = "(both tarry_* and Procrastinate's triggers are installed)"
    return "partial", both
  elseif has_procrastinate then
    return "partial", missing_procrastinate
  end
  return "partial", missing_tarry
end

local sql_text
--- The text of schema.sql: beside this module, or found on package.path as tarry/schema.sql.
function schema.sql()
  if sql_text then return sql_text end
  local candidates = {}
  local source = debug.getinfo(1, "S").source
  if source:sub(1, 1) == "@" then
    candidates[#candidates + 1] = source:sub(2):gsub("[^/]*$", "") .. "schema.sql"
  end
  local found = package.searchpath("tarry.schema", (package.path:gsub("%.lua", ".sql")))
  if found then candidates[#candidates + 1] = found end
  for _, path in ipairs(candidates) do
    local f = io.open(path, "r")
    if f then
      sql_text = f:read("a")
      f:close()
      return sql_text
    end
  end
  error("tarry schema: schema.sql not found (looked in " .. table.concat(candidates, ", ") .. ")", 2)
end

--- tarry's own functions as schema.sql defines them, in its order: a list of { name =, sql =,
--- body =, config = }: sql the definition as a CREATE OR REPLACE FUNCTION statement, body the
--- text between its dollar quotes (pg_proc.prosrc), config its SET clauses as "name=value,..."
--- (pg_proc.proconfig).  schema.sql writes each as "CREATE FUNCTION tarry_..." up to a line "$$;".
function schema.tarry_functions()
  local out = {}
  for chunk in schema.sql():gmatch("\n(CREATE FUNCTION tarry_.-\n%$%$;)") do
    local settings = {}
    for k, v in chunk:match("^(.-)\nAS %$%$"):gmatch("\nSET ([%w_]+) = ([%w_]+)") do
      settings[#settings + 1] = k .. "=" .. v
    end
    out[#out + 1] = { name = chunk:match("^CREATE FUNCTION ([%w_]+)"),
      sql = "CREATE OR REPLACE" .. chunk:sub(#"CREATE" + 1),
      body = chunk:match("\nAS %$%$(.*)%$%$;$"), config = table.concat(settings, ",") }
  end
  return out
end

-- The names of tarry's functions whose definition in the database is not schema.sql's.
local function outdated_functions(conn)
  local current = {}
  for _, row in ipairs(conn:execute([[
SELECT p.proname AS name, p.prosrc AS body, coalesce(array_to_string(p.proconfig, ','), '') AS config
FROM pg_proc AS p WHERE p.proname LIKE 'tarry\_%' AND pg_function_is_visible(p.oid)]])) do
    current[row.name .. "\0" .. row.body .. "\0" .. row.config] = true
  end
  local outdated = {}
  for _, f in ipairs(schema.tarry_functions()) do
    if not current[f.name .. "\0" .. f.body .. "\0" .. f.config] then outdated[#outdated + 1] = f end
  end
  return outdated
end

-- Replaces the outdated ones, all at once in one transaction (workers may run meanwhile: a call
-- under way finishes with the old definitions); returns their names.
local function update_functions(conn)
  local outdated, names, sql = outdated_functions(conn), {}, { "BEGIN;" }
  if #outdated == 0 then return names end
  for i, f in ipairs(outdated) do names[i], sql[#sql + 1] = f.name, f.sql end
  sql[#sql + 1] = "COMMIT;"
  local ok, err = pcall(conn.execute, conn, table.concat(sql, "\n"))
  if not ok then
    pcall(conn.execute, conn, "ROLLBACK")
    error("tarry schema: updating tarry's functions failed: " .. tostring(err), 3)
  end
  return names
end

--- Applies the schema to a database that has none of it, in one transaction.
--- Returns "applied", or "present", "tarry"|"procrastinate" when the complete schema is already
--- there: then nothing is changed, except that on tarry's schema the functions of tarry's own
--- (tarry_*) that differ from schema.sql's are replaced by schema.sql's, in one transaction,
--- and their names come third (a list, empty when all were current).  A signature or return
--- type change needs a new function name (_v2): CREATE OR REPLACE cannot make it.
--- Raises "tarry schema: ..." for a partial or foreign schema.
function schema.apply(conn)
  local state, missing = schema.inspect(conn)
  if state == "tarry" then
    return "present", state, update_functions(conn)
  elseif state == "procrastinate" then
    return "present", state
  end
  if state == "partial" then
    error("tarry schema: the database holds an incomplete or foreign Procrastinate schema; "
      .. "refusing to change it. Missing: " .. table.concat(missing, ", "), 2)
  end
  local ok, err = pcall(conn.execute, conn, "BEGIN;\n" .. schema.sql() .. "\nCOMMIT;")
  if not ok then
    -- On a persistent session the failed transaction must be ended before anything else runs.
    pcall(conn.execute, conn, "ROLLBACK")
    -- Another process may have applied it meanwhile: that is as good as our own.
    local inspected, now_state = pcall(schema.inspect, conn)
    if inspected and (now_state == "tarry" or now_state == "procrastinate") then
      return "present", now_state
    end
    error("tarry schema: applying the schema failed: " .. tostring(err), 2)
  end
  return "applied"
end

return schema
