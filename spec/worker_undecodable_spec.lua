-- Rows another client wrote whose arguments tarry cannot decode: Python stores integers beyond
-- 64 bits, PostgreSQL's jsonb keeps numbers beyond a double, and nothing stops nesting deeper
-- than tarry's 512 levels. Such a job ends failed, is never retried and never reaches its task;
-- the worker logs what could not be decoded and runs the other jobs.
local tarry = require "tarry"
local db = require "support.db"
local W = require "support.worker"

local function with_database(opts) return W.with_database(before_each, after_each, opts) end

--- Inserts a job with these arguments (jsonb text) as any client would, with the protocol's function.
local function sql_defer(name, task, args_json)
  return tonumber(db.value(name, string.format("SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(" ..
    "'default', '%s', 0, NULL, NULL, '%s'::jsonb, NULL)::procrastinate_job_to_defer_v1]))", task, args_json)))
end

local DEEP_PATH = "args.deep" .. string.rep("[1]", 7) .. "..." .. string.rep("[1]", 8)

-- jsonb text, and what the worker says it could not decode. (jsonb prints 1e400 as its 401 digits.)
local UNDECODABLE = {
  { '{"n": 123456789012345678901234567890}', "args.n: integer does not fit in 64 bits" },
  { '{"n": -9223372036854775809}', "args.n: integer does not fit in 64 bits" },
  { '{"x": 1e400}', "args.x: integer does not fit in 64 bits" },
  { '{"x": [0.5, ' .. string.rep("9", 400) .. '.5]}', "args.x[2]: number does not fit in a double" },
  { '{"deep": ' .. string.rep("[", 600) .. string.rep("]", 600) .. "}",
    DEEP_PATH .. ": nested too deep (more than 512 levels)" },
}

--- The message of a log line without its duration.
local function without_duration(message) return (message:gsub(" %(%d+%.%d ms%)$", "")) end

describe("a job whose arguments tarry cannot decode", function()
  local t = with_database()

  it("ends failed with attempts 1, is not retried although its task retries, and its task never runs", function()
    local calls = 0
    t.app:task("echo", { retry = true }, function() calls = calls + 1 end)
    local ids = {}
    for i, case in ipairs(UNDECODABLE) do ids[i] = sql_defer(t.name, "echo", case[1]) end
    W.run(t.app, { concurrency = 2, log_level = "error", log_stream = io.tmpfile() })
    assert.are.equal(0, calls)
    for _, id in ipairs(ids) do
      assert.are.same({ "failed", 1 }, W.state(t.name, id))
      assert.are.equal("deferred,started,failed", W.events(t.name, id))
    end
  end)

  it("is logged as undecodable_args with the job and the value that could not be decoded", function()
    local log = io.tmpfile()
    t.app:task("echo", function() end)
    local ids = {}
    for i, case in ipairs(UNDECODABLE) do ids[i] = sql_defer(t.name, "echo", case[1]) end
    W.run(t.app, { log_format = "json", log_stream = log })
    local lines = W.json_lines(log)
    assert.are.equal(#UNDECODABLE, #lines)
    table.sort(lines, function(a, b) return a.job_id < b.job_id end)
    for i, case in ipairs(UNDECODABLE) do
      assert.are.same({ "error", "undecodable_args", ids[i], "echo" },
        { lines[i].level, lines[i].event, lines[i].job_id, lines[i].task })
      assert.are.equal(string.format("job %d echo failed: cannot decode its arguments: %s (not retried)", ids[i],
        case[2]), without_duration(lines[i].message))
    end
  end)

  it("does not hold back the jobs fetched with it, nor those after it", function()
    local seen = W.journal()
    t.app:task("echo", function(args) seen:add(args.name) end)
    -- All deferred before the worker starts, so that its first fetch takes them together.
    sql_defer(t.name, "echo", '{"name": "before"}')
    local bad = sql_defer(t.name, "echo", UNDECODABLE[1][1])
    -- 512 levels of nesting (the object and 511 arrays) is the most tarry decodes: this one runs.
    sql_defer(t.name, "echo", '{"name": "deep", "deep": ' .. string.rep("[", 511) .. string.rep("]", 511) .. "}")
    sql_defer(t.name, "echo", '{"name": "after"}')
    W.run(t.app, { concurrency = 4, log_level = "error", log_stream = io.tmpfile() })
    table.sort(seen)
    assert.are.same({ "after", "before", "deep" }, seen)
    assert.are.same({ "failed", 1 }, W.state(t.name, bad))
    assert.are.equal(3, W.count(t.name, "FROM procrastinate_jobs WHERE status = 'succeeded'"))
  end)
end)

describe("connector:execute on a json value tarry cannot decode", function()
  local t = with_database()

  it("returns an undecodable_json error object in its place; the other columns come as usual", function()
    local conn = tarry.SyncPgConnector{ conninfo = db.conninfo(t.name) }
    local row = conn:execute([[SELECT 7 AS n, '{"big": 123456789012345678901234567890}'::jsonb AS args,
      '[1, {"x": 1e400}]'::json AS doc, '{"ok": 1}'::jsonb AS fine]])[1]
    conn:close()
    assert.are.equal(7, row.n)
    assert.are.equal(1, row.fine.ok)
    assert.is_true(tarry.is_error(row.args))
    assert.are.same({ "undecodable_json", "args.big: integer does not fit in 64 bits" },
      { row.args.code, row.args.message })
    -- json (unlike jsonb) keeps the text as written: 1e400 is a real beyond a double there.
    assert.are.equal("tarry: undecodable_json: doc[2].x: number does not fit in a double", tostring(row.doc))
  end)
end)
