/* tarry.PgConnector: the async connector. Its pool of non-blocking libpq connections is in
 * pg_pool.c; here are the Lua object and the call-time choice every query makes:
 *
 *   open, and called in a coroutine tarry owns  -> send on a pooled connection, park only
 *                                                  that coroutine until the result arrives;
 *   open, anywhere else (main thread, a C call,  -> run it blocking on an idle pooled
 *   a coroutine of the user's)                     connection (PQexec ignores non-blocking
 *                                                  mode), or on the sync connector;
 *   not open                                    -> the sync connector (get_sync_connector()),
 *                                                  created on first use and reused.
 * Never re-enters the loop and never deadlocks. */
#include <stdlib.h>
#include <string.h>

#include "tarry_private.h"

typedef struct tarry_pgc {
    tarry_pool *pool;            /* NULL while closed */
    char *conninfo;
    int min_size, max_size, connect_timeout;
    double query_timeout;
    int prepared_statements;
} tarry_pgc;

/* user values of the userdata: 1 the runtime anchor, 2 the sync connector (lazy) */

static tarry_pgc *pgc_check(lua_State *L, int idx) { return luaL_checkudata(L, idx, TARRY_PG_MT); }


/* The sync connector with the same settings, created on first use.  [-0, +1, e] */
static tarry_sync *push_sync(lua_State *L, int idx)
{
    tarry_pgc *c = pgc_check(L, idx);
    tarry_sync *s;
    if (lua_getiuservalue(L, idx, 2) == LUA_TUSERDATA) return tarry_sync_check(L, -1);
    lua_pop(L, 1);
    s = tarry_sync_new(L, c->conninfo, 0, c->max_size, c->connect_timeout, c->query_timeout,
                       c->prepared_statements);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx < 0 ? idx - 2 : idx, 2);
    return s;
}

int tarry_connector_query(lua_State *L, int idx, const tarry_query *q)
{
    tarry_pgc *c = luaL_testudata(L, idx, TARRY_PG_MT);
    tarry_sync *s;
    idx = lua_absindex(L, idx);
    if (c) {
        if (c->pool) {
            tarry_co *h = tarry_rt_current(L);
            int ok;
            if (h) return tarry_pool_query(L, c->pool, h, q);
            if ((ok = tarry_pool_exec(L, c->pool, q)) >= 0) return ok ? 1 : lua_error(L);
        }
        s = push_sync(L, idx);
        lua_pop(L, 1);                     /* anchored in the user value */
        return tarry_sync_query(L, s, q);
    }
    if ((s = tarry_sync_test(L, idx))) return tarry_sync_query(L, s, q);
    return luaL_error(L, "not a tarry connector (got %s)", luaL_typename(L, idx));
}

int tarry_is_c_connector(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, TARRY_PG_MT) || luaL_testudata(L, idx, TARRY_SYNC_MT);
}

/* tarry.PgConnector{ conninfo=, min_size=1, max_size=10, connect_timeout=5, query_timeout=30,
   prepared_statements=true }
   query_timeout: seconds a query may wait for its answer before its connection is dropped and
   the caller gets a "connection" error (0: for ever). prepared_statements: tarry's hot
   statements are prepared once per connection (false: none, for a transaction-pooling
   PgBouncer).  [-1, +1, e] */
static int pgc_new(lua_State *L)
{
    tarry_pgc *c;
    const char *conninfo;
    if (lua_isnoneornil(L, 1)) { lua_newtable(L); lua_replace(L, 1); }
    luaL_checktype(L, 1, LUA_TTABLE);
    tarry_opt_check(L, 1, TARRY_PG_MT, (const char *const[]){ TARRY_CONNECTOR_OPTIONS, NULL });
    conninfo = tarry_opt_conninfo(L, 1);
    c = lua_newuserdatauv(L, sizeof *c, 2);
    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, TARRY_PG_MT);
    c->min_size = tarry_opt_int(L, 1, "min_size", 1, 0);
    c->max_size = tarry_opt_int(L, 1, "max_size", 10, 1);
    c->connect_timeout = tarry_opt_int(L, 1, "connect_timeout", 5, 1);
    c->query_timeout = tarry_opt_seconds(L, 1, "query_timeout", tarry_query_timeout_default());
    c->prepared_statements = tarry_opt_bool(L, 1, "prepared_statements", tarry_prepared_default());
    if (c->min_size > c->max_size) return luaL_error(L, "min_size is larger than max_size");
    c->conninfo = strdup(conninfo);
    if (!c->conninfo) return luaL_error(L, "out of memory");
    tarry_rt_push_anchor(L);
    lua_setiuservalue(L, -2, 1);
    return 1;
}

static void close_sync(lua_State *L, int idx)
{
    if (lua_getiuservalue(L, idx, 2) == LUA_TUSERDATA) {
        lua_getfield(L, -1, "close");
        lua_pushvalue(L, -2);
        lua_call(L, 1, 0);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setiuservalue(L, idx, 2);
}

/* Whether c:open's options table at 2 says wait = false. */
static int open_waits(lua_State *L)
{
    int wait;
    if (lua_isnoneornil(L, 2)) return 1;
    luaL_checktype(L, 2, LUA_TTABLE);
    tarry_opt_check(L, 2, "PgConnector:open", (const char *const[]){ "wait", NULL });
    wait = lua_getfield(L, 2, "wait") == LUA_TNIL || lua_toboolean(L, -1);
    lua_pop(L, 1);
    return wait;
}

/* Open the pool without waiting: min_size connections start connecting in the loop. */
static void open_nowait(lua_State *L, tarry_pgc *c, tarry_pool *p)
{
    c->pool = p;
    tarry_pool_start(p, c->min_size);
    close_sync(L, 1);
    lua_settop(L, 1);
}

/* c:open([{ wait = true }]) -> c. Connects min_size connections now (raises "connection" if it
   cannot) and closes the sync connector: from now on tarry coroutines use the async pool.
   wait = false: returns at once; the connections are made in the loop, and a failure to
   connect reaches the queries that wait for them (defer_async opens the pool so).  [-(1|2), +1, e] */
static int pgc_open(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    tarry_rt *rt = tarry_rt_get(L);
    tarry_pool *p;
    char err[512];
    int wait = open_waits(L);
    lua_settop(L, 1);
    if (c->pool) return 1;
    p = tarry_pool_new(rt, c->conninfo, c->max_size, c->connect_timeout, c->query_timeout,
                       c->prepared_statements);
    if (!p) return luaL_error(L, "out of memory");
    if (!wait) { open_nowait(L, c, p); return 1; }
    if (!tarry_pool_connect(p, c->min_size, err, sizeof err)) {
        tarry_pool_close(p, 0);
        tarry_push_error(L, "connection", "cannot connect to PostgreSQL: %s", err);
        return lua_error(L);
    }
    c->pool = p;
    close_sync(L, 1);
    return 1;
}

/* c:close(): pending queries get a "connection" error; connections are released. */
static int pgc_close(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    tarry_pool *p = c->pool;
    c->pool = NULL;
    if (p) tarry_pool_close(p, 1);
    close_sync(L, 1);
    return 0;
}

static int pgc_gc(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    if (c->pool) { tarry_pool_close(c->pool, 0); c->pool = NULL; }
    free(c->conninfo);
    c->conninfo = NULL;
    return 0;
}

/* c:get_sync_connector() -> what synchronous code should use: once the connector is open, the
   connector itself (its blocking calls borrow an idle pooled connection, so no second pool
   opens); before that, or after close(), its SyncPgConnector counterpart, made once.  [-1, +1, e] */
static int pgc_get_sync(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    lua_settop(L, 1);
    if (!c->pool) push_sync(L, 1);
    return 1;
}

static int execute(lua_State *L, int prepare)
{
    const char *params[TARRY_MAX_PARAMS];
    tarry_query q = { luaL_checkstring(L, 2), 0, params, TARRY_RESULT_ROWS, 0, prepare };
    pgc_check(L, 1);
    q.nparams = tarry_pg_params(L, 3, lua_gettop(L), params);
    return tarry_connector_query(L, 1, &q);
}

/* c:execute(sql, ...) -> rows, by the call-time choice above. Raises an error object. */
static int pgc_execute(lua_State *L) { return execute(L, 0); }
/* c:execute_prepared(sql, ...) -> rows: as execute, for a statement run often (with parameters):
   prepared once per connection unless prepared_statements = false. */
static int pgc_execute_prepared(lua_State *L) { return execute(L, 1); }

/* c:listen{ channel, ... } -> a tarry.Listener on its own connection (see listener.c); in a
   tarry coroutine, which parks while it connects.  [-2, +1, e] */
static int pgc_listen(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_pushstring(L, c->conninfo);
    lua_replace(L, 1);
    lua_pushinteger(L, c->connect_timeout);
    lua_pushnumber(L, c->query_timeout);
    return tarry_listen(L);              /* a plain call: it may yield from this frame */
}

static int pgc_is_open(lua_State *L)
{
    lua_pushboolean(L, pgc_check(L, 1)->pool != NULL);
    return 1;
}

static int pgc_tostring(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    char desc[256];
    int nopen, nmax;
    tarry_pg_describe(c->conninfo ? c->conninfo : "", desc, sizeof desc);
    if (c->pool) lua_pushfstring(L, "<tarry.PgConnector %s, open, %d/%d connections>", desc,
                                 tarry_pool_size(c->pool), c->max_size);
    else if (lua_getiuservalue(L, 1, 2) == LUA_TUSERDATA) {
        tarry_sync_counts(tarry_sync_check(L, -1), &nopen, &nmax);
        lua_pushfstring(L, "<tarry.PgConnector %s, not open; blocking calls: %d/%d connections>", desc, nopen, nmax);
    } else lua_pushfstring(L, "<tarry.PgConnector %s, not open>", desc);
    return 1;
}

void tarry_pg_connector_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "open", pgc_open }, { "close", pgc_close }, { "execute", pgc_execute },
        { "execute_prepared", pgc_execute_prepared },
        { "get_sync_connector", pgc_get_sync }, { "is_open", pgc_is_open }, { "listen", pgc_listen }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_PG_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, pgc_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, pgc_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, pgc_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, pgc_new);
    lua_setfield(L, -2, "PgConnector");
}
