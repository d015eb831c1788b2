/* tarry.App: a task registry (shared by every app made with with_connector), a connector,
 * and the defer path: validate and encode jobs, then insert them through the connector
 * with one statement, whatever the batch size. User values: 1 the registry table
 * {tasks=, aliases=}, 2 the connector, 3 a table of per-app fields set from Lua. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tarry_private.h"

/* One statement for any number of jobs: $1 is a JSON array of jobs, in order, each job an array
   [task, queue, lock, queueing_lock, priority, at, args]. It is the INSERT that
   procrastinate_defer_jobs_v1 runs (PROTOCOL.md 4.1: the seven fields into their columns,
   explicit NULLs kept, the other columns their defaults, one statement, ids in input order),
   written out so that the database runs one statement instead of a call into PL/pgSQL that runs
   it: about 7% fewer backend instructions per single defer (callgrind). Each job is an array,
   not an object, because jsonb sorts the keys of every object it parses: with objects, that sort
   and the key lookups were a tenth of the backend's time in a bulk defer. The ORDER BY n draws
   the ids in array order, so sorting them gives back the input order. */
static const char DEFER_SQL[] =
    "WITH inserted AS (INSERT INTO procrastinate_jobs"
    " (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)"
    " SELECT j->>1, j->>0, (j->>4)::integer, j->>2, j->>3,"
    " j->6, CASE WHEN j->>5 IS NOT NULL THEN"
    " LEAST(to_timestamp((j->>5)::double precision), '9999-12-31 23:59:59.999999+00') END"
    " FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS x(j, n) ORDER BY n RETURNING id)"
    " SELECT id FROM inserted ORDER BY id";

#include "defer_limits.h"        /* MAX_NAME_CHARS, MAX_QUEUE_BYTES, ... (shared with libtarry.so) */

static int app_check(lua_State *L, int idx)
{
    luaL_checkudata(L, idx, TARRY_APP_MT);
    return lua_absindex(L, idx);
}

/* ---- validating one job ---- */

typedef struct job_error { char msg[400]; const char *code; } job_error;

static size_t utf8_chars(const char *s, size_t n)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)s[i] & 0xC0) != 0x80;
    return chars;
}

/* Whether PostgreSQL can store s (n bytes) in a text column: no NUL, valid UTF-8, and at most
   max bytes (0: no limit here). Otherwise e says why, naming the field. */
static int storable(const char *name, const char *s, size_t n, size_t max, job_error *e)
{
    const char *nul = memchr(s, '\0', n);
    size_t good = tarry_json_utf8_valid(s, n);
    if (nul)
        snprintf(e->msg, sizeof e->msg, "%s has a NUL byte at byte %zu (PostgreSQL cannot store it)",
                 name, (size_t)(nul - s) + 1);
    else if (good < n)
        snprintf(e->msg, sizeof e->msg, "%s is not valid UTF-8 (invalid byte at position %zu)", name,
                 good + 1);
    else if (max > 0 && n > max)
        snprintf(e->msg, sizeof e->msg, "%s has %zu bytes, more than the %zu allowed (it is a key "
                 "of a PostgreSQL index)", name, n, max);
    else return 1;
    return 0;
}

/* One job's fields, read and checked. The strings point into values read_job left on the Lua
   stack: valid while those stay. NULL: the field is absent (lock, queueing_lock). */
typedef struct job_fields {
    const char *str[4];                 /* task_name, queue, lock, queueing_lock */
    size_t len[4];
    lua_Integer priority;
    int has_at;
    double at;                          /* scheduled_at, at most MAX_SCHEDULE */
    int args;                           /* stack slot of the args table, 0 if none (then {}) */
} job_fields;


/* Reads the string field name of the table at job, leaving its value pushed. 0, with e filled,
   when it is not a string (nil is one when not required) or not storable. */
static int string_field(lua_State *L, int job, const char *name, int required, size_t max,
                        job_error *e, const char **s, size_t *n)
{
    int t = lua_getfield(L, job, name);
    *s = NULL;
    *n = 0;
    if (t == LUA_TNIL && !required) return 1;
    if (t != LUA_TSTRING) {
        snprintf(e->msg, sizeof e->msg, "%s must be a string, got %s", name, lua_typename(L, t));
        return 0;
    }
    *s = lua_tolstring(L, -1, n);
    return storable(name, *s, *n, max, e);
}

static int check_names(const job_fields *f, job_error *e)
{
    size_t tn = f->len[0], qn = f->len[1];
    if (tn == 0 || utf8_chars(f->str[0], tn) > MAX_NAME_CHARS)
        snprintf(e->msg, sizeof e->msg, "task name must have 1 to %d characters", MAX_NAME_CHARS);
    else if (qn == 0 || qn > MAX_QUEUE_BYTES)
        snprintf(e->msg, sizeof e->msg, "queue name \"%.60s\" must have 1 to %d bytes (the NOTIFY "
                 "channel procrastinate_queue_v1#<queue> must stay under 64 bytes)",
                 f->str[1], MAX_QUEUE_BYTES);
    else return 1;
    return 0;
}

static int priority_field(lua_State *L, int job, job_error *e, lua_Integer *p)
{
    int t = lua_getfield(L, job, "priority"), isint = 0;
    *p = 0;
    if (t != LUA_TNIL) {
        *p = lua_tointegerx(L, -1, &isint);
        if (!isint || t != LUA_TNUMBER || *p < -2147483648LL || *p > 2147483647LL) {
            snprintf(e->msg, sizeof e->msg, "priority must be an integer that fits in 32 bits");
            lua_pop(L, 1);
            return 0;
        }
    }
    lua_pop(L, 1);
    return 1;
}

static int schedule_field(lua_State *L, int job, job_error *e, job_fields *f)
{
    int t = lua_getfield(L, job, "scheduled_at");
    double at = lua_tonumber(L, -1);
    lua_pop(L, 1);
    f->has_at = t != LUA_TNIL;
    if (!f->has_at) return 1;
    if (t != LUA_TNUMBER || !isfinite(at)) {
        snprintf(e->msg, sizeof e->msg, "scheduled_at must be a finite number (seconds since the epoch)");
        return 0;
    }
    f->at = at > MAX_SCHEDULE ? MAX_SCHEDULE : at;
    return 1;
}

/* The job's args, left pushed; their slot, or 0 for none (nil: the job gets {}). They are
   checked as they are written (write_args). */
static int args_field(lua_State *L, int job)
{
    if (lua_getfield(L, job, "args") != LUA_TNIL) return lua_gettop(L);
    lua_pop(L, 1);
    return 0;
}

/* Reads and checks the job table at `job` into f, in the order its errors are reported; leaves
   pushed the values f's strings point into, and the args (the caller restores the stack top).
   0 with e filled in when the job is refused. */
static int read_job(lua_State *L, int job, job_fields *f, job_error *e)
{
    e->code = "invalid_job";
    if (!string_field(L, job, "task_name", 1, 0, e, &f->str[0], &f->len[0])
        || !string_field(L, job, "queue", 1, 0, e, &f->str[1], &f->len[1])
        || !string_field(L, job, "lock", 0, MAX_LOCK_BYTES, e, &f->str[2], &f->len[2])
        || !string_field(L, job, "queueing_lock", 0, MAX_LOCK_BYTES, e, &f->str[3], &f->len[3])
        || !priority_field(L, job, e, &f->priority) || !schedule_field(L, job, e, f)
        || !check_names(f, e))
        return 0;
    f->args = args_field(L, job);
    return 1;
}

/* ---- deferring ---- */

/* Raises an error object for job i (from 1) of n: "job #i: msg" in a batch, msg alone. */
static void raise_job_error(lua_State *L, size_t n, size_t i, const char *code, const char *msg)
{
    if (n > 1) tarry_push_error(L, code, "job #%d: %s", (int)i, msg);
    else tarry_push_error(L, code, "%s", msg);
    lua_error(L);
}

/* Raises invalid_args for job i (from 1) of n, whose args have len bytes of JSON text. */
static void args_too_big(lua_State *L, size_t n, size_t i, size_t len)
{
    char msg[128];
    snprintf(msg, sizeof msg, "args: %zu bytes of JSON, more than the %d allowed (16 MiB)", len,
             MAX_ARGS_BYTES);
    raise_job_error(L, n, i, "invalid_args", msg);
}

/* Calls each(L, &fields, i, n, data) for job i (from 1) of the n in the array at jobs, with
   its fields read and checked; raises an error object naming the first bad one. each writes
   (and so checks) fields.args. */
static void each_job(lua_State *L, int jobs,
                     void (*each)(lua_State *, job_fields *, size_t, size_t, void *), void *data)
{
    size_t n = (size_t)luaL_len(L, jobs);
    job_fields f;
    job_error e;
    for (size_t i = 1; i <= n; i++) {
        int top = lua_gettop(L);
        if (lua_rawgeti(L, jobs, (lua_Integer)i) != LUA_TTABLE) {
            tarry_push_error(L, "invalid_job", "job %d is not a table", (int)i);
            lua_error(L);
        }
        if (!read_job(L, top + 1, &f, &e)) raise_job_error(L, n, i, e.code, e.msg);
        each(L, &f, i, n, data);
        lua_settop(L, top);
    }
}

/* -- the batch as JSON text, for a C connector --
   The outer objects are written here, field by field, the args by json.c's writer. The text
   grows in a userdata, so that an error on the way frees it (its __gc). */
#define BATCH_TEXT_MT "tarry.app.batch_text"

typedef struct batch_text {
    tarry_json_buf text;
    int oom;
} batch_text;

static int batch_text_gc(lua_State *L)
{
    batch_text *b = luaL_checkudata(L, 1, BATCH_TEXT_MT);
    free(b->text.p);
    b->text.p = NULL;
    return 0;
}

/* [-0, +1, m] */
static batch_text *new_batch_text(lua_State *L)
{
    batch_text *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, BATCH_TEXT_MT);
    return b;
}

static void put(batch_text *b, const char *s, size_t n)
{
    if (!b->oom && tarry_json_buf_out(s, n, &b->text) != 0) b->oom = 1;
}

#define PUT_LITERAL(b, s) put((b), (s), sizeof(s) - 1)

static int put_cb(const char *s, size_t n, void *data)
{
    batch_text *b = data;
    put(b, s, n);
    return b->oom ? -1 : 0;
}

/* s (n bytes, valid UTF-8) as a JSON string token (a refusal sets b->oom). */
static void put_string(batch_text *b, const char *s, size_t n)
{
    tarry_json_write_string(s, n, put_cb, b);
}

/* Writes job i's (of n) args as JSON through out: {} when it has none. Raises invalid_args
   naming the job when they have no JSON form, or are bigger than MAX_ARGS_BYTES (the bytes
   counted by count_out); out NULL only checks them. */
typedef struct args_out { tarry_json_out out; void *data; size_t bytes; int refused; } args_out;

static int count_out(const char *s, size_t len, void *data)
{
    args_out *a = data;
    a->bytes += len;
    if (a->out && a->out(s, len, a->data) != 0) a->refused = 1;
    return a->refused ? -1 : 0;
}

static void write_args(lua_State *L, job_fields *f, size_t i, size_t n, tarry_json_out out, void *data)
{
    job_error e;
    args_out a = { out, data, 0, 0 };
    if (f->args == 0) {
        if (out && out("{}", 2, data) != 0) luaL_error(L, "out of memory");
        return;
    }
    if (!tarry_json_write(L, f->args, "args", 1, count_out, &a, e.msg, sizeof e.msg)) {
        if (a.refused) luaL_error(L, "out of memory");
        raise_job_error(L, n, i, "invalid_args", e.msg);
    }
    if (a.bytes > MAX_ARGS_BYTES) args_too_big(L, n, i, a.bytes);
}

static void put_integer(batch_text *b, long long v)
{
    char buf[24], *end = buf + sizeof buf, *p = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do { *--p = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) *--p = '-';
    put(b, p, (size_t)(end - p));
}

/* each_job's step: job i's array (DEFER_SQL's order: task, queue, lock, queueing_lock,
   priority, at, args), joined to the array of jobs. */
static void put_job(lua_State *L, job_fields *f, size_t i, size_t n, void *data)
{
    batch_text *b = data;
    char num[40];
    put(b, i == 1 ? "[[" : ",[", 2);
    for (int k = 0; k < 4; k++) {
        if (k) PUT_LITERAL(b, ",");
        if (f->str[k]) put_string(b, f->str[k], f->len[k]);
        else PUT_LITERAL(b, "null");
    }
    PUT_LITERAL(b, ",");
    put_integer(b, (long long)f->priority);
    if (f->has_at) put(b, num, (size_t)snprintf(num, sizeof num, ",%.17g,", f->at));
    else PUT_LITERAL(b, ",null,");
    write_args(L, f, i, n, put_cb, b);
    if (b->oom) luaL_error(L, "out of memory");
    put(b, i == n ? "]]" : "]", i == n ? 2 : 1);
}

/* Pushes the JSON text of the jobs at `jobs`, validated: the array of job arrays the defer
   statement reads.  [-0, +1, e] */
static void push_batch_text(lua_State *L, int jobs)
{
    batch_text *b = new_batch_text(L);
    each_job(L, jobs, put_job, b);
    if (b->oom) luaL_error(L, "out of memory");
    if (b->text.n == 0) lua_pushliteral(L, "[]");
    else lua_pushlstring(L, b->text.p, b->text.n);
    free(b->text.p);
    b->text.p = NULL;
    lua_remove(L, -2);
}

/* -- the jobs as tables, for a connector written in Lua (MemoryConnector, a user's) --
   connector:defer_jobs(list) where each job has queue_name, task_name, priority, lock,
   queueing_lock, args (JSON text), scheduled_at. The args of every job are written in turn into
   one batch_text (freed by its __gc, on an error too). */
typedef struct job_list { int list; batch_text *args; } job_list;

static void push_job_table(lua_State *L, job_fields *f, size_t i, size_t n, void *data)
{
    static const char *const names[4] = { "task_name", "queue_name", "lock", "queueing_lock" };
    job_list *jl = data;
    jl->args->text.n = 0;
    write_args(L, f, i, n, put_cb, jl->args);
    if (jl->args->oom) luaL_error(L, "out of memory");
    lua_createtable(L, 0, 7);
    lua_pushlstring(L, jl->args->text.p, jl->args->text.n);
    lua_setfield(L, -2, "args");
    for (int k = 0; k < 4; k++) {
        if (!f->str[k]) continue;
        lua_pushlstring(L, f->str[k], f->len[k]);
        lua_setfield(L, -2, names[k]);
    }
    lua_pushinteger(L, f->priority);
    lua_setfield(L, -2, "priority");
    if (f->has_at) { lua_pushnumber(L, f->at); lua_setfield(L, -2, "scheduled_at"); }
    lua_rawseti(L, jl->list, (lua_Integer)i);
}

static int defer_through_lua(lua_State *L, int conn, int jobs)
{
    job_list jl;
    if (lua_getfield(L, conn, "defer_jobs") == LUA_TNIL)
        return luaL_error(L, "the app's connector has no defer_jobs method");
    lua_pushvalue(L, conn);
    lua_createtable(L, (int)luaL_len(L, jobs), 0);
    jl.list = lua_gettop(L);
    jl.args = new_batch_text(L);
    each_job(L, jobs, push_job_table, &jl);
    free(jl.args->text.p);              /* now, not when the collector gets to it */
    jl.args->text.p = NULL;
    lua_pop(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* Insert the batch whose JSON text is at `text` (rows jobs) through the C connector at conn. */
static int insert_text(lua_State *L, int conn, int text, int rows)
{
    const char *params[1] = { lua_tostring(L, text) };
    tarry_query q = { DEFER_SQL, 1, params, TARRY_RESULT_IDS, rows, 1 };
    return tarry_connector_query(L, conn, &q);
}

/* app:_defer_jobs(jobs) -> ids. jobs: an array of {task_name=, queue=, priority=, lock=,
   queueing_lock=, args=, scheduled_at=}. Inserted in one statement, ids in order. Raises an
   error object (code invalid_args, invalid_job, already_enqueued, connection, database).
   Inside a tarry coroutine on an open PgConnector it yields that coroutine only (and may share
   its statement with other coroutines' defers: pg_connector.c).  [-2, +1, e] */
static int app_defer_jobs(lua_State *L)
{
    int app = app_check(L, 1), conn;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_getiuservalue(L, app, 2);
    conn = lua_gettop(L);
    if (luaL_len(L, 2) == 0) { lua_newtable(L); return 1; }
    if (!tarry_is_c_connector(L, conn)) return defer_through_lua(L, conn, 2);
    push_batch_text(L, 2);
    return insert_text(L, conn, lua_gettop(L), (int)luaL_len(L, 2));
}

/* each_job's step when only checking: the args are written to nowhere. */
static void check_job(lua_State *L, job_fields *f, size_t i, size_t n, void *data)
{
    (void)data;
    write_args(L, f, i, n, NULL, NULL);
}

/* app:_encode_jobs(jobs) -> text | false: validates jobs as _defer_jobs does (raising the same
   error objects) without inserting them. For a C connector, the JSON text to give
   _insert_jobs; for a connector written in Lua, false (insert them with _defer_jobs).  [-2, +1, e] */
static int app_encode_jobs(lua_State *L)
{
    int app = app_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_getiuservalue(L, app, 2);
    if (tarry_is_c_connector(L, 3)) { push_batch_text(L, 2); return 1; }
    each_job(L, 2, check_job, NULL);
    lua_pushboolean(L, 0);
    return 1;
}

/* app:_insert_jobs(text, n) -> ids: insert the n jobs of text (from _encode_jobs) as
   _defer_jobs does.  [-3, +1, e] */
static int app_insert_jobs(lua_State *L)
{
    int app = app_check(L, 1), rows = (int)luaL_checkinteger(L, 3);
    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    if (rows == 0) { lua_newtable(L); return 1; }
    lua_getiuservalue(L, app, 2);
    return insert_text(L, 3, 2, rows);
}

/* ---- the object ---- */

static void check_connector(lua_State *L, int idx)
{
    if (tarry_is_c_connector(L, idx)) return;
    if ((lua_istable(L, idx) || lua_isuserdata(L, idx)) && lua_getfield(L, idx, "defer_jobs") != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_argerror(L, idx, "expected a connector (tarry.PgConnector, tarry.SyncPgConnector, "
                          "tarry.MemoryConnector or an object with defer_jobs)");
}

/* Push a new app over `registry` (a table, or nil for a new one) with connector.  [-0, +1, e] */
static void push_app(lua_State *L, int registry, int connector)
{
    lua_newuserdatauv(L, 0, 3);
    luaL_setmetatable(L, TARRY_APP_MT);
    if (registry) {
        lua_pushvalue(L, registry);
    } else {
        lua_createtable(L, 0, 2);
        lua_newtable(L);
        lua_setfield(L, -2, "tasks");
        lua_newtable(L);
        lua_setfield(L, -2, "aliases");
    }
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, connector);
    lua_setiuservalue(L, -2, 2);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 3);
}

/* core.App(connector) -> app  [-1, +1, e] */
static int app_new(lua_State *L)
{
    check_connector(L, 1);
    push_app(L, 0, 1);
    return 1;
}

/* app:with_connector(c) -> a new app sharing this one's tasks, using c.  [-2, +1, e] */
static int app_with_connector(lua_State *L)
{
    int app = app_check(L, 1);
    check_connector(L, 2);
    lua_getiuservalue(L, app, 1);
    push_app(L, lua_gettop(L), 2);
    return 1;
}

static int call_connector(lua_State *L, const char *method)
{
    int app = app_check(L, 1);
    lua_settop(L, 1);
    lua_getiuservalue(L, app, 2);
    if (lua_getfield(L, -1, method) != LUA_TNIL) {
        lua_pushvalue(L, -2);
        lua_call(L, 1, 0);
    }
    lua_settop(L, 1);
    return 1;
}

/* app:open() -> app: opens the connector (for `local a <close> = app:open()`). */
static int app_open(lua_State *L) { return call_connector(L, "open"); }
/* app:close(): closes the connector. Idempotent; also the __close metamethod. */
static int app_close(lua_State *L) { call_connector(L, "close"); return 0; }
static int app_spawn(lua_State *L) { app_check(L, 1); return tarry_rt_spawn(L, 2); }
static int app_run(lua_State *L) { app_check(L, 1); return tarry_rt_run(L); }

/* core.app_fields(app) -> the per-app table the Lua layer keeps its fields in. */
static int app_fields(lua_State *L)
{
    lua_getiuservalue(L, app_check(L, 1), 3);
    return 1;
}

/* __index: methods, then `connector`, `registry`, then per-app fields, then methods.__fallback. */
static int app_index(lua_State *L)
{
    const char *k = lua_tostring(L, 2);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
    if (k && lua_type(L, 2) == LUA_TSTRING) {
        if (strcmp(k, "connector") == 0) { lua_getiuservalue(L, 1, 2); return 1; }
        if (strcmp(k, "registry") == 0) { lua_getiuservalue(L, 1, 1); return 1; }
    }
    lua_getiuservalue(L, 1, 3);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL) return 1;
    if (lua_getfield(L, lua_upvalueindex(1), "__fallback") != LUA_TFUNCTION) return 0;
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_call(L, 2, 1);
    return 1;
}

static int app_newindex(lua_State *L)
{
    return luaL_error(L, "cannot set field '%s' of a tarry.App (register tasks with app:task)",
                      luaL_tolstring(L, 2, NULL));
}

static int app_tostring(lua_State *L)
{
    int app = app_check(L, 1), ntasks = 0;
    lua_getiuservalue(L, app, 1);
    lua_getfield(L, -1, "tasks");
    lua_pushnil(L);
    while (lua_next(L, -2)) { ntasks++; lua_pop(L, 1); }
    lua_getiuservalue(L, app, 2);
    lua_pushfstring(L, "<tarry.App %d task%s, connector %s>", ntasks, ntasks == 1 ? "" : "s",
                    luaL_tolstring(L, -1, NULL));
    return 1;
}

void tarry_app_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "with_connector", app_with_connector }, { "open", app_open }, { "close", app_close },
        { "spawn", app_spawn }, { "run", app_run }, { "_defer_jobs", app_defer_jobs },
        { "_encode_jobs", app_encode_jobs }, { "_insert_jobs", app_insert_jobs }, { NULL, NULL } };
    luaL_newmetatable(L, BATCH_TEXT_MT);
    lua_pushcfunction(L, batch_text_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, TARRY_APP_MT);
    luaL_newlib(L, methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "App_methods");        /* the Lua layer adds task(), configure_task()... */
    lua_pushcclosure(L, app_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, app_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, app_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, app_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, app_new);
    lua_setfield(L, -2, "App");
    lua_pushcfunction(L, app_fields);
    lua_setfield(L, -2, "app_fields");
    lua_pushstring(L, DEFER_SQL);              /* the same statement for tarry.HostConnector */
    lua_setfield(L, -2, "DEFER_SQL");
}
