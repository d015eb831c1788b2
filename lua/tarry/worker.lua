--- The worker: fetches jobs and runs each in its own tarry coroutine, up to `concurrency` at
-- once on one loop; reports outcomes in batches; LISTENs for new jobs (polling as the fallback);
-- registers, heartbeats and unregisters; stops gracefully on the first SIGINT/SIGTERM and at
-- once on the second. Everything here runs in coroutines driven by app:run().
-- @module tarry.worker
local core = require "tarry.core"
local Log = require "tarry.log"
local PgJobs = require "tarry.pg_jobs"
local retry = require "tarry.retry"

local Worker = {}
Worker.__index = Worker

local OPTIONS = { queues = true, concurrency = true, wait = true, name = true, listen_notify = true,
  fetch_job_polling_interval = true, delete_jobs = true, shutdown_graceful_timeout = true,
  install_signal_handlers = true, log_format = true, log_level = true, log_stream = true,
  update_heartbeat_interval = true, stalled_worker_timeout = true }
local DELETE = { never = true, successful = true, always = true }
local LOG_LEVELS = { debug = true, info = true, warning = true, error = true }
-- Misuse is blamed on run_worker's caller: these checks run in Worker.new, called by Worker.run,
-- which app:run_worker tail-calls.
local LEVEL = 4

local function check_options(o)
  if o == nil then return {} end
  if type(o) ~= "table" then error("run_worker: options must be a table", LEVEL) end
  for k in pairs(o) do
    if not OPTIONS[k] then error("run_worker: unknown option '" .. tostring(k) .. "'", LEVEL) end
  end
  if o.concurrency ~= nil and (math.type(o.concurrency) ~= "integer" or o.concurrency < 1) then
    error("run_worker: concurrency must be an integer >= 1", LEVEL)
  end
  if o.delete_jobs ~= nil and not DELETE[o.delete_jobs] then
    error("run_worker: delete_jobs must be \"never\", \"successful\" or \"always\"", LEVEL)
  end
  if o.queues ~= nil then
    if type(o.queues) ~= "table" then error("run_worker: queues must be a list of queue names", LEVEL) end
    for _, q in ipairs(o.queues) do
      if type(q) ~= "string" or #q == 0 or #q > 40 then
        error("run_worker: queue names must be strings of 1 to 40 bytes", LEVEL)
      end
    end
  end
  if o.log_level ~= nil and not LOG_LEVELS[o.log_level] then
    error("run_worker: log_level must be \"debug\", \"info\", \"warning\" or \"error\"", LEVEL)
  end
  if o.log_format ~= nil and o.log_format ~= "human" and o.log_format ~= "json" then
    error("run_worker: log_format must be \"human\" or \"json\"", LEVEL)
  end
  for _, k in ipairs { "fetch_job_polling_interval", "shutdown_graceful_timeout", "update_heartbeat_interval",
    "stalled_worker_timeout" } do
    if o[k] ~= nil and (type(o[k]) ~= "number" or o[k] < 0) then
      error("run_worker: " .. k .. " must be a number of seconds >= 0", LEVEL)
    end
  end
  return o
end

local function job_store(connector)
  if tostring(connector):match("^<tarry%.PgConnector") then return PgJobs.new(connector) end
  if type(connector) == "table" and connector.job_store then return connector:job_store() end
  error("run_worker needs the async tarry.PgConnector (or a tarry.MemoryConnector for tests); " ..
    "this app's connector is " .. tostring(connector), LEVEL)
end

function Worker.new(app, opts)
  opts = check_options(opts)
  local self = setmetatable({
    app = app,
    store = job_store(app.connector),
    queues = (opts.queues and #opts.queues > 0) and opts.queues or nil,
    concurrency = opts.concurrency or 1,
    wait = opts.wait ~= false,
    name = opts.name or "worker",
    listen_notify = opts.listen_notify ~= false,
    polling_interval = opts.fetch_job_polling_interval or 5,
    delete_jobs = opts.delete_jobs or "never",
    graceful_timeout = opts.shutdown_graceful_timeout,
    signals = opts.install_signal_handlers ~= false,
    heartbeat_interval = opts.update_heartbeat_interval or 10,
    stalled_after = opts.stalled_worker_timeout or 30,
    log = Log.new{ format = opts.log_format, level = opts.log_level, stream = opts.log_stream },
    running = 0,          -- jobs whose coroutine has not finished
    jobs = {},            -- job id -> { job=, handle= }
    pending = {},         -- outcomes not yet recorded in the database
    in_flight = 0,        -- outcomes the flusher is recording right now
    recorded = 0,         -- batches of outcomes recorded so far (a one-shot worker's exit test)
    wake = core.Event(),  -- the fetch loop: a slot freed, a job announced, a stop
    to_flush = core.Event(),
    stopping = false,
    forced = false,
  }, Worker)
  return self
end

-- ---- running one job ----

local Context = {}
Context.__index = Context
--- ctx:sleep(seconds): parks this job only.
function Context:sleep(seconds) return core.sleep(seconds) end

-- ---- the database's health, as the worker sees it ----

-- The one-line text of an error: an error object's message, without the "tarry: code:" prefix.
local function brief(err)
  if type(err) == "table" and err.message then return tostring(err.message) end
  return tostring(err)
end

local function is_connection_error(err)
  return type(err) == "table" and err.code == "connection"
end

--- Note a failed database call: the first connection failure logs "lost the database" once;
-- later ones only at debug level until a call succeeds again.
function Worker:db_failed(what, err)
  if not is_connection_error(err) then return end
  if not self.db_lost_at then
    self.db_lost_at = core.now()
    self.log:warning("database_lost", string.format("lost the database (%s): %s; retrying", what, brief(err)))
  elseif self.log:enabled("debug") then
    self.log:debug("database_retry", string.format("still no database (%s): %s", what, brief(err)))
  end
end

--- Note a database call that succeeded: after an outage, log once that the database is back.
function Worker:db_ok()
  if not self.db_lost_at then return end
  self.log:info("database_back", string.format("the database is back after %.1f s", core.now() - self.db_lost_at))
  self.db_lost_at = nil
end

-- Reconnection delays: doubling from 0.1 s, at most 2 s, each with +-25% jitter so that many
-- workers do not retry in step after an outage.
local function next_backoff(backoff) return math.min(backoff * 2, 2) end
local function jittered(backoff) return backoff * (0.75 + 0.5 * math.random()) end

local function describe(job)
  return string.format("job %d %s", job.id, job.task_name)
end

-- The task's traceback, without the worker's own frames below the task function.
local function on_error(e)
  local msg = Log.error_text(e)      -- the line carries it; the traceback below starts at its frames
  local tb = debug.traceback(nil, 2):gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  return { err = e, message = msg, traceback = tb }
end

function Worker:outcome(job, ok, failure, def)
  local o = { id = job.id }
  if ok then
    o.status = "succeeded"
    o.delete = self.delete_jobs ~= "never"
    return o, "info", "job_succeeded", "succeeded"
  end
  local delay = def and retry.delay(def.retry, job.attempts, failure.err)
  if delay then
    o.retry_at = core.now() + delay
    return o, "warning", "job_retried", string.format("failed, retry in %gs: %s", delay, failure.message)
  end
  o.status = "failed"
  o.delete = self.delete_jobs == "always"
  return o, "error", "job_failed", "failed: " .. failure.message
end

function Worker:run_job(job)
  local def = self.app:find_task(job.task_name)
  local t0 = core.now()
  local o, level, event, what
  if not def or not def.fn then
    o = { id = job.id, status = "failed", delete = self.delete_jobs == "always" }
    level, event = "error", "task_not_found"
    what = string.format("failed: task %q is not registered in this app (not retried)", job.task_name)
  elseif core.is_error(job.args) then  -- a row another client wrote that Lua cannot hold
    o = { id = job.id, status = "failed", delete = self.delete_jobs == "always" }
    level, event = "error", "undecodable_args"
    what = "failed: cannot decode its arguments: " .. job.args.message .. " (not retried)"
  else
    if self.log:enabled("info") then
      self.log:info("job_started", describe(job) .. " started", { job_id = job.id, task = job.task_name,
        queue = job.queue, attempts = job.attempts })
    end
    local ctx = setmetatable({ job = job, app = self.app, worker_name = self.name,
      worker_id = self.worker_id }, Context)
    local ok, failure = xpcall(def.fn, on_error, job.args, ctx)
    o, level, event, what = self:outcome(job, ok, failure, def)
    if not ok then o.traceback = failure.traceback end
  end
  if self.log:enabled(level) then
    local ms = (core.now() - t0) * 1000
    self.log:write(level, event, string.format("%s %s (%.1f ms)", describe(job), what, ms),
      { job_id = job.id, task = job.task_name, queue = job.queue, attempts = job.attempts,
        duration_ms = ms, traceback = o.traceback })
  end
  o.traceback = nil
  self:job_done(job, o)
end

function Worker:job_done(job, outcome)
  if not self.jobs[job.id] then return end
  self.jobs[job.id] = nil
  self.running = self.running - 1
  self.pending[#self.pending + 1] = outcome
  self.to_flush:set()
  self.wake:set()
end

function Worker:start_job(job)
  self.running = self.running + 1
  local entry = { job = job }
  self.jobs[job.id] = entry
  entry.handle = self.app:spawn(self.run_job, self, job)
end

-- ---- recording outcomes ----

--- Record pending outcomes in batches until stopped with nothing left. On a database error
-- the batch stays pending and is tried again (a job is only done once its finish is stored).
function Worker:flusher()
  local backoff = 0.05
  while true do
    if #self.pending == 0 then
      if self.stopping and self.running == 0 then return end
      self.to_flush:wait()
    else
      local batch = self.pending
      self.pending = {}
      self.in_flight = #batch
      self.log:debugf("finish_batch", "recording %d job outcome(s) in one statement", #batch)
      local ok, err = pcall(self.store.finish, self.store, batch)
      if not ok and type(err) == "table" and err.code ~= "connection" and #batch > 1 then
        self:flush_one_by_one(batch)        -- one bad id must not hold the others back
        ok = true
      elseif not ok then
        for i = #batch, 1, -1 do table.insert(self.pending, 1, batch[i]) end
      end
      self.in_flight = 0
      self.recorded = self.recorded + 1
      self.wake:set()                       -- a one-shot worker may find retried or unlocked jobs now
      if ok then
        backoff = 0.05
        self:db_ok()
      else
        self:db_failed("recording outcomes", err)
        if self.forced or (self.stopping and core.now() > self.flush_deadline) then
          self.log:error("finish_abandoned", string.format("%d job outcome(s) could not be recorded: " ..
            "those jobs stay 'doing' until recovered as stalled (%s)", #self.pending, tostring(err)))
          self.pending = {}
          return
        end
        if not is_connection_error(err) then
          self.log:warning("finish_failed", string.format("could not record %d job outcome(s), retrying: %s",
            #batch, brief(err)))
        end
        self.to_flush:wait(jittered(backoff))
        backoff = next_backoff(backoff)
      end
    end
  end
end

function Worker:flush_one_by_one(batch)
  for _, o in ipairs(batch) do
    local ok, err = pcall(self.store.finish, self.store, { o })
    if not ok then
      if type(err) == "table" and err.code == "connection" then
        self.pending[#self.pending + 1] = o
      else
        self.log:error("finish_failed", string.format("job %d: cannot record its outcome: %s", o.id, tostring(err)),
          { job_id = o.id })
      end
    end
  end
end

-- ---- side loops ----

function Worker:heartbeat_loop()
  while not self.stopping do
    self.stop_event:wait(self.heartbeat_interval)
    if self.stopping then return end
    local ok, err = pcall(self.store.heartbeat, self.store, self.worker_id)
    if ok then
      self:db_ok()
      self.log:debugf("heartbeat", "heartbeat sent (worker id %d)", self.worker_id)
    elseif is_connection_error(err) then self:db_failed("heartbeat", err)
    else self.log:warning("heartbeat_failed", "heartbeat failed: " .. brief(err)) end
  end
end

function Worker:listen_loop()
  local backoff = 0.1
  while not self.stopping do
    local ok, listener = pcall(self.store.listen, self.store, self.queues)
    if ok and listener then
      self.listener = listener
      self.log:debugf("listening", "LISTEN on %s", self.queues and table.concat(self.queues, ",") or "every queue")
      backoff = 0.1
      self.wake:set()          -- jobs may have come while we were not listening
      while not self.stopping do
        local got, note = pcall(listener.wait, listener, 30)
        if not got then
          if not self.stopping then self:db_failed("LISTEN", note) end
          break
        end
        if note == nil then pcall(listener.ping, listener)    -- a failure shows at the next wait
        else
          local okj, payload = pcall(core.json_decode, note.payload)
          if okj and type(payload) == "table" and payload.type == "job_inserted" then
            self.log:debugf("notified", "NOTIFY on %s: a job was inserted, waking the fetcher", tostring(note.channel))
            self.wake:set()
          end
        end
      end
      self.listener = nil
      listener:close()
    elseif not ok then
      if is_connection_error(listener) then self:db_failed("LISTEN", listener)
      else self.log:warning("listen_failed", "cannot LISTEN, polling meanwhile: " .. brief(listener)) end
    else
      return
    end
    if not self.stopping then self.stop_event:wait(jittered(backoff)) end
    backoff = next_backoff(backoff)
  end
end

function Worker:signal_loop()
  local sig = core.Signals{ "INT", "TERM" }
  self.signal_watcher = sig
  while true do
    local name = sig:wait()
    if not name then return end
    if not self.stopping then
      self.log:info("stopping", "received SIG" .. name .. ": stopping after the running jobs " ..
        "(send it again to stop at once)")
      self:stop()
    else
      self.log:warning("stopping_now", "received SIG" .. name .. " again: stopping at once")
      self.forced = true
      self.wake:set()
      self.stop_event:set()
      self.progress:set()
    end
  end
end

--- Ask the worker to stop: no more fetching; running jobs finish.
function Worker:stop()
  if self.stopping then return end
  self.stopping = true
  self.flush_deadline = core.now() + math.max(self.graceful_timeout or 0, 30)
  self.wake:set()
  self.stop_event:set()
  if self.listener then self.listener:close() end
end

-- ---- the fetch loop ----

function Worker:fetch_round()
  local free = self.concurrency - self.running
  if free <= 0 then return 0, false end
  local ok, jobs = pcall(self.store.fetch, self.store, self.queues, self.worker_id, free)
  if not ok then return nil, jobs end
  self.log:debugf("fetched", "fetched %d job(s) for %d free slot(s)", #jobs, free)
  for _, job in ipairs(jobs) do self:start_job(job) end
  return #jobs, #jobs == free
end

-- SQLSTATEs of an object missing from the database: retrying cannot help, the worker stops.
local SCHEMA_SQLSTATES = { ["42883"] = true, ["42P01"] = true, ["42703"] = true, ["42704"] = true }

function Worker:handle_fetch_error(err, backoff)
  if type(err) == "table" and SCHEMA_SQLSTATES[err.sqlstate] then
    local stop = core.error("schema", string.format("the database lacks an object tarry needs: %s; "
      .. "`tarry healthchecks` names what is missing", err.message))
    stop.sqlstate = err.sqlstate
    error(stop, 0)
  end
  if type(err) == "table" and err.sqlstate == "23503" then
    self.log:warning("reregister", "this worker was pruned as stalled: registering again")
    local ok, id = pcall(self.store.register, self.store, self.stalled_after)
    if ok then self.worker_id = id; return 0.05 end
  end
  if is_connection_error(err) then self:db_failed("fetching jobs", err)
  else self.log:warning("fetch_failed", string.format("cannot fetch jobs, retrying in %gs: %s", backoff, brief(err))) end
  self.wake:wait(jittered(backoff))
  return next_backoff(backoff)
end

-- A one-shot worker is done when a fetch found nothing while no job ran and no outcome was
-- pending or being recorded, from before that fetch began until it returned: an outcome recorded
-- meanwhile (a retry, a lock released) may have been missed by the fetch's snapshot.
function Worker:nothing_left(n, recorded_before)
  return n == 0 and self.running == 0 and #self.pending == 0 and self.in_flight == 0
    and self.recorded == recorded_before
end

function Worker:fetch_loop()
  local backoff = 0.1
  while not self.stopping do
    local recorded_before = self.recorded
    local n, more = self:fetch_round()
    if n == nil then
      backoff = self:handle_fetch_error(more, backoff)
    else
      backoff = 0.1
      self:db_ok()
      if not more then
        if not self.wait and self:nothing_left(n, recorded_before) then return end
        if self.running >= self.concurrency or not self.wait then
          self.wake:wait()                             -- a slot frees up (or a stop)
        else
          self.wake:wait(self.polling_interval)        -- a NOTIFY, a free slot, or time to poll
        end
      end
    end
  end
end

--- Wait for running jobs (bounded by the graceful timeout, cut by a forced stop), then cancel
-- what is left: those jobs count as failed (or retried, if their task says so).
function Worker:drain()
  local deadline = self.graceful_timeout and core.now() + self.graceful_timeout
  while self.running > 0 and not self.forced do
    local left = deadline and deadline - core.now()
    if left and left <= 0 then break end
    self.wake:wait(left)
  end
  for id, entry in pairs(self.jobs) do
    entry.handle:cancel()
    local def = self.app:find_task(entry.job.task_name)
    local o = self:outcome(entry.job, false, { err = "interrupted", message = "interrupted by the worker's shutdown" }, def)
    self.log:error("job_interrupted", describe(entry.job) .. " interrupted by the shutdown", { job_id = id })
    self:job_done(entry.job, o)
  end
end

-- After a forced stop (the second signal), what is still talking to the database gets this many
-- seconds before it is cut off, so the process ends whatever the database is doing.
local FORCED_GRACE = 1

local function is_cancelled(err) return type(err) == "table" and err.code == "cancelled" end

--- Wait for the tarry coroutine h to end, like h:result() under pcall; once the stop is forced,
-- give it FORCED_GRACE seconds more, then cancel it.
function Worker:await(h)
  if h:status() == "running" then
    self.app:spawn(function() pcall(h.result, h); self.progress:set() end)
  end
  local cut_at
  while h:status() == "running" do
    if self.forced then
      cut_at = cut_at or core.now() + FORCED_GRACE
      if core.now() >= cut_at then h:cancel(); break end
      self.progress:wait(cut_at - core.now())
    else
      self.progress:wait()
    end
  end
  return pcall(h.result, h)
end

function Worker:main()
  self.stop_event = core.Event()
  self.progress = core.Event()     -- a coroutine that main awaits ended, or the stop was forced
  self.worker_id = self.store:register(self.stalled_after)
  self.log:info("worker_started", string.format("worker %q (id %d) started: queues %s, concurrency %d",
    self.name, self.worker_id, self.queues and table.concat(self.queues, ",") or "all", self.concurrency),
    { worker_id = self.worker_id, worker = self.name })
  local flusher = self.app:spawn(self.flusher, self)
  local side = { self.app:spawn(self.heartbeat_loop, self) }
  if self.listen_notify and self.wait then side[#side + 1] = self.app:spawn(self.listen_loop, self) end
  if self.signals then side[#side + 1] = self.app:spawn(self.signal_loop, self) end
  local ok, err = self:await(self.app:spawn(self.fetch_loop, self))
  if not ok and self.forced and is_cancelled(err) then ok = true end
  self:stop()
  local drained, derr = pcall(self.drain, self)
  self.to_flush:set()
  self:await(flusher)                                -- every outcome recorded (or given up)
  if self.signal_watcher then self.signal_watcher:close() end
  for i = 1, #side do
    if side[i]:status() == "running" and not (ok and drained) then side[i]:cancel() end
    local sok, serr = self:await(side[i])
    if not sok and not is_cancelled(serr) then
      self.log:error("worker_bug", "a worker loop failed: " .. tostring(serr))
    end
  end
  local unreg_ok, unreg_err = self:await(self.app:spawn(self.store.unregister, self.store, self.worker_id))
  if not unreg_ok then self.log:warning("unregister_failed", "could not unregister: " .. brief(unreg_err)) end
  self.log:info("worker_stopped", string.format("worker %q (id %d) stopped", self.name, self.worker_id), { worker_id = self.worker_id })
  if not ok then error(err, 0) end
  if not drained then error(derr, 0) end
end

--- app:run_worker(opts): run a worker until it stops (see Worker.new for the options).
function Worker.run(app, opts)
  if core.in_coroutine() then error("run_worker cannot be called from a tarry coroutine", 2) end
  local w = Worker.new(app, opts)
  local connector = app.connector
  local opened = connector.is_open and not connector:is_open()
  if opened then app:open() end
  local h = app:spawn(w.main, w)
  local ok, err = pcall(app.run, app)
  if opened then app:close() end
  if not ok then error(err, 0) end
  return h:result()
end

return Worker
