-- The JSON codec of tarry.core: job arguments go to PostgreSQL as JSON and must come back exactly.
local core = require "tarry.core"

local encode, decode, array, null = core.json_encode, core.json_decode, core.array, core.null

local function bits(x) return string.pack("<d", x) end

-- A table that encodes as an array: marked, or with keys 1..n.
local function is_json_array(t)
  return core.is_array(t) or t[1] ~= nil
end

-- Whether a and b are the same JSON value: same number subtypes (and float bits), arrays where
-- arrays were, the same null.
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false end
    if math.type(a) == "integer" then return a == b end
    return bits(a) == bits(b)
  end
  if type(a) ~= "table" then return rawequal(a, b) end
  if is_json_array(a) ~= is_json_array(b) then return false end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function round_trip(v) return decode(encode(v)) end

local function assert_round_trips(v)
  local back = round_trip(v)
  assert.is_true(same(v, back), "not the same after a round trip: " .. encode(v))
end

local function encode_error(v)
  local ok, err = pcall(encode, v)
  assert.is_false(ok, "encoded, expected an error")
  return err
end

local function decode_error(s)
  local ok, err = pcall(decode, s)
  assert.is_false(ok, "decoded, expected an error")
  return err
end

describe("json integers", function()
  it("round trip exactly, int64 extremes included", function()
    for _, n in ipairs { 0, 1, -1, 42, (1 << 53) + 1, math.maxinteger, math.mininteger } do
      local back = round_trip(n)
      assert.are.equal("integer", math.type(back))
      assert.are.equal(n, back)
    end
  end)

  it("are written as JSON integers", function()
    assert.are.equal("9223372036854775807", encode(math.maxinteger))
    assert.are.equal("-9223372036854775808", encode(math.mininteger))
    assert.are.equal('{"n":7}', encode { n = 7 })
  end)

  it("decode from JSON integers as Lua integers", function()
    assert.are.equal("integer", math.type(decode "12"))
    assert.are.equal(math.mininteger, decode "-9223372036854775808")
  end)
end)

describe("json floats", function()
  local floats = { 0.1, 1 / 3, 2.0, -0.0, 0.0, 1e300, 5e-324, 2.2250738585072014e-308, math.pi,
    1.7976931348623157e308, -1.5, 100.0, 1e16, 2^53, 123456.789, 1e-7 }

  it("round trip bit-exactly and stay floats", function()
    for _, x in ipairs(floats) do
      local back = round_trip(x)
      assert.are.equal("float", math.type(back))
      assert.are.equal(bits(x), bits(back), "float " .. string.format("%.17g", x))
    end
    assert_round_trips(floats)
  end)

  it("round trip any finite double (random bit patterns)", function()
    math.randomseed(20240601)
    for _ = 1, 2000 do
      local x = string.unpack("<d", string.pack("<i8", math.random(math.mininteger, math.maxinteger)))
      if x == x and x ~= math.huge and x ~= -math.huge then
        assert.are.equal(bits(x), bits(round_trip(x)), string.format("%.17g", x))
      end
    end
  end)

  it("use the fewest digits that read back exactly", function()
    assert.are.equal('{"a":0.1}', encode { a = 0.1 })
    assert.are.equal("0.3333333333333333", encode(1 / 3))
    assert.are.equal("5e-324", encode(5e-324))
  end)

  it("each take the fewest digits that read back exactly, whatever the others need", function()
    assert.are.equal("[0.1,0.30000000000000004,1.5e-5]", encode { 0.1, 0.1 + 0.2, 1.5e-5 })
    assert.are.equal('{"a":0.1,"b":[2.5,0.30000000000000004]}', encode { b = { 2.5, 0.1 + 0.2 }, a = 0.1 })
  end)

  it("keep a decimal point when integral, so they decode as floats", function()
    assert.are.equal("2.0", encode(2.0))
    assert.are.equal("-0.0", encode(-0.0))
    assert.are.equal("float", math.type(decode "2.0"))
    assert.are.equal(-math.huge, 1 / round_trip(-0.0))
  end)

  it("are written without a positive exponent (PostgreSQL jsonb would print 1e2 as 100)", function()
    assert.are.equal("100.0", encode(100.0))
    assert.are.equal("150.0", encode(150.0))
    assert.are.equal("100000000000000000000.0", encode(1e20))
    assert.are.equal("1" .. string.rep("0", 300) .. ".0", encode(1e300))
    assert.are.equal("float", math.type(decode "100000000000000000000.0"))
  end)

  it("decode from JSON reals and exponents as Lua floats", function()
    assert.are.equal("float", math.type(decode "1e2"))
    assert.are.equal(100.0, decode "1e2")
    assert.are.equal(bits(0.1), bits(decode "0.1000000000000000055511151231257827"))
  end)

  it("refuse NaN and infinities", function()
    assert.are.equal("value.a: cannot encode NaN", encode_error { a = 0 / 0 })
    assert.are.equal("value.a[1]: cannot encode inf", encode_error { a = { math.huge } })
    assert.are.equal("value: cannot encode -inf", encode_error(-math.huge))
  end)
end)

describe("json strings", function()
  it("round trip UTF-8", function()
    for _, s in ipairs { "", "plain", "héllo wörld", "✓ 日本 😀", "tab\tnew\nline\"q\"\\" } do
      assert.are.equal(s, round_trip(s))
    end
  end)

  it("are written as UTF-8; a NUL is refused, since jsonb cannot store it", function()
    assert.are.equal('"é"', encode "é")
    assert.are.equal("value.s: NUL byte in string at byte 2 (PostgreSQL's jsonb rejects \\u0000)",
      encode_error { s = "a\0b" })
    assert.are.equal("a\0b", decode '"a\\u0000b"')   -- decoding still accepts it
  end)

  it("must be valid UTF-8, in values", function()
    assert.are.equal("value.name: invalid UTF-8 in string at byte 3", encode_error { name = "ab\255" })
    assert.are.equal("value[1]: invalid UTF-8 in string at byte 1", encode_error { "\xed\xa0\x80" })
    assert.are.equal("value: invalid UTF-8 in string at byte 2", encode_error "a\xc0\x80")
  end)

  it("must be valid UTF-8, in keys", function()
    assert.are.equal('value.user["a\\255"]: invalid UTF-8 in key at byte 2',
      encode_error { user = { ["a\255"] = 1 } })
  end)

  it("may not hold a NUL in a key (jansson cannot read it back)", function()
    assert.are.equal('value["a\\000b"]: NUL byte in key (JSON decoders reject it)',
      encode_error { ["a\0b"] = 1 })
  end)
end)

describe("json objects", function()
  it("come from tables with string keys, keys sorted", function()
    assert.are.equal('{"a":2,"b":1,"c":{"y":true,"z":false}}',
      encode { b = 1, a = 2, c = { z = false, y = true } })
  end)

  it("round trip nested", function()
    assert_round_trips { user = { name = "ann", tags = { "x", "y" }, age = 31, score = 0.5 },
      ["my key"] = { [""] = {} }, empty = array() }
  end)

  it("decode as plain tables", function()
    local t = decode '{"a":{"b":[1]}}'
    assert.is_nil(getmetatable(t))
    assert.are.equal(1, t.a.b[1])
    assert.is_false(core.is_array(t))
  end)

  it("take the last of duplicate keys, as PostgreSQL jsonb does", function()
    assert.are.equal(2, decode('{"a":1,"a":2}').a)
  end)

  it("reject a non-string key next to string keys", function()
    assert.are.equal("value: key of type number (1.5) in a table with string keys",
      encode_error { a = 1, [1.5] = 2 })
    assert.are.equal("value.t: key of type table in a table with string keys",
      encode_error { t = { a = 1, [{}] = 2 } })
  end)

  it("reject keys that are neither strings nor array indexes", function()
    assert.are.equal("value: key of type boolean (true) is neither a string nor an array index",
      encode_error { [true] = 1 })
    assert.are.equal("value: key of type number (0) is neither a string nor an array index",
      encode_error { [0] = "a", [1] = "b" })
  end)
end)

describe("json arrays", function()
  it("come from tables with keys 1..n", function()
    assert.are.equal('[1,"two",[3.5]]', encode { 1, "two", { 3.5 } })
  end)

  it("come from tables marked with array(), even empty", function()
    assert.are.equal("[]", encode(array()))
    assert.are.equal("[[],{}]", encode { array {}, {} })
    assert.are.equal("[1,2]", encode(array { 1, 2 }))
  end)

  it("keep empty arrays and empty objects apart through a round trip", function()
    local back = decode '{"list":[],"map":{}}'
    assert.is_true(core.is_array(back.list))
    assert.is_false(core.is_array(back.map))
    assert.are.equal('{"list":[],"map":{}}', encode(back))
  end)

  it("decode as tables marked tarry.array", function()
    local a = decode "[1,[2]]"
    assert.are.equal("tarry.array", getmetatable(a).__name)
    assert.is_true(core.is_array(a[2]))
    assert.are.equal(2, a[2][1])
  end)

  it("round trip nested, with nulls inside", function()
    assert_round_trips { { 1, { 2, { 3, null } } }, array(), { null } }
    assert.are.equal("[1,null,3]", encode(decode "[1,null,3]"))
  end)

  it("reject holes (use null for a missing element)", function()
    assert.are.equal("value: sparse array (index 2 is nil, highest index is 3)", encode_error { 1, nil, 3 })
    assert.are.equal("value.ids: sparse array (index 1 is nil, highest index is 2)",
      encode_error { ids = { [2] = "b" } })
  end)

  it("reject a table with both indexes and string keys", function()
    assert.are.equal("value.tags: table mixes array indexes and string keys",
      encode_error { tags = { 1, 2, x = 3 } })
    assert.are.equal("value: table marked as an array has string keys", encode_error(array { x = 1 }))
  end)
end)

describe("json null", function()
  it("is a unique sentinel that round trips", function()
    assert.are.equal("null", encode(null))
    assert.are.equal(null, decode "null")
    assert.are.equal(null, decode('{"a":null}').a)
    assert.are.equal('{"a":null}', encode { a = null })
    assert.are.equal("tarry.null", tostring(null))
  end)

  it("is the same value for every require", function()
    assert.are.equal(null, require("tarry.core").null)
  end)
end)

describe("array and is_array", function()
  it("mark and return the given table", function()
    local t = { 1, 2 }
    assert.are.equal(t, array(t))
    assert.is_true(core.is_array(t))
    assert.are.equal(t, array(t))
  end)

  it("make a new empty array without an argument", function()
    local a = array()
    assert.are.equal("table", type(a))
    assert.is_nil(next(a))
    assert.is_true(core.is_array(a))
  end)

  it("tell marked tables from others", function()
    assert.is_false(core.is_array {})
    assert.is_false(core.is_array { 1, 2 })
    assert.is_false(core.is_array "x")
    assert.is_false(core.is_array(setmetatable({}, { __name = "tarry.array" })))
  end)

  it("refuse a table that already has another metatable, and non-tables", function()
    local ok, err = pcall(array, setmetatable({}, {}))
    assert.is_false(ok)
    assert.matches("^bad argument #1 to '.*' %(table already has a metatable%)$", err)
    ok, err = pcall(array, nil)
    assert.is_false(ok)
    assert.matches("^bad argument #1 to '.*' %(table expected, got nil%)$", err)
  end)
end)

describe("json_encode errors", function()
  it("name a function deep in arrays and objects by its path", function()
    assert.are.equal("value[2][2][2]: cannot encode a function", encode_error { 1, { 2, { 3, print } } })
    assert.are.equal("value.user.tags[3].x: cannot encode a function",
      encode_error { user = { tags = { 1, 2, { x = print } } } })
  end)

  it("quote keys that are not identifiers", function()
    assert.are.equal('value["my key"][1]: cannot encode a function', encode_error { ["my key"] = { print } })
    assert.are.equal('value["say \\"hi\\"\\010"]: cannot encode a function',
      encode_error { ['say "hi"\n'] = print })
  end)

  it("refuse userdata, coroutines and nil", function()
    assert.are.equal("value.f: cannot encode a userdata", encode_error { f = io.stdout })
    assert.are.equal("value[1]: cannot encode a thread", encode_error { coroutine.create(print) })
    assert.are.equal("value: cannot encode nil", encode_error(nil))
  end)

  it("detect cycles", function()
    local t = { name = "loop" }
    t.self = t
    assert.are.equal("value.self: cycle (table contains itself)", encode_error(t))
    local a = array()
    a[1] = { a }
    assert.are.equal("value[1][1]: cycle (table contains itself)", encode_error(a))
  end)

  it("accept a table that appears twice without a cycle", function()
    local shared = { 1 }
    assert.are.equal('{"a":[1],"b":[1]}', encode { a = shared, b = shared })
  end)

  it("limit nesting to 512 tables", function()
    local function nest(n)
      local root = {}
      local t = root
      for _ = 2, n do
        t[1] = {}
        t = t[1]
      end
      return root
    end
    assert.are.equal(string.rep("[", 511) .. "{}" .. string.rep("]", 511), encode(nest(512)))
    local path = "value" .. string.rep("[1]", 8) .. "..." .. string.rep("[1]", 8)
    assert.are.equal(path .. ": nested too deep (more than 512 levels)", encode_error(nest(513)))
  end)

  it("are plain strings without a position", function()
    local ok, err = pcall(encode, { f = print })
    assert.is_false(ok)
    assert.are.equal("string", type(err))
    assert.are.equal("value.f: cannot encode a function", err)
  end)
end)

describe("json_decode", function()
  it("accepts any JSON value", function()
    assert.are.equal(true, decode "true")
    assert.are.equal(false, decode " false ")
    assert.are.equal("x", decode '"x"')
    assert.are.equal(1.5, decode "1.5")
  end)

  it("gives a new plain table for each empty object (the fast path for '{}'), an array for '[]'", function()
    local a, b = decode "{}", decode "{}"
    assert.are.same({}, a)
    assert.are_not.equal(a, b)
    assert.is_nil(getmetatable(a))
    a.x = 1
    assert.is_nil(b.x)
    assert.are.equal("{}", encode(decode "{}"))
    assert.are.equal("[]", encode(decode "[]"))
  end)

  it("raises on invalid JSON with line and column", function()
    assert.are.equal("invalid JSON: ']' expected near end of file (line 1, column 3)", decode_error "[1,")
    assert.are.equal("invalid JSON: end of file expected near 'x' (line 1, column 5)", decode_error "[1] x")
    assert.are.equal("invalid JSON: unexpected token near end of file (line 1, column 0)", decode_error "")
    assert.are.equal("invalid JSON: invalid token near 'NaN' (line 2, column 3)", decode_error "[\nNaN]")
  end)

  it("raises on numbers a Lua value cannot hold, naming them by their path", function()
    assert.are.equal("value: integer does not fit in 64 bits", decode_error "9223372036854775808")
    assert.are.equal("value: integer does not fit in 64 bits", decode_error "-9223372036854775809")
    assert.are.equal("value.n: integer does not fit in 64 bits", decode_error '{"n": 123456789012345678901234567890}')
    assert.are.equal("value: number does not fit in a double", decode_error "1e400")
    assert.are.equal("value[2].x[1]: number does not fit in a double", decode_error '[1, {"x": [-1.5e309]}]')
    assert.are.equal("value[1]: number does not fit in a double", decode_error("[" .. string.rep("9", 400) .. ".5]"))
  end)

  it("names keys as the encoder does, escapes decoded", function()
    assert.are.equal('value["my key"][2]: integer does not fit in 64 bits',
      decode_error '{"my key": [1e2, 99999999999999999999]}')
    assert.are.equal('value["café"]["a\\\\"]: number does not fit in a double',
      decode_error '{"caf\\u00e9": {"a\\\\": 1e400}}')
  end)

  it("reads what still fits: int64 extremes, the largest double, underflow to zero", function()
    assert.are.equal(math.maxinteger, decode "9223372036854775807")
    assert.are.equal(1.7976931348623157e308, decode "1.7976931348623157e308")
    assert.are.equal(0.0, decode "1e-400")
    assert.are.equal(1e300, decode("1" .. string.rep("0", 300) .. ".0"))
  end)

  it("raises on nesting deeper than 512 levels, as the encoder does", function()
    local function arrays(n) return string.rep("[", n) .. string.rep("]", n) end
    local back = decode(arrays(512))
    assert.is_true(core.is_array(back))
    assert.are.equal(arrays(512), encode(back))
    local path = "value" .. string.rep("[1]", 8) .. "..." .. string.rep("[1]", 8)
    assert.are.equal(path .. ": nested too deep (more than 512 levels)", decode_error(arrays(513)))
    assert.are.equal(path .. ": nested too deep (more than 512 levels)", decode_error(arrays(5000)))
    local objects = string.rep('{"a":', 600) .. "1" .. string.rep("}", 600)
    assert.are.equal("value" .. string.rep(".a", 8) .. "..." .. string.rep(".a", 8) ..
      ": nested too deep (more than 512 levels)", decode_error(objects))
  end)

  it("raises on a NUL in a key and on lone surrogates, naming the place", function()
    assert.are.equal('value.user["a\\000b"]: NUL byte in key (tarry cannot decode it)',
      decode_error '{"user": {"a\\u0000b": 1}}')
    assert.are.equal("value.a[1]: invalid Unicode '\\uD800' near '\"\\ud800\"'", decode_error '{"a": ["\\ud800"]}')
    assert.matches("^value: key: invalid Unicode '\\uD800'", decode_error '{"\\ud800": 1}')
  end)

  it("keeps jansson's message, line and column, for malformed JSON", function()
    assert.are.equal("invalid JSON: invalid token near '0' (line 1, column 7)", decode_error '{"a": 01}')
    assert.are.equal("invalid JSON: '}' expected near end of file (line 1, column 6)", decode_error '{"a":1')
  end)

  it("needs a string", function()
    local ok, err = pcall(decode, {})
    assert.is_false(ok)
    assert.matches("^bad argument #1 to '.*' %(string expected, got table%)$", err)
  end)
end)
