--- Periodic deferring: the app's schedules (app:periodic, the task option `cron`) are deferred by
-- every worker. The loop sleeps until the next tick of any schedule, then defers each due tick
-- through tarry.periodic's defer_due, which asks the store to defer it at most once across all
-- workers and machines. Ticks missed while no worker ran are caught up within
-- periodic_max_delay seconds; older ones are skipped with one warning. A one-shot worker
-- (wait = false) makes one pass at its start, before it fetches, then runs to completion.
-- A failure never stops the worker: it is logged, and the pass is tried again later.
-- @module tarry.worker.periodic
local core = require "tarry.core"
local Periodic = require "tarry.periodic"
local Health = require "tarry.worker.health"

local PeriodicPart = {}
PeriodicPart.__index = PeriodicPart

-- The longest sleep between passes: a clock set back, or a yearly schedule, is looked at again.
local MAX_SLEEP = 60
-- After a failure other than a lost connection, the failed schedule is tried again this soon.
local RETRY_AFTER = 5

function PeriodicPart.new(w)
  return setmetatable({
    w = w,
    entries = w.app:periodic_tasks(),
    state = {},            -- entry -> the newest tick handled (tarry.periodic's defer_due keeps it)
    failing = {},          -- entry -> true while its defers fail (warned once, then quiet)
    checked = false,       -- the store was asked whether it serialises late defers
  }, PeriodicPart)
end

local function name_of(entry)
  if entry.periodic_id == "" then return string.format("periodic task %q", entry.task_name) end
  return string.format("periodic task %q (periodic_id %q)", entry.task_name, entry.periodic_id)
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

local function fields(entry, tick, extra)
  local f = { task = entry.task_name, periodic_id = entry.periodic_id, tick = tick }
  for k, v in pairs(extra or {}) do f[k] = v end
  return f
end

-- One line of defer_due's report.
function PeriodicPart:report(r, now)
  local log, e = self.w.log, r.entry
  if r.late then
    local last = math.ceil(math.floor(now) - self.w.opts.periodic_max_delay) - 1   -- the newest time skipped
    log:warning("periodic_late", string.format("%s: its ticks from %s to %s are older than periodic_max_delay "
      .. "(%g s): skipped", name_of(e), iso(r.tick), iso(last), self.w.opts.periodic_max_delay),
      fields(e, r.tick, { first_skipped = r.tick, last_skipped = last }))
  elseif r.id then
    log:info("periodic_deferred", string.format("%s: deferred its tick %s (timestamp %d) as job %d to queue %s",
      name_of(e), iso(r.tick), r.tick, r.id, e.queue), fields(e, r.tick, { job_id = r.id, queue = e.queue }))
  elseif log:enabled("debug") then
    local why = r.skipped == "already_enqueued" and "a job with its queueing lock is waiting: skipped"
      or "deferred already (by this or another worker)"
    log:debug("periodic_skipped", string.format("%s: tick %s (timestamp %d): %s", name_of(e), iso(r.tick), r.tick,
      why), fields(e, r.tick, { reason = r.skipped }))
  end
end

-- On a schema without tarry's serialising function (one Procrastinate applied), say once what
-- that means.
function PeriodicPart:check_store()
  if self.checked then return end
  local serialised = self.w.store.periodic_serialised
  if serialised and not serialised(self.w.store) then
    self.w.log:warning("periodic_unserialised", "this database lacks tarry_defer_periodic_job_v1 (its schema "
      .. "was applied by Procrastinate): periodic ticks go through procrastinate_defer_periodic_job_v2, and two "
      .. "workers may both defer a tick one of them is late on (apply tarry's schema to prevent it)")
  end
  self.checked = true
end

-- Defers failed (for `entry`, or nil: the store's check): warn on the first failure, then only
-- at debug level until it works again.
function PeriodicPart:entry_failed(entry, err)
  local log, key = self.w.log, entry or self
  local what = entry and name_of(entry) or "the periodic deferrer"
  if not self.failing[key] then
    self.failing[key] = true
    log:warning("periodic_failed", string.format("%s: cannot defer, retrying: %s", what, Health.brief(err)),
      entry and fields(entry, nil))
  elseif log:enabled("debug") then
    log:debug("periodic_failed", string.format("%s: still cannot defer: %s", what, Health.brief(err)))
  end
end

function PeriodicPart:entry_ok(entry)
  if not self.failing[entry] then return end
  self.failing[entry] = nil
  self.w.log:info("periodic_recovered", name_of(entry) .. ": deferring its ticks again", fields(entry, nil))
end

-- After a failure: "lost" (the connection: the health logs it), else seconds to the next try.
function PeriodicPart:failed(entry, err)
  if self.w.health:failed("deferring periodic tasks", err) then return "lost" end
  self:entry_failed(entry, err)
  return RETRY_AFTER
end

-- One schedule: defer what is due at `now`; true when something was deferred, or nil and the retry.
function PeriodicPart:defer_entry(entry, now)
  local w = self.w
  local ok, report = pcall(Periodic.defer_due, w.store, { entry }, self.state, now, w.opts.periodic_max_delay)
  if not ok then return nil, self:failed(entry, report) end
  self:entry_ok(entry)
  local deferred = false
  for _, r in ipairs(report) do
    self:report(r, now)
    deferred = deferred or r.id ~= nil
  end
  return deferred
end

--- One pass: defer what is due now for every schedule. Returns nil when every schedule was
-- handled, else "lost" (the database connection) or the seconds to wait before trying again.
-- One schedule failing does not hold the others back.
function PeriodicPart:pass()
  local w, now = self.w, core.now()
  local ok, err = pcall(self.check_store, self)
  if not ok then return self:failed(nil, err) end
  self.failing[self] = nil
  local retry, any = nil, false
  for _, entry in ipairs(self.entries) do
    local deferred, why = self:defer_entry(entry, now)
    if why == "lost" then retry = why; break end       -- the other schedules would fail the same way
    retry = retry or why
    any = any or deferred
  end
  if any then w.fetcher:wake() end            -- this worker may take those jobs itself
  if retry == nil then w.health:ok() end
  return retry
end

--- Seconds until the next tick of any schedule (at most MAX_SLEEP).
function PeriodicPart:until_next_tick()
  local now = core.now()
  local next_tick = Periodic.next_tick(self.entries, math.floor(now))
  return math.max(0, math.min(next_tick - now, MAX_SLEEP))
end

function PeriodicPart:describe()
  local list = {}
  for i, e in ipairs(self.entries) do list[i] = string.format("%s (%s)", e.task_name, e.cron) end
  self.w.log:info("periodic_started", string.format("deferring %d periodic schedule(s): %s", #self.entries,
    table.concat(list, ", ")), { schedules = #self.entries })
end

--- A one-shot worker's pass, before it fetches: what is due at its start.
function PeriodicPart:once()
  if #self.entries == 0 then return end
  self:describe()
  self:pass()
end

--- The loop, until the worker stops. After a lost connection the wait grows as the worker's
-- other reconnections do; a tick missed meanwhile is caught up by the next pass.
function PeriodicPart:loop()
  local w = self.w
  if #self.entries == 0 then return end
  self:describe()
  local backoff = 0.1
  while not w.stopping do
    local retry = self:pass()
    local wait = self:until_next_tick()
    if retry == "lost" then
      wait = Health.jittered(backoff)
      backoff = Health.next_backoff(backoff)
    else
      backoff = 0.1
      if retry then wait = math.min(wait, retry) end
    end
    w.stop_event:wait(wait)
  end
end

return PeriodicPart
