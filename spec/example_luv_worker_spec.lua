-- scripts/examples/luv_worker.lua, the README's example of driving tarry from a luv loop: run as
-- its own lua5.4 process against a test database, it defers its jobs, runs them with a worker it
-- drives through uv.new_poll(app:pollfd()) and a timer from app:timeout(), and exits.
local db = require "support.db"

local root = io.popen("pwd"):read("l")
local build = os.getenv("TARRY_BUILD_DIR") or (root .. "/build")

-- Run the example; returns whether it exited 0, and what it printed.
local function run_example(name, jobs)
  local preload = os.getenv("TARRY_SANITIZER_PRELOAD")   -- the sanitizer build's core.so needs it
  local cmd = string.format("%sLUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/lib/?.so;;' " ..
    "timeout 120 lua5.4 scripts/examples/luv_worker.lua %s %d 2>&1",
    preload and ("LD_PRELOAD='" .. preload .. "' ") or "", root, root, build,
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
    local ok, out = run_example(name, 20)
    assert(ok, out)
    assert.matches("luv_worker: 20 jobs succeeded", out)
    assert.are.same({ { "greet", "succeeded", "20" } },
      db.rows(name, "SELECT task_name, status, count(*) FROM procrastinate_jobs GROUP BY 1, 2"))
    assert.are.equal("4", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE scheduled_at IS NOT NULL"))
    assert.are.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_workers"))   -- stopped cleanly
  end)
end)
