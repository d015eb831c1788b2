-- LuaJIT (LÖVE, Defold, Neovim, OpenResty) deferring tarry jobs through libtarry.so's FFI:
-- no Lua 5.4 module involved.
--   luajit scripts/examples/luajit_ffi.lua [CONNINFO [LIBRARY]]
--   (defaults: "" = the PG* variables; build/lib/libtarry.so, or $TARRY_CLIENT_LIB)
-- Prints one line per outcome; exit status 0 when the jobs were deferred.
local ffi = require "ffi"

ffi.cdef [[
typedef struct tarry_client tarry_client;
typedef struct tarry_pending tarry_pending;
typedef struct tarry_defer_options {
    const char *queue; const char *lock; const char *queueing_lock; int priority; double schedule_at;
} tarry_defer_options;
tarry_client *tarry_client_open(const char *conninfo, int max_connections, char *err, size_t errlen);
void tarry_client_close(tarry_client *c);
int64_t tarry_defer(tarry_client *c, const char *task_name, const char *args_json,
                    const tarry_defer_options *opts, char *err, size_t errlen);
tarry_pending *tarry_defer_start(tarry_client *c, const char *task_name, const char *args_json,
                                 const tarry_defer_options *opts, char *err, size_t errlen);
int tarry_client_step(tarry_client *c);
int tarry_client_fd(tarry_client *c);
struct pollfd { int fd; short events; short revents; };
int poll(struct pollfd *fds, unsigned long nfds, int timeout);
int tarry_pending_state(const tarry_pending *h);
int64_t tarry_pending_id(const tarry_pending *h);
const char *tarry_pending_error(const tarry_pending *h);
void tarry_pending_free(tarry_pending *h);
]]

local conninfo = arg[1] or ""
local tarry = ffi.load(arg[2] or os.getenv("TARRY_CLIENT_LIB") or "build/lib/libtarry.so")
local err = ffi.new("char[512]")

-- A client closed by the garbage collector, or explicitly with ffi.gc(c, nil) + close.
local client = tarry.tarry_client_open(conninfo, 2, err, 512)
if client == nil then
  io.stderr:write("luajit_ffi: ", ffi.string(err), "\n")
  os.exit(1)
end
client = ffi.gc(client, tarry.tarry_client_close)

-- Blocking: returns the id, or nil and the error line ("already_enqueued: ...").
local function defer(task, args_json, opts)
  local id = tarry.tarry_defer(client, task, args_json, opts, err, 512)
  if id > 0 then return tonumber(id) end
  return nil, ffi.string(err)
end

local ok = true
local function show(what, id, e)
  print(what .. ": " .. (id and ("id=" .. id) or ("error=" .. e)))
end

local opts = ffi.new("tarry_defer_options", { queue = "luajit", priority = 5, queueing_lock = "ffi-once" })
local id, e = defer("editor.save", '{"file": "init.lua", "lines": 42}', opts)
ok = ok and id ~= nil
show("defer", id, e)
id, e = defer("editor.save", '{"file": "init.lua"}', opts)      -- the queueing lock is taken
ok = ok and id == nil and e:match("^already_enqueued: ") ~= nil
show("same queueing lock", id, e)
id, e = defer("editor.save", '["not", "an", "object"]', nil)
ok = ok and id == nil and e:match("^invalid_args: ") ~= nil
show("bad args", id, e)

-- Non-blocking, as a frame loop would: start, then step once per 16 ms frame until done (the
-- frame's wait is a poll on the client's socket, so an answer ends it early).
local h = tarry.tarry_defer_start(client, "editor.autosave", '{"n": 1}', nil, err, 512)
assert(h ~= nil, ffi.string(err))
h = ffi.gc(h, tarry.tarry_pending_free)
local pfd = ffi.new("struct pollfd[1]")
for _ = 1, 600 do                         -- at most 10 s of frames
  tarry.tarry_client_step(client)
  if tarry.tarry_pending_state(h) ~= 0 then break end
  pfd[0].fd, pfd[0].events = tarry.tarry_client_fd(client), 1     -- POLLIN
  ffi.C.poll(pfd, pfd[0].fd >= 0 and 1 or 0, 16)
end
if tarry.tarry_pending_state(h) == 1 then
  show("defer_start", tonumber(tarry.tarry_pending_id(h)))
else
  ok = false
  show("defer_start", nil, tarry.tarry_pending_state(h) == 0 and "still pending" or ffi.string(tarry.tarry_pending_error(h)))
end
os.exit(ok and 0 or 1, true)        -- true: close the state, so the finalizers free the handle and client
