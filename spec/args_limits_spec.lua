-- What PostgreSQL would refuse late is refused by tarry up front, naming the field, and nothing
-- is inserted: NUL bytes and invalid UTF-8 in names and locks, locks too long for their index,
-- arguments beyond 16 MiB of JSON. Through the Lua API and through `tarry defer`.
local tarry = require "tarry"
local db = require "support.db"
local W = require "support.worker"
local error_of = require("support.expect").error_of

local LOCK_LIMIT = 1000
local ARGS_LIMIT = 16 * 1024 * 1024
-- Errors from misuse name the line of the caller, here this file.
local HERE = "args_limits_spec%.lua:%d+: "

local function with_database() return W.with_database(before_each, after_each) end

local function count_jobs(name) return W.count(name, "FROM procrastinate_jobs") end

--- n letters and digits that PostgreSQL cannot compress in an index entry.
local function noise(n)
  local alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
  math.randomseed(n)
  local t = {}
  for i = 1, n do
    local k = math.random(#alphabet)
    t[i] = alphabet:sub(k, k)
  end
  return table.concat(t)
end

--- The error object a defer raised; fails the test on anything else.
local function defer_error(f)
  local err = error_of(f)
  assert.is_true(tarry.is_error(err), "expected an error object, got " .. tostring(err))
  return err
end

describe("task and queue names PostgreSQL could not store", function()
  local app
  before_each(function() app = tarry.App{ connector = tarry.MemoryConnector() } end)

  it("are refused at your line when they hold a NUL byte, naming the field and the byte", function()
    assert.matches(HERE .. "app:task: task name must not contain a NUL byte %(byte 4%)$",
      error_of(function() app:task("add\0x", function() end) end))
    assert.matches(HERE .. 'app:task%("t"%) alias: task name must not contain a NUL byte %(byte 1%)$',
      error_of(function() app:task("t", { aliases = { "\0" } }, function() end) end))
    assert.matches(HERE .. 'app:task%("u"%): queue must not contain a NUL byte %(byte 2%)$',
      error_of(function() app:task("u", { queue = "q\0" }, function() end) end))
    assert.matches(HERE .. "app:configure_task: task name must not contain a NUL byte %(byte 2%)$",
      error_of(function() app:configure_task("a\0") end))
    local add = app:task("add", function() end)
    assert.matches(HERE .. 'configure%("add"%): queue must not contain a NUL byte %(byte 1%)$',
      error_of(function() add:configure{ queue = "\0" } end))
    assert.is_nil(app.tasks.t)
    assert.is_nil(app.tasks.u)
  end)

  it("are reported as invalid UTF-8 with the position of the first bad byte", function()
    assert.matches(HERE .. "app:task: task name must be valid UTF%-8 %(invalid byte at position 3%)$",
      error_of(function() app:task("ab\xff", function() end) end))
    assert.matches("app:configure_task: task name must be valid UTF%-8 %(invalid byte at position 1%)$",
      error_of(function() app:configure_task("\xed\xa0\x80") end))   -- a surrogate
    assert.matches(HERE .. 'app:task%("v"%): queue must be valid UTF%-8 %(invalid byte at position 2%)$',
      error_of(function() app:task("v", { queue = "q\xc0\x80" }, function() end) end))   -- overlong NUL
  end)
end)

describe("locks and queueing locks", function()
  local t = with_database()
  before_each(function() t.app:task("work", function() end) end)

  it("are what PostgreSQL's index refuses late when long: a 3000-byte lock fails the insert (54000)", function()
    local err = defer_error(function()
      t.app.connector:execute("INSERT INTO procrastinate_jobs (queue_name, task_name, lock) " ..
        "VALUES ('default', 'work', $1)", noise(3000))
    end)
    assert.are.equal("54000", err.sqlstate)
    assert.matches("index row size %d+ exceeds btree version 4 maximum 2704", err.message)
  end)

  it("take up to 1000 bytes: a job with both at the limit is stored verbatim and runs", function()
    local lock, qlock = noise(LOCK_LIMIT), noise(LOCK_LIMIT - 2) .. "é"   -- bytes, not characters
    local id = t.app.tasks.work:configure{ lock = lock, queueing_lock = qlock }:defer{}
    local row = t.app.connector:execute("SELECT lock, queueing_lock FROM procrastinate_jobs WHERE id = $1",
      id)[1]
    assert.are.same({ lock, qlock }, { row.lock, row.queueing_lock })
    W.run(t.app)
    assert.are.same({ "succeeded", 1 }, W.state(t.name, id))
  end)

  it("are refused beyond 1000 bytes with invalid_job naming the field and the limit, inserting nothing", function()
    local err = defer_error(function() t.app.tasks.work:configure{ lock = noise(LOCK_LIMIT + 1) }:defer{} end)
    assert.are.equal("tarry: invalid_job: lock has 1001 bytes, more than the 1000 allowed (it is a key of a " ..
      "PostgreSQL index)", tostring(err))
    err = defer_error(function() t.app:configure_task("other", { queueing_lock = noise(3000) }):defer{} end)
    assert.are.same({ "invalid_job", "queueing_lock has 3000 bytes, more than the 1000 allowed (it is a key " ..
      "of a PostgreSQL index)" }, { err.code, err.message })
    assert.are.equal(0, count_jobs(t.name))
  end)

  it("are checked from the task's options as from the defer's; one bad job fails its batch", function()
    t.app:task("locked", { lock = noise(LOCK_LIMIT + 1) }, function() end)
    assert.are.equal("invalid_job", defer_error(function() t.app.tasks.locked:defer{} end).code)
    local err = defer_error(function() t.app:defer("locked", {}) end)
    assert.matches("^lock has 1001 bytes", err.message)
    err = defer_error(function() t.app.tasks.locked:batch_defer{ {}, {} } end)
    assert.matches("^job #1: lock has 1001 bytes", err.message)
    assert.are.equal(0, count_jobs(t.name))
  end)

  it("are refused with invalid_job when they hold a NUL byte or invalid UTF-8", function()
    local cases = {
      { { lock = "account\0" }, "lock has a NUL byte at byte 8 (PostgreSQL cannot store it)" },
      { { queueing_lock = "\0" }, "queueing_lock has a NUL byte at byte 1 (PostgreSQL cannot store it)" },
      { { lock = "caf\xe9" }, "lock is not valid UTF-8 (invalid byte at position 4)" },
      { { queueing_lock = "ok\xf4\x90\x80\x80" },   -- above U+10FFFF
        "queueing_lock is not valid UTF-8 (invalid byte at position 3)" },
    }
    for _, case in ipairs(cases) do
      local err = defer_error(function() t.app.tasks.work:configure(case[1]):defer{} end)
      assert.are.same({ "invalid_job", case[2] }, { err.code, err.message })
    end
    assert.are.equal(0, count_jobs(t.name))
  end)
end)

describe("the size of a job's arguments", function()
  local t = with_database()
  before_each(function() t.app:task("store", function() end) end)

  --- Arguments whose JSON text has exactly n bytes: {"s":"xx...x"}.
  local function args_of_size(n)
    local args = { s = string.rep("x", n - #'{"s":""}') }
    assert.are.equal(n, #tarry.json.encode(args))
    return args
  end

  it("may reach 16 MiB of JSON text", function()
    local id = t.app.tasks.store:defer(args_of_size(ARGS_LIMIT))
    assert.are.equal(tostring(ARGS_LIMIT - 8), db.value(t.name, "SELECT length(args->>'s') FROM " ..
      "procrastinate_jobs WHERE id = " .. id))
  end)

  it("is a limit per job: a batch may pass 16 MiB in all", function()
    local half = args_of_size(ARGS_LIMIT // 2 + 1)
    assert.are.equal(2, #t.app.tasks.store:batch_defer{ half, half })
    assert.are.equal(2, count_jobs(t.name))
  end)

  it("is refused beyond 16 MiB with invalid_args naming the size and the limit; nothing is inserted", function()
    local err = defer_error(function() t.app.tasks.store:defer(args_of_size(ARGS_LIMIT + 1)) end)
    assert.are.equal("tarry: invalid_args: args: 16777217 bytes of JSON, more than the 16777216 allowed " ..
      "(16 MiB)", tostring(err))
    err = defer_error(function() t.app.tasks.store:batch_defer{ { a = 1 }, args_of_size(50 * 1000 * 1000) } end)
    assert.are.same({ "invalid_args", "job #2: args: 50000000 bytes of JSON, more than the 16777216 allowed " ..
      "(16 MiB)" }, { err.code, err.message })
    assert.are.equal(0, count_jobs(t.name))
  end)

  it("is checked the same way on a MemoryConnector", function()
    local mem = t.app:with_connector(tarry.MemoryConnector())
    local err = defer_error(function() mem.tasks.store:defer(args_of_size(ARGS_LIMIT + 1)) end)
    assert.are.same({ "invalid_args", "args: 16777217 bytes of JSON, more than the 16777216 allowed (16 MiB)" },
      { err.code, err.message })
  end)
end)

describe("tarry defer refusing what PostgreSQL could not store", function()
  local BIN = (os.getenv("TARRY_BUILD_DIR") or "build") .. "/bin/tarry"
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  --- Runs `tarry --conninfo <db> defer argv...`; returns its exit code and its stderr.
  local function defer(...)
    local words = { db.shell_quote(BIN), "--conninfo", db.shell_quote(db.conninfo(name)), "defer" }
    for _, a in ipairs { ... } do words[#words + 1] = db.shell_quote(a) end
    local errfile = os.tmpname()
    local pipe = assert(io.popen(table.concat(words, " ") .. " 2>" .. errfile, "r"))
    pipe:read("a")
    local _, how, code = pipe:close()
    local f = assert(io.open(errfile))
    local err = f:read("a")
    f:close()
    os.remove(errfile)
    assert.are.equal("exit", how)
    return code, err
  end

  it("says a task name or queue is not valid UTF-8 (exit 2)", function()
    -- (The CLI names the argument as its usage does: TASK.)
    local code, err = defer("ab\xff")
    assert.are.same({ 2, "TASK must be valid UTF-8 (invalid byte at position 3)\n" },
      { code, err:match(": ([^:]*)$") })
    code, err = defer("--queue", "q\xc3", "add")
    assert.are.same({ 2, "queue must be valid UTF-8 (invalid byte at position 2)\n" },
      { code, err:match(": ([^:]*)$") })
    assert.are.equal(0, count_jobs(name))
  end)

  it("takes a 1000-byte lock and refuses a 1001-byte one with an invalid_job line (exit 1)", function()
    assert.are.equal(0, (defer("--lock", noise(LOCK_LIMIT), "--queueing-lock", noise(LOCK_LIMIT), "add")))
    assert.are.equal(1, count_jobs(name))
    local code, err = defer("--lock", noise(LOCK_LIMIT + 1), "add")
    assert.are.same({ 1, "tarry: invalid_job: lock has 1001 bytes, more than the 1000 allowed (it is a key " ..
      "of a PostgreSQL index)\n" }, { code, err })
    code, err = defer("--queueing-lock", noise(LOCK_LIMIT + 1), "add")
    assert.are.same({ 1, "tarry: invalid_job: queueing_lock has 1001 bytes" }, { code, err:sub(1, 48) })
    assert.are.equal(1, count_jobs(name))
  end)

  it("refuses JSON arguments with an integer beyond 64 bits, naming it (exit 2)", function()
    local code, err = defer("add", '{"n": 123456789012345678901234567890}')
    assert.are.same({ 2, "tarry: JSON arguments are malformed: value.n: integer does not fit in 64 bits\n" },
      { code, err })
    assert.are.equal(0, count_jobs(name))
  end)
end)
