--- tarry.PendingDefer: a defer under way, returned at once by `task:defer_async(args)` and
-- `task:batch_defer_async(list)` (also on a `configure{...}` deferrer, and `app:defer_async`).
--
-- Policy over the runtime's mechanism, so it is Lua: each handle is one tarry coroutine that
-- runs the insert (on a PgConnector, through the async pool, where concurrent defers share a
-- statement: pg_connector.c) and then records the outcome. It needs no C state of its own, and
-- it completes from whatever turns tarry's loop (app:run(), h:result(), a host's step), as every
-- tarry coroutine does.
--
-- Errors: the arguments are checked at the call, which raises the same error objects `defer`
-- raises (invalid_args, invalid_job, and misuse such as a list that is not a table). What only
-- the database can tell (already_enqueued, connection, database...) arrives through the handle:
-- h:result() raises it, h:on_done gets it, h.error holds it. A failure is kept in the handle and
-- raised by nothing else: look at it.
-- @module tarry.pending_defer
local core = require "tarry.core"

local PendingDefer = core.newmetatable("tarry.PendingDefer")
PendingDefer.__index = PendingDefer

-- Before app:open(), a PgConnector's pool opens without waiting: its connections are made in
-- the loop, and a failure to connect reaches this defer as a "connection" error.
local function open_async(app)
  local c = app.connector
  if core.type(c) == "PgConnector" and not c:is_open() then c:open{ wait = false } end
end

local function run(h, app, text, jobs)
  local ok, res
  if text then ok, res = pcall(app._insert_jobs, app, text, #jobs)
  else ok, res = pcall(app._defer_jobs, app, jobs) end
  if ok and h._single then h.id = res[1]
  elseif ok then h.ids = res
  else h.error = res end
  h._state = ok and "done" or "failed"
  local callbacks = h._callbacks
  h._callbacks = nil
  for _, fn in ipairs(callbacks) do core.spawn(fn, h.id or h.ids, h.error) end
end

--- Start inserting `jobs` (job tables as app:_defer_jobs takes them) for `task_name`; single:
-- one job whose id the handle gives as h.id (else a batch: h.ids). Raises validation errors.
function PendingDefer.start(app, task_name, jobs, single)
  local text = app:_encode_jobs(jobs)
  local h = setmetatable({ task_name = task_name, _single = single, _n = #jobs, _state = "pending",
    _callbacks = {} }, PendingDefer)
  open_async(app)
  h._co = core.spawn(run, h, app, text, jobs)
  return h
end

--- h:done() -> true once the defer has an outcome (its id or its error).
function PendingDefer:done()
  return self._state ~= "pending"
end

--- h:result() -> the job id (a batch: the ids, in order), or raises the defer's error object.
-- While pending it waits: it parks a tarry coroutine, and elsewhere drives tarry's loop until
-- the defer is done (as a tarry.Coroutine's result() does).
function PendingDefer:result()
  if self._state == "pending" then self._co:result() end
  if self._state == "failed" then error(self.error, 0) end
  if self._single then return self.id end
  return self.ids
end

--- h:on_done(fn) -> h: fn(id, err) runs in its own tarry coroutine once the defer is done (at
-- once, on the next turn of the loop, when it is done already): id is the job id (a batch: the
-- ids) or nil, err the error object or nil. An error fn raises is the loop's, as a spawned
-- coroutine's.
function PendingDefer:on_done(fn)
  if type(fn) ~= "function" then error("on_done expects a function, got " .. type(fn), 2) end
  if self._callbacks then self._callbacks[#self._callbacks + 1] = fn
  else core.spawn(fn, self.id or self.ids, self.error) end
  return self
end

--- `<tarry.PendingDefer add pending>`, `... id=42>`, `... failed: connection>`; a batch:
-- `<tarry.PendingDefer add 3 jobs ids=42..44>`.
function PendingDefer:__tostring()
  local what = self.task_name .. (self._single and "" or string.format(" %d jobs", self._n))
  local state
  if self._state == "pending" then state = "pending"
  elseif self._state == "failed" then
    state = "failed: " .. tostring(type(self.error) == "table" and self.error.code or self.error)
  elseif self._single then state = "id=" .. tostring(self.id)
  elseif #self.ids == 0 then state = "done"
  else state = string.format("ids=%d..%d", self.ids[1], self.ids[#self.ids]) end
  return string.format("<tarry.PendingDefer %s %s>", what, state)
end

return PendingDefer
