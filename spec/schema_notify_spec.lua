-- PROTOCOL.md §5 notifications (§8 item 7 and the abort part of item 8), on tarry's statement-
-- level triggers and, for comparison, on Procrastinate's row-level ones (fixture).  A psql session
-- LISTENs and then runs the statements; psql prints every notification it receives.
local db = require("support.db")
local json = require("dkjson")
local psql_conn = require("support.psql_conn")

-- { {channel=, payload=}, ... } in the order received
local function notifications(output)
  local list = {}
  for channel, payload in output:gmatch('Asynchronous notification "(.-)" with payload "(.-)" received from server process') do
    list[#list + 1] = { channel = channel, payload = payload }
  end
  return list
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

-- The payload's id, after checking the exact text shape and that it parses as the JSON object.
local function job_id_of(payload, expected_type)
  local id = payload:match('^{"type" : "' .. expected_type .. '", "job_id" : (%d+)}$')
  assert(id, "payload has not the json_build_object shape: " .. payload)
  local decoded = json.decode(payload)
  assert.equal(expected_type, decoded.type)
  assert.equal(math.tointeger(id), decoded.job_id)
  return decoded.job_id
end

for _, flavour in ipairs({ "tarry", "procrastinate" }) do
  describe("notifications (" .. flavour .. " triggers)", function()
    local name
    setup(function()
      name = db.fresh()
      if flavour == "procrastinate" then
        db.apply_schema_file(name, "spec/fixtures/procrastinate_triggers.sql")
      end
    end)
    teardown(function() if name then db.drop(name) end end)

    local function defer_sql(queues)
      local items = {}
      for i, q in ipairs(queues) do
        items[i] = string.format("ROW('%s', 'task', 0, NULL, NULL, '{}', NULL)", q)
      end
      return "procrastinate_defer_jobs_v1(ARRAY[" .. table.concat(items, ", ") .. "]::procrastinate_job_to_defer_v1[])"
    end

    it("a batch into queues a and b wakes both queue channels and the any-queue channel", function()
      local out = psql_conn.script(name, [[
        LISTEN "procrastinate_queue_v1#na";
        LISTEN "procrastinate_queue_v1#nb";
        LISTEN procrastinate_any_queue_v1;
        SELECT 'ids:' || array_to_string(]] .. defer_sql({ "na", "nb", "na" }) .. [[, ',');
      ]])
      local ids = {}
      for id in out:match("ids:([%d,]+)"):gmatch("%d+") do ids[#ids + 1] = math.tointeger(id) end
      assert.equal(3, #ids)
      local by_queue = { ["procrastinate_queue_v1#na"] = set_of({ ids[1], ids[3] }),
        ["procrastinate_queue_v1#nb"] = set_of({ ids[2] }), procrastinate_any_queue_v1 = set_of(ids) }
      local seen = {}
      for _, n in ipairs(notifications(out)) do
        assert.is_not_nil(by_queue[n.channel], "unexpected channel " .. n.channel)
        assert.is_true(by_queue[n.channel][job_id_of(n.payload, "job_inserted")] or false, n.payload)
        seen[n.channel] = true
      end
      assert.same({ ["procrastinate_queue_v1#na"] = true, ["procrastinate_queue_v1#nb"] = true,
        procrastinate_any_queue_v1 = true }, seen)
    end)

    it("a multi-row INSERT statement notifies each queue; a non-todo row notifies nothing", function()
      local out = psql_conn.script(name, [[
        LISTEN "procrastinate_queue_v1#ma";
        LISTEN "procrastinate_queue_v1#mb";
        LISTEN "procrastinate_queue_v1#mc";
        INSERT INTO procrastinate_jobs (queue_name, task_name, status)
          VALUES ('ma', 't', 'todo'), ('mb', 't', 'todo'), ('mb', 't', 'todo'), ('mc', 't', 'doing');
      ]])
      local channels = {}
      for _, n in ipairs(notifications(out)) do
        job_id_of(n.payload, "job_inserted")
        channels[n.channel] = true
      end
      assert.same({ ["procrastinate_queue_v1#ma"] = true, ["procrastinate_queue_v1#mb"] = true }, channels)
    end)

    it("a single job's payload is exactly the json_build_object text, on both channels", function()
      local out = psql_conn.script(name, [[
        LISTEN "procrastinate_queue_v1#single";
        LISTEN procrastinate_any_queue_v1;
        SELECT 'ids:' || array_to_string(]] .. defer_sql({ "single" }) .. [[, ',');
      ]])
      local id = out:match("ids:(%d+)")
      local expected = '{"type" : "job_inserted", "job_id" : ' .. id .. '}'
      local got = {}
      for _, n in ipairs(notifications(out)) do got[#got + 1] = n.channel .. " " .. n.payload end
      assert.same({ "procrastinate_queue_v1#single " .. expected, "procrastinate_any_queue_v1 " .. expected }, got)
    end)

    it("sends abort_job_requested once per doing job, not for todo jobs nor an already set flag", function()
      local ids = {}
      for id in db.value(name, "SELECT array_to_string(" .. defer_sql({ "ab", "ab", "ab", "ab" }) .. ", ',')")
        :gmatch("%d+") do
        ids[#ids + 1] = math.tointeger(id)
      end
      for i = 1, 3 do
        assert.equal(tostring(ids[i]), db.value(name, "SELECT id FROM procrastinate_fetch_job_v2('{ab}', NULL)"))
      end
      local out = psql_conn.script(name, string.format([[
        LISTEN "procrastinate_queue_v1#ab";
        LISTEN procrastinate_any_queue_v1;
        SELECT procrastinate_cancel_job_v1(%d, true, false);
        SELECT procrastinate_cancel_job_v1(%d, true, false);
        SELECT procrastinate_cancel_job_v1(%d, true, false);
        UPDATE procrastinate_jobs SET abort_requested = true WHERE id IN (%d, %d, %d);
      ]], ids[1], ids[1], ids[4], ids[1], ids[2], ids[3]))
      local got = {}
      for _, n in ipairs(notifications(out)) do
        got[#got + 1] = string.format("%s %d", n.channel, job_id_of(n.payload, "abort_job_requested"))
      end
      table.sort(got)
      local expected = {}
      for _, channel in ipairs({ "procrastinate_any_queue_v1", "procrastinate_queue_v1#ab" }) do
        for i = 1, 3 do expected[#expected + 1] = string.format("%s %d", channel, ids[i]) end
      end
      table.sort(expected)
      assert.same(expected, got)
    end)
  end)
end
