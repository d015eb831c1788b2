-- The dashboard's JSON API (`tarry dashboard`, tarry/dashboard/): a real process on a real
-- PostgreSQL, asked over HTTP by curl. Each spec checks the rows, not only the answers.
local db = require "support.db"
local proc = require "support.process"
local http = require "support.http"
local cli = require "support.cli"
local tarry = require "tarry"

local name, dash, url

-- Jobs through the protocol's own defer function: { queue, task, args_json, lock } each.
local function defer(list)
  local rows = {}
  for i, j in ipairs(list) do
    rows[i] = string.format("ROW(%s, %s, 0, %s, NULL, %s::jsonb, NULL)::procrastinate_job_to_defer_v1",
      "'" .. j[1] .. "'", "'" .. j[2] .. "'", j[4] and ("'" .. j[4] .. "'") or "NULL", "'" .. (j[3] or "{}") .. "'")
  end
  local out = db.value(name, "SELECT array_to_string(procrastinate_defer_jobs_v1(ARRAY[" .. table.concat(rows, ",") .. "]), ',')")
  local ids = {}
  for id in out:gmatch("%d+") do ids[#ids + 1] = tonumber(id) end
  return ids
end

local function status_of(id) return db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = " .. id) end
local function fail_jobs(ids) db.psql(name, "UPDATE procrastinate_jobs SET status = 'failed', attempts = 1 WHERE id IN ("
  .. table.concat(ids, ",") .. ")") end

local function ids_of(body)
  local out = {}
  for i, j in ipairs(body.jobs) do out[i] = j.id end
  return out
end

local function start(args)
  dash, url = http.start_dashboard(name, args)
end

before_each(function() name = db.fresh() end)
after_each(function()
  http.stop_dashboard(dash)
  dash = nil
  proc.kill_all()
  db.drop(name)
end)

describe("tarry dashboard: GET /api/jobs", function()
  it("lists the jobs newest first, filtered by status, queue, task and lock", function()
    local ids = defer { { "q1", "add", '{"a":1}' }, { "q1", "mul", '{"a":2}', "L" }, { "q2", "add", '{"a":3}' } }
    fail_jobs { ids[2] }
    start()
    local status, body = http.get(url .. "api/jobs")
    assert.equal(200, status)
    assert.same({ ids[3], ids[2], ids[1] }, ids_of(body))
    assert.same({ a = 1 }, body.jobs[3].args)
    assert.equal("q1", body.jobs[3].queue)
    assert.same({ ids[2] }, ids_of(select(2, http.get(url .. "api/jobs?status=failed"))))
    assert.same({ ids[2], ids[1] }, ids_of(select(2, http.get(url .. "api/jobs?queue=q1"))))
    assert.same({ ids[3], ids[1] }, ids_of(select(2, http.get(url .. "api/jobs?task=add"))))
    assert.same({ ids[2] }, ids_of(select(2, http.get(url .. "api/jobs?lock=L"))))
    assert.same({}, ids_of(select(2, http.get(url .. "api/jobs?queue=q2&task=mul"))))
  end)

  it("pages with after_id (keyset): every job once, in order, and the last page says so", function()
    local list = {}
    for i = 1, 7 do list[i] = { "q", "t", string.format('{"i":%d}', i) } end
    local ids = defer(list)
    start()
    local seen, after = {}, nil
    for _ = 1, 10 do
      local status, body = http.get(url .. "api/jobs?limit=3" .. (after and ("&after_id=" .. after) or ""))
      assert.equal(200, status)
      for _, id in ipairs(ids_of(body)) do seen[#seen + 1] = id end
      if body.next_after_id == tarry.null then break end
      after = body.next_after_id
    end
    assert.same({ ids[7], ids[6], ids[5], ids[4], ids[3], ids[2], ids[1] }, seen)
    local _, asc = http.get(url .. "api/jobs?order=asc&limit=2&after_id=" .. ids[2])
    assert.same({ ids[3], ids[4] }, ids_of(asc))
  end)

  it("searches the arguments by key=value and by JSON containment", function()
    local ids = defer { { "q", "t", '{"user":42,"name":"ann"}' }, { "q", "t", '{"user":7,"name":"bob","tags":["x","y"]}' },
      { "q", "t", '{"user":"42"}' } }
    start()
    assert.same({ ids[1] }, ids_of(select(2, http.get(url .. "api/jobs?q=user%3D42"))))
    assert.same({ ids[3] }, ids_of(select(2, http.get(url .. "api/jobs?q=user%3D%2242%22"))))
    assert.same({ ids[2] }, ids_of(select(2, http.get(url .. "api/jobs?q=name%3Dbob"))))
    assert.same({ ids[2] }, ids_of(select(2, http.get(url .. "api/jobs?q=" .. "%7B%22tags%22%3A%5B%22y%22%5D%7D"))))
    local status, body = http.get(url .. "api/jobs?q=%5B1%5D")
    assert.equal(400, status)
    assert.matches("search by key=value or by a JSON object", body.error)
    status, body = http.get(url .. "api/jobs?status=nope")
    assert.equal(400, status)
    assert.matches("status must be one of", body.error)
    assert.equal(400, (http.get(url .. "api/jobs?limit=0")))
  end)
end)

describe("tarry dashboard: GET /api/jobs/ID", function()
  it("gives a job's fields, its events and, after a real worker failed it, the error and traceback", function()
    local app = proc.app_file(name, [[
app:task("explode", function(args) error("boom: " .. args.why) end)
]])
    local out = cli.run { "defer", "--app", app, "explode", '{"why":"disk full"}' }
    local id = tonumber(db.value(name, "SELECT max(id) FROM procrastinate_jobs"))
    assert.is_truthy(out)
    local w = proc.start("worker --one-shot --app " .. app)
    assert.equal(0, w:wait(60))
    start()
    local status, j = http.get(url .. "api/jobs/" .. id)
    assert.equal(200, status)
    assert.equal("failed", j.status)
    assert.equal("explode", j.task_name)
    assert.same({ why = "disk full" }, j.args)
    local types = {}
    for i, e in ipairs(j.events) do types[i] = e.type end
    assert.same({ "deferred", "started", "failed" }, types)
    assert.equal(1, #j.errors)
    assert.equal(1, j.errors[1].attempt)
    assert.matches("boom: disk full", j.errors[1].message)
    assert.matches("stack traceback", j.errors[1].traceback)
    assert.equal(404, (http.get(url .. "api/jobs/999999")))
  end)
end)

describe("tarry dashboard: actions on one job", function()
  it("retry, cancel, abort, delete and run-now change the rows as the protocol says", function()
    local ids = defer { { "q", "t" }, { "q", "t" }, { "q", "t" }, { "q", "t" } }
    fail_jobs { ids[1] }
    db.psql(name, "UPDATE procrastinate_jobs SET scheduled_at = now() + interval '1 day' WHERE id = " .. ids[4])
    start()
    local status, body = http.post(url .. "api/jobs/" .. ids[1] .. "/retry", {})
    assert.equal(200, status)
    assert.equal("todo", body.status)
    assert.equal("todo", status_of(ids[1]))
    assert.equal("2", db.value(name, "SELECT attempts FROM procrastinate_jobs WHERE id = " .. ids[1]))

    assert.equal(200, (http.post(url .. "api/jobs/" .. ids[2] .. "/cancel", {})))
    assert.equal("cancelled", status_of(ids[2]))
    status, body = http.post(url .. "api/jobs/" .. ids[2] .. "/cancel", {})
    assert.equal(409, status)
    assert.matches("cancelled", body.error)

    assert.equal(200, (http.post(url .. "api/jobs/" .. ids[3] .. "/abort", {})))
    assert.equal("cancelled|true", db.value(name, "SELECT status || '|' || abort_requested FROM procrastinate_jobs WHERE id = " .. ids[3]))

    assert.equal(200, (http.post(url .. "api/jobs/" .. ids[4] .. "/run-now", {})))
    assert.equal("t", db.value(name, "SELECT scheduled_at <= now() FROM procrastinate_jobs WHERE id = " .. ids[4]))
    assert.equal(409, (http.post(url .. "api/jobs/" .. ids[4] .. "/run-now", {})))

    db.psql(name, "INSERT INTO tarry_job_errors_v1 (job_id, attempt, message) VALUES (" .. ids[2] .. ", 1, 'x')")
    assert.equal(200, (http.post(url .. "api/jobs/" .. ids[2] .. "/delete", {})))
    assert.is_nil(status_of(ids[2]))
    assert.equal("0", db.value(name, "SELECT count(*) FROM tarry_job_errors_v1"))
    assert.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_events WHERE job_id = " .. ids[2]))
    assert.equal(404, (http.post(url .. "api/jobs/" .. ids[2] .. "/retry", {})))
    assert.equal(404, (http.post(url .. "api/jobs/" .. ids[1] .. "/explode", {})))
  end)
end)

describe("tarry dashboard: bulk actions", function()
  it("retry, cancel and delete everything a filter matches, and nothing else", function()
    local list = {}
    for i = 1, 12 do list[i] = { i <= 8 and "q1" or "q2", "t", string.format('{"i":%d}', i) } end
    local ids = defer(list)
    fail_jobs { ids[1], ids[2], ids[3], ids[9] }
    start()
    local status, body = http.post(url .. "api/jobs/retry", { status = "failed", queue = "q1" })
    assert.equal(200, status)
    assert.same({ ok = true, action = "retry", matched = 3, changed = 3 }, body)
    assert.equal("0", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = 'q1' AND status = 'failed'"))
    assert.equal("failed", status_of(ids[9]))

    status, body = http.post(url .. "api/jobs/cancel", { queue = "q2" })
    assert.equal(200, status)
    assert.equal(4, body.matched)
    assert.equal(3, body.changed)                 -- the failed one is not todo
    assert.equal("3", db.value(name, "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = 'q2' AND status = 'cancelled'"))

    status, body = http.post(url .. "api/jobs/delete", { q = "i=5" })
    assert.equal(200, status)
    assert.equal(1, body.changed)
    assert.is_nil(status_of(ids[5]))
    assert.equal("11", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
  end)
end)

describe("tarry dashboard: POST /api/jobs", function()
  it("defers a job from the form's fields, and refuses what is not one", function()
    start()
    local status, body = http.post(url .. "api/jobs", { task = "send", args = { to = "ann" }, queue = "mail", priority = 3,
      lock = "L", schedule_in = 3600 })
    assert.equal(201, status)
    assert.equal("send|mail|3|L|{\"to\": \"ann\"}|true", db.value(name, "SELECT task_name || '|' || queue_name || '|' || priority || '|' "
      .. "|| lock || '|' || args::text || '|' || (scheduled_at > now() + interval '50 minutes') FROM procrastinate_jobs WHERE id = " .. body.id))
    status, body = http.post(url .. "api/jobs", { task = "send", color = "red" })
    assert.equal(400, status)
    assert.matches("unknown field color", body.error)
    assert.equal(400, (http.post(url .. "api/jobs", { args = {} })))
    assert.equal(415, (http.post(url .. "api/jobs", "task=send", { headers = { ["Content-Type"] = "text/plain" } })))
    assert.equal("1", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
  end)
end)

describe("tarry dashboard: safety", function()
  it("--read-only refuses every action with 403 and changes nothing", function()
    local ids = defer { { "q", "t" } }
    fail_jobs(ids)
    start("--read-only")
    assert.matches("%(read%-only%)", dash:output())
    for _, path in ipairs { "jobs/" .. ids[1] .. "/retry", "jobs/" .. ids[1] .. "/delete", "jobs/retry", "jobs/delete", "jobs" } do
      local status, body = http.post(url .. "api/" .. path, path == "jobs" and { task = "t" } or {})
      assert.equal(403, status, path)
      assert.matches("read%-only", body.error)
    end
    assert.equal("failed", status_of(ids[1]))
    assert.equal("1", db.value(name, "SELECT count(*) FROM procrastinate_jobs"))
    assert.equal(200, (http.get(url .. "api/jobs")))
  end)

  it("--auth asks for HTTP basic auth, for the page and the API", function()
    start("--auth 'ann:s3cret pass'")
    local status, _, _, head = http.get(url .. "api/jobs")
    assert.equal(401, status)
    assert.matches('WWW%-Authenticate: Basic realm="tarry dashboard"', head)
    assert.equal(401, (http.get(url, { user = "ann:wrong" })))
    assert.equal(401, (http.get(url .. "api/jobs", { user = "ann:s3cret pas" })))
    assert.equal(200, (http.get(url .. "api/jobs", { user = "ann:s3cret pass" })))
    assert.equal(200, (http.get(url, { user = "ann:s3cret pass" })))
  end)

  it("refuses state-changing requests from another origin (Origin, Sec-Fetch-Site) with 403", function()
    local ids = defer { { "q", "t" } }
    start()
    local host = url:match("^http://([^/]+)")
    local status, body = http.post(url .. "api/jobs/" .. ids[1] .. "/cancel", {}, { headers = { Origin = "http://evil.example" } })
    assert.equal(403, status)
    assert.matches("cross%-origin", body.error)
    status = http.post(url .. "api/jobs/" .. ids[1] .. "/cancel", {}, { headers = { ["Sec-Fetch-Site"] = "cross-site" } })
    assert.equal(403, status)
    status = http.post(url .. "api/jobs/" .. ids[1] .. "/cancel", {}, { headers = { Origin = "null" } })
    assert.equal(403, status)
    assert.equal("todo", status_of(ids[1]))
    status = http.post(url .. "api/jobs/" .. ids[1] .. "/cancel", {},
      { headers = { Origin = "http://" .. host, ["Sec-Fetch-Site"] = "same-origin" } })
    assert.equal(200, status)
    assert.equal("cancelled", status_of(ids[1]))
  end)

  it("returns hostile arguments as JSON strings, and serves the page with a script-only-from-self policy", function()
    local ids = defer { { "q", "t", [[{"x":"<script>alert(1)</script>","y":"\"><img src=x onerror=alert(1)>"}]] } }
    start()
    local status, body, text, head = http.get(url .. "api/jobs/" .. ids[1])
    assert.equal(200, status)
    assert.equal("<script>alert(1)</script>", body.args.x)
    assert.equal('"><img src=x onerror=alert(1)>', body.args.y)
    assert.matches("Content%-Type: application/json", head)
    assert.matches("X%-Content%-Type%-Options: nosniff", head)
    assert.matches('"<script>alert%(1%)</script>"', text)      -- a JSON string, inside quotes
    local _, _, _, page_head = http.get(url)
    assert.matches("Content%-Security%-Policy: default%-src 'none'; script%-src 'self'", page_head)
  end)

  it("warns when it listens beyond loopback without --auth", function()
    start("--host 0.0.0.0")
    assert.matches("WARNING: listening on 0.0.0.0 without %-%-auth", dash:output())
  end)
end)

describe("tarry dashboard: queues, workers, periodic, stats", function()
  it("counts per queue, lists workers with their running jobs, the app's schedules and the throughput", function()
    local app = proc.app_file(name, [[
app:task("ok", function() end)
app:task("tick", { cron = "*/5 * * * *" }, function() end)
]])
    cli.run { "defer", "--app", app, "ok", "{}" }
    cli.run { "defer", "--app", app, "ok", "{}" }
    assert.equal(0, proc.start("worker --one-shot --no-periodic --app " .. app):wait(60))
    defer { { "default", "ok" } }
    db.psql(name, "INSERT INTO procrastinate_workers DEFAULT VALUES")
    db.psql(name, "UPDATE procrastinate_jobs SET status = 'doing', worker_id = (SELECT max(id) FROM procrastinate_workers) "
      .. "WHERE id = (SELECT max(id) FROM procrastinate_jobs)")
    start("--app " .. app)
    local _, q = http.get(url .. "api/queues")
    assert.equal(1, #q.queues)
    assert.equal("default", q.queues[1].name)
    assert.equal(2, q.queues[1].succeeded)
    assert.equal(1, q.queues[1].doing)
    local _, w = http.get(url .. "api/workers")
    assert.equal(1, #w.workers)
    assert.equal("ok", w.workers[1].running[1].task_name)
    local _, p = http.get(url .. "api/periodic")
    assert.equal("tick", p.periodic[1].task_name)
    assert.equal("*/5 * * * *", p.periodic[1].cron)
    assert.equal(0, p.periodic[1].next_tick % 300)
    local _, s = http.get(url .. "api/stats?window=600&bucket=60")
    local succeeded = 0
    for _, b in ipairs(s.throughput) do succeeded = succeeded + b.succeeded end
    assert.equal(2, succeeded)
    local started = 0
    for _, b in ipairs(s.latency) do started = started + b.started; assert.is_true(b.p95 >= 0) end
    assert.equal(3, started)                      -- the two run, and the one marked doing
    assert.is_number(s.estimates.total)
  end)
end)

describe("tarry worker --dashboard", function()
  it("serves the dashboard from inside the worker while it runs, and stops with it", function()
    local app = proc.app_file(name, [[app:task("ok", function() end)]])
    local w = proc.start("worker --app " .. app .. " --dashboard 127.0.0.1:0")
    w:wait_for("listening on http://", 1, 30)
    local base = w:output():match("listening on (http://%S+)")
    local status, body
    proc.until_true(function()
      status, body = http.get(base .. "api/workers")
      return status == 200 and #body.workers == 1
    end, 30, "the worker to show in its own dashboard")
    status, body = http.post(base .. "api/jobs", { task = "ok" })
    assert.equal(201, status)
    local id = body.id
    proc.until_true(function() return status_of(id) == "succeeded" end, 30, "the worker to run the job deferred from the dashboard")
    w:signal("TERM")
    assert.equal(0, w:wait(30))
    assert.equal(0, (http.get(base .. "api/workers")))   -- curl's 000: nobody listens any more
  end)

  it("refuses a malformed address", function()
    local r = cli.run { "worker", "--app", "x.lua", "--dashboard", "host:port" }
    assert.equal(2, r.code)
    assert.matches("%-%-dashboard must be %[HOST:%]PORT", r.err)
  end)
end)

describe("tarry dashboard: the command line", function()
  it("serves under --base-path (and TARRY_BASE_PATH), and only there", function()
    dash, url = http.start_dashboard(name, "--base-path /jobs")
    local root = url:match("^(http://[^/]+)")
    assert.equal(root .. "/jobs/", url)
    assert.equal(200, (http.get(url .. "api/jobs")))
    assert.equal(404, (http.get(root .. "/api/jobs")))
    local status, _, _, head = http.get(root .. "/jobs")
    assert.equal(308, status)
    assert.matches("Location: /jobs/", head)
    http.stop_dashboard(dash)
    dash = proc.start("dashboard --port 0 --conninfo dbname=" .. name, "TARRY_BASE_PATH=/ops/jobs/ ")
    dash:wait_for("listening on http://", 1, 30)
    assert.matches("listening on http://127%.0%.0%.1:%d+/ops/jobs/\n", dash:output())
  end)

  it("fails clearly when the port is taken, and on a malformed --auth", function()
    start()
    local port = url:match(":(%d+)/")
    local r = cli.run { "dashboard", "--port", port, "--conninfo", "dbname=" .. name }
    assert.equal(1, r.code)
    assert.matches("cannot listen on 127%.0%.0%.1:" .. port, r.err)
    r = cli.run { "dashboard", "--auth", "nocolon" }
    assert.equal(2, r.code)
    assert.matches("%-%-auth must be USER:PASSWORD", r.err)
  end)
end)
