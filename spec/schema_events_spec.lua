-- PROTOCOL.md §5 event rows, for every transition of the mapping, single jobs and batches
-- (multi-row INSERT and UPDATE statements).  Every scenario runs twice: on a database with tarry's
-- statement-level triggers, and on one where spec/fixtures/procrastinate_triggers.sql put back
-- Procrastinate's row-level triggers.  Both must give the expected rows, and in the end the two
-- event tables must be identical row for row (same ids, jobs and types).
local db = require("support.db")
local schema = require("tarry.schema")
local psql_conn = require("support.psql_conn")

local FUTURE = "2100-01-01 00:00:00+00"
local PAST = "2001-02-03 04:05:06+00"

local queue_counter = {}  -- per database name

-- Per database: helpers that run SQL and render the events of some jobs.
local function context(name)
  local c = { name = name, queue = {} }
  function c.value(sql) return db.value(name, sql) end
  function c.ids(sql)
    local ids = {}
    for _, row in ipairs(db.rows(name, sql)) do ids[#ids + 1] = math.tointeger(row[1]) end
    return ids
  end
  -- spec: list of scheduled_at values (false = none), one job each.  Every job gets a queue of
  -- its own, so that c.fetch can take exactly that job without editing it.
  function c.defer(spec)
    local items, queues = {}, {}
    for i, at in ipairs(spec) do
      queue_counter[name] = (queue_counter[name] or 0) + 1
      queues[i] = "ev_" .. queue_counter[name]
      items[i] = string.format("ROW('%s', 'task', 0, NULL, NULL, '{}', %s)", queues[i],
        at and ("'" .. at .. "'") or "NULL")
    end
    local ids = c.ids("SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[" .. table.concat(items, ", ")
      .. "]::procrastinate_job_to_defer_v1[]))")
    for i, id in ipairs(ids) do c.queue[id] = queues[i] end
    return ids
  end
  function c.call(fmt, ...) return c.value(string.format(fmt, ...)) end
  function c.fetch(id, worker)  -- fetches exactly this job (it is alone in its queue)
    local got = c.value(string.format("SELECT id FROM procrastinate_fetch_job_v2('{%s}', %s)", c.queue[id],
      worker or "NULL"))
    assert(math.tointeger(got) == id, "fetch took " .. tostring(got) .. " instead of " .. id)
  end
  -- "<n>:<type>" per event of the jobs, in event id order, n = position of the job in `ids`;
  -- "@<time>" is added when `at` is not the transaction time (our planned times are 2001, 2100).
  function c.events(ids)
    local list = {}
    for i, id in ipairs(ids) do list[#list + 1] = string.format("(%d, %d)", id, i) end
    local out = {}
    for _, row in ipairs(db.rows(name, [[SELECT j.n || ':' || e.type ||
        CASE WHEN e.at > '2020-01-01' AND e.at < '2050-01-01' THEN ''
             ELSE '@' || to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') END
      FROM procrastinate_events e JOIN (VALUES ]] .. table.concat(list, ", ") .. [[) AS j (id, n) ON j.id = e.job_id
      ORDER BY e.id]])) do
      out[#out + 1] = row[1]
    end
    return out
  end
  return c
end

local F, P = "@2100-01-01 00:00:00", "@2001-02-03 04:05:06"

-- Each scenario returns the observed event list (or other observations); `expected` is §5's.
local SCENARIOS = {
  { "defer one job: deferred", { "1:deferred" }, function(c)
    return c.events(c.defer({ false }))
  end },

  { "defer one scheduled job: scheduled at the planned time, then deferred", { "1:scheduled" .. F, "1:deferred" },
    function(c) return c.events(c.defer({ FUTURE })) end },

  { "batch defer: per job scheduled before deferred, jobs in order",
    { "1:deferred", "2:scheduled" .. F, "2:deferred", "3:deferred", "4:scheduled" .. P, "4:deferred" },
    function(c) return c.events(c.defer({ false, FUTURE, false, PAST })) end },

  { "multi-row INSERT statement: events for todo rows only",
    { "1:deferred", "3:scheduled" .. F, "3:deferred" },
    function(c)
      return c.events(c.ids(string.format([[INSERT INTO procrastinate_jobs (queue_name, task_name, status, scheduled_at)
        VALUES ('ev', 't', 'todo', NULL), ('ev', 't', 'doing', '%s'), ('ev', 't', 'todo', '%s') RETURNING id]],
        FUTURE, FUTURE)))
    end },

  { "fetch: started", { "1:deferred", "1:started" }, function(c)
    local ids = c.defer({ false })
    c.fetch(ids[1])
    return c.events(ids)
  end },

  { "finish from doing: succeeded, failed, aborted",
    { "1:deferred", "2:deferred", "3:deferred", "1:started", "2:started", "3:started", "3:abort_requested",
      "1:succeeded", "2:failed", "3:aborted" },
    function(c)
      local ids = c.defer({ false, false, false })
      for _, id in ipairs(ids) do c.fetch(id) end
      c.call("SELECT procrastinate_cancel_job_v1(%d, true, false)", ids[3])
      c.call("SELECT procrastinate_finish_job_v1(%d, 'succeeded', false)", ids[1])
      c.call("SELECT procrastinate_finish_job_v1(%d, 'failed', false)", ids[2])
      c.call("SELECT procrastinate_finish_job_v1(%d, 'aborted', false)", ids[3])
      return c.events(ids)
    end },

  { "finish from todo: succeeded and failed log cancelled, aborted logs nothing",
    { "1:deferred", "2:deferred", "3:deferred", "1:cancelled", "2:cancelled" },
    function(c)
      local ids = c.defer({ false, false, false })
      c.call("SELECT procrastinate_finish_job_v1(%d, 'succeeded', false)", ids[1])
      c.call("SELECT procrastinate_finish_job_v1(%d, 'failed', false)", ids[2])
      c.call("SELECT procrastinate_finish_job_v1(%d, 'aborted', false)", ids[3])
      return c.events(ids)
    end },

  { "retry doing -> todo: scheduled at retry_at, then deferred_for_retry; NULL retry_at: no scheduled",
    { "1:deferred", "1:started", "1:scheduled" .. P, "1:deferred_for_retry", "1:started", "1:deferred_for_retry" },
    function(c)
      local ids = c.defer({ false })
      c.fetch(ids[1])
      c.call("SELECT procrastinate_retry_job_v2(%d, '%s', NULL, NULL, NULL)", ids[1], PAST)
      c.fetch(ids[1])
      c.call("SELECT procrastinate_retry_job_v2(%d, NULL, 3, NULL, 'lk')", ids[1])
      return c.events(ids)
    end },

  { "retry failed -> todo: retried", { "1:deferred", "1:started", "1:failed", "1:scheduled" .. F, "1:retried" },
    function(c)
      local ids = c.defer({ false })
      c.fetch(ids[1])
      c.call("SELECT procrastinate_finish_job_v1(%d, 'failed', false)", ids[1])
      c.call("SELECT procrastinate_retry_job_v2(%d, '%s', NULL, NULL, NULL)", ids[1], FUTURE)
      return c.events(ids)
    end },

  { "legacy retry v1: like v2", { "1:deferred", "1:started", "1:scheduled" .. F, "1:deferred_for_retry" },
    function(c)
      local ids = c.defer({ false })
      c.fetch(ids[1])
      c.call("SELECT procrastinate_retry_job_v1(%d, '%s', NULL, NULL, NULL)", ids[1], FUTURE)
      return c.events(ids)
    end },

  { "cancel: todo -> cancelled; with abort: abort_requested then cancelled",
    { "1:deferred", "2:deferred", "1:cancelled", "2:abort_requested", "2:cancelled" },
    function(c)
      local ids = c.defer({ false, false })
      c.call("SELECT procrastinate_cancel_job_v1(%d, false, false)", ids[1])
      c.call("SELECT procrastinate_cancel_job_v1(%d, true, false)", ids[2])
      return c.events(ids)
    end },

  { "abort a doing job twice: two abort_requested; retry then fails it",
    { "1:deferred", "1:started", "1:abort_requested", "1:abort_requested", "1:failed" },
    function(c)
      local ids = c.defer({ false })
      c.fetch(ids[1])
      c.call("SELECT procrastinate_cancel_job_v1(%d, true, false)", ids[1])
      c.call("SELECT procrastinate_cancel_job_v1(%d, true, false)", ids[1])
      c.call("SELECT procrastinate_retry_job_v2(%d, '%s', NULL, NULL, NULL)", ids[1], FUTURE)
      return c.events(ids)
    end },

  { "batch UPDATE statements: each transition for every row, jobs in order",
    { "1:deferred", "2:deferred", "3:deferred",
      "1:started", "2:started", "3:started",
      "1:abort_requested", "2:abort_requested", "3:abort_requested",
      "1:scheduled" .. F, "1:deferred_for_retry", "2:scheduled" .. F, "2:deferred_for_retry",
      "3:scheduled" .. F, "3:deferred_for_retry",
      "1:started", "2:started", "3:started",
      "1:succeeded", "2:failed", "3:aborted" },
    function(c)
      local ids = c.defer({ false, false, false })
      local set = string.format("(%d, %d, %d)", ids[1], ids[2], ids[3])
      c.value("UPDATE procrastinate_jobs SET status = 'doing' WHERE id IN " .. set)
      c.value("UPDATE procrastinate_jobs SET abort_requested = true WHERE id IN " .. set)
      c.value("UPDATE procrastinate_jobs SET status = 'todo', abort_requested = false, scheduled_at = '"
        .. FUTURE .. "' WHERE id IN " .. set)
      c.value("UPDATE procrastinate_jobs SET status = 'doing' WHERE id IN " .. set)
      c.value(string.format([[UPDATE procrastinate_jobs SET status = CASE id WHEN %d THEN 'succeeded'
        WHEN %d THEN 'failed' ELSE 'aborted' END::procrastinate_job_status WHERE id IN %s]], ids[1], ids[2], set))
      return c.events(ids)
    end },

  { "batch UPDATE from todo: cancelled / none per the mapping; failed -> todo: retried",
    { "1:deferred", "2:deferred", "3:deferred", "4:deferred",
      "1:cancelled", "2:cancelled", "3:cancelled",
      "2:retried" },
    function(c)
      local ids = c.defer({ false, false, false, false })
      c.value(string.format([[UPDATE procrastinate_jobs SET status = CASE id WHEN %d THEN 'cancelled'
        WHEN %d THEN 'failed' WHEN %d THEN 'succeeded' ELSE 'aborted' END::procrastinate_job_status
        WHERE id IN (%d, %d, %d, %d)]], ids[1], ids[2], ids[3], ids[1], ids[2], ids[3], ids[4]))
      c.value(string.format("UPDATE procrastinate_jobs SET status = 'todo' WHERE id IN (%d, %d)", ids[1], ids[2]))
      return c.events(ids)  -- cancelled -> todo has no event; failed -> todo is retried
    end },

  { "manual edits: any update of a scheduled todo row logs scheduled; an unchanged status logs nothing; "
      .. "abort_requested in the SET list logs abort_requested even when unchanged",
    { "1:scheduled" .. F, "1:deferred", "1:scheduled" .. F, "1:scheduled" .. F, "1:started",
      "1:abort_requested", "1:abort_requested" },
    function(c)
      local ids = c.defer({ FUTURE })
      local where = " WHERE id = " .. ids[1]
      c.value("UPDATE procrastinate_jobs SET priority = 3" .. where)
      c.value("UPDATE procrastinate_jobs SET status = status" .. where)
      c.value("UPDATE procrastinate_jobs SET status = 'doing'" .. where)
      c.value("UPDATE procrastinate_jobs SET status = status, priority = 4" .. where)
      c.value("UPDATE procrastinate_jobs SET abort_requested = true" .. where)
      c.value("UPDATE procrastinate_jobs SET priority = 5" .. where)  -- flag true but not in SET: nothing
      c.value("UPDATE procrastinate_jobs SET abort_requested = abort_requested" .. where)
      c.value("UPDATE procrastinate_jobs SET abort_requested = false" .. where)
      return c.events(ids)
    end },

  { "several UPDATE statements in one transaction keep their own SET lists",
    { "1:deferred", "1:started", "1:abort_requested" },
    function(c)
      local ids = c.defer({ false })
      local where = " WHERE id = " .. ids[1]
      c.value("BEGIN; UPDATE procrastinate_jobs SET status = 'doing'" .. where
        .. "; UPDATE procrastinate_jobs SET abort_requested = true WHERE id = -1"
        .. "; UPDATE procrastinate_jobs SET abort_requested = true" .. where
        .. "; UPDATE procrastinate_jobs SET priority = 2" .. where .. "; COMMIT")
      return c.events(ids)
    end },

  { "unregistering the worker of a retried, scheduled job: the FK's update logs scheduled",
    { "1:deferred", "1:started", "1:scheduled" .. F, "1:deferred_for_retry", "1:scheduled" .. F },
    function(c)
      local ids = c.defer({ false })
      local w = c.value("SELECT worker_id FROM procrastinate_register_worker_v1()")
      c.fetch(ids[1], w)
      c.call("SELECT procrastinate_retry_job_v2(%d, '%s', NULL, NULL, NULL)", ids[1], FUTURE)
      c.value("SELECT procrastinate_unregister_worker_v1(" .. w .. ")")
      return c.events(ids)
    end },

  { "deleting jobs with periodic markers unlinks the markers and drops the events",
    { "marker kept, unlinked", "marker kept, unlinked", "events 0", "jobs 0" },
    function(c)
      local a = c.value("SELECT procrastinate_defer_periodic_job_v2('ev', NULL, NULL, 'ev_per', 0, 'a', 1, '{}')")
      local b = c.value("SELECT procrastinate_defer_periodic_job_v2('ev', NULL, NULL, 'ev_per', 0, 'b', 1, '{}')")
      c.value("DELETE FROM procrastinate_jobs WHERE id IN (" .. a .. ", " .. b .. ")")  -- one statement, two rows
      local out = {}
      for _, row in ipairs(db.rows(c.name, "SELECT job_id IS NULL FROM procrastinate_periodic_defers "
        .. "WHERE task_name = 'ev_per' ORDER BY periodic_id")) do
        out[#out + 1] = row[1] == "t" and "marker kept, unlinked" or "marker still linked"
      end
      out[#out + 1] = "events " .. c.value("SELECT count(*) FROM procrastinate_events WHERE job_id IN (" .. a .. ", " .. b .. ")")
      out[#out + 1] = "jobs " .. c.value("SELECT count(*) FROM procrastinate_jobs WHERE id IN (" .. a .. ", " .. b .. ")")
      return out
    end },
}

describe("event rows of tarry's triggers and of Procrastinate's", function()
  local dbs = {}
  local FLAVOURS = { "tarry", "procrastinate" }

  setup(function()
    dbs.tarry = db.fresh()
    dbs.procrastinate = db.fresh()
    db.apply_schema_file(dbs.procrastinate, "spec/fixtures/procrastinate_triggers.sql")
  end)
  teardown(function()
    for _, name in pairs(dbs) do db.drop(name) end
  end)

  it("compares a tarry database with one that has Procrastinate's row-level triggers", function()
    assert.equal("tarry", schema.inspect(psql_conn.new(dbs.tarry)))
    assert.equal("procrastinate", schema.inspect(psql_conn.new(dbs.procrastinate)))
  end)

  it("the fixture's triggers are §5's: names, timing, events, WHEN", function()
    local function def(name)
      return db.value(dbs.procrastinate, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = '" .. name .. "'")
    end
    local on = " ON public.procrastinate_jobs FOR EACH ROW "
    assert.same({
      "CREATE TRIGGER procrastinate_jobs_notify_queue_job_aborted_v1 AFTER UPDATE OF abort_requested" .. on
        .. "WHEN (((old.abort_requested = false) AND (new.abort_requested = true) AND (new.status = 'doing'::procrastinate_job_status))) "
        .. "EXECUTE FUNCTION procrastinate_notify_queue_abort_job_v1()",
      "CREATE TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1 AFTER INSERT" .. on
        .. "WHEN ((new.status = 'todo'::procrastinate_job_status)) EXECUTE FUNCTION procrastinate_notify_queue_job_inserted_v1()",
      "CREATE TRIGGER procrastinate_trigger_abort_requested_events_v1 AFTER UPDATE OF abort_requested" .. on
        .. "WHEN ((new.abort_requested = true)) EXECUTE FUNCTION procrastinate_trigger_abort_requested_events_procedure_v1()",
      "CREATE TRIGGER procrastinate_trigger_delete_jobs_v1 BEFORE DELETE" .. on
        .. "EXECUTE FUNCTION procrastinate_unlink_periodic_defers_v1()",
      "CREATE TRIGGER procrastinate_trigger_scheduled_events_v1 AFTER INSERT OR UPDATE" .. on
        .. "WHEN (((new.scheduled_at IS NOT NULL) AND (new.status = 'todo'::procrastinate_job_status))) "
        .. "EXECUTE FUNCTION procrastinate_trigger_function_scheduled_events_v1()",
      "CREATE TRIGGER procrastinate_trigger_status_events_insert_v1 AFTER INSERT" .. on
        .. "WHEN ((new.status = 'todo'::procrastinate_job_status)) EXECUTE FUNCTION procrastinate_trigger_function_status_events_insert_v1()",
      "CREATE TRIGGER procrastinate_trigger_status_events_update_v1 AFTER UPDATE OF status" .. on
        .. "EXECUTE FUNCTION procrastinate_trigger_function_status_events_update_v1()",
    }, (function()
      local out = {}
      for _, row in ipairs(db.rows(dbs.procrastinate, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname")) do
        out[#out + 1] = def(row[1])
      end
      return out
    end)())
    -- tarry's trigger functions are gone; its batch functions (tarry_fetch/finish_jobs_v1) stay.
    assert.equal("0", db.value(dbs.procrastinate, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'tarry\\_jobs\\_%'"))
  end)

  for _, scenario in ipairs(SCENARIOS) do
    local title, expected, run = scenario[1], scenario[2], scenario[3]
    it(title, function()
      for _, flavour in ipairs(FLAVOURS) do
        local got = run(context(dbs[flavour]))
        assert.same(expected, got, flavour .. ": " .. title)
      end
    end)
  end

  it("leaves both databases with identical event tables", function()
    local function dump(name)
      return db.psql(name, [[SELECT id, job_id, type, CASE WHEN at > '2020-01-01' AND at < '2050-01-01'
        THEN 'now' ELSE at::text END FROM procrastinate_events ORDER BY id]])
    end
    local tarry = dump(dbs.tarry)
    assert.is_true(#tarry > 0)
    assert.equal(dump(dbs.procrastinate), tarry)
  end)
end)
