/* tarry.SyncPgConnector: a pool of blocking libpq connections.
 *
 * Connections are opened on demand (at most max_size), reused while healthy and replaced
 * when broken: before reuse, an idle connection reads what the server sent; one whose session
 * the server ended (a FATAL from pg_terminate_backend or a restart, or its close) is dropped,
 * never handed out (tarry_pg_idle_ok). close() releases them all; using the
 * connector again reconnects. */
#include <stdlib.h>
#include <string.h>

#include "tarry_private.h"

typedef struct sync_conn {
    PGconn *pg;
    tarry_prepared prep;       /* the hot statements prepared on it */
} sync_conn;

struct tarry_sync {
    char *conninfo;
    int min_size, max_size, connect_timeout;
    double query_timeout;      /* seconds; 0: no deadline */
    int prepared_statements;   /* 0: never prepare (a transaction-pooling PgBouncer) */
    int nopen;                 /* connections that exist: idle + in use */
    int nidle;
    sync_conn *idle;           /* max_size slots */
};

tarry_sync *tarry_sync_test(lua_State *L, int idx) { return luaL_testudata(L, idx, TARRY_SYNC_MT); }
tarry_sync *tarry_sync_check(lua_State *L, int idx) { return luaL_checkudata(L, idx, TARRY_SYNC_MT); }

void tarry_sync_counts(tarry_sync *s, int *nopen, int *max_size)
{
    *nopen = s->nopen;
    *max_size = s->max_size;
}

static void sync_close_all(tarry_sync *s)
{
    while (s->nidle > 0) { PQfinish(s->idle[--s->nidle].pg); s->nopen--; }
}

/* A healthy connection into *c (1), or 0 with an error object pushed. */
static int sync_acquire(lua_State *L, tarry_sync *s, sync_conn *c)
{
    char err[512];
    while (s->nidle > 0) {
        *c = s->idle[--s->nidle];
        if (tarry_pg_idle_ok(c->pg)) return 1;
        PQfinish(c->pg);
        s->nopen--;
    }
    if (s->nopen >= s->max_size) {
        tarry_push_error(L, "pool_exhausted", "all %d connections of the pool are in use", s->max_size);
        return 0;
    }
    memset(c, 0, sizeof *c);
    c->pg = tarry_pg_connect(s->conninfo, s->connect_timeout, err, sizeof err);
    if (!c->pg) { tarry_push_error(L, "connection", "cannot connect to PostgreSQL: %s", err); return 0; }
    s->nopen++;
    return 1;
}

static void sync_release(tarry_sync *s, const sync_conn *c)
{
    if (PQstatus(c->pg) == CONNECTION_OK && PQtransactionStatus(c->pg) == PQTRANS_IDLE && s->nidle < s->max_size) {
        s->idle[s->nidle++] = *c;
        return;
    }
    PQfinish(c->pg);
    s->nopen--;
}

int tarry_sync_query(lua_State *L, tarry_sync *s, const tarry_query *q)
{
    sync_conn c;
    int ok;
    if (!sync_acquire(L, s, &c)) return lua_error(L);
    ok = tarry_pg_exec(L, c.pg, q, s->query_timeout, s->prepared_statements ? &c.prep : NULL);
    sync_release(s, &c);
    return ok ? 1 : lua_error(L);
}

static int sync_gc(lua_State *L)
{
    tarry_sync *s = tarry_sync_check(L, 1);
    sync_close_all(s);
    free(s->idle);
    free(s->conninfo);
    s->idle = NULL;
    s->conninfo = NULL;
    return 0;
}

tarry_sync *tarry_sync_new(lua_State *L, const char *conninfo, int min_size, int max_size, int timeout,
                           double query_timeout, int prepared_statements)
{
    tarry_sync *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, TARRY_SYNC_MT);
    if (max_size < 1) max_size = 1;
    if (min_size > max_size) luaL_error(L, "min_size (%d) is larger than max_size (%d)", min_size, max_size);
    s->conninfo = strdup(conninfo);
    s->idle = calloc((size_t)max_size, sizeof *s->idle);
    if (!s->conninfo || !s->idle) luaL_error(L, "out of memory");
    s->min_size = min_size;
    s->max_size = max_size;
    s->connect_timeout = timeout;
    s->query_timeout = query_timeout;
    s->prepared_statements = prepared_statements;
    return s;
}

/* tarry.SyncPgConnector{ conninfo=, min_size=1, max_size=10, connect_timeout=5, query_timeout=30,
   prepared_statements=true }
   conninfo is a libpq connection string or URI; when absent, libpq's PG* variables apply.
   query_timeout: seconds a query may wait for its answer (0: for ever).
   prepared_statements: tarry's hot statements (the defer) are prepared once per connection;
   false for a PgBouncer in transaction mode, which cannot keep them.  [-1, +1, e] */
static int sync_new(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) { lua_newtable(L); lua_replace(L, 1); }
    luaL_checktype(L, 1, LUA_TTABLE);
    tarry_opt_check(L, 1, TARRY_SYNC_MT, (const char *const[]){ TARRY_CONNECTOR_OPTIONS, NULL });
    tarry_sync_new(L, tarry_opt_conninfo(L, 1), tarry_opt_int(L, 1, "min_size", 1, 0),
                   tarry_opt_int(L, 1, "max_size", 10, 1), tarry_opt_int(L, 1, "connect_timeout", 5, 1),
                   tarry_opt_seconds(L, 1, "query_timeout", tarry_query_timeout_default()),
                   tarry_opt_bool(L, 1, "prepared_statements", tarry_prepared_default()));
    return 1;
}

/* c:open() -> c: connects min_size connections now (raises the "connection" error if it cannot). */
static int sync_open(lua_State *L)
{
    tarry_sync *s = tarry_sync_check(L, 1);
    sync_conn held[64];
    int n = 0;
    while (s->nopen < s->min_size && n < 64) {
        if (!sync_acquire(L, s, &held[n])) { while (n > 0) sync_release(s, &held[--n]); return lua_error(L); }
        n++;
    }
    while (n > 0) sync_release(s, &held[--n]);
    lua_settop(L, 1);
    return 1;
}

static int sync_close(lua_State *L)
{
    sync_close_all(tarry_sync_check(L, 1));
    return 0;
}

static int execute(lua_State *L, int prepare)
{
    tarry_sync *s = tarry_sync_check(L, 1);
    const char *params[TARRY_MAX_PARAMS];
    tarry_query q = { luaL_checkstring(L, 2), 0, params, TARRY_RESULT_ROWS, 0, prepare };
    q.nparams = tarry_pg_params(L, 3, lua_gettop(L), params);
    return tarry_sync_query(L, s, &q);
}

/* c:execute(sql, ...) -> rows: each row a table by column name. Raises an error object. */
static int sync_execute(lua_State *L) { return execute(L, 0); }
/* c:execute_prepared(sql, ...) -> rows: as execute, for a statement run often (with parameters):
   prepared once per connection unless prepared_statements = false. */
static int sync_execute_prepared(lua_State *L) { return execute(L, 1); }

static int sync_self(lua_State *L)
{
    tarry_sync_check(L, 1);
    lua_settop(L, 1);
    return 1;
}

/* What needs the event loop is the async connector's job: say so. */
static int sync_needs_async(lua_State *L)
{
    tarry_sync_check(L, 1);
    return luaL_error(L, "a tarry.SyncPgConnector cannot LISTEN or run a worker: use tarry.PgConnector "
                         "(app:with_connector(tarry.PgConnector{ conninfo = ... }))");
}

static int sync_tostring(lua_State *L)
{
    tarry_sync *s = tarry_sync_check(L, 1);
    char desc[256];
    tarry_pg_describe(s->conninfo ? s->conninfo : "", desc, sizeof desc);
    lua_pushfstring(L, "<tarry.SyncPgConnector %s, %d/%d connections>", desc, s->nopen, s->max_size);
    return 1;
}

void tarry_sync_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "open", sync_open }, { "close", sync_close }, { "execute", sync_execute },
        { "execute_prepared", sync_execute_prepared },
        { "get_sync_connector", sync_self }, { "listen", sync_needs_async }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_SYNC_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sync_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, sync_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, sync_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, sync_new);
    lua_setfield(L, -2, "SyncPgConnector");
}
