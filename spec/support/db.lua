-- Test databases on the throwaway PostgreSQL that scripts/with-postgres starts.
-- Every spec gets its own database, cloned from a template that has tarry's schema.
local db = {}

local counter = 0
local template_ready = false

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
db.shell_quote = shell_quote

--- Run SQL through psql on database `name`; returns stdout. Raises with psql's stderr on error.
function db.psql(name, sql)
  local errfile = os.tmpname()
  local cmd = string.format("psql -X -q -At -F '\t' -v ON_ERROR_STOP=1 -d %s -c %s 2>%s",
    shell_quote(name), shell_quote(sql), errfile)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok = p:close()
  local f = io.open(errfile); local err = f and f:read("a") or ""; if f then f:close() end
  os.remove(errfile)
  if not ok then error("psql failed: " .. err .. "\nSQL: " .. sql, 2) end
  return out
end

--- Run SQL on `name` and return the rows as arrays of strings (NULL is nil, the separator is a tab).
function db.rows(name, sql)
  local out = db.psql(name, sql)
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do row[#row + 1] = field end
    rows[#rows + 1] = row
  end
  return rows
end

--- The single value of a one-row, one-column query (a string, or nil when there is no row).
function db.value(name, sql)
  local out = db.psql(name, sql):gsub("\n$", "")
  if out == "" then return nil end
  return out
end

function db.apply_schema_file(name, path)
  local errfile = os.tmpname()
  local ok = os.execute(string.format("psql -X -q -v ON_ERROR_STOP=1 -d %s -f %s >/dev/null 2>%s",
    shell_quote(name), shell_quote(path), errfile))
  local f = io.open(errfile); local err = f:read("a"); f:close(); os.remove(errfile)
  if not ok then error("applying " .. path .. " failed: " .. err, 2) end
end

local function ensure_template()
  if template_ready then return end
  db.psql("postgres", "DROP DATABASE IF EXISTS tarry_template")
  db.psql("postgres", "CREATE DATABASE tarry_template")
  db.apply_schema_file("tarry_template", "lua/tarry/schema.sql")
  template_ready = true
end

--- A new, empty database. opts.schema (default true) clones it from a template with tarry's schema.
--- Returns its name; db.conninfo(name) gives a libpq connection string for it.
function db.fresh(opts)
  opts = opts or {}
  counter = counter + 1
  local name = string.format("tarry_spec_%d_%d", math.floor(os.time() % 100000), counter)
  while db.value("postgres", "SELECT 1 FROM pg_database WHERE datname = '" .. name .. "'") do
    counter = counter + 1
    name = string.format("tarry_spec_%d_%d", math.floor(os.time() % 100000), counter)
  end
  if opts.schema == false then
    db.psql("postgres", "CREATE DATABASE " .. name)
  else
    ensure_template()
    db.psql("postgres", "CREATE DATABASE " .. name .. " TEMPLATE tarry_template")
  end
  return name
end

function db.drop(name)
  db.psql("postgres", "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
end

function db.conninfo(name)
  return "dbname=" .. name
end

--- Stop / start the throwaway server (scripts/with-postgres runs pg_virtualenv's cluster "regress").
--- action: "stop", "start" or "restart" (stop then start: pg_ctlcluster's own restart refuses
--- pg_virtualenv's temporary clusters). mode: how to stop, "fast" (the default: every session is
--- terminated, open transactions roll back), "smart" or "immediate".
function db.server(action, mode)
  if action == "restart" then db.server("stop", mode); return db.server("start") end
  local v = os.getenv("PGVERSION") or "15"
  local how = action == "stop" and ("-m " .. (mode or "fast") .. " ") or ""
  local ok = os.execute(string.format("pg_ctlcluster %s%s regress %s >/dev/null 2>&1", how, v, action))
  assert(ok, "pg_ctlcluster " .. action .. " failed")
end

--- db.value, or nil while the server cannot answer (it is being restarted, say).
function db.try_value(name, sql)
  local ok, v = pcall(db.value, name, sql)
  if ok then return v end
  return nil
end

return db
