--- tarry: a job runner for Lua, compatible with Procrastinate's PostgreSQL protocol.
--
--     local tarry = require "tarry"
--     local app = tarry.App{ connector = tarry.PgConnector{ conninfo = "dbname=jobs" } }
--     local add = app:task("add", { queue = "math" }, function(args) return args.a + args.b end)
--     add:defer{ a = 1, b = 2 }
--
-- The mechanism (the app object, connectors, the defer path, the loop) is C, in tarry.core;
-- this file and its siblings add the Lua-side policy and sugar.
-- @module tarry
local core = require "tarry.core"
local app_methods = require "tarry.app"

-- The MemoryConnector and the HostConnector are loaded on first use: a worker on a PgConnector
-- (most processes) never needs them (about 50 KiB of Lua data). Tail calls, so that their
-- errors still point at the caller.
local function memory() return require "tarry.memory" end
local function host() return require "tarry.host_connector" end

local tarry = {
  version = core.version,
  PgConnector = core.PgConnector,
  SyncPgConnector = core.SyncPgConnector,
  MemoryConnector = function(...) return memory().new(...) end,
  --- tarry.HostConnector{ execute = fn }: defer on the host's own connection, in its transaction
  -- (tarry/host_connector.lua); tarry.HostConnector.luasql(conn) for a LuaSQL connection.
  HostConnector = setmetatable({ luasql = function(...) return host().luasql(...) end }, {
    __call = function(_, opts) return host().new(opts) end,
    __tostring = function() return "<tarry.HostConnector constructor: tarry.HostConnector{ execute = fn }, .luasql(conn)>" end,
  }),
  --- Sleep `seconds`: parks only the current coroutine inside a tarry coroutine, blocks elsewhere.
  sleep = core.sleep,
  --- Wall-clock time in seconds since the epoch, with sub-second precision.
  now = core.now,
  --- Mark a table as a JSON array (`tarry.array()` is the empty array `[]`).
  array = core.array,
  is_array = core.is_array,
  --- JSON null, in job arguments and decoded results.
  null = core.null,
  json = { encode = core.json_encode, decode = core.json_decode },
  --- true when v is a tarry error object (it has `code`, `message`, maybe `sqlstate`).
  is_error = core.is_error,
  --- true when the calling code runs in a coroutine tarry owns (where defer yields).
  in_coroutine = core.in_coroutine,
  --- The tarry type of v by its metatable, as io.type does for files: "App", "PgConnector",
  -- "SyncPgConnector", "MemoryConnector", "HostConnector", "Job", ... or nil for anything else.
  type = core.type,
}

app_methods.install(core.App_methods)

--- app:run_worker{ queues=, concurrency=, wait=, ... }: run a worker (see tarry/worker.lua).
function core.App_methods.run_worker(app, opts)
  local worker = require "tarry.worker"
  -- The garbage of the start-up (a command line's parser, loading the app) is collected before the
  -- worker allocates its own: otherwise it would lie in the heap until the Lua state doubled, which
  -- an idle worker never does, and the worker's data would be laid on top of it (the heap of an
  -- idle `tarry worker`: 1.65 MiB without this, 1.1 MiB with it). For every host, not only the CLI.
  collectgarbage("collect")
  return worker.run(app, opts)
end

--- tarry.Event(): an auto-reset event between tarry coroutines (ev:set(), ev:wait(timeout)).
tarry.Event = core.Event

--- Create an app: `tarry.App{ connector = c }`.
function tarry.App(opts)
  if type(opts) ~= "table" then
    error("tarry.App expects a table: tarry.App{ connector = tarry.PgConnector{...} }", 2)
  end
  for k in pairs(opts) do
    if k ~= "connector" then error("tarry.App: unknown option '" .. tostring(k) .. "'", 2) end
  end
  if opts.connector == nil then
    error("tarry.App needs a connector: tarry.App{ connector = tarry.PgConnector{...} }", 2)
  end
  return core.App(opts.connector)
end

-- In a REPL: <tarry 0.1.0: App, Event, MemoryConnector, PgConnector, SyncPgConnector, ...>
setmetatable(tarry, { __name = "tarry", __tostring = function(t)
  local names = {}
  for k in pairs(t) do names[#names + 1] = k end
  table.sort(names)
  return string.format("<tarry %s: %s>", t.version, table.concat(names, ", "))
end })

return tarry
