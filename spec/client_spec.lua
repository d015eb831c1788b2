-- libtarry.so, the C client (runtime/client/tarry_client.h): C, C++ and FFI hosts defer jobs
-- without Lua, from any thread, blocking, non-blocking or inside their own transaction. The C
-- side is spec/support/client_probe.c (each outcome one line "id=N" or "error=<line>") and the
-- examples of scripts/examples/, all run against the real PostgreSQL.
local tarry = require "tarry"
local db = require "support.db"
local build = require "support.build"
local process = require "support.process"

local q = db.shell_quote

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local function bin(name) return build.dir .. "/bin/" .. name end

--- Run the probe: its output lines. path: defer, start, commit or rollback; extra: "k=v" strings.
local function probe(path, conninfo, task, args, ...)
  local words = { bin("client_probe"), path, q(conninfo), q(task), q(args) }
  for _, w in ipairs { ... } do words[#words + 1] = q(w) end
  local ok, out = run(table.concat(words, " "))
  assert(ok, out)
  local lines = {}
  for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

local function count(name, where)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs" .. (where and (" WHERE " .. where) or "")))
end

local function row(name, id)
  return db.rows(name, "SELECT queue_name, task_name, priority, lock, queueing_lock, args::text, "
    .. "extract(epoch FROM scheduled_at)::bigint, status FROM procrastinate_jobs WHERE id = " .. id)[1]
end

describe("libtarry.so", function()
  local lib = build.dir .. "/lib/libtarry.so"

  it("has no Lua in its ABI: it references no Lua symbol and exports only tarry_* functions", function()
    local ok, undefined = run("nm -D --undefined-only " .. lib)
    assert(ok, undefined)
    assert.is_nil(undefined:match("lua"), undefined)
    assert.is_not_nil(undefined:match("PQexecParams"))
    local _, defined = run("nm -D --defined-only " .. lib .. " | awk '$2 == \"T\" { print $3 }'")
    for name in defined:gmatch("[^\n]+") do assert.is_not_nil(name:match("^tarry_"), name) end
    assert.is_not_nil(defined:match("tarry_defer_on\n"))
    local _, ldd = run("ldd " .. lib)
    assert.is_nil(ldd:match("liblua"), ldd)
  end)

  it("is installed with tarry_client.h by cmake --install; -ltarry links it from the prefix", function()
    local prefix = os.tmpname()
    os.remove(prefix)
    local ok, out = run(string.format("cmake --install %s --prefix %s", build.dir, prefix))
    assert(ok, out)
    assert.is_truthy(io.open(prefix .. "/include/tarry_client.h"))
    assert.is_truthy(io.open(prefix .. "/lib/libtarry.a"), "the static library stays")
    local f = assert(io.open(prefix .. "/down.c", "w"))
    f:write([[
#include <stdio.h>
#include <tarry_client.h>
int main(void)
{
    char err[512];
    tarry_client *c = tarry_client_open("host=127.0.0.1 port=1 connect_timeout=2", 1, err, sizeof err);
    printf("%s\n", c ? "open" : err);
    tarry_client_close(c);
    return 0;
}
]])
    f:close()
    local cache = io.open(build.dir .. "/CMakeCache.txt"):read("a")
    local sanitize = cache:match("CMAKE_BUILD_TYPE:STRING=Sanitize") and "-fsanitize=address,undefined " or ""
    ok, out = run(string.format("cc -Wall -Wextra -Werror -std=c99 -pedantic %s-I%s/include -o %s/down %s/down.c "
      .. "-L%s/lib -ltarry -Wl,-rpath,%s/lib && %s/down", sanitize, prefix, prefix, prefix, prefix, prefix, prefix))
    assert(ok, out)
    assert.is_not_nil(out:match("^connection: cannot connect to PostgreSQL: "), out)
    local _, ldd = run("ldd " .. prefix .. "/down")
    assert.is_not_nil(ldd:find(prefix .. "/lib/libtarry.so", 1, true), ldd)
    os.execute("rm -rf " .. prefix)
  end)
end)

describe("tarry_defer (blocking, any thread)", function()
  local name, conninfo
  before_each(function() name = db.fresh(); conninfo = db.conninfo(name) end)
  after_each(function() db.drop(name) end)

  it("inserts the job with every option exactly as the Lua task:defer does", function()
    local c = probe("defer", conninfo, "add", '{"a": 1, "b": [2, 3.5], "s": "é"}', "queue=math", "lock=L",
      "qlock=Q", "priority=7", "at=2000000000")
    local id = assert(c[1]:match("^id=(%d+)$"), c[1])
    local app = tarry.App{ connector = tarry.PgConnector{ conninfo = conninfo } }
    local lua_id = app:configure_task("add", { queue = "math", lock = "L", queueing_lock = "Q2", priority = 7,
      schedule_at = 2000000000 }):defer{ a = 1, b = { 2, 3.5 }, s = "é" }
    local from_c, from_lua = row(name, id), row(name, lua_id)
    assert.are.same({ "math", "add", "7", "L", "Q", '{"a": 1, "b": [2, 3.5], "s": "é"}', "2000000000", "todo" }, from_c)
    from_lua[5] = "Q"
    assert.are.same(from_lua, from_c)
    local function events(job)
      return db.value(name, "SELECT string_agg(type::text, ',' ORDER BY id) FROM procrastinate_events WHERE job_id = " .. job)
    end
    assert.are.equal(events(lua_id), events(id))
    assert.is_not_nil(events(id):match("deferred"))
  end)

  it("uses the defaults for NULL options and NULL args: queue default, priority 0, now, {}", function()
    local c = probe("defer", conninfo, "ping", "NULL")
    local id = assert(c[1]:match("^id=(%d+)$"), c[1])
    assert.are.same({ "default", "ping", "0", "", "", "{}", "", "todo" }, row(name, id))
  end)

  it("refuses args_json that is not one JSON object, with invalid_args, inserting nothing", function()
    for args, why in pairs {
      ["[1, 2]"] = "args_json must be a JSON object, got an array",
      ['"text"'] = "args_json must be a JSON object, got a string",
      ["{\"a\": "] = "args_json is not valid JSON: ",
      ['{"a": 1, "a": 2}'] = "args_json is not valid JSON: duplicate object key",
      ['{"a": "\\u0000"}'] = "args_json is not valid JSON: ",
      ['{"a": 1} x'] = "args_json is not valid JSON: end of file expected",
    } do
      local c = probe("defer", conninfo, "add", args)
      assert.are.equal("error=invalid_args: " .. why, c[1]:sub(1, #why + 20), args)
      c = probe("start", conninfo, "add", args)
      assert.are.equal("error=invalid_args: " .. why, c[1]:sub(1, #why + 20), args)
    end
    assert.are.equal(0, count(name))
  end)

  it("refuses a job the database could not store, with invalid_job, inserting nothing", function()
    local c = probe("defer", conninfo, "", "{}")
    assert.are.equal("error=invalid_job: task name must be valid UTF-8 of 1 to 128 characters", c[1])
    c = probe("defer", conninfo, "add", "{}", "queue=" .. string.rep("q", 41))
    assert.is_not_nil(c[1]:match("^error=invalid_job: queue name \"q+\" must be valid UTF%-8 of 1 to 40 bytes"), c[1])
    c = probe("defer", conninfo, "add", "{}", "lock=" .. string.rep("l", 1001))
    assert.are.equal("error=invalid_job: lock has 1001 bytes, more than the 1000 allowed (it is a key of a "
      .. "PostgreSQL index)", c[1])
    assert.are.equal(0, count(name))
  end)

  it("reports already_enqueued when a waiting job holds the queueing lock", function()
    local c = probe("defer", conninfo, "report", "{}", "qlock=nightly", "count=2")
    assert.is_not_nil(c[1]:match("^id=%d+$"), c[1])
    assert.are.equal("error=already_enqueued: a job with the same queueing lock is already waiting "
      .. "(Key (queueing_lock)=(nightly) already exists.) (SQLSTATE 23505)", c[2])
    assert.are.equal(1, count(name))
  end)

  it("replaces a pooled connection the server closed (a restart, pg_terminate_backend)", function()
    local c = probe("defer", conninfo, "add", '{"n": 1}', "count=3", "terminate=1")
    for i = 1, 3 do assert.is_not_nil(c[i]:match("^id=%d+$"), c[i]) end
    assert.are.equal(3, count(name))
  end)

  it("says connection: in one line when the database is down", function()
    local c = probe("defer", "host=127.0.0.1 port=1 connect_timeout=2 password=s3cret", "add", "{}")
    assert.is_not_nil(c[1]:match("^error=connection: cannot connect to PostgreSQL: .*127%.0%.0%.1.*port 1"), c[1])
    assert.is_nil(c[1]:find("s3cret", 1, true))
    assert.are.equal(1, #c)
  end)
end)

describe("tarry_defer_start (non-blocking, stepped)", function()
  local name, conninfo
  before_each(function() name = db.fresh(); conninfo = db.conninfo(name) end)
  after_each(function() db.drop(name) end)

  it("inserts the job through tarry_client_step with the same columns as tarry_defer", function()
    local a = probe("start", conninfo, "add", '{"x": 1}', "queue=q1", "lock=L", "qlock=K1", "priority=-3", "at=1900000000")
    local b = probe("defer", conninfo, "add", '{"x": 1}', "queue=q1", "lock=L", "qlock=K2", "priority=-3", "at=1900000000")
    local ra, rb = row(name, assert(a[1]:match("^id=(%d+)$"), a[1])), row(name, assert(b[1]:match("^id=(%d+)$")))
    assert.are.same({ "q1", "add", "-3", "L", "K1", '{"x": 1}', "1900000000", "todo" }, ra)
    rb[5] = "K1"
    assert.are.same(rb, ra)
  end)

  it("fails only the job whose queueing lock is taken, and completes the others", function()
    local c = probe("start", conninfo, "report", "{}", "qlock=once", "count=3")
    assert.is_not_nil(c[1]:match("^id=%d+$"), c[1])
    assert.is_not_nil(c[2]:match("^error=already_enqueued: "), c[2])
    assert.is_not_nil(c[3]:match("^error=already_enqueued: "), c[3])
    assert.is_not_nil(probe("start", conninfo, "other", "{}")[1]:match("^id=%d+$"))
    assert.are.equal(2, count(name))
  end)

  it("reconnects after the server closed its idle connection", function()
    local c = probe("start", conninfo, "add", "{}", "count=3", "terminate=1")
    for i = 1, 3 do assert.is_not_nil(c[i]:match("^id=%d+$"), c[i]) end
    assert.are.equal(3, count(name))
  end)
end)

-- The server goes down under an open client, then comes back: each path says "connection:" in
-- one line while it is down, and defers again once it is back (nothing to reopen).
describe("a client whose database goes down and comes back", function()
  local name, conninfo
  before_each(function() name = db.fresh(); conninfo = db.conninfo(name) end)
  after_each(function()
    process.kill_all()
    if not db.try_value("postgres", "SELECT 1") then db.server("start") end
    db.drop(name)
  end)

  for _, path in ipairs { "defer", "start" } do
    it("fails with connection: while it is down and defers again after (" .. path .. ")", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      local p = process.spawn(table.concat({ bin("client_probe"), path, q(conninfo), "add", q("{}"), "count=3",
        "pause=" .. dir }, " "))
      p:wait_for("^id=%d+$", 1, 30)
      db.server("stop")
      assert(os.execute("touch " .. dir .. "/1"))
      p:wait_for("^error=", 1, 30)
      db.server("start")
      assert(os.execute("touch " .. dir .. "/2"))
      assert.are.equal(0, p:wait(30))
      local lines = {}
      for line in p:output():gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.are.equal(3, #lines, p:output())
      assert.is_not_nil(lines[2]:match("^error=connection: "), lines[2])
      assert.is_nil(lines[2]:find("\n"))
      assert.is_not_nil(lines[3]:match("^id=%d+$"), lines[3])
      assert.are.equal(2, count(name))
      os.execute("rm -rf " .. dir)
    end)
  end
end)

describe("tarry_defer_on (the host's own connection and transaction)", function()
  local name, conninfo
  before_each(function()
    name = db.fresh()
    conninfo = db.conninfo(name)
    db.psql(name, "CREATE TABLE orders (id int PRIMARY KEY)")
  end)
  after_each(function() db.drop(name) end)

  it("leaves neither the business row nor the job after ROLLBACK", function()
    local c = probe("rollback", conninfo, "ship", '{"order": 1}', "sql=INSERT INTO orders VALUES (1)")
    assert.is_not_nil(c[1]:match("^id=%d+$"), c[1])
    assert.are.equal("rollback=ROLLBACK", c[2])
    assert.are.equal(0, count(name))
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM orders"))
  end)

  it("commits both together with COMMIT", function()
    local c = probe("commit", conninfo, "ship", '{"order": 2}', "sql=INSERT INTO orders VALUES (2)", "queue=shipping")
    local id = assert(c[1]:match("^id=(%d+)$"), c[1])
    assert.are.equal("commit=COMMIT", c[2])
    assert.are.same({ "shipping", "ship", "0", "", "", '{"order": 2}', "", "todo" }, row(name, id))
    assert.are.equal("1", db.value(name, "SELECT count(*) FROM orders"))
  end)

  it("refuses bad args without touching the transaction", function()
    local c = probe("commit", conninfo, "ship", "[]", "sql=INSERT INTO orders VALUES (3)")
    assert.are.equal("error=invalid_args: args_json must be a JSON object, got an array", c[1])
    assert.are.equal("commit=COMMIT", c[2])
    assert.are.equal("1", db.value(name, "SELECT count(*) FROM orders"))
    assert.are.equal(0, count(name))
  end)
end)

describe("the C client's examples (scripts/examples/)", function()
  local name, conninfo
  before_each(function() name = db.fresh(); conninfo = db.conninfo(name) end)
  after_each(function() db.drop(name) end)

  it("frame_loop.c defers one job per frame at 60 Hz and prints the frame-time distribution", function()
    local ok, out = run(build.dir .. "/examples/frame_loop " .. q(conninfo) .. " 2")
    assert(ok, out)
    assert.is_not_nil(out:match("frames 120, deferred 120, failed 0, still pending 0\n"), out)
    assert.is_not_nil(out:match("time in tarry per frame: p50 [%d.]+ ms, p99 [%d.]+ ms, max [%d.]+ ms\n"), out)
    -- No timing threshold: the kernel's count of this thread's voluntary context switches
    -- during the tarry calls says whether one of them waited.
    assert.is_not_nil(out:match("\nframes in which tarry blocked: 0 %(preempted by the kernel: %d+%)\n"), out)
    io.stderr:write("\n", out)
    assert.are.equal(120, count(name, "queue_name = 'frames' AND task_name = 'game.frame'"))
    assert.are.equal("0 119 120", db.value(name, "SELECT min((args->>'frame')::int) || ' ' || "
      .. "max((args->>'frame')::int) || ' ' || count(DISTINCT args->>'frame') FROM procrastinate_jobs"))
  end)

  -- In scripts/test's ThreadSanitizer pass this runs build-tsan's executable (every report fatal).
  it("threads.c: 8 threads x 1000 defers through one client, every job once #tsan", function()
    local exe = (build.tsan and build.tsan_dir or build.dir) .. "/examples/threads"
    local ok, out = run(build.env_prefix() .. exe .. " " .. q(conninfo) .. " 8 1000 8")
    assert(ok, out)
    assert.is_not_nil(out:match("^8 threads x 1000 defers: 8000 jobs in [%d.]+ s %(%d+ jobs/s%), 0 failed\n$"), out)
    io.stderr:write("\n", out)
    assert.are.equal(8000, count(name, "queue_name = 'threads'"))
    assert.are.same({ { "8", "1000", "0", "7" } }, db.rows(name, "SELECT count(DISTINCT args->>'thread'), "
      .. "count(DISTINCT args->>'i'), min(priority), max(priority) FROM procrastinate_jobs"))
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM (SELECT args FROM procrastinate_jobs "
      .. "GROUP BY args HAVING count(*) > 1) d"))
  end)

  it("threads.c start: 8 threads x 1000 tarry_defer_start while the main thread steps, every job once #tsan", function()
    local exe = (build.tsan and build.tsan_dir or build.dir) .. "/examples/threads"
    local ok, out = run(build.env_prefix() .. exe .. " " .. q(conninfo) .. " 8 1000 8 start")
    assert(ok, out)
    assert.is_not_nil(out:match("^8 threads x 1000 defer_starts: 8000 jobs in [%d.]+ s %(%d+ jobs/s%), 0 failed\n$"), out)
    io.stderr:write("\n", out)
    -- every tenth handle was freed while pending: its job is in all the same
    assert.are.equal(8000, count(name, "queue_name = 'threads'"))
    assert.are.equal("8000", db.value(name, "SELECT count(DISTINCT args) FROM procrastinate_jobs"))
  end)

  it("luajit_ffi.lua defers through libtarry.so from LuaJIT's FFI", function()
    -- Under the sanitizer build the library is instrumented: luajit needs the runtimes preloaded.
    local preload = os.getenv("TARRY_SANITIZER_PRELOAD")
    local ok, out = run((preload and ("LD_PRELOAD=" .. q(preload) .. " ") or "") .. "luajit scripts/examples/luajit_ffi.lua "
      .. q(conninfo) .. " " .. q(build.dir .. "/lib/libtarry.so"))
    assert(ok, out)
    assert.is_not_nil(out:match("^defer: id=%d+\nsame queueing lock: error=already_enqueued: .*\nbad args: "
      .. "error=invalid_args: args_json must be a JSON object, got an array\ndefer_start: id=%d+\n$"), out)
    assert.are.same({ { "luajit", "editor.save", "5", "ffi-once", '{"file": "init.lua", "lines": 42}' },
      { "default", "editor.autosave", "0", "", '{"n": 1}' } },
      db.rows(name, "SELECT queue_name, task_name, priority, queueing_lock, args::text FROM procrastinate_jobs ORDER BY id"))
  end)
end)

describe("README's C client example", function()
  it("compiles against tarry_client.h, links -ltarry and prints what README says", function()
    local f = assert(io.open("README.md"))
    local text = f:read("a")
    f:close()
    local section = assert(text:match("### The C client: libtarry.so\n(.-)\n## "))
    local code = assert(section:match("```c\n(.-)```"))
    local name = db.fresh()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local out = assert(io.open(dir .. "/app.c", "w"))
    out:write((code:gsub("dbname=jobs", db.conninfo(name))))
    out:close()
    local cache = io.open(build.dir .. "/CMakeCache.txt"):read("a")
    local sanitize = cache:match("CMAKE_BUILD_TYPE:STRING=Sanitize") and "-fsanitize=address,undefined " or ""
    local ok, log = run(string.format("cc -Wall -Wextra -Werror %s-Iruntime/client -o %s/app %s/app.c -L%s/lib -ltarry "
      .. "-Wl,-rpath,%s/lib", sanitize, dir, dir, build.dir, build.dir))
    assert(ok, log)
    ok, log = run(dir .. "/app")
    assert(ok, log)
    assert.is_not_nil(log:match("^already_enqueued: a job with the same queueing lock is already waiting "
      .. "%(Key %(queueing_lock%)=%(digest%) already exists%.%) %(SQLSTATE 23505%)\ninvalid_args: args_json must "
      .. "be a JSON object, got an array\nautosave job %d+\n$"), log)
    assert.is_not_nil(section:find(log:match("^[^\n]+"), 1, true), "README quotes the output")
    assert.are.equal(2, count(name))
    os.execute("rm -rf " .. dir)
    db.drop(name)
  end)
end)
