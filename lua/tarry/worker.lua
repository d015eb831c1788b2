--- The worker: fetches jobs and runs each in its own tarry coroutine, up to `concurrency` at
-- once on one loop. Each part has its own room under tarry/worker/, owns its state, and talks to
-- the others through events and small methods:
--
--   options    the options, their defaults and checks
--   fetcher    fetch into free slots (one statement per round); woken by the parts below
--   runner     run each job in its coroutine with its context; hand the outcome on
--   recorder   record outcomes in batches, kept until they reached the database
--   liveness   register, heartbeat, unregister
--   notifier   LISTEN: a `job_inserted` wakes the fetcher, an abort goes to the runner; abort polling
--   signals    SIGINT/SIGTERM: graceful stop, then forced
--   health     the database's health: an outage logged once, its end once; backoff
--   recovery   put back the jobs that dead workers left doing (retried or failed)
--   periodic   defer the app's periodic (cron) tasks at their ticks
--   blocking   the threads that run blocking task bodies, each with its own Lua state
--
-- This file holds what ties them: the shared state (app, store, options, log, stopping/forced),
-- the order of start and stop, app:run_worker (the worker owns the loop: app:run() until it
-- stops) and app:start_worker (the host owns the loop and calls app:step(); signals are its own).
-- Everything runs in coroutines on the app's loop.
-- @module tarry.worker
local core = require "tarry.core"
local Log = require "tarry.log"
local Store = require "tarry.store"
local Options = require "tarry.worker.options"
local Health = require "tarry.worker.health"
local Fetcher = require "tarry.worker.fetcher"
local Runner = require "tarry.worker.runner"
local Recorder = require "tarry.worker.recorder"
local Liveness = require "tarry.worker.liveness"
local Notifier = require "tarry.worker.notifier"
local Signals = require "tarry.worker.signals"
local Recovery = require "tarry.worker.recovery"
local Periodic = require "tarry.worker.periodic"
local Blocking = require "tarry.worker.blocking"

local Worker = core.newmetatable("tarry.Worker")
Worker.__index = Worker

-- Misuse is blamed on the caller of run_worker (start_worker): Worker.new is called by
-- Worker.run (Worker.start), which app:run_worker (app:start_worker) tail-calls.
local LEVEL = 3

local function job_store(connector, who)
  local t = core.type(connector)
  if t == "SyncPgConnector" then
    error(who .. " needs the async tarry.PgConnector (or a tarry.MemoryConnector for tests); " ..
      "this app's connector is " .. tostring(connector), LEVEL + 1)
  end
  return Store.of(connector, LEVEL + 1)
end

-- who: "run_worker" or "start_worker", for the messages of misuse; caller_file: the file that
-- called it, which blocking threads load when the options name no app_file.
function Worker.new(app, opts, who, caller_file)
  local o = Options.check(opts, LEVEL, who)
  local self = setmetatable({
    app = app,
    store = job_store(app.connector, who),
    opts = o,
    counts = { succeeded = 0, failed = 0, retried = 0, aborted = 0 },
    log = Log.new{ format = o.log_format, level = o.log_level, stream = o.log_stream },
    stopping = false,      -- no more fetching; running jobs finish
    forced = false,        -- stop now
    fetching_ended = false, -- the fetcher's loop ended: no job starts any more
    stop_event = core.Event(),   -- set on stop: the side loops' waits end
    progress = core.Event(),     -- a job ended, an awaited coroutine ended, or the stop was forced
  }, Worker)
  self.health = Health.new(self.log)
  self.fetcher = Fetcher.new(self)
  self.runner = Runner.new(self)
  self.recorder = Recorder.new(self)
  self.liveness = Liveness.new(self)
  self.notifier = Notifier.new(self)
  self.signals = Signals.new(self)
  self.recovery = Recovery.new(self)
  self.periodic = Periodic.new(self)
  self.blocking = Blocking.setup(self, caller_file, LEVEL)     -- last: it starts threads
  return self
end

--- Ask the worker to stop: no more fetching; running jobs finish.
function Worker:stop()
  if self.stopping then return end
  self.stopping = true
  self.flush_deadline = core.now() + math.max(self.opts.shutdown_graceful_timeout or 0, 30)
  self.fetcher:wake()
  self.stop_event:set()
  self.notifier:stop()
end

--- Stop now: running jobs are cut (failed, or retried), database calls get FORCED_GRACE seconds.
function Worker:force_stop()
  self:stop()
  self.forced = true
  self.fetcher:wake()
  self.stop_event:set()
  self.progress:set()
end

-- After a forced stop, what is still talking to the database gets this many seconds before it
-- is cut off, so the process ends whatever the database is doing.
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

function Worker:started_line()
  local o = self.opts
  self.log:info("worker_started", string.format("worker %q (id %d) started: queues %s, concurrency %d%s",
    o.name, self.liveness.worker_id, o.queues and table.concat(o.queues, ",") or "all", o.concurrency,
    self.blocking and string.format(", %d blocking thread(s)", self.blocking.threads) or ""),
    { worker_id = self.liveness.worker_id, worker = o.name })
end

-- Stop the side loops: they end on stop; after a failure they are cancelled.
function Worker:stop_side(side, clean)
  for _, h in ipairs(side) do
    if h:status() == "running" and not clean then h:cancel() end
    local ok, err = self:await(h)
    if not ok and not is_cancelled(err) then
      self.log:error("worker_bug", "a worker loop failed: " .. tostring(err))
    end
  end
end

function Worker:main()
  local spawn = function(part) return self.app:spawn(part.loop, part) end
  self.liveness:register()
  self:started_line()
  local recorder = spawn(self.recorder)
  local side = { spawn(self.liveness), self.app:spawn(self.notifier.poll_loop, self.notifier) }
  if self.opts.listen_notify and self.opts.wait then side[#side + 1] = spawn(self.notifier) end
  if self.opts.install_signal_handlers then side[#side + 1] = spawn(self.signals) end
  if self.opts.recover_stalled then
    self.recovery:round()                 -- what a dead worker left, before the first fetch
    side[#side + 1] = spawn(self.recovery)
  end
  if self.opts.periodic and self.opts.wait then side[#side + 1] = spawn(self.periodic)
  elseif self.opts.periodic then self.periodic:once() end      -- one-shot: what is due now, then run it
  local ok, err = self:await(spawn(self.fetcher))
  if not ok and self.forced and is_cancelled(err) then ok = true end
  self:stop()
  self.fetching_ended = true     -- no job starts now: the recorder and abort polling end after the last
  self.progress:set()            -- (wake the polling, which waits for a job's end once stopping)
  local drained, derr = pcall(self.runner.drain, self.runner)
  self.recorder.has_work:set()
  self:await(recorder)                               -- every outcome recorded (or given up)
  self.signals:close()
  self:stop_side(side, ok and drained)
  local unreg_ok, unreg_err = self:await(self.app:spawn(self.liveness.unregister, self.liveness))
  if not unreg_ok then self.log:warning("unregister_failed", "could not unregister: " .. Health.brief(unreg_err)) end
  self.log:info("worker_stopped", string.format("worker %q (id %d) stopped", self.opts.name, self.liveness.worker_id),
    { worker_id = self.liveness.worker_id })
  if not ok then error(err, 0) end
  if not drained then error(derr, 0) end
end

--- A job ended with this outcome (the runner tells): w:stats() counts it.
function Worker:count(outcome)
  local c = self.counts
  if outcome.retry_at then c.retried = c.retried + 1
  elseif c[outcome.status] then c[outcome.status] = c[outcome.status] + 1 end
end

--- w:stats() -> { running =, succeeded =, failed =, retried =, aborted = }: the jobs running now,
-- and the outcomes of those this worker ended so far.
function Worker:stats()
  local c = self.counts
  return { running = self.runner.running, succeeded = c.succeeded, failed = c.failed,
    retried = c.retried, aborted = c.aborted }
end

--- w:stopped() -> true once the worker has stopped (its jobs ended, it unregistered), or failed.
function Worker:stopped() return self.handle ~= nil and self.handle:status() ~= "running" end

function Worker:__tostring()
  local s = self:stats()
  local state = self:stopped() and "stopped" or self.stopping and "stopping" or "running"
  return string.format("<tarry.Worker %q %s: %d running, %d succeeded, %d failed, %d retried>",
    self.opts.name, state, s.running, s.succeeded, s.failed, s.retried)
end

-- Open the app's connector when it is closed; true when this did.
local function open_if_closed(app)
  local connector = app.connector
  local opened = connector.is_open and not connector:is_open()
  if opened then app:open() end
  return opened
end

-- The file of the function that called run_worker/start_worker (they tail-call Worker.run/start).
local function caller_file()
  local info = debug.getinfo(3, "S")
  return info and info.source:match("^@(.*)$")
end

-- Join the blocking threads; a body still running past the drain gets FORCED_GRACE seconds.
local function close_blocking(w)
  if not w.blocking then return end
  local left = w.blocking:close(FORCED_GRACE)
  if left > 0 then w.log:error("blocking_left_running", string.format("%d blocking thread(s) still "
    .. "inside a task at the stop: left running until the process exits", left)) end
end

--- app:run_worker(opts): run a worker until it stops (see tarry/worker/options.lua).
function Worker.run(app, opts)
  if require("tarry").thread_id then return Blocking.record(app) end   -- loading the app in a thread
  if core.in_coroutine() then error("run_worker cannot be called from a tarry coroutine", 2) end
  local w = Worker.new(app, opts, "run_worker", caller_file())
  local opened = false
  local ok, err = pcall(function() opened = open_if_closed(app) end)
  if ok then
    w.handle = app:spawn(w.main, w)
    ok, err = pcall(app.run, app)
  end
  close_blocking(w)
  if opened then app:close() end
  if not ok then error(err, 0) end
  return w.handle:result()
end

-- start_worker's options: run_worker's, with the signals left to the host.
local function host_options(opts)
  if type(opts) ~= "table" and opts ~= nil then return opts end    -- Options.check says why
  if opts and opts.install_signal_handlers ~= nil then
    error("start_worker: install_signal_handlers is not an option here: signals stay the host's " ..
      "(call w:stop() from its handler)", LEVEL)
  end
  local o = { install_signal_handlers = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

--- app:start_worker(opts) -> the worker, at once. It runs as coroutines on the app's loop, which
-- the host drives (app:step(), or app:run()); the options are run_worker's but for
-- install_signal_handlers: signals stay the host's, which calls w:stop(). A connector this opened
-- is closed when the worker stops. A worker that fails raises its error from app:step().
function Worker.start(app, opts)
  local w = Worker.new(app, host_options(opts), "start_worker", caller_file())
  local ok, opened = pcall(open_if_closed, app)
  if not ok then close_blocking(w); error(opened, 0) end
  w.handle = app:spawn(function()
    local ok, err = pcall(w.main, w)
    close_blocking(w)
    if opened then app:close() end
    if not ok then error(err, 0) end
  end)
  return w
end

return Worker
