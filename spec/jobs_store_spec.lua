-- The job store interface (tarry/store.lua) and how tarry tells its objects apart: core.type
-- looks at the metatable, as io.type does, never at what tostring prints.
local tarry = require "tarry"
local core = require "tarry.core"
local Store = require "tarry.store"
local PgJobs = require "tarry.pg_jobs"
local error_of = require("support.expect").error_of

describe("core.type", function()
  it("names each tarry object by its metatable", function()
    local pg = tarry.PgConnector{ conninfo = "dbname=never_used" }
    local app = tarry.App{ connector = pg }
    assert.are.equal("PgConnector", core.type(pg))
    assert.are.equal("SyncPgConnector", core.type(tarry.SyncPgConnector{ conninfo = "dbname=never_used" }))
    assert.are.equal("MemoryConnector", core.type(tarry.MemoryConnector()))
    assert.are.equal("App", core.type(app))
    assert.are.equal("JobManager", core.type(app.jobs))
    assert.are.equal("Event", core.type(tarry.Event()))
    assert.are.equal("Error", core.type(core.error("x", "y")))
    assert.are.equal("CronSchedule", core.type(require("tarry.cron").parse("* * * * *")))
  end)

  it("is nil for everything else, whatever it calls itself", function()
    local lookalike = setmetatable({}, { __name = "tarry.PgConnector",
      __tostring = function() return "<tarry.PgConnector dbname=x, closed>" end })
    assert.is_nil(core.type(lookalike))
    assert.is_nil(core.type({}))
    assert.is_nil(core.type("PgConnector"))
    assert.is_nil(core.type(42))
    assert.is_nil(core.type(io.stdout))
    assert.is_nil(core.type(tarry.array()))          -- a marker, not an object
    assert.is_nil(core.type(tarry.null))
  end)

  it("needs an argument", function()
    assert.matches("bad argument #1 to '[%w.]*type' %(value expected%)", error_of(core.type))
  end)

  it("knows a type written in Lua once its metatable is made with core.newmetatable", function()
    local mt = core.newmetatable("tarry.SpecThing")
    assert.are.equal(mt, core.newmetatable("tarry.SpecThing"))
    assert.are.equal("tarry.SpecThing", mt.__name)
    assert.are.equal("SpecThing", core.type(setmetatable({}, mt)))
  end)
end)

describe("Store.of", function()
  it("gives the PostgreSQL store for both C connectors", function()
    assert.are.equal(PgJobs, getmetatable(Store.of(tarry.PgConnector{ conninfo = "dbname=never_used" })))
    assert.are.equal(PgJobs, getmetatable(Store.of(tarry.SyncPgConnector{ conninfo = "dbname=never_used" })))
  end)

  it("gives a connector's own job_store() otherwise, and refuses what has none", function()
    local memory = tarry.MemoryConnector()
    local store = Store.of(memory)
    assert.are.equal(memory, store.conn)
    local mine = { job_store = function() return "my store" end }
    assert.are.equal("my store", Store.of(mine))
    assert.matches("jobs_store_spec%.lua:%d+: no job store for this connector",
      error_of(function() Store.of({ defer_jobs = function() end }, 1) end))
  end)
end)

describe("both job stores", function()
  local stores = {
    PostgreSQL = Store.of(tarry.PgConnector{ conninfo = "dbname=never_used" }),
    MemoryConnector = Store.of(tarry.MemoryConnector()),
  }
  for name, store in pairs(stores) do
    it("implement every method of the interface: " .. name, function()
      local missing = {}
      for _, m in ipairs(Store.METHODS) do
        if type(store[m]) ~= "function" then missing[#missing + 1] = m end
      end
      assert.are.same({}, missing)
    end)
  end
end)
