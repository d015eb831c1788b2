-- The `code` of an error object says what failed: a query PostgreSQL refuses on a live connection
-- is "database" (with its SQLSTATE), only a lost or unreachable server is "connection".
local tarry = require "tarry"
local db = require "support.db"

describe("a query with the wrong number of parameters", function()
  local name
  before_each(function() name = db.fresh() end)
  after_each(function() db.drop(name) end)

  local function check(err)
    assert.is_true(tarry.is_error(err))
    assert.are.equal("database", err.code)
    assert.are.equal("08P01", err.sqlstate)   -- protocol_violation, yet the connection is fine
    assert.matches("parameter", err.message)
  end

  it("is a database error (SQLSTATE 08P01), not a connection error, and the connection still works", function()
    for _, kind in ipairs { "SyncPgConnector", "PgConnector" } do
      local c = tarry[kind]{ conninfo = db.conninfo(name) }
      local ok, err = pcall(c.execute, c, "SELECT $1::int + $2::int AS n", 1)
      assert.is_false(ok, kind)
      check(err)
      assert.are.equal(3, c:execute("SELECT $1::int + $2::int AS n", 1, 2)[1].n)
      c:close()
    end
  end)

  it("is a database error on the async pool too", function()
    local app = tarry.App{ connector = tarry.PgConnector{ conninfo = db.conninfo(name) } }
    local opened <close> = app:open()
    local h = app:spawn(function()
      assert.is_true(tarry.in_coroutine())
      return pcall(app.connector.execute, app.connector, "SELECT $1::int + $2::int AS n", 1)
    end)
    local ok, err = h:result()
    assert.is_false(ok)
    check(err)
  end)
end)
