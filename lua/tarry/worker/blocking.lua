--- Blocking task bodies: a task registered with `blocking = true` runs on one of the worker's
-- `blocking_threads` threads (a tarry.ThreadPool, runtime/threads.c), each with its own Lua state
-- that loaded the same app file, so a body that blocks (LuaSocket, io.popen, plain CPU-bound Lua)
-- never stops the worker's loop: its fetches, other jobs, LISTEN wake-ups and heartbeats go on.
--
-- The main state's side (setup, run, abort, close) and the thread's side (thread_load, whose run
-- function the C thread calls per job) are both here, as they speak one format: the job as JSON
-- in ({ id, task_name, queue, priority, lock, queueing_lock, attempts, scheduled_at, args,
-- worker_name, worker_id }); true, or false, message, code, traceback out.
--
-- Decisions (see README "Blocking task bodies"):
-- * The app file. `tarry worker --app FILE` gives it; a Lua-started run_worker takes the option
--   `app_file`, else the file that called run_worker (debug.getinfo of the caller's source). In a
--   thread the app is the tarry.App the file returns, else the one the file called run_worker on
--   (there run_worker only records the app and returns: tarry.thread_id is set, the loop is the
--   main thread's). At start every thread's app must have registered the same tasks, with the
--   same `blocking` flags, as the worker's: else the start fails and names the difference.
-- * Slots. A blocking job takes a thread, not one of the `concurrency` slots (those are for the
--   loop's coroutines): the fetcher asks for blocking tasks only as many jobs as threads are free,
--   and for the other tasks as many as slots are free, so no job waits in `doing` for a thread.
-- * Stop requests. An abort (or the task's timeout) raises the job's flag in the thread at once:
--   ctx:should_abort() reads it, and the thread's ctx:sleep raises the stop error as the loop's
--   does. A thread is never cancelled: a body that ignores the flag runs on until the graceful
--   stop's timeout and is then marked as the loop's interrupted jobs are (a blocking C call cannot
--   be interrupted). The worker option blocking_abort_hook (--blocking-abort-hook) installs a
--   count hook that raises the stop error inside pure-Lua code every HOOK_EVERY instructions; it
--   is off by default: it costs every blocking body a call per check, it replaces a debug hook the
--   task may set itself, and it raises at any instruction, where a task cannot clean up as it can
--   after ctx:should_abort() (nor can it reach a C call).
-- * Defers inside a blocking body go through the thread's own app, whose connector is not open
--   there: tarry's connectors then use a blocking connection opened on the first defer and kept
--   for the thread's later jobs (Procrastinate's "sync job" case).
-- * The MemoryConnector runs blocking tasks inline, as ordinary coroutine jobs (same results, no
--   threads), for users' tests.
-- @module tarry.worker.blocking
local core = require "tarry.core"
local Log = require "tarry.log"

local M = {}

-- ---- both sides ----

--- What an app registered, as one string: its task names, sorted, each marked when blocking.
function M.signature(app)
  local parts = {}
  for name, def in pairs(app.registry.tasks) do
    parts[#parts + 1] = name .. (def.blocking and " (blocking)" or "")
  end
  table.sort(parts)
  return table.concat(parts, ", ")
end

-- The job names (and aliases) of the app's blocking tasks, a sorted list of them, or nil.
local function blocking_names(app)
  local set, list = {}, {}
  for name, def in pairs(app.registry.tasks) do
    if def.blocking then
      for _, n in ipairs { name, table.unpack(def.aliases or {}) } do set[n] = true; list[#list + 1] = n end
    end
  end
  if #list == 0 then return nil end
  table.sort(list)
  return set, list
end

-- ---- the main state's side ----

local Pool = {}
Pool.__index = Pool

local function refuse(msg, level) error(core.error("blocking_threads", "run_worker: " .. msg), level + 1) end

-- Every thread's app must have registered what the worker's did.
local function check_signatures(pool, app, file, level)
  local want = M.signature(app)
  for id, got in ipairs(pool:signatures()) do
    if got ~= want then
      pool:close()
      refuse(string.format("blocking thread %d loaded %s with other tasks than the worker's app: it has [%s], "
        .. "the worker [%s] (an app must register the same tasks in every state; tarry.thread_id tells the "
        .. "threads apart)", id, file, got, want), level + 1)
    end
  end
end

--- The worker's blocking part, or nil when its app has no blocking task or its store runs them
-- inline (MemoryConnector). Raises (at `level`) for 0 threads, no app file, a thread that cannot
-- start or load the app, or an app that registers other tasks in a thread.
function M.setup(w, caller_file, level)
  level = level + 1
  local names, list = blocking_names(w.app)
  if not names or core.type(w.app.connector) == "MemoryConnector" then return nil end
  local n = w.opts.blocking_threads or core.ncpus()
  if n == 0 then
    refuse("blocking_threads is 0 but the app has blocking tasks (" .. table.concat(list, ", ")
      .. "): give blocking_threads >= 1 (--blocking-threads, TARRY_BLOCKING_THREADS)", level)
  end
  local file = w.opts.app_file or caller_file
  if not file then
    refuse("the app has blocking tasks: give app_file, the Lua file each blocking thread loads the app from", level)
  end
  local ok, pool = pcall(core.ThreadPool, { threads = n, app_file = file, conninfo = w.opts.app_conninfo })
  if not ok then error(pool, level) end
  check_signatures(pool, w.app, file, level)
  return setmetatable({ pool = pool, names = names, list = list, threads = n, running = 0,
    hook = w.opts.blocking_abort_hook }, Pool)
  -- running: the blocking jobs started (counted by the runner, which also counts their ends)
end

--- Is this job's task a blocking one?
function Pool:owns(job) return self.names[job.task_name] == true end

--- Threads free for more blocking jobs.
function Pool:free() return self.threads - self.running end

--- The fetch filters: { n, filter } per kind of slot with room (the fetcher's hunk).
function Pool:kinds(free_slots)
  local kinds = {}
  if self:free() > 0 then kinds[#kinds + 1] = { n = self:free(), tasks = self.list } end
  if free_slots > 0 then kinds[#kinds + 1] = { n = free_slots, tasks = self.list, exclude = true } end
  return kinds
end

local REASON = { aborted = 1, timeout = 2 }

--- Ask the job's thread to stop (reason "aborted" or "timeout"): its flag, seen at once.
function Pool:stop(job, reason) self.pool:abort(job.id, REASON[reason] or 1) end

local function job_json(job, ctx, hook)
  return core.json_encode {
    abort_hook = hook,
    id = job.id, task_name = job.task_name, queue = job.queue, priority = job.priority, lock = job.lock,
    queueing_lock = job.queueing_lock, attempts = job.attempts, scheduled_at = job.scheduled_at,
    args = job.args, worker_name = ctx.worker_name, worker_id = ctx.worker_id,
  }
end

--- Run the job on a thread, parking its coroutine meanwhile: like xpcall(def.fn, ...) in the
-- runner, true, or false and the failure { err=, message=, traceback= }.
function Pool:run(job, ctx)
  local ok, res, message, code, traceback = pcall(self.pool.run, self.pool, job.id, job_json(job, ctx, self.hook))
  if not ok then error(res, 0) end     -- cancelled (the shutdown), or the job had no JSON form
  if res then return true end
  return false, { err = code and core.error(code, message) or message, message = message,
    traceback = traceback or message }
end

--- Stop and join the threads, giving a body still running `timeout` seconds; returns how many
-- threads were left running (detached: the process ends them).
function Pool:close(timeout) return self.pool:close(timeout) end

-- ---- the thread's side ----

-- run_worker in a thread state: records its app (the file's app) instead of running a worker.
local recorded

--- In a thread: the app instead of a worker (called by Worker.run when tarry.thread_id is set).
function M.record(app) recorded = app end

local function load_app(file, level)
  local chunk, err = loadfile(file)
  if not chunk then error(err, level + 1) end
  local dir = file:match("^(.*)/[^/]*$") or "."
  package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path
  local app = chunk()
  if core.type(app) ~= "App" then app = recorded end
  if core.type(app) ~= "App" then
    error(string.format("%s neither returns a tarry.App nor calls run_worker on one", file), level + 1)
  end
  return app
end

--- What a blocking task receives as its second argument.
local Context = {}
Context.__index = Context

local STOP = { "aborted", "timeout" }

-- With blocking_abort_hook, the stop flag is checked every this many VM instructions.
local HOOK_EVERY = 10000

local function on_error(e)
  local tb = debug.traceback(nil, 2):gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  return { message = Log.error_text(e), code = type(e) == "table" and rawget(e, "code") or nil, traceback = tb }
end

--- The thread's boot (called by runtime/threads.c): load the app with tarry.thread_id set;
-- returns its signature and run(job_json) -> true | false, message, code, traceback.
function M.thread_load(file, thread_id, conninfo, sleep, stop_flag)
  local tarry = require "tarry"
  tarry.thread_id = thread_id
  local app = load_app(file, 1)
  if conninfo then app = app:with_connector(tarry.PgConnector { conninfo = conninfo }) end

  local function stop_error(job)
    local reason = STOP[stop_flag()]
    return core.error(reason, string.format("job %d %s was %s", job.id, job.task_name,
      reason == "aborted" and "aborted" or "stopped by its timeout"))
  end
  function Context:should_abort() return stop_flag() ~= 0 end
  --- A real sleep of this thread, in steps: a stop request raises its error, as on the loop.
  function Context:sleep(seconds)
    local until_t = core.now() + (tonumber(seconds) or 0)
    repeat
      if stop_flag() ~= 0 then error(stop_error(self.job), 2) end
      sleep(math.min(0.05, until_t - core.now()))
    until core.now() >= until_t
    if stop_flag() ~= 0 then error(stop_error(self.job), 2) end
  end

  local function run(text)
    local job = core.json_decode(text)
    local def = app:find_task(job.task_name)
    if not def or not def.fn then
      return false, string.format("task %q is not registered in the app of blocking thread %d", job.task_name,
        thread_id), "task_not_found", nil
    end
    local ctx = setmetatable({ job = job, app = app, worker_name = job.worker_name, worker_id = job.worker_id,
      thread_id = thread_id }, Context)
    local hook = job.abort_hook
    job.worker_name, job.worker_id, job.abort_hook = nil, nil, nil
    if hook then debug.sethook(function() if stop_flag() ~= 0 then error(stop_error(job), 2) end end, "", HOOK_EVERY) end
    local ok, f = xpcall(def.fn, on_error, job.args, ctx)
    if hook then debug.sethook() end
    if ok then return true end
    return false, f.message, f.code, f.traceback
  end
  return M.signature(app), run
end

return M
