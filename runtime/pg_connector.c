/* tarry.PgConnector: the async connector. A pool of non-blocking libpq connections driven
 * by the runtime's libev loop, plus the call-time choice every query makes:
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
#include <ev.h>

#include "tarry_private.h"

enum { CONN_CONNECTING, CONN_IDLE, CONN_BUSY };

typedef struct apool apool;
typedef struct areq areq;

typedef struct aconn {
    ev_io io;
    ev_timer timer;              /* connecting: connect_timeout; busy: query_timeout */
    apool *pool;
    PGconn *pg;
    int state;
    areq *req;
    struct aconn *next;
} aconn;

struct areq {
    tarry_co *h;                 /* the parked coroutine; NULL once abandoned */
    apool *pool;
    char *sql;
    int nparams;
    char **params;
    tarry_result_kind kind;
    PGresult *res;
    int submitting;              /* failed before the coroutine parked: error kept here */
    char *early_error;
    areq *next;
};

struct apool {
    struct ev_loop *loop;
    char *conninfo;
    int max_size, connect_timeout;
    double query_timeout;        /* seconds a sent query may wait for its answer; 0: for ever */
    aconn *conns;
    int nconns, nconnecting;
    areq *qhead, *qtail;
    int nqueued;
    int in_callback, closed;     /* freed once closed and out of callbacks */
};

typedef struct tarry_pgc {
    apool *pool;                 /* NULL while closed */
    char *conninfo;
    int min_size, max_size, connect_timeout;
    double query_timeout;
} tarry_pgc;

/* user values of the userdata: 1 the runtime anchor, 2 the sync connector (lazy) */

static void dispatch(apool *p);

/* ---- requests ---- */

static void req_free(areq *r)
{
    free(r->early_error);
    for (int i = 0; i < r->nparams; i++) free(r->params[i]);
    free(r->params);
    free(r->sql);
    PQclear(r->res);
    free(r);
}

static areq *req_new(apool *p, tarry_co *h, const tarry_query *q)
{
    areq *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->h = h;
    r->pool = p;
    r->kind = q->kind;
    r->nparams = q->nparams;
    r->sql = strdup(q->sql);
    r->params = calloc((size_t)(q->nparams + 1), sizeof *r->params);
    for (int i = 0; i < q->nparams; i++)
        if (q->params[i]) r->params[i] = strdup(q->params[i]);
    if (!r->sql || !r->params) { req_free(r); return NULL; }
    return r;
}


/* Hand the outcome to the parked coroutine and resume it. conn may be NULL. */
static void req_deliver(areq *r, PGconn *conn, const char *conn_error)
{
    tarry_co *h = r->h;
    if (r->submitting) {          /* the caller has not parked yet: it raises this itself */
        r->early_error = strdup(conn_error ? conn_error : "query failed");
        return;
    }
    if (h) {
        lua_State *co = tarry_co_state(h);
        if (!conn_error && tarry_pg_result_ok(r->res)) {
            lua_pushboolean(co, 1);
            tarry_pg_push_result(co, r->res, r->kind);
        } else {
            lua_pushboolean(co, 0);
            if (conn_error) tarry_push_error(co, "connection", "%s", conn_error);
            else tarry_push_pg_error(co, conn, r->res);
        }
        req_free(r);
        tarry_rt_wake(h, 2);
        return;
    }
    req_free(r);
}

static void queue_push(apool *p, areq *r)
{
    r->next = NULL;
    if (p->qtail) p->qtail->next = r; else p->qhead = r;
    p->qtail = r;
    p->nqueued++;
}

static areq *queue_pop(apool *p)
{
    areq *r = p->qhead;
    if (r) { p->qhead = r->next; if (!p->qhead) p->qtail = NULL; r->next = NULL; p->nqueued--; }
    return r;
}

static void queue_remove(apool *p, areq *r)
{
    areq *prev = NULL;
    for (areq *it = p->qhead; it; prev = it, it = it->next) {
        if (it != r) continue;
        if (prev) prev->next = r->next; else p->qhead = r->next;
        if (p->qtail == r) p->qtail = prev;
        p->nqueued--;
        return;
    }
}

static void fail_queue(apool *p, const char *msg)
{
    areq *r;
    while ((r = queue_pop(p))) req_deliver(r, NULL, msg);
}

/* ---- connections ---- */

static void watch(aconn *c, int events)
{
    tarry_io_stop(c->pool->loop, &c->io);
    if (!events) return;
    ev_io_set(&c->io, PQsocket(c->pg), events);
    tarry_io_start(c->pool->loop, &c->io);
}

static void conn_destroy(aconn *c)
{
    apool *p = c->pool;
    aconn **pp = &p->conns;
    while (*pp && *pp != c) pp = &(*pp)->next;
    if (*pp) *pp = c->next;
    tarry_io_stop(p->loop, &c->io);
    tarry_timer_stop(p->loop, &c->timer);
    if (c->state == CONN_CONNECTING) p->nconnecting--;
    p->nconns--;
    PQfinish(c->pg);
    free(c);
}

/* The connection broke (or is dropped): its request (if any) gets the connection error msg. */
static void conn_drop(aconn *c, const char *msg)
{
    areq *r = c->req;
    apool *p = c->pool;
    int connecting = c->state == CONN_CONNECTING;
    c->req = NULL;
    conn_destroy(c);
    if (r) req_deliver(r, NULL, msg);
    if (connecting && p->nconns == p->nconnecting) fail_queue(p, msg);  /* none left to serve it */
    else dispatch(p);
}

/* The connection broke: "why: libpq's message". */
static void conn_fail(aconn *c, const char *why)
{
    char pqmsg[400], msg[512];
    tarry_pg_error(c->pg, c->pool->conninfo, pqmsg, sizeof pqmsg);
    snprintf(msg, sizeof msg, "%s: %s", why, pqmsg);
    conn_drop(c, msg);
}

static void conn_complete(aconn *c)
{
    areq *r = c->req;
    c->req = NULL;
    c->state = CONN_IDLE;
    watch(c, 0);
    tarry_timer_stop(c->pool->loop, &c->timer);
    req_deliver(r, c->pg, NULL);
    dispatch(c->pool);
}

/* Read what arrived; finish the request once libpq has no more results. A result that arrived
   whole before the server closed the connection is still delivered (libpq keeps what it read). */
static void conn_read(aconn *c)
{
    int alive = PQconsumeInput(c->pg);
    while (!PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (!res) { conn_complete(c); return; }
        tarry_pg_keep_result(&c->req->res, res);
    }
    if (!alive) conn_fail(c, "lost the connection to PostgreSQL");
}

static void conn_flush(aconn *c)
{
    int r = PQflush(c->pg);
    if (r < 0) conn_fail(c, "cannot send to PostgreSQL");
    else watch(c, r ? EV_READ | EV_WRITE : EV_READ);
}

static void conn_send(aconn *c, areq *r)
{
    tarry_query q = { r->sql, r->nparams, (const char *const *)r->params, r->kind };
    apool *p = c->pool;
    c->state = CONN_BUSY;
    c->req = r;
    if (p->query_timeout > 0) {
        ev_timer_set(&c->timer, p->query_timeout, 0.);
        tarry_timer_start(p->loop, &c->timer);
    }
    if (!tarry_pg_send(c->pg, &q)) conn_fail(c, "cannot send to PostgreSQL");
    else conn_flush(c);
}

static void connect_step(aconn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING: watch(c, EV_READ); break;
    case PGRES_POLLING_WRITING: watch(c, EV_WRITE); break;
    case PGRES_POLLING_OK:
        tarry_timer_stop(c->pool->loop, &c->timer);
        watch(c, 0);
        c->state = CONN_IDLE;
        c->pool->nconnecting--;
        dispatch(c->pool);
        break;
    default: conn_fail(c, "cannot connect to PostgreSQL"); break;
    }
}

static void pool_leave(apool *p);

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    aconn *c = (aconn *)w;
    apool *p = c->pool;
    (void)loop;
    p->in_callback++;
    if (c->state == CONN_CONNECTING) connect_step(c);
    else if (c->state == CONN_BUSY) {
        if (revents & EV_WRITE) conn_flush(c);
        else conn_read(c);
    } else {
        watch(c, 0);
    }
    pool_leave(p);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    aconn *c = (aconn *)((char *)w - offsetof(aconn, timer));
    apool *p = c->pool;
    (void)loop; (void)revents;
    p->in_callback++;
    if (c->state == CONN_CONNECTING) {
        conn_fail(c, "timeout connecting to PostgreSQL");
    } else {
        char msg[160];
        snprintf(msg, sizeof msg, TARRY_LATE_MESSAGE, p->query_timeout);
        conn_drop(c, msg);       /* PQfinish closes the socket: the server ends the backend */
    }
    pool_leave(p);
}

static aconn *conn_add(apool *p, PGconn *pg, int state)
{
    aconn *c = calloc(1, sizeof *c);
    if (!c) { PQfinish(pg); return NULL; }
    c->pool = p;
    c->pg = pg;
    c->state = state;
    ev_io_init(&c->io, io_cb, PQsocket(pg), EV_READ);
    ev_timer_init(&c->timer, timeout_cb, p->connect_timeout, 0.);
    c->next = p->conns;
    p->conns = c;
    p->nconns++;
    PQsetnonblocking(pg, 1);
    return c;
}

static void conn_start(apool *p)
{
    PGconn *pg = tarry_pg_connect_start(p->conninfo, p->connect_timeout);
    aconn *c;
    if (!pg || PQstatus(pg) == CONNECTION_BAD) {
        char msg[512], pgmsg[480];
        tarry_pg_error(pg, p->conninfo, pgmsg, sizeof pgmsg);
        snprintf(msg, sizeof msg, "cannot connect to PostgreSQL: %s", pgmsg);
        PQfinish(pg);
        if (p->nconns == 0) fail_queue(p, msg);
        return;
    }
    c = conn_add(p, pg, CONN_CONNECTING);
    if (!c) return;
    p->nconnecting++;
    tarry_timer_start(p->loop, &c->timer);
    watch(c, EV_WRITE);
}

static aconn *idle_conn(apool *p)
{
    aconn *c = p->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->state != CONN_IDLE) continue;
        if (tarry_pg_idle_ok(c->pg)) return c;
        conn_destroy(c);                 /* the server closed it while idle */
    }
    return NULL;
}

/* Give queued requests to idle connections; open more (up to max_size) for the rest. */
static void dispatch(apool *p)
{
    aconn *c;
    if (p->closed) return;
    while (p->qhead && (c = idle_conn(p))) conn_send(c, queue_pop(p));
    while (p->nqueued > p->nconnecting && p->nconns < p->max_size) {
        int before = p->nconns;
        conn_start(p);
        if (p->nconns == before) break;
    }
}

/* The parked coroutine stopped waiting (interrupted or cancelled; or the runtime is going
   away, whose pools were closed before). A queued request is dropped; a sent one takes its
   connection along, so its slot is free at once. As after any lost connection, the statement
   may still complete: PostgreSQL notices the client is gone when it next writes to it (or,
   with client_connection_check_interval, while the statement runs). */
static void req_abandon(void *data)
{
    areq *r = data;
    apool *p = r->pool;
    aconn *c = p->conns;
    while (c && c->req != r) c = c->next;
    if (!c) {
        queue_remove(p, r);
        req_free(r);
        return;
    }
    c->req = NULL;
    conn_destroy(c);
    req_free(r);
    dispatch(p);
}

/* ---- the pool ---- */

static void pool_free(apool *p)
{
    while (p->conns) conn_destroy(p->conns);
    free(p->conninfo);
    free(p);
}

static void pool_leave(apool *p)
{
    if (--p->in_callback == 0 && p->closed) pool_free(p);
}

/* Close: pending requests get an error, connections go. Freed now or after the callback. */
static void pool_close(apool *p, int wake)
{
    p->closed = 1;
    for (aconn *c = p->conns; c; c = c->next) {
        areq *r = c->req;
        c->req = NULL;
        if (!r) continue;
        if (wake) req_deliver(r, NULL, "the connector was closed");
        else { if (r->h) tarry_co_forget_wait(r->h); req_free(r); }
    }
    while (p->qhead) {
        areq *r = queue_pop(p);
        if (wake) req_deliver(r, NULL, "the connector was closed");
        else { if (r->h) tarry_co_forget_wait(r->h); req_free(r); }
    }
    if (p->in_callback == 0) pool_free(p);
    else while (p->conns) conn_destroy(p->conns);
}

/* ---- the Lua object ---- */

static tarry_pgc *pgc_check(lua_State *L, int idx) { return luaL_checkudata(L, idx, TARRY_PG_MT); }

/* Park the running coroutine h until the query's result arrives on the async pool. */
static int async_query(lua_State *L, apool *p, tarry_co *h, const tarry_query *q)
{
    areq *r = req_new(p, h, q);
    if (!r) return luaL_error(L, "out of memory");
    r->submitting = 1;
    queue_push(p, r);
    dispatch(p);
    r->submitting = 0;
    if (r->early_error) {
        tarry_push_error(L, "connection", "%s", r->early_error);
        queue_remove(p, r);       /* it may still be queued */
        req_free(r);
        return lua_error(L);
    }
    return tarry_rt_park(L, h, req_abandon, r);
}

/* The sync connector with the same settings, created on first use.  [-0, +1, e] */
static tarry_sync *push_sync(lua_State *L, int idx)
{
    tarry_pgc *c = pgc_check(L, idx);
    tarry_sync *s;
    if (lua_getiuservalue(L, idx, 2) == LUA_TUSERDATA) return tarry_sync_check(L, -1);
    lua_pop(L, 1);
    s = tarry_sync_new(L, c->conninfo, 0, c->max_size, c->connect_timeout, c->query_timeout);
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
            aconn *conn;
            if (h) return async_query(L, c->pool, h, q);
            if ((conn = idle_conn(c->pool))) {
                int ok = tarry_pg_exec(L, conn->pg, q, c->query_timeout);
                if (PQstatus(conn->pg) != CONNECTION_OK || PQtransactionStatus(conn->pg) != PQTRANS_IDLE)
                    conn_destroy(conn);          /* broken, or late with its query in flight */
                return ok ? 1 : lua_error(L);
            }
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

/* tarry.PgConnector{ conninfo=, min_size=1, max_size=10, connect_timeout=5, query_timeout=30 }
   query_timeout: seconds a query may wait for its answer before its connection is dropped and
   the caller gets a "connection" error (0: for ever).  [-1, +1, e] */
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
    c->query_timeout = tarry_opt_seconds(L, 1, "query_timeout", TARRY_QUERY_TIMEOUT);
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

/* c:open() -> c. Connects min_size connections now (raises "connection" if it cannot) and
   closes the sync connector: from now on tarry coroutines use the async pool. */
static int pgc_open(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    tarry_rt *rt = tarry_rt_get(L);
    apool *p;
    char err[512];
    lua_settop(L, 1);
    if (c->pool) return 1;
    p = calloc(1, sizeof *p);
    if (!p || !(p->conninfo = strdup(c->conninfo))) { free(p); return luaL_error(L, "out of memory"); }
    p->loop = tarry_rt_loop(rt);
    p->max_size = c->max_size;
    p->connect_timeout = c->connect_timeout;
    p->query_timeout = c->query_timeout;
    for (int i = 0; i < c->min_size; i++) {
        PGconn *pg = tarry_pg_connect(c->conninfo, c->connect_timeout, err, sizeof err);
        if (!pg) {
            pool_free(p);
            tarry_push_error(L, "connection", "cannot connect to PostgreSQL: %s", err);
            return lua_error(L);
        }
        conn_add(p, pg, CONN_IDLE);
    }
    c->pool = p;
    close_sync(L, 1);
    return 1;
}

/* c:close(): pending queries get a "connection" error; connections are released. */
static int pgc_close(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    apool *p = c->pool;
    c->pool = NULL;
    if (p) pool_close(p, 1);
    close_sync(L, 1);
    return 0;
}

static int pgc_gc(lua_State *L)
{
    tarry_pgc *c = pgc_check(L, 1);
    if (c->pool) { pool_close(c->pool, 0); c->pool = NULL; }
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

/* c:execute(sql, ...) -> rows, by the call-time choice above. Raises an error object. */
static int pgc_execute(lua_State *L)
{
    const char *params[TARRY_MAX_PARAMS];
    tarry_query q = { luaL_checkstring(L, 2), 0, params, TARRY_RESULT_ROWS };
    pgc_check(L, 1);
    q.nparams = tarry_pg_params(L, 3, lua_gettop(L), params);
    return tarry_connector_query(L, 1, &q);
}

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
                                 c->pool->nconns, c->max_size);
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
