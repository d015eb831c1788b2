-- Every ```lua example in README.md runs, as written, against a fresh database
-- (its "dbname=jobs" pointed at the test database).
local db = require "support.db"

local function lua_blocks()
  local f = assert(io.open("README.md"))
  local text = f:read("a")
  f:close()
  local blocks = {}
  for code in text:gmatch("```lua\n(.-)```") do blocks[#blocks + 1] = code end
  return blocks
end

describe("README.md examples", function()
  local blocks = lua_blocks()

  it("are there", function()
    assert.is_true(#blocks >= 5)
  end)

  for i, code in ipairs(blocks) do
    local first = code:match("[^\n]*\n[^\n]*\n[^\n]*"):gsub("\n", " ")
    it("example " .. i .. " runs: " .. first:sub(1, 60), function()
      local name = db.fresh()
      local src = code:gsub("dbname=jobs", db.conninfo(name))
      local chunk = assert(load(src, "=README example " .. i))
      local real_print = print
      _G.print = function() end             -- the examples print for the reader, not for the spec
      local ok, err = pcall(chunk)
      _G.print = real_print
      db.drop(name)
      assert(ok, tostring(err))
    end)
  end
end)
