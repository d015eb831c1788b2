-- The inputs scripts/fuzz kept (spec/fixtures/fuzz/<target>/, minimised by libFuzzer), replayed
-- through the same code on every run of the suite: the JSON decoder and its round trip, and the
-- command-line parser. Each input either works or is refused with a clean error, never a crash.
local tarry = require "tarry"
local cli = require "tarry.cli"

local FIXTURES = "spec/fixtures/fuzz/"

local function inputs(target)
  local files = {}
  local p = assert(io.popen("ls -1 " .. FIXTURES .. target))
  for name in p:lines() do files[#files + 1] = FIXTURES .. target .. "/" .. name end
  p:close()
  table.sort(files)
  return files
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Equal as decoded JSON: integers exactly, floats bit for bit, arrays still marked as arrays.
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false end
    return math.type(a) == "integer" and a == b or string.pack("<d", a) == string.pack("<d", b)
  end
  if type(a) ~= "table" then return rawequal(a, b) end
  if tarry.is_array(a) ~= tarry.is_array(b) then return false end
  for k, v in pairs(a) do
    if not same(v, rawget(b, k)) then return false end
  end
  for k in pairs(b) do
    if rawget(a, k) == nil then return false end
  end
  return true
end

-- What the encoder refuses of decoded JSON, by design: NUL bytes (jsonb has no \u0000) and
-- nesting deeper than it encodes.
local function documented_refusal(err)
  return type(err) == "string" and (err:find(": NUL byte in ", 1, true) or err:find(": nested too deep", 1, true))
end

describe("the JSON inputs the fuzzers kept", function()
  for _, target in ipairs { "json_decode", "json_roundtrip" } do
    local files = inputs(target)

    it(target .. ": there are some (scripts/fuzz keeps them)", function()
      assert.is_true(#files > 0)
    end)

    it(target .. ": each decodes, or is refused with an \"invalid JSON\" message", function()
      for _, path in ipairs(files) do
        local ok, value = pcall(tarry.json.decode, read(path))
        if not ok then
          assert.are.equal("string", type(value), path)
          assert.matches("^invalid JSON: .+ %(line %d+, column %d+%)$", value, nil, path)
        else
          assert.are_not.equal(nil, value, path)
        end
      end
    end)

    it(target .. ": what decodes comes back equal through encode and decode, or is refused as documented", function()
      for _, path in ipairs(files) do
        local ok, value = pcall(tarry.json.decode, read(path))
        if ok then
          local encoded, text = pcall(tarry.json.encode, value)
          if encoded then
            local again = tarry.json.decode(text)
            assert.is_true(same(value, again), path .. " encoded as " .. text)
            assert.are.equal(text, tarry.json.encode(again), path)
          else
            assert.is_truthy(documented_refusal(text), path .. ": " .. tostring(text))
          end
        end
      end
    end)
  end
end)

-- The input split on NUL bytes, as the fuzz target does (runtime/fuzz/cli_argv.c): a NUL ends
-- an argument, and a last one without its NUL counts too.
local function argv_of(bytes)
  local argv, pos = { [0] = "tarry" }, 1
  while pos <= #bytes do
    local nul = bytes:find("\0", pos, true) or #bytes + 1
    argv[#argv + 1] = bytes:sub(pos, nul - 1)
    pos = nul + 1
  end
  return argv
end

describe("the command lines the fuzzer kept", function()
  local files = inputs("cli_argv")

  it("there are some (scripts/fuzz keeps them)", function()
    assert.is_true(#files > 0)
  end)

  it("each parses to a command, or is refused with a usage error that has a message", function()
    for _, path in ipairs(files) do
      local ok, res = pcall(cli.parse, argv_of(read(path)))
      if ok then
        assert.are.equal("table", type(res), path)
      else
        assert.is_true(cli.is_usage_error(res), path .. ": " .. tostring(res))
        assert.are.equal("string", type(res.message), path)
      end
    end
  end)
end)

describe("what the fuzzers found", function()
  it("a refusal keeps its reason when the path to the value is longer than the message allows", function()
    -- json_roundtrip: a 1,400-byte key pushed "NUL byte in string" out of the 1 KB error message
    local key = string.rep("k\127", 700)
    local ok, err = pcall(tarry.json.encode, { [key] = "a\0b" })
    assert.is_false(ok)
    assert.matches('^value%["kk?\\127k.*%.%.%.: NUL byte in string at byte 2 %(PostgreSQL\'s jsonb rejects \\u0000%)$', err)
    local long = string.rep("é", 600)                -- clipped after a whole character
    ok, err = pcall(tarry.json.encode, { [long] = { x = print } })
    assert.is_false(ok)
    assert.matches('^value%["[\195\169]+%.%.%.: cannot encode a function$', err)
    assert.is_true(utf8.len(err) ~= nil)
  end)
end)
