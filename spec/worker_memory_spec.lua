-- What a `tarry worker` process keeps loaded: the modules it runs, not the command line's parser or
-- the connectors and features its app does not use (scripts/memory_report shows the memory).
local db = require "support.db"
local proc = require "support.process"

-- A task that writes the names of the loaded modules to `path`, one a line.
local function loaded_task(path)
  return string.format([[
app:task("loaded", function()
  local f = assert(io.open(%q, "w"))
  for name in pairs(package.loaded) do f:write(name, "\n") end
  f:close()
end)
]], path)
end

local function modules_of_worker(name, app_body, out)
  local app = proc.app_file(name, app_body)
  local w = proc.start("worker --app " .. app .. " --fetch-job-polling-interval 0.2")
  db.value(name, "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'loaded', 0, NULL, NULL, '{}'::jsonb, NULL)"
    .. "::procrastinate_job_to_defer_v1])")
  proc.until_true(function()
    return db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'") == "1"
  end, 30, "the job to succeed")
  w:signal("TERM")
  assert.are.equal(0, w:wait())
  local set = {}
  for line in proc.read(out):gmatch("[^\n]+") do set[line] = true end
  return set
end

describe("tarry worker's loaded modules", function()
  local name, out
  before_each(function() name = db.fresh(); out = os.tmpname() end)
  after_each(function() proc.kill_all(); db.drop(name); os.remove(out) end)

  it("leaves out the command-line parser, the MemoryConnector, the HostConnector and cron", function()
    local loaded = modules_of_worker(name, loaded_task(out), out)
    assert.is_true(loaded["tarry.worker"])
    for _, m in ipairs { "argparse", "tarry.cli_parser", "tarry.memory", "tarry.host_connector", "tarry.cron" } do
      assert.is_nil(loaded[m], m .. " is loaded")
    end
  end)

  it("loads cron for an app with a schedule", function()
    local body = loaded_task(out) .. 'app:task("tick", { cron = "0 0 1 1 *" }, function() end)\n'
    assert.is_true(modules_of_worker(name, body, out)["tarry.cron"])
  end)
end)
