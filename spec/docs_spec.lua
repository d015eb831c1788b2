-- scripts/docs builds the LDoc API reference from lua/tarry/*.lua without a single warning.
describe("the API reference", function()
  it("builds with scripts/docs, warning-free, one page per module", function()
    local dir = os.tmpname()
    os.remove(dir)
    local p = io.popen("bash scripts/docs " .. dir .. " 2>&1")
    local out = p:read("a")
    local ok = p:close()
    assert(ok, out)
    assert.are.equal(dir .. "/index.html\n", out)
    for _, page in ipairs { "tarry", "tarry.cli", "tarry.schema", "tarry.memory", "tarry.task" } do
      local f = io.open(dir .. "/modules/" .. page .. ".html")
      assert.is_truthy(f, page)
      f:close()
    end
    os.execute("rm -rf " .. dir)
  end)
end)
