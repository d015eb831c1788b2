/* tarry.App: a task registry (shared by every app made with with_connector), a connector,
 * and the defer path: validate and encode jobs, then insert them through the connector
 * with one statement, whatever the batch size. User values: 1 the registry table
 * {tasks=, aliases=}, 2 the connector, 3 a table of per-app fields set from Lua. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tarry_private.h"

/* One statement for any number of jobs: $1 is a JSON array of job objects, in order. It is the
   INSERT that procrastinate_defer_jobs_v1 runs (PROTOCOL.md 4.1: the seven fields into their
   columns, explicit NULLs kept, the other columns their defaults, one statement, ids in input
   order), written out so that the database runs one statement instead of a call into PL/pgSQL
   that runs it: about 7% fewer backend instructions per single defer (callgrind). The ORDER BY n
   draws the ids in array order, so sorting them gives back the input order. */
static const char DEFER_SQL[] =
    "WITH inserted AS (INSERT INTO procrastinate_jobs"
    " (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)"
    " SELECT j->>'queue', j->>'task', (j->>'priority')::integer, j->>'lock', j->>'queueing_lock',"
    " j->'args', CASE WHEN j->>'at' IS NOT NULL THEN"
    " LEAST(to_timestamp((j->>'at')::double precision), '9999-12-31 23:59:59.999999+00') END"
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

/* A string field as a JSON string. NULL when absent (and required) or not storable. */
static json_t *string_field(lua_State *L, int job, const char *name, int required, size_t max,
                            job_error *e)
{
    size_t n;
    const char *s;
    json_t *j = NULL;
    int t = lua_getfield(L, job, name);
    if (t == LUA_TNIL && !required) { lua_pop(L, 1); return json_null(); }
    if (t != LUA_TSTRING) {
        snprintf(e->msg, sizeof e->msg, "%s must be a string, got %s", name, lua_typename(L, t));
        lua_pop(L, 1);
        return NULL;
    }
    s = lua_tolstring(L, -1, &n);
    if (storable(name, s, n, max, e) && !(j = json_stringn(s, n)))
        snprintf(e->msg, sizeof e->msg, "%s: out of memory", name);
    lua_pop(L, 1);
    return j;
}

static int check_names(const json_t *task, const json_t *queue, job_error *e)
{
    size_t tn = json_string_length(task), qn = json_string_length(queue);
    if (tn == 0 || utf8_chars(json_string_value(task), tn) > MAX_NAME_CHARS)
        snprintf(e->msg, sizeof e->msg, "task name must have 1 to %d characters", MAX_NAME_CHARS);
    else if (qn == 0 || qn > MAX_QUEUE_BYTES)
        snprintf(e->msg, sizeof e->msg, "queue name \"%.60s\" must have 1 to %d bytes (the NOTIFY "
                 "channel procrastinate_queue_v1#<queue> must stay under 64 bytes)",
                 json_string_value(queue), MAX_QUEUE_BYTES);
    else return 1;
    return 0;
}

static json_t *priority_field(lua_State *L, int job, job_error *e)
{
    lua_Integer p = 0;
    int t = lua_getfield(L, job, "priority"), isint = 0;
    if (t != LUA_TNIL) {
        p = lua_tointegerx(L, -1, &isint);
        if (!isint || t != LUA_TNUMBER || p < -2147483648LL || p > 2147483647LL) {
            snprintf(e->msg, sizeof e->msg, "priority must be an integer that fits in 32 bits");
            lua_pop(L, 1);
            return NULL;
        }
    }
    lua_pop(L, 1);
    return json_integer((json_int_t)p);
}

static json_t *schedule_field(lua_State *L, int job, job_error *e)
{
    int t = lua_getfield(L, job, "scheduled_at");
    double at;
    if (t == LUA_TNIL) { lua_pop(L, 1); return json_null(); }
    at = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (t != LUA_TNUMBER || !isfinite(at)) {
        snprintf(e->msg, sizeof e->msg, "scheduled_at must be a finite number (seconds since the epoch)");
        return NULL;
    }
    return json_real(at > MAX_SCHEDULE ? MAX_SCHEDULE : at);
}

static json_t *args_field(lua_State *L, int job, job_error *e)
{
    json_t *j;
    if (lua_getfield(L, job, "args") == LUA_TNIL) { lua_pop(L, 1); return json_object(); }
    j = tarry_json_from_lua(L, -1, "args", 1, e->msg, sizeof e->msg);
    lua_pop(L, 1);
    if (!j) e->code = "invalid_args";
    return j;
}

/* The JSON object of the job table at `job`, or NULL with e filled in. */
static json_t *job_json(lua_State *L, int job, job_error *e)
{
    json_t *o = json_object();
    static const char *const keys[] = { "task", "queue", "lock", "queueing_lock", "priority", "at", "args" };
    json_t *v[7];
    e->code = "invalid_job";
    v[0] = string_field(L, job, "task_name", 1, 0, e);
    v[1] = v[0] ? string_field(L, job, "queue", 1, 0, e) : NULL;
    v[2] = v[1] ? string_field(L, job, "lock", 0, MAX_LOCK_BYTES, e) : NULL;
    v[3] = v[2] ? string_field(L, job, "queueing_lock", 0, MAX_LOCK_BYTES, e) : NULL;
    v[4] = v[3] ? priority_field(L, job, e) : NULL;
    v[5] = v[4] ? schedule_field(L, job, e) : NULL;
    v[6] = (v[5] && check_names(v[0], v[1], e)) ? args_field(L, job, e) : NULL;
    for (int i = 0; i < 7; i++) {
        if (!v[6]) { json_decref(v[i]); continue; }
        json_object_set_new(o, keys[i], v[i]);
    }
    if (!v[6]) { json_decref(o); return NULL; }
    return o;
}

/* ---- deferring ---- */

/* Raises an error object for job i (from 1) of n: "job #i: msg" in a batch, msg alone. */
static void raise_job_error(lua_State *L, size_t n, size_t i, const char *code, const char *msg)
{
    if (n > 1) tarry_push_error(L, code, "job #%d: %s", (int)i, msg);
    else tarry_push_error(L, code, "%s", msg);
    lua_error(L);
}

/* Encode every job into one JSON array; raise an error object naming the first bad one. */
static json_t *encode_jobs(lua_State *L, int jobs)
{
    lua_Integer n = luaL_len(L, jobs);
    json_t *batch = json_array();
    job_error e;
    for (lua_Integer i = 1; i <= n; i++) {
        json_t *o;
        if (lua_rawgeti(L, jobs, i) != LUA_TTABLE) {
            json_decref(batch);
            tarry_push_error(L, "invalid_job", "job %d is not a table", (int)i);
            lua_error(L);
        }
        o = job_json(L, lua_gettop(L), &e);
        lua_pop(L, 1);
        if (!o) {
            json_decref(batch);
            raise_job_error(L, (size_t)n, (size_t)i, e.code, e.msg);
        }
        json_array_append_new(batch, o);
    }
    return batch;
}

/* Bytes of j's JSON text (0 if out of memory: then the text is not sent either). */
static size_t dumped_len(const json_t *j)
{
    char *text = tarry_json_dump(j);
    size_t n = text ? strlen(text) : 0;
    free(text);
    return n;
}

/* Raises invalid_args for job i (from 1) of n, whose args have len bytes of JSON text. */
static void args_too_big(lua_State *L, size_t n, size_t i, size_t len)
{
    char msg[128];
    snprintf(msg, sizeof msg, "args: %zu bytes of JSON, more than the %d allowed (16 MiB)", len,
             MAX_ARGS_BYTES);
    raise_job_error(L, n, i, "invalid_args", msg);
}

/* Raises invalid_args, freeing batch and text, if one job's args (their JSON text alone, as
   json_encode gives it) pass MAX_ARGS_BYTES. Called only when the whole batch's text does: each
   job's args are part of it, written with as many digits or more, so a smaller batch passes. */
static void check_args_sizes(lua_State *L, json_t *batch, char *text)
{
    size_t i, n = json_array_size(batch), len = 0;
    for (i = 0; i < n && len <= MAX_ARGS_BYTES; i++)
        len = dumped_len(json_object_get(json_array_get(batch, i), "args"));
    if (len <= MAX_ARGS_BYTES)
        return;
    free(text);
    json_decref(batch);
    args_too_big(L, n, i, len);
}

/* A connector written in Lua (MemoryConnector, a user's): connector:defer_jobs(list) where
   each job has queue_name, task_name, priority, lock, queueing_lock, args (JSON text), scheduled_at. */
static int defer_through_lua(lua_State *L, int conn, json_t *batch)
{
    size_t i;
    json_t *o;
    if (lua_getfield(L, conn, "defer_jobs") == LUA_TNIL)
        return luaL_error(L, "the app's connector has no defer_jobs method");
    lua_pushvalue(L, conn);
    lua_createtable(L, (int)json_array_size(batch), 0);
    json_array_foreach(batch, i, o) {
        char *args = tarry_json_dump(json_object_get(o, "args"));
        size_t len = args ? strlen(args) : 0;
        if (len > MAX_ARGS_BYTES) {
            size_t n = json_array_size(batch);
            free(args);
            json_decref(batch);
            args_too_big(L, n, i + 1, len);
        }
        lua_createtable(L, 0, 7);
        lua_pushstring(L, args);
        free(args);
        lua_setfield(L, -2, "args");
        tarry_json_push(L, json_object_get(o, "task")); lua_setfield(L, -2, "task_name");
        tarry_json_push(L, json_object_get(o, "queue")); lua_setfield(L, -2, "queue_name");
        tarry_json_push(L, json_object_get(o, "priority")); lua_setfield(L, -2, "priority");
        if (json_is_string(json_object_get(o, "lock"))) { tarry_json_push(L, json_object_get(o, "lock")); lua_setfield(L, -2, "lock"); }
        if (json_is_string(json_object_get(o, "queueing_lock"))) { tarry_json_push(L, json_object_get(o, "queueing_lock")); lua_setfield(L, -2, "queueing_lock"); }
        if (json_is_real(json_object_get(o, "at"))) { lua_pushnumber(L, json_real_value(json_object_get(o, "at"))); lua_setfield(L, -2, "scheduled_at"); }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    json_decref(batch);
    lua_call(L, 2, 1);
    return 1;
}

/* Push the JSON text of the encoded batch (freed here), raising for args past the limit. */
static void push_batch_text(lua_State *L, json_t *batch)
{
    char *text = tarry_json_dump(batch);
    if (text && strlen(text) > MAX_ARGS_BYTES) check_args_sizes(L, batch, text);
    json_decref(batch);
    if (!text) luaL_error(L, "out of memory");
    lua_pushstring(L, text);
    free(text);
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
    json_t *batch;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_getiuservalue(L, app, 2);
    conn = lua_gettop(L);
    batch = encode_jobs(L, 2);
    if (luaL_len(L, 2) == 0) { json_decref(batch); lua_newtable(L); return 1; }
    if (!tarry_is_c_connector(L, conn)) return defer_through_lua(L, conn, batch);
    push_batch_text(L, batch);
    return insert_text(L, conn, lua_gettop(L), (int)luaL_len(L, 2));
}

/* app:_encode_jobs(jobs) -> text | false: validates jobs as _defer_jobs does (raising the same
   error objects) without inserting them. For a C connector, the JSON text to give
   _insert_jobs; for a connector written in Lua, false (insert them with _defer_jobs).  [-2, +1, e] */
static int app_encode_jobs(lua_State *L)
{
    int app = app_check(L, 1);
    json_t *batch;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_getiuservalue(L, app, 2);
    batch = encode_jobs(L, 2);
    if (tarry_is_c_connector(L, 3)) { push_batch_text(L, batch); return 1; }
    json_decref(batch);
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
