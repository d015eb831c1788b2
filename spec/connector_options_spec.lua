-- Connector options are checked as tarry.App{} checks its own: a typo is refused at the caller's
-- line, naming the options that exist, instead of silently connecting to libpq's defaults.
local tarry = require "tarry"

local HERE = "connector_options_spec.lua:%d+: "

describe("a connector given an option it does not know", function()
  it("is refused for PgConnector and SyncPgConnector, naming the known options", function()
    for _, kind in ipairs { "PgConnector", "SyncPgConnector" } do
      local ok, err = pcall(function() local c = tarry[kind]{ connifo = "dbname=jobs", max_size = 2 }; return c end)
      assert.is_false(ok)
      assert.matches(HERE .. "tarry%." .. kind .. ": unknown option 'connifo' %(known: conninfo, min_size, "
        .. "max_size, connect_timeout, query_timeout", err)
      ok, err = pcall(function() local c = tarry[kind]{ conninfo = "dbname=jobs", max_sise = 2 }; return c end)
      assert.matches("unknown option 'max_sise'", err)
      ok, err = pcall(function() local c = tarry[kind]{ "dbname=jobs" }; return c end)
      assert.matches("unknown option '1'", err)
    end
  end)

  it("is refused for the MemoryConnector, which takes none", function()
    local ok, err = pcall(function() local c = tarry.MemoryConnector{ jobs = {} }; return c end)
    assert.is_false(ok)
    assert.matches(HERE .. "tarry%.MemoryConnector: unknown option 'jobs' %(it takes none%)", err)
    assert.matches("MemoryConnector 0 jobs", tostring(tarry.MemoryConnector {}))
  end)

  it("accepts every documented option, query_timeout included", function()
    local c = tarry.PgConnector{ conninfo = "dbname=jobs", min_size = 0, max_size = 2, connect_timeout = 3,
      query_timeout = 10 }
    assert.matches("^<tarry%.PgConnector dbname=jobs", tostring(c))
    c = tarry.SyncPgConnector{ conninfo = "dbname=jobs", min_size = 0, max_size = 2, connect_timeout = 3,
      query_timeout = 10 }
    assert.matches("^<tarry%.SyncPgConnector dbname=jobs", tostring(c))
  end)
end)
