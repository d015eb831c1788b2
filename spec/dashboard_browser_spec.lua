-- The dashboard in a real headless Chromium (Debian's chromium + chromedriver, WebDriver over
-- HTTP): the page renders the jobs of a real PostgreSQL, opens a job, retries it, shows hostile
-- arguments as text, and leaves a screenshot in <build>/artifacts/ for the suite to keep.
local db = require "support.db"
local proc = require "support.process"
local http = require "support.http"
local webdriver = require "support.webdriver"

local ARTIFACTS = (os.getenv("TARRY_BUILD_DIR") or "build") .. "/artifacts"

local name, dash, url, browser

local function sql_ids(sql)
  local ids = {}
  for id in db.value(name, sql):gmatch("%d+") do ids[#ids + 1] = tonumber(id) end
  return ids
end

local function defer(queue, task, args)
  return sql_ids(string.format("SELECT array_to_string(procrastinate_defer_jobs_v1(ARRAY[ROW('%s', '%s', 0, NULL, NULL, "
    .. "'%s'::jsonb, NULL)::procrastinate_job_to_defer_v1]), ',')", queue, task, args))[1]
end

describe("tarry dashboard in a browser", function()
  before_each(function()
    assert(webdriver.available(), "chromium and chromedriver are needed (scripts/deps installs them)")
    name = db.fresh()
  end)
  after_each(function()
    if browser then browser:quit() end
    browser = nil
    http.stop_dashboard(dash)
    dash = nil
    proc.kill_all()
    db.drop(name)
  end)

  it("lists the jobs of the database, opens one, retries it, and renders hostile arguments as text", function()
    for i = 1, 5 do defer("emails", "send_welcome", string.format('{"user_id": %d, "locale": "en"}', 100 + i)) end
    defer("reports", "build_report", '{"month": "2026-11"}')
    local failed = defer("emails", "send_invoice", '{"invoice": 7781}')
    db.psql(name, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = " .. failed)
    db.psql(name, "UPDATE procrastinate_jobs SET status = 'failed', attempts = 1 WHERE id = " .. failed)
    db.psql(name, "INSERT INTO tarry_job_errors_v1 (job_id, attempt, message, traceback) VALUES (" .. failed
      .. ", 1, 'failed: smtp: connection refused', 'stack traceback:\n\tapp.lua:12: in function ''send_invoice''')")
    local hostile = defer("emails", "<b>bold</b>", [[{"x": "<script>window.__pwned = 1</script>", "y": "\"><img src=x onerror=\"window.__pwned = 2\">"}]])
    dash, url = http.start_dashboard(name)
    browser = webdriver.start()

    browser:go(url .. "?view=jobs")
    browser:wait_for('tr[data-job-id="' .. hostile .. '"]')
    local rows = browser:js("return document.querySelectorAll('tr[data-job-id]').length")
    assert.equal(tonumber(db.value(name, "SELECT count(*) FROM procrastinate_jobs")), rows)
    assert.equal("send_invoice", browser:text('tr[data-job-id="' .. failed .. '"] td.task'))
    assert.equal("failed", browser:text('tr[data-job-id="' .. failed .. '"] .status'))

    -- hostile arguments and task names: shown literally, nothing injected, nothing run
    assert.equal("<b>bold</b>", browser:text('tr[data-job-id="' .. hostile .. '"] td.task'))
    local args_text = browser:text('tr[data-job-id="' .. hostile .. '"] td.args')
    assert.truthy(args_text:find("<script>window.__pwned = 1</script>", 1, true))
    assert.equal(0, browser:js("return document.querySelectorAll('main img, main script, main b').length"))
    assert.is_true(browser:js("return window.__pwned === undefined"))
    assert.is_nil(browser:alert_text())
    os.execute("mkdir -p " .. ARTIFACTS)
    browser:screenshot(ARTIFACTS .. "/dashboard.png")

    -- open the failed job, see its error, retry it
    browser:click('tr[data-job-id="' .. failed .. '"] a')
    browser:wait_for('#job-detail[data-job-id="' .. failed .. '"]')
    assert.equal("failed", browser:text("#job-status"))
    assert.truthy(browser:text("#job-errors"):find("smtp: connection refused", 1, true))
    assert.truthy(browser:text("#job-args"):find('"invoice": 7781', 1, true))
    browser:screenshot(ARTIFACTS .. "/dashboard-job.png")
    browser:click('#job-detail button[data-action="retry"]')
    proc.until_true(function()
      return browser:text("#job-status") == "todo"
    end, 20, "the page to show the job todo")
    assert.equal("todo", db.value(name, "SELECT status FROM procrastinate_jobs WHERE id = " .. failed))
    assert.equal("2", db.value(name, "SELECT attempts FROM procrastinate_jobs WHERE id = " .. failed))

    -- the hostile job's detail page: the same text, still nothing run
    browser:go(url .. "?job=" .. hostile)
    browser:wait_for('#job-detail[data-job-id="' .. hostile .. '"]')
    assert.truthy(browser:text("#job-args"):find('onerror=\\"window.__pwned = 2\\"', 1, true))
    assert.equal(0, browser:js("return document.querySelectorAll('main img, main script, main b').length"))
    assert.is_true(browser:js("return window.__pwned === undefined"))
  end)

  it("shows the throughput chart and the queues, and pauses its refresh while the tab is hidden", function()
    local app = proc.app_file(name, [[
app:task("resize_image", { queue = "images" }, function() end)
app:task("flaky", { queue = "images" }, function() error("flaky failure") end)
]])
    local values = {}
    for i = 1, 40 do values[#values + 1] = string.format("ROW('images', '%s', 0, NULL, NULL, '{\"n\": %d}'::jsonb, NULL)"
      .. "::procrastinate_job_to_defer_v1", i % 5 == 0 and "flaky" or "resize_image", i) end
    db.value(name, "SELECT procrastinate_defer_jobs_v1(ARRAY[" .. table.concat(values, ",") .. "]) IS NOT NULL")
    assert.equal(0, proc.start("worker --one-shot --concurrency 4 --app " .. app):wait(60))
    defer("images", "resize_image", '{"n": 41}')
    dash, url = http.start_dashboard(name, "--app " .. app)
    browser = webdriver.start()
    os.execute("mkdir -p " .. ARTIFACTS)
    browser:go(url)
    browser:wait_for('tr[data-queue="images"]')
    assert.equal("1", browser:text('tr[data-queue="images"] td:nth-child(2)'))    -- todo
    assert.equal("32", browser:text('tr[data-queue="images"] td:nth-child(4)'))   -- succeeded
    assert.equal("8", browser:text('tr[data-queue="images"] td:nth-child(5)'))    -- failed
    -- the chart drew both lines: green (succeeded) and red (failed) pixels
    local counts = browser:js([[
      const c = document.getElementById('throughput'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let ok = 0, bad = 0;
      for (let i = 0; i < d.length; i += 4) {
        const r = d[i], g = d[i + 1], b = d[i + 2];
        if (g > r + 60 && g > b + 20) ok++;
        if (r > g + 80 && r > b + 80) bad++;
      }
      return [ok, bad];]])
    browser:screenshot(ARTIFACTS .. "/dashboard-overview.png")
    assert.is_true(counts[1] > 0 and counts[2] > 0, "green and red pixels: " .. counts[1] .. ", " .. counts[2])
    -- hidden tab: refresh paused; visible again: live
    browser:js([[Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
      document.dispatchEvent(new Event('visibilitychange'));]])
    assert.equal("paused", browser:text("#refresh-state"))
    browser:js([[Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
      document.dispatchEvent(new Event('visibilitychange'));]])
    assert.equal("live", browser:text("#refresh-state"))
  end)
end)
