-- Fault injection: hostile names and arguments through the API, the command line and a worker.
-- Each is either stored verbatim (read back through SQL, equal byte for byte) or refused with a
-- clear error: an error object with code invalid_job / invalid_args, or a usage error, naming the
-- field (and saying "UTF-8" for an invalid UTF-8 name). Never a crash, a lost or extra row, or one of
-- PostgreSQL's raw errors (22P05 untranslatable character, 54000 index row too large, ...).
local db = require "support.db"
local proc = require "support.process"
local W = require "support.worker"
local cli = require "support.cli"
local tarry = require "tarry"

-- n bytes of text that neither compresses nor quotes well: quotes, backslashes, braces, commas,
-- dollars, letters, in a fixed pseudo-random order.
local function hostile(n)
  local alphabet, out, x = "'\"$\\;{},()[]%-_=+abcdefghijklmnopqrstuvwxyz0123456789", {}, 12345
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    local k = x // 65536 % #alphabet + 1
    out[i] = alphabet:sub(k, k)
  end
  return table.concat(out)
end

local CASES = {
  { "a single quote", "it's" },
  { "double quotes", 'say "hi"' },
  { "an SQL fragment", "x'); DROP TABLE procrastinate_jobs; --" },
  { "dollar quoting", "$$ $tag$ $1 $$" },
  { "backslashes", [[a\b\\c\n\x00\u0000]] },
  { "array literal syntax", '{"a",b}\\,NULL' },
  { "control characters", "a\nb\tc\r\1\127" },
  { "non-ASCII UTF-8", "ünï ☃ 𝄞" },
  { "invalid UTF-8", "bad\255\254\195", utf8 = true },
  { "a NUL byte", "a\0b", nul = true },
  { "an empty string", "" },
  { "10 KB", hostile(10 * 1024) },
  -- argv holds at most 128 KiB per argument, and the JSON escapes of 50 KB of these come close.
  { "1 MB", hostile(1024 * 1024), cli = hostile(50 * 1024) },
}

local FIELDS = { "task", "queue", "lock", "queueing_lock", "args key", "args value" }
-- The words a refusal must use to name the field.
local NAMED = { task = "task", queue = "queue", lock = "lock", queueing_lock = "queueing",
  ["args key"] = "arg", ["args value"] = "arg" }
-- How to read a field of job `id` back, as hex.
local READ = {
  task = "encode(convert_to(task_name, 'UTF8'), 'hex')",
  queue = "encode(convert_to(queue_name, 'UTF8'), 'hex')",
  lock = "encode(convert_to(lock, 'UTF8'), 'hex')",
  queueing_lock = "encode(convert_to(queueing_lock, 'UTF8'), 'hex')",
  ["args key"] = "(SELECT string_agg(encode(convert_to(k, 'UTF8'), 'hex'), ',') FROM jsonb_object_keys(args) k)",
  ["args value"] = "encode(convert_to(args->>'v', 'UTF8'), 'hex')",
}

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

--- After one attempt on a describe's shared database t (t.name, t.jobs: the rows so far): `id` is
--- the job the defer returned, nil when it was refused. Asserts, in one query, that exactly that
--- row was added and that `read` (SQL over its row) gives `expected`.
local function check_after(t, id, read, expected)
  local row = db.rows(t.name, string.format("SELECT count(*), max(CASE WHEN id = %d THEN 'x' || %s END) " ..
    "FROM procrastinate_jobs", id or 0, read or "NULL"))[1]
  local count, got = tonumber(row[1]), row[2] ~= "" and row[2]:sub(2) or nil
  local before = t.jobs
  t.jobs = count
  if not id then
    assert(count == before, "a refused defer left a row")
    return
  end
  assert(count == before + 1, string.format("one defer, %d new rows", count - before))
  assert(got, "job " .. id .. " was returned, but has no row")
  assert(got == expected, string.format("job %d came back different (%d bytes, expected %d)", id, #got, #expected))
end

--- check_after for `value` in field `field`, compared byte for byte (as hex).
local function check_field(t, id, field, value)
  check_after(t, id, READ[field], hex(value))
end

--- check_after for arguments given as JSON text (compared as jsonb).
local function check_args(t, id, text)
  check_after(t, id, "(args = '" .. text:gsub("'", "''") .. "'::jsonb)::text", "true")
end

--- nil when `msg` (what was raised or printed) refuses `case` clearly for `field`, else why not.
local function unclear(field, case, msg)
  local low = msg:lower()
  if not low:find(NAMED[field], 1, true) then return "the error does not name the " .. field .. ": " .. msg:sub(1, 300) end
  if case.utf8 and not field:match("^args") and not low:find("utf%-?8") then return "the error does not say UTF-8: " .. msg:sub(1, 300) end
  return nil
end

-- ---- through the API ----

local function api_defer(app, field, value)
  local task, opts, args = "t", {}, { k = 1 }
  if field == "task" then task = value
  elseif field == "args key" then args = { [value] = 1 }
  elseif field == "args value" then args = { v = value }
  else opts[field] = value end
  return pcall(function() return app:configure_task(task, opts):defer(args) end)
end

local function api_refusal(field, case, err)
  if tarry.is_error(err) then
    if err.code ~= "invalid_job" and err.code ~= "invalid_args" then
      return string.format("an error object with code %s%s: %s", err.code,
        err.sqlstate and (" (sqlstate " .. err.sqlstate .. ")") or "", tostring(err):sub(1, 300))
    end
    return unclear(field, case, tostring(err))
  end
  if type(err) ~= "string" then return "raised a " .. type(err) end
  return unclear(field, case, err)             -- API misuse: a plain error at the caller's line
end

describe("hostile names and arguments through the API", function()
  local t = {}
  setup(function() t.name = db.fresh(); t.jobs = 0; t.app = W.app(t.name) end)
  teardown(function() t.app:close(); db.drop(t.name) end)

  for _, field in ipairs(FIELDS) do
    for _, case in ipairs(CASES) do
      it(string.format("%s: %s is stored verbatim or refused clearly", field, case[1]), function()
        local ok, res = api_defer(t.app, field, case[2])
        if ok then
          assert.are.equal("integer", math.type(res))
          check_field(t, res, field, case[2])
        else
          check_after(t, nil)
          local why = api_refusal(field, case, res)
          assert(why == nil, why)
        end
      end)
    end
  end

  for _, depth in ipairs { 500, 1000 } do
    for _, kind in ipairs { { "arrays", "[", "]" }, { "objects", '{"a":', "}" } } do
      it(string.format("args nested %d levels deep in %s are stored verbatim or refused clearly", depth, kind[1]), function()
        local text = '{"v": ' .. kind[2]:rep(depth) .. "1" .. kind[3]:rep(depth) .. "}"
        local v = 1
        for _ = 1, depth do v = kind[1] == "arrays" and { v } or { a = v } end
        local ok, res = pcall(function() return t.app:configure_task("t"):defer{ v = v } end)
        if ok then
          check_args(t, res, text)
        else
          check_after(t, nil)
          local why = api_refusal("args value", {}, res)
          assert(why == nil, why)
        end
      end)
    end
  end
end)

-- ---- through the command line ----

-- A JSON string literal for any bytes: quotes, backslashes and control characters escaped, every
-- other byte as it is (so invalid UTF-8 stays invalid, for the decoder to refuse).
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

-- `tarry defer --json` of one job whose `field` is `value`: names go in argv; arguments as the JSON
-- argument, or with `from` (too long for one argument) as the one line of a --from file.
local function cli_defer(name, field, value, from)
  local task, args, argv = "t", '{"k": 1}', { "defer", "--json" }
  if field == "task" then task = value
  elseif field == "args key" then args = "{" .. json_string(value) .. ": 1}"
  elseif field == "args value" then args = '{"v": ' .. json_string(value) .. "}"
  else argv[#argv + 1] = "--" .. field:gsub("_", "-"); argv[#argv + 1] = value end
  local rest = { "--", task, args }
  if from then rest = { "--from", cli.write_file(os.tmpname(), args .. "\n"), "--", task } end
  for _, a in ipairs(rest) do argv[#argv + 1] = a end
  return cli.run_on(name, argv)
end

--- The job id a successful `tarry defer --json` printed, or nil after checking that it refused
--- clearly (a crash, a killed process or PostgreSQL's raw error fails the test).
local function cli_outcome(t, field, case, r)
  if r.code == 0 then
    local ok, doc = pcall(tarry.json.decode, r.out)
    local id = ok and type(doc) == "table" and (doc.id or (doc.ids and doc.ids[1]))
    assert(math.type(id) == "integer", "exit 0 without a job id: " .. r.out:sub(1, 300))
    return id
  end
  check_after(t, nil)
  assert(r.code == 1 or r.code == 2, string.format("crashed (exit %s): %s", tostring(r.code), r.err:sub(1, 2000)))
  assert.are.equal(1, r.err_lines, "not one line on stderr: " .. r.err:sub(1, 2000))
  if r.code == 1 then   -- a failure of the work: it must be a refusal, not PostgreSQL's raw error
    local what = r.err:match("^tarry: ([%w_]+):")
    assert(what == "invalid_job" or what == "invalid_args", "not a clear refusal: " .. r.err:sub(1, 300))
  end
  local why = unclear(field, case, r.err)
  assert(why == nil, why)
end

describe("hostile names and arguments through tarry defer", function()
  local t = {}
  setup(function() t.name = db.fresh(); t.jobs = 0 end)
  teardown(function() db.drop(t.name) end)

  for _, field in ipairs(FIELDS) do
    local args = field:match("^args") ~= nil
    for _, case in ipairs(CASES) do
      -- argv cannot hold a NUL byte (in JSON arguments it is the \u0000 escape), nor more than
      -- 128 KiB in one argument: long names are cut to 50 KB, long arguments go through --from.
      local value = (case.cli and not args) and case.cli or case[2]
      local label = case.cli and (args and case[1] .. " (through --from)" or "50 KB") or case[1]
      if not (case.nul and not args) then
        it(string.format("%s: %s is stored verbatim or refused clearly", field, label), function()
          local id = cli_outcome(t, field, case, cli_defer(t.name, field, value, args and case.cli ~= nil))
          if id then check_field(t, id, field, value) end
        end)
      end
    end
  end

  it("args nested 1000 levels deep are stored verbatim or refused clearly", function()
    local text = '{"v": ' .. ("["):rep(1000) .. "1" .. ("]"):rep(1000) .. "}"
    local id = cli_outcome(t, "args value", {}, cli.run_on(t.name, { "defer", "--json", "t", text }))
    if id then check_args(t, id, text) end
  end)
end)

-- ---- through a worker ----

describe("a tarry worker given hostile names", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() proc.kill_all(); db.drop(name) end)

  it("LISTENs on a hostile queue, runs the job of a hostile task, and hands it its arguments intact", function()
    local queue = "q\"'$$\\;{}"           -- no comma or space: -q splits on them
    local task = "x'); DROP TABLE procrastinate_jobs; --"
    local lock = "l'\"$$\\{},NULL"
    local args = { ["k'\""] = "v$$\\\n" .. hostile(10 * 1024), deep = tarry.json.decode(("["):rep(100) .. "1" .. ("]"):rep(100)),
      utf = "ünï ☃ 𝄞" }
    local out = os.tmpname()
    local app = proc.app_file(name, string.format([[
app:task(%q, { queue = %q }, function(args, ctx)
  local f = assert(io.open(%q, "w"))
  f:write(tarry.json.encode{ args = args, task = ctx.job.task_name, queue = ctx.job.queue, lock = ctx.job.lock })
  f:close()
end)
]], task, queue, out))
    local w = proc.start(string.format("worker --app %s -q %s --fetch-job-polling-interval 600", app, db.shell_quote(queue)))
    proc.until_true(function() return db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE " ..
      "datname = current_database() AND query LIKE 'LISTEN%'") == "1" end, 30, "the worker to LISTEN")
    local defer_app = W.app(name)
    local id = defer_app:configure_task(task, { queue = queue, lock = lock }):defer(args)
    defer_app:close()
    proc.until_true(function() return W.state(name, id)[1] == "succeeded" end, 30, "the job to run (on its NOTIFY)")
    w:signal("TERM")
    assert.are.equal(0, w:wait(30), w:output())
    local f = assert(io.open(out))
    local seen = tarry.json.decode(f:read("a"))
    f:close()
    os.remove(out)
    assert.are.same({ args = args, task = task, queue = queue, lock = lock }, seen)
    assert.are.equal("1", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
  end)
end)
