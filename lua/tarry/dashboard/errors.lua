--- The errors of failed attempts, kept for the dashboard in tarry_job_errors_v1 (schema.sql):
-- the worker's runner notes each failure on its outcome (`errors.note`), the recorder writes them
-- once the outcomes are stored (`errors.record`), the dashboard reads them (`errors.of_job`).
-- On a schema without the table (one Procrastinate applied) nothing is written. Writing is best
-- effort: a failure to store an error never holds an outcome back.
-- @module tarry.dashboard.errors
local core = require "tarry.core"

local M = {}

local MAX_TEXT = 16384    -- a traceback longer than this is cut (a runaway recursion's)

local function cut(s)
  s = tostring(s or "")
  if #s > MAX_TEXT then s = s:sub(1, MAX_TEXT) .. "\n[cut at " .. MAX_TEXT .. " bytes]" end
  return s
end

--- The error note of a finished run: nil unless the outcome `o` is a failure (failed or retried).
-- job: the fetched job row; message: the log line's text; traceback: the task's traceback or nil.
function M.note(job, o, message, traceback)
  if o.status == "succeeded" or o.status == "aborted" or o.delete then return nil end   -- (deleted: no one to show)
  return { attempt = (job.attempts or 0) + 1, message = cut(message), traceback = traceback and cut(traceback) }
end

local INSERT = [[
INSERT INTO tarry_job_errors_v1 (job_id, attempt, message, traceback)
SELECT e.job_id, e.attempt, e.message, e.traceback
FROM json_to_recordset($1::json) AS e(job_id bigint, attempt integer, message text, traceback text)
WHERE EXISTS (SELECT 1 FROM procrastinate_jobs AS j WHERE j.id = e.job_id)
ON CONFLICT (job_id, attempt) DO UPDATE SET at = now(), message = excluded.message, traceback = excluded.traceback]]

local function has_table(store)
  if store.tarry_job_errors == nil then
    local ok, rows = pcall(store.connector.execute, store.connector,
      "SELECT to_regclass('tarry_job_errors_v1') IS NOT NULL AS present")
    store.tarry_job_errors = ok and rows[1].present or false
  end
  return store.tarry_job_errors
end

--- Write the error notes of the recorded outcomes `batch` (those with an `error` field) in one
-- statement. Returns true, or false and the error (the caller logs it).
function M.record(store, batch)
  local rows = {}
  for _, o in ipairs(batch) do
    if o.error then
      rows[#rows + 1] = { job_id = o.id, attempt = o.error.attempt, message = o.error.message,
        traceback = o.error.traceback or core.null }
    end
  end
  if #rows == 0 or not store.connector or not has_table(store) then return true end
  return pcall(store.connector.execute, store.connector, INSERT, core.json_encode(core.array(rows)))
end

--- The recorder's hook: record(w.store, batch), a failure logged as a warning.
function M.recorded(w, batch)
  local ok, err = M.record(w.store, batch)
  if not ok then
    w.log:warning("error_record_failed", "could not keep the failures' messages for the dashboard: " .. tostring(err))
  end
end

local SELECT = [[
SELECT attempt, extract(epoch FROM at)::float8 AS at, message, traceback
FROM tarry_job_errors_v1 WHERE job_id = $1 ORDER BY attempt]]

--- The errors of a job, oldest first: { { attempt=, at=, message=, traceback= }, ... } ({} on a
-- schema without the table).
function M.of_job(connector, id)
  local present = connector:execute("SELECT to_regclass('tarry_job_errors_v1') IS NOT NULL AS present")[1].present
  if not present then return {} end
  return connector:execute(SELECT, id)
end

--- Delete the errors of the jobs `ids` (a bigint[] literal), when the table exists: what deletes
-- jobs calls it (the dashboard's delete actions).
function M.forget(connector, ids_literal)
  if connector:execute("SELECT to_regclass('tarry_job_errors_v1') IS NOT NULL AS present")[1].present then
    connector:execute("DELETE FROM tarry_job_errors_v1 WHERE job_id = ANY ($1::bigint[])", ids_literal)
  end
end

--- Retention's part (PgJobs:delete_old): delete the errors older than max_hours whose job is gone
-- (deleted by retention, the dashboard, or another tool), when the table exists.
function M.prune(connector, max_hours)
  if connector:execute("SELECT to_regclass('tarry_job_errors_v1') IS NOT NULL AS present")[1].present then
    connector:execute([[DELETE FROM tarry_job_errors_v1 AS e WHERE e.at < now() - $1::float8 * interval '1 hour'
      AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs AS j WHERE j.id = e.job_id)]], max_hours)
  end
end

return M
