--- `tarry defer TASK [JSON]` and `tarry defer TASK --from FILE|-`: defer one job, or one job per
-- line of a file in batches (all or nothing per batch).
-- @module tarry.cli_defer
local tarry = require "tarry"
local Output = require "tarry.cli_output"
local parser = require "tarry.cli_parser"

local M = {}

-- configure_task's own words, as the command line says them.
local function cli_words(err)
  return (tostring(err):gsub("^app:configure_task: task name", "TASK"):gsub("^[%w_:()\"]+: ", ""))
end

local function deferrer_for(cli, cmd, out)
  local app = cli.app_for(cmd, function(text) out:note(text) end)
  if cmd.app and not app:find_task(cmd.task) and not cmd.unknown then
    cli.usage_error("task %q is not in %s (pass --unknown to defer it anyway)", cmd.task, cmd.app)
  end
  local valid, deferrer = pcall(app.configure_task, app, cmd.task, { queue = cmd.queue, lock = cmd.lock,
    queueing_lock = cmd.queueing_lock, priority = cmd.priority, schedule_at = cmd.schedule_at,
    schedule_in = cmd.schedule_in })
  if not valid then cli.usage_error("%s", cli_words(deferrer)) end
  return deferrer
end

-- The job as --json prints it: the task's options overridden by the command line's.
local function job_value(cmd, deferrer, id, args)
  local def, o = deferrer.def, deferrer.overrides
  local at = cmd.schedule_at or (cmd.schedule_in and tarry.now() + cmd.schedule_in)
  return { id = id or tarry.null, task = def.name, queue = o.queue or def.queue, priority = o.priority or def.priority,
    lock = o.lock or def.lock or tarry.null, queueing_lock = o.queueing_lock or def.queueing_lock or tarry.null,
    scheduled_at = at or tarry.null, args = args }
end

local function defer_one(cli, cmd, deferrer, out)
  local ok, res = pcall(deferrer.defer, deferrer, cmd.args)
  if ok then
    out:result(job_value(cmd, deferrer, res, cmd.args),
      string.format("deferred job %d: %s %s", res, cmd.task, tarry.json.encode(cmd.args)))
    return 0
  end
  if tarry.is_error(res) and res.code == "already_enqueued" and cmd.ignore_already_enqueued then
    local value = job_value(cmd, deferrer, nil, cmd.args)
    value.skipped = "already_enqueued"
    out:result(value, string.format("not deferred: a job of task %s with queueing lock %q is already waiting",
      cmd.task, tostring(value.queueing_lock)))
    return 0
  end
  if tarry.is_error(res) and res.code == "invalid_args" then cli.usage_error("%s", res.message) end
  error(res, 0)
end

-- ---- --from ----

local Bulk = {}
Bulk.__index = Bulk

local function open_input(cli, from)
  if from == "-" then return io.stdin, "stdin", nil end
  local f, err = io.open(from, "r")
  if not f then cli.usage_error("--from: %s", err) end
  local size = f:seek("end")
  f:seek("set", 0)
  return f, from, size
end

-- One batch, all or nothing; with --ignore-already-enqueued a conflicting batch goes one by one.
function Bulk:send()
  if #self.batch == 0 then return end
  local ok, ids = pcall(self.deferrer.batch_defer, self.deferrer, self.batch)
  if not ok and tarry.is_error(ids) and ids.code == "already_enqueued" and self.cmd.ignore_already_enqueued then
    ok, ids = true, {}
    for _, args in ipairs(self.batch) do
      local one_ok, id = pcall(self.deferrer.defer, self.deferrer, args)
      if one_ok then ids[#ids + 1] = id
      elseif tarry.is_error(id) and id.code == "already_enqueued" then self.skipped = self.skipped + 1
      else ok, ids = false, id; break end
    end
  end
  if not ok then
    self.cli.failure("%s (lines %d-%d not deferred; %s)", tostring(ids), self.first_line, self.line, self:so_far())
  end
  table.move(ids, 1, #ids, #self.ids + 1, self.ids)
  self.batches = self.batches + 1
  self.batch, self.first_line = {}, self.line + 1
  if self.bar then self.bar:update(self.bytes, #self.ids) end
end

function Bulk:so_far()
  if #self.ids == 0 then return "nothing was deferred before" end
  return string.format("%d job%s from the lines before were deferred", #self.ids, #self.ids == 1 and "" or "s")
end

function Bulk:add(line)
  self.line, self.bytes = self.line + 1, self.bytes + #line + 1
  if line:match("^%s*$") then return end
  local args, err = parser.json_object(line)
  if not args then
    if self.bar then self.bar:finish() end
    self.cli.usage_error("%s:%d: %s (lines %d-%d not deferred; %s)", self.name, self.line, err, self.first_line,
      self.line, self:so_far())
  end
  self.batch[#self.batch + 1] = args
  if #self.batch >= self.size then self:send() end
end

local function defer_from(cli, cmd, deferrer, out)
  local input, name, size = open_input(cli, cmd.from)
  local b = setmetatable({ cli = cli, cmd = cmd, deferrer = deferrer, name = name, size = cmd.batch_size or 1000,
    batch = {}, ids = {}, line = 0, first_line = 1, bytes = 0, batches = 0, skipped = 0,
    bar = (not out.json) and out:progress(size) or nil }, Bulk)
  for line in input:lines() do b:add(line) end
  b:send()
  if input ~= io.stdin then input:close() end
  if b.bar then b.bar:finish() end
  local n = #b.ids
  out:result({ task = cmd.task, deferred = n, skipped = b.skipped, batches = b.batches, ids = tarry.array(b.ids) },
    string.format("deferred %d job%s of %s from %s in %d batch%s%s%s", n, n == 1 and "" or "s", cmd.task, name,
      b.batches, b.batches == 1 and "" or "es", n > 0 and string.format(" (ids %d to %d)", b.ids[1], b.ids[n]) or "",
      b.skipped > 0 and string.format("; %d skipped: queueing lock already taken", b.skipped) or ""))
  return 0
end

--- Run `tarry defer` for the parsed command `cmd` (see tarry.cli.parse); returns the exit code.
function M.run(cli, cmd)
  local out = Output.new(cmd.json)
  local deferrer = deferrer_for(cli, cmd, out)
  if cmd.from then return defer_from(cli, cmd, deferrer, out) end
  return defer_one(cli, cmd, deferrer, out)
end

return M
