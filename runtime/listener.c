/* tarry.Listener: a dedicated connection that LISTENs, outside the pool (as Procrastinate's
 * worker does), delivering notifications to the coroutine that waits for them.
 *
 *   local l = connector:listen{ "procrastinate_any_queue_v1" }   -- connects, LISTENs
 *   local n = l:wait(30)     -- {channel=, payload=} or nil after 30 s; raises if the connection broke
 *   l:ping()                 -- SELECT 1 on it (keeps idle connections honest)
 *   l:close()
 *
 * The connection is made with a blocking call bounded by connect_timeout; after that it is
 * non-blocking and read by an ev_io watcher on the runtime's loop. */
#include <stdlib.h>
#include <string.h>
#include <ev.h>

#include "tarry_private.h"

#define TARRY_LISTENER_MT "tarry.Listener"

typedef struct note { char *channel, *payload; struct note *next; } note;

typedef struct tarry_listener {
    ev_io io;
    ev_timer timer;
    struct ev_loop *loop;
    PGconn *pg;
    note *head, *tail;
    tarry_co *waiter;
    char error[256];           /* set once the connection broke */
} tarry_listener;

static tarry_listener *check(lua_State *L) { return luaL_checkudata(L, 1, TARRY_LISTENER_MT); }

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
    free(x->channel);
    free(x->payload);
    free(x);
}

static void deliver(tarry_listener *l)
{
    tarry_co *h = l->waiter;
    lua_State *co;
    if (!h || (!l->head && !l->error[0])) return;
    l->waiter = NULL;
    ev_timer_stop(l->loop, &l->timer);
    co = tarry_co_state(h);
    if (l->head) { lua_pushboolean(co, 1); push_note(co, l); }
    else { lua_pushboolean(co, 0); tarry_push_error(co, "connection", "%s", l->error); }
    tarry_rt_wake(h, 2);
}

static void stop_io(tarry_listener *l)
{
    if (!ev_is_active(&l->io)) return;
    ev_ref(l->loop);                   /* undo the ev_unref of tarry_listen */
    ev_io_stop(l->loop, &l->io);
}

static void mark_broken(tarry_listener *l)
{
    snprintf(l->error, sizeof l->error, "the LISTEN connection broke: %s", PQerrorMessage(l->pg));
    for (size_t n = strlen(l->error); n > 0 && l->error[n - 1] == '\n'; n--) l->error[n - 1] = 0;
    stop_io(l);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    tarry_listener *l = (tarry_listener *)w;
    (void)loop; (void)revents;
    if (!PQconsumeInput(l->pg)) mark_broken(l);
    else drain_notifies(l);
    deliver(l);
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
    ev_timer_stop(l->loop, &l->timer);
}

/* l:wait([timeout]) -> {channel=, payload=} or nil on timeout. Raises "connection". [-(1|2), +1, e] */
static int listener_wait(lua_State *L)
{
    tarry_listener *l = check(L);
    double timeout = luaL_optnumber(L, 2, -1);
    tarry_co *h;
    if (l->head) { push_note(L, l); return 1; }
    if (!l->pg) return luaL_error(L, "the listener is closed");
    if (l->error[0]) { tarry_push_error(L, "connection", "%s", l->error); return lua_error(L); }
    if (l->waiter) return luaL_error(L, "another coroutine already waits on this listener");
    if (!(h = tarry_rt_current(L)))
        return luaL_error(L, "Listener:wait() can only be called in a coroutine tarry runs");
    l->waiter = h;
    if (timeout >= 0) {
        ev_timer_set(&l->timer, timeout, 0.);
        ev_timer_start(l->loop, &l->timer);
    }
    lua_settop(L, 0);
    return tarry_rt_park(L, h, waiter_cancel, l);
}

/* l:ping(): SELECT 1 on the connection (blocking, short). Raises "connection" if broken. */
static int listener_ping(lua_State *L)
{
    tarry_listener *l = check(L);
    PGresult *res;
    if (!l->pg || l->error[0]) {
        tarry_push_error(L, "connection", "%s", l->error[0] ? l->error : "the listener is closed");
        return lua_error(L);
    }
    res = PQexec(l->pg, "SELECT 1");
    if (!tarry_pg_result_ok(res)) {
        tarry_push_pg_error(L, l->pg, res);
        PQclear(res);
        if (PQstatus(l->pg) != CONNECTION_OK) mark_broken(l);
        return lua_error(L);
    }
    PQclear(res);
    drain_notifies(l);
    return 0;
}

static void listener_free(tarry_listener *l)
{
    stop_io(l);
    ev_timer_stop(l->loop, &l->timer);
    PQfinish(l->pg);
    l->pg = NULL;
    while (l->head) {
        note *x = l->head;
        l->head = x->next;
        free(x->channel);
        free(x->payload);
        free(x);
    }
    l->tail = NULL;
}

static int listener_close(lua_State *L)
{
    tarry_listener *l = check(L);
    if (l->waiter) {
        tarry_co *h = l->waiter;
        l->waiter = NULL;
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
    l->waiter = NULL;
    listener_free(l);
    return 0;
}

/* Run LISTEN "<channel>" for each channel (quoted identifiers).  [-0, +0, e] */
static void listen_all(lua_State *L, tarry_listener *l, int channels)
{
    int n = (int)luaL_len(L, channels);
    for (int i = 1; i <= n; i++) {
        char *ident;
        PGresult *res;
        lua_rawgeti(L, channels, i);
        ident = PQescapeIdentifier(l->pg, luaL_checkstring(L, -1), lua_rawlen(L, -1));
        lua_pop(L, 1);
        if (!ident) { tarry_push_pg_error(L, l->pg, NULL); lua_error(L); }
        lua_pushfstring(L, "LISTEN %s", ident);
        PQfreemem(ident);
        res = PQexec(l->pg, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!tarry_pg_result_ok(res)) { tarry_push_pg_error(L, l->pg, res); PQclear(res); lua_error(L); }
        PQclear(res);
    }
}

/* core.listen(conninfo, channels, connect_timeout) -> listener.  [-3, +1, e] */
int tarry_listen(lua_State *L)
{
    const char *conninfo = luaL_checkstring(L, 1);
    int timeout = (int)luaL_optinteger(L, 3, 5);
    char err[512];
    tarry_listener *l;
    luaL_checktype(L, 2, LUA_TTABLE);
    l = lua_newuserdatauv(L, sizeof *l, 1);
    memset(l, 0, sizeof *l);
    l->loop = tarry_rt_loop(tarry_rt_get(L));
    ev_init(&l->io, io_cb);
    ev_init(&l->timer, timeout_cb);
    luaL_setmetatable(L, TARRY_LISTENER_MT);
    tarry_rt_push_anchor(L);
    lua_setiuservalue(L, -2, 1);
    if (!(l->pg = tarry_pg_connect(conninfo, timeout, err, sizeof err))) {
        tarry_push_error(L, "connection", "cannot connect to PostgreSQL: %s", err);
        return lua_error(L);
    }
    listen_all(L, l, 2);
    PQsetnonblocking(l->pg, 1);
    ev_io_set(&l->io, PQsocket(l->pg), EV_READ);
    ev_io_start(l->loop, &l->io);
    ev_unref(l->loop);                 /* listening alone does not keep the loop running */
    return 1;
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
