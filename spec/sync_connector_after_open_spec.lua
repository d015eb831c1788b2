-- Procrastinate's rule for synchronous calls (issue 13): before the app is opened,
-- get_sync_connector() gives a synchronous connector; once it is opened, the async connector
-- itself, whose blocking calls borrow an idle pooled connection, so no second pool opens.
local tarry = require "tarry"
local db = require "support.db"

local function server_connections(name)
  return tonumber(db.value(name, "SELECT count(*) FROM pg_stat_activity WHERE datname = '" .. name ..
    "' AND pid <> pg_backend_pid()"))
end

local function jobs(name)
  return tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
end

describe("PgConnector:get_sync_connector()", function()
  local name, app
  before_each(function()
    name = db.fresh()
    app = tarry.App{ connector = tarry.PgConnector{ conninfo = db.conninfo(name), min_size = 1, max_size = 4 } }
    app:task("add", function(args) return args.a + args.b end)
  end)
  after_each(function() app:close(); db.drop(name) end)

  it("is a SyncPgConnector before open, the connector itself after, a sync one again after close", function()
    local before = app.connector:get_sync_connector()
    assert.matches("^<tarry.SyncPgConnector", tostring(before))
    assert.are.equal(before, app.connector:get_sync_connector())      -- made once
    app:open()
    assert.are.equal(app.connector, app.connector:get_sync_connector())
    assert.are.equal("PgConnector", tarry.type(app.connector:get_sync_connector()))
    assert.are.equal("SyncPgConnector", tarry.type(before))
    assert.is_nil(tarry.type(setmetatable({}, { __tostring = function() return "<tarry.PgConnector x>" end })))
    app:close()
    local after = app.connector:get_sync_connector()
    assert.matches("^<tarry.SyncPgConnector", tostring(after))
    assert.are.equal(after, app.connector:get_sync_connector())
  end)

  it("after open, serves with_connector(get_sync_connector()) from the main thread, a C boundary and a " ..
     "tarry coroutine without opening a second pool", function()
    app:open()
    assert.are.equal(1, server_connections(name))                      -- min_size
    local sync_app = app:with_connector(app.connector:get_sync_connector())
    local add = sync_app.tasks.add
    local main_id = add:defer{ a = 1, b = 1 }                          -- main thread: blocking
    local sorted = { 3, 1, 2 }
    local in_sort
    table.sort(sorted, function(x, y)                                  -- cannot yield here
      in_sort = in_sort or add:defer{ a = 2, b = 2 }
      return x < y
    end)
    local h = app:spawn(function() return add:defer{ a = 3, b = 3 } end)  -- parks this coroutine only
    app:run()
    assert.is_true(math.type(main_id) == "integer" and math.type(in_sort) == "integer")
    assert.are.equal(main_id + 2, h:result())
    assert.are.equal(3, jobs(name))
    assert.are.equal(1, server_connections(name))                      -- still the one pooled connection
    assert.matches("open, 1/4 connections", tostring(app.connector))
  end)

  it("prints what serves the blocking calls of a connector that was never opened", function()
    assert.matches("not open>$", tostring(app.connector))
    app.tasks.add:defer{ a = 1, b = 2 }
    assert.matches("not open; blocking calls: 1/4 connections>$", tostring(app.connector))
  end)
end)
