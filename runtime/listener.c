/* tarry.Listener: a dedicated connection that LISTENs, outside the pool (as Procrastinate's
 * worker does), delivering notifications to the coroutine that waits for them.
 *
 *   local l = connector:listen{ "procrastinate_any_queue_v1" }   -- connects, LISTENs
 *   local n = l:wait(30)     -- {channel=, payload=} or nil after 30 s; raises if the connection broke
 *   l:ping()                 -- SELECT 1 on it (finds a connection that died quietly)
 *   l:close()
 *
 * Everything runs in a tarry coroutine and nothing blocks the loop: the connection is made with
 * PQconnectPoll, LISTEN and the ping are sent without waiting, and the caller parks until the
 * answer comes. Each of those has a deadline (connect_timeout, then query_timeout): a connection
 * that stops answering is closed and reported as broken instead of freezing the worker. */
#include <stdlib.h>
#include <string.h>
#include <ev.h>

#include "tarry_private.h"

#define TARRY_LISTENER_MT "tarry.Listener"

typedef struct note { char *channel, *payload; struct note *next; } note;

enum { L_CONNECTING, L_BUSY, L_IDLE, L_BROKEN };

typedef struct tarry_listener {
    ev_io io;
    ev_timer timer;            /* wait()'s timeout */
    ev_timer deadline;         /* connect_timeout while connecting, query_timeout while a query is out */
    struct ev_loop *loop;
    PGconn *pg;
    int state, unrefd;
    double query_timeout;
    char *listen_sql;          /* sent once connected */
    PGresult *res;             /* of the query in flight */
    note *head, *tail;
    tarry_co *waiter;          /* in wait(): for a notification */
    tarry_co *op;              /* in listen() or ping(): for the query in flight */
    int self_ref;              /* the userdata, for the listen() caller to get back (LUA_NOREF) */
    lua_State *mainL;          /* the state's main thread, to drop that reference from callbacks */
    char error[320];           /* set once the connection broke */
} tarry_listener;

static tarry_listener *check(lua_State *L) { return luaL_checkudata(L, 1, TARRY_LISTENER_MT); }

/* ---- the socket watcher: it keeps the loop alive only while a caller waits for a query ---- */

static void io_stop(tarry_listener *l)
{
    if (!ev_is_active(&l->io)) return;
    if (l->unrefd) { ev_ref(l->loop); l->unrefd = 0; }
    tarry_io_stop(l->loop, &l->io);
}

/* A caller now waits for the query in flight: the watcher keeps the loop running. */
static void io_keep_loop(tarry_listener *l)
{
    if (l->unrefd) { ev_ref(l->loop); l->unrefd = 0; }
}

static void io_watch(tarry_listener *l, int events)
{
    io_stop(l);
    if (!events || !l->pg) return;
    ev_io_set(&l->io, PQsocket(l->pg), events);
    tarry_io_start(l->loop, &l->io);
    if (!l->op) { ev_unref(l->loop); l->unrefd = 1; }   /* listening alone keeps nothing running */
}

static void deadline_start(tarry_listener *l, double seconds)
{
    tarry_timer_stop(l->loop, &l->deadline);
    if (seconds <= 0) return;
    ev_timer_set(&l->deadline, seconds, 0.);
    tarry_timer_start(l->loop, &l->deadline);
}

/* ---- notifications ---- */

static void drain_notifies(tarry_listener *l)
{
    PGnotify *n;
    while ((n = PQnotifies(l->pg))) {
        note *x = malloc(sizeof *x);
        if (x && (x->channel = strdup(n->relname)) && (x->payload = strdup(n->extra))) {
            x->next = NULL;
            if (l->tail) l->tail->next = x; else l->head = x;
            l->tail = x;
        } else if (x) {
            free(x->channel);
            free(x);
        }
        PQfreemem(n);
    }
}

static void free_note(note *x)
{
    free(x->channel);
    free(x->payload);
    free(x);
}

/* Push the oldest notification as {channel=, payload=}.  [-0, +1, m] */
static void push_note(lua_State *L, tarry_listener *l)
{
    note *x = l->head;
    l->head = x->next;
    if (!l->head) l->tail = NULL;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, x->channel);
    lua_setfield(L, -2, "channel");
    lua_pushstring(L, x->payload);
    lua_setfield(L, -2, "payload");
    free_note(x);
}

/* Hand the waiter a notification, or the error once the connection broke. */
static void deliver(tarry_listener *l)
{
    tarry_co *h = l->waiter;
    lua_State *co;
    if (!h || (!l->head && !l->error[0])) return;
    l->waiter = NULL;
    tarry_timer_stop(l->loop, &l->timer);
    co = tarry_co_state(h);
    if (l->head) { lua_pushboolean(co, 1); push_note(co, l); }
    else { lua_pushboolean(co, 0); tarry_push_error(co, "connection", "%s", l->error); }
    tarry_rt_wake(h, 2);
}

/* ---- the query in flight (LISTEN, ping) ---- */

static void drop_self_ref(tarry_listener *l)
{
    if (l->self_ref == LUA_NOREF) return;
    luaL_unref(l->mainL, LUA_REGISTRYINDEX, l->self_ref);
    l->self_ref = LUA_NOREF;
}

/* Wake the op caller: with the listener (listen) or nothing (ping), or with err. */
static void finish_op(tarry_listener *l, const char *err)
{
    tarry_co *h = l->op;
    tarry_timer_stop(l->loop, &l->deadline);
    l->op = NULL;
    if (h) {
        lua_State *co = tarry_co_state(h);
        int n = 2;
        if (err) {
            lua_pushboolean(co, 0);
            tarry_push_error(co, "connection", "%s", err);
        } else if (l->res && !tarry_pg_result_ok(l->res)) {
            lua_pushboolean(co, 0);
            tarry_push_pg_error(co, l->pg, l->res);
        } else {
            lua_pushboolean(co, 1);
            if (l->self_ref != LUA_NOREF) lua_rawgeti(co, LUA_REGISTRYINDEX, l->self_ref);
            else n = 1;
        }
        tarry_rt_wake(h, n);
    }
    drop_self_ref(l);
    PQclear(l->res);
    l->res = NULL;
}

/* The connection is gone (or given up): close it, tell whoever waits. */
static void mark_broken(tarry_listener *l, const char *why)
{
    char pqmsg[256];
    if (l->state == L_BROKEN) return;
    if (why) snprintf(l->error, sizeof l->error, "the LISTEN connection broke: %s", why);
    else {
        tarry_pg_message(pqmsg, sizeof pqmsg, l->pg ? PQerrorMessage(l->pg) : "closed");
        snprintf(l->error, sizeof l->error, "the LISTEN connection broke: %s", pqmsg);
    }
    l->state = L_BROKEN;
    io_stop(l);
    tarry_timer_stop(l->loop, &l->deadline);
    PQfinish(l->pg);
    l->pg = NULL;
    finish_op(l, l->error);
    deliver(l);
}

static void flush_out(tarry_listener *l)
{
    int r = PQflush(l->pg);
    if (r < 0) mark_broken(l, NULL);
    else io_watch(l, r ? EV_READ | EV_WRITE : EV_READ);
}

static void send_query(tarry_listener *l, const char *sql)
{
    l->state = L_BUSY;
    deadline_start(l, l->query_timeout);
    if (!PQsendQuery(l->pg, sql)) mark_broken(l, NULL);
    else flush_out(l);
}

/* Read what arrived: notifications, and the result of the query in flight. */
static void read_input(tarry_listener *l)
{
    PGresult *res;
    if (!PQconsumeInput(l->pg)) { mark_broken(l, NULL); return; }
    drain_notifies(l);
    while (l->state == L_BUSY && !PQisBusy(l->pg)) {
        if ((res = PQgetResult(l->pg))) { tarry_pg_keep_result(&l->res, res); continue; }
        l->state = L_IDLE;
        finish_op(l, NULL);
        io_watch(l, EV_READ);
        drain_notifies(l);
    }
    deliver(l);
}

static void connect_step(tarry_listener *l)
{
    switch (PQconnectPoll(l->pg)) {
    case PGRES_POLLING_READING: io_watch(l, EV_READ); break;
    case PGRES_POLLING_WRITING: io_watch(l, EV_WRITE); break;
    case PGRES_POLLING_OK:
        PQsetnonblocking(l->pg, 1);
        send_query(l, l->listen_sql);
        break;
    default: mark_broken(l, NULL); break;
    }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    tarry_listener *l = (tarry_listener *)w;
    (void)loop;
    if (l->state == L_CONNECTING) connect_step(l);
    else if (l->state == L_BUSY && (revents & EV_WRITE)) flush_out(l);
    else read_input(l);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    tarry_listener *l = (tarry_listener *)((char *)t - offsetof(tarry_listener, deadline));
    char msg[160];
    (void)loop; (void)revents;
    if (l->state == L_CONNECTING) snprintf(msg, sizeof msg, "timeout connecting to PostgreSQL");
    else snprintf(msg, sizeof msg, TARRY_LATE_MESSAGE, l->query_timeout);
    mark_broken(l, msg);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    tarry_listener *l = (tarry_listener *)((char *)t - offsetof(tarry_listener, timer));
    tarry_co *h = l->waiter;
    (void)loop; (void)revents;
    l->waiter = NULL;
    lua_pushboolean(tarry_co_state(h), 1);
    lua_pushnil(tarry_co_state(h));
    tarry_rt_wake(h, 2);
}

static void waiter_cancel(void *data)
{
    tarry_listener *l = data;
    l->waiter = NULL;
    tarry_timer_stop(l->loop, &l->timer);
}

/* The op's coroutine went away: nobody to hand the listener to; the query still completes. */
static void op_cancel(void *data)
{
    tarry_listener *l = data;
    l->op = NULL;
    drop_self_ref(l);
}

static tarry_co *current_or_raise(lua_State *L, const char *what)
{
    tarry_co *h = tarry_rt_current(L);
    if (!h) luaL_error(L, "%s can only be called in a coroutine tarry runs (it waits on the loop)", what);
    return h;
}

/* l:wait([timeout]) -> {channel=, payload=} or nil on timeout. Raises "connection". [-(1|2), +1, e] */
static int listener_wait(lua_State *L)
{
    tarry_listener *l = check(L);
    double timeout = luaL_optnumber(L, 2, -1);
    tarry_co *h;
    if (l->head) { push_note(L, l); return 1; }
    if (l->error[0]) { tarry_push_error(L, "connection", "%s", l->error); return lua_error(L); }
    if (!l->pg) return luaL_error(L, "the listener is closed");
    if (l->waiter) return luaL_error(L, "another coroutine already waits on this listener");
    h = current_or_raise(L, "Listener:wait()");
    l->waiter = h;
    if (timeout >= 0) {
        ev_timer_set(&l->timer, timeout, 0.);
        tarry_timer_start(l->loop, &l->timer);
    }
    lua_settop(L, 0);
    return tarry_rt_park(L, h, waiter_cancel, l);
}

/* l:ping(): SELECT 1 on the connection; parks until the answer. Raises "connection" if the
   connection broke or gave no answer within query_timeout.  [-1, +0, e] */
static int listener_ping(lua_State *L)
{
    tarry_listener *l = check(L);
    tarry_co *h;
    if (l->error[0] || !l->pg) {
        tarry_push_error(L, "connection", "%s", l->error[0] ? l->error : "the listener is closed");
        return lua_error(L);
    }
    if (l->op || l->state != L_IDLE) return luaL_error(L, "another coroutine already waits on this listener's query");
    h = current_or_raise(L, "Listener:ping()");
    send_query(l, "SELECT 1");           /* no op yet: a failure here wakes nobody */
    if (l->state == L_BROKEN) { tarry_push_error(L, "connection", "%s", l->error); return lua_error(L); }
    l->op = h;
    io_keep_loop(l);
    lua_settop(L, 0);
    return tarry_rt_park(L, h, op_cancel, l);
}

static void listener_free(tarry_listener *l)
{
    io_stop(l);
    tarry_timer_stop(l->loop, &l->timer);
    tarry_timer_stop(l->loop, &l->deadline);
    PQclear(l->res);
    l->res = NULL;
    PQfinish(l->pg);
    l->pg = NULL;
    free(l->listen_sql);
    l->listen_sql = NULL;
    while (l->head) {
        note *x = l->head;
        l->head = x->next;
        free_note(x);
    }
    l->tail = NULL;
}

static int listener_close(lua_State *L)
{
    tarry_listener *l = check(L);
    if (!l->error[0]) snprintf(l->error, sizeof l->error, "the listener was closed");
    l->state = L_BROKEN;
    finish_op(l, l->error);
    if (l->waiter) {
        tarry_co *h = l->waiter;
        l->waiter = NULL;
        tarry_timer_stop(l->loop, &l->timer);
        lua_pushboolean(tarry_co_state(h), 0);
        tarry_push_error(tarry_co_state(h), "connection", "the listener was closed");
        tarry_rt_wake(h, 2);
    }
    listener_free(l);
    return 0;
}

static int listener_gc(lua_State *L)
{
    tarry_listener *l = check(L);
    if (l->waiter) tarry_co_forget_wait(l->waiter);
    if (l->op) tarry_co_forget_wait(l->op);
    l->waiter = l->op = NULL;
    l->self_ref = LUA_NOREF;             /* collected: nothing in the registry points here */
    listener_free(l);
    return 0;
}

/* "LISTEN a; LISTEN b" with quoted identifiers.  [-0, +0, e] */
static char *listen_sql(lua_State *L, PGconn *pg, int channels)
{
    luaL_Buffer b;
    int n = (int)luaL_len(L, channels);
    char *sql;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        char *ident;
        size_t len;
        const char *name;
        lua_rawgeti(L, channels, i);
        name = luaL_checklstring(L, -1, &len);
        ident = PQescapeIdentifier(pg, name, len);
        lua_pop(L, 1);
        if (!ident) luaL_error(L, "cannot quote the channel name %d", i);
        luaL_addstring(&b, "LISTEN ");
        luaL_addstring(&b, ident);
        luaL_addstring(&b, ";");
        PQfreemem(ident);
    }
    luaL_pushresult(&b);
    sql = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!sql) luaL_error(L, "out of memory");
    return sql;
}

/* core.listen(conninfo, channels, connect_timeout, query_timeout) -> listener, once connected
   and listening. Only in a tarry coroutine, which parks meanwhile.  [-4, +1, e] */
int tarry_listen(lua_State *L)
{
    const char *conninfo = luaL_checkstring(L, 1);
    int timeout = (int)luaL_optinteger(L, 3, 5);
    double query_timeout = luaL_optnumber(L, 4, tarry_query_timeout_default());
    tarry_co *h;
    tarry_listener *l;
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_argcheck(L, luaL_len(L, 2) >= 1, 2, "name at least one channel");
    h = current_or_raise(L, "connector:listen()");
    l = lua_newuserdatauv(L, sizeof *l, 1);
    memset(l, 0, sizeof *l);
    l->self_ref = LUA_NOREF;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    l->mainL = lua_tothread(L, -1);
    lua_pop(L, 1);
    l->loop = tarry_rt_loop(tarry_rt_get(L));
    l->query_timeout = query_timeout;
    ev_init(&l->io, io_cb);
    ev_init(&l->timer, timeout_cb);
    ev_init(&l->deadline, deadline_cb);
    luaL_setmetatable(L, TARRY_LISTENER_MT);
    tarry_rt_push_anchor(L);
    lua_setiuservalue(L, -2, 1);
    l->pg = tarry_pg_connect_start(conninfo, timeout);
    if (!l->pg || PQstatus(l->pg) == CONNECTION_BAD) {
        char msg[400];
        tarry_pg_error(l->pg, conninfo, msg, sizeof msg);   /* one line, no password */
        tarry_push_error(L, "connection", "cannot connect to PostgreSQL: %s", msg);
        return lua_error(L);
    }
    l->listen_sql = listen_sql(L, l->pg, 2);
    l->state = L_CONNECTING;
    l->op = h;
    lua_pushvalue(L, -1);
    l->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    deadline_start(l, timeout);
    io_watch(l, EV_WRITE);
    lua_settop(L, 0);
    return tarry_rt_park(L, h, op_cancel, l);
}

void tarry_listener_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "wait", listener_wait }, { "ping", listener_ping }, { "close", listener_close }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_LISTENER_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, listener_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, listener_close);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    lua_pushcfunction(L, tarry_listen);
    lua_setfield(L, -2, "listen");
}
