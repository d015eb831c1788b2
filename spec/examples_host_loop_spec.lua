-- The README's examples of driving tarry from another event loop, each run as its own lua5.4
-- process against a test database: they defer their jobs, run them with a worker they drive
-- through app:pollfd() and app:timeout(), and exit.
--   scripts/examples/luv_worker.lua       uv.new_poll(app:pollfd()) and a uv timer
--   scripts/examples/cqueues_worker.lua   cqueues.poll(app): the app is pollable as cqueues means it
local db = require "support.db"

local root = io.popen("pwd"):read("l")
local build = os.getenv("TARRY_BUILD_DIR") or (root .. "/build")

-- Run an example; returns whether it exited 0, and what it printed.
local function run_example(script, name, jobs)
  local preload = os.getenv("TARRY_SANITIZER_PRELOAD")   -- the sanitizer build's core.so needs it
  local cmd = string.format("%sLUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/lib/?.so;;' " ..
    "timeout 120 lua5.4 scripts/examples/%s %s %d 2>&1",
    preload and ("LD_PRELOAD='" .. preload .. "' ") or "", root, root, build, script,
    db.shell_quote(db.conninfo(name)), jobs)
  local p = io.popen(cmd)
  local out = p:read("a")
  return p:close(), out
end

describe("the luv example (scripts/examples/luv_worker.lua)", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("runs every job it deferred, some scheduled for later, then exits on its own", function()
    local ok, out = run_example("luv_worker.lua", name, 20)
    assert(ok, out)
    assert.matches("luv_worker: 20 jobs succeeded", out)
    assert.are.same({ { "greet", "succeeded", "20" } },
      db.rows(name, "SELECT task_name, status, count(*) FROM procrastinate_jobs GROUP BY 1, 2"))
    assert.are.equal("4", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE scheduled_at IS NOT NULL"))
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_workers"))   -- stopped cleanly
  end)
end)

describe("the cqueues example (scripts/examples/cqueues_worker.lua)", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  it("runs every job it deferred beside the host's own coroutine, then exits on its own", function()
    local ok, out = run_example("cqueues_worker.lua", name, 20)
    assert(ok, out)
    assert.matches("cqueues_worker: 20 jobs succeeded, .* %(the host ticked too%)", out)
    assert.are.same({ { "greet", "succeeded", "20" } },
      db.rows(name, "SELECT task_name, status, count(*) FROM procrastinate_jobs GROUP BY 1, 2"))
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_workers"))
  end)
end)
