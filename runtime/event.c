/* tarry.Event: an auto-reset event between tarry coroutines.
 *
 *   local ev = tarry.Event()
 *   ev:set()                 -- wakes every waiter; with none waiting, the next wait returns at once
 *   ev:wait([timeout])       -- true when set, false after timeout seconds (parks the coroutine)
 *
 * The worker's fetch loop waits on one for "a slot freed, a job was announced, or time to poll". */
#include <stdlib.h>
#include <ev.h>

#include "tarry_private.h"

#define TARRY_EVENT_MT "tarry.Event"

typedef struct waiter {
    ev_timer timer;
    tarry_co *h;
    struct tarry_event *e;
    struct waiter *next, *prev;
} waiter;

typedef struct tarry_event {
    struct ev_loop *loop;
    int flag;
    waiter *waiters;
} tarry_event;

static void unlink_waiter(waiter *w)
{
    if (w->prev) w->prev->next = w->next; else w->e->waiters = w->next;
    if (w->next) w->next->prev = w->prev;
    tarry_timer_stop(w->e->loop, &w->timer);
}

static void wake_waiter(waiter *w, int value)
{
    tarry_co *h = w->h;
    unlink_waiter(w);
    free(w);
    lua_pushboolean(tarry_co_state(h), 1);          /* the park protocol: ok, then the result */
    lua_pushboolean(tarry_co_state(h), value);
    tarry_rt_wake(h, 2);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop; (void)revents;
    wake_waiter((waiter *)t, 0);
}

static void waiter_cancel(void *data)
{
    waiter *w = data;
    unlink_waiter(w);
    free(w);
}

/* ev:set(): wake every coroutine waiting now; if none, latch until the next wait. [-1, +0, -] */
static int event_set(lua_State *L)
{
    tarry_event *e = luaL_checkudata(L, 1, TARRY_EVENT_MT);
    if (!e->waiters) { e->flag = 1; return 0; }
    while (e->waiters) wake_waiter(e->waiters, 1);
    return 0;
}

/* ev:wait([timeout]) -> true if set, false on timeout. Only in a tarry coroutine. [-(1|2), +1, e] */
static int event_wait(lua_State *L)
{
    tarry_event *e = luaL_checkudata(L, 1, TARRY_EVENT_MT);
    double timeout = luaL_optnumber(L, 2, -1);
    tarry_co *h;
    waiter *w;
    if (e->flag) { e->flag = 0; lua_pushboolean(L, 1); return 1; }
    if (!(h = tarry_rt_current(L)))
        return luaL_error(L, "Event:wait() can only be called in a coroutine tarry runs (app:spawn, a task)");
    if (!(w = calloc(1, sizeof *w))) return luaL_error(L, "out of memory");
    w->h = h;
    w->e = e;
    w->next = e->waiters;
    if (w->next) w->next->prev = w;
    e->waiters = w;
    ev_timer_init(&w->timer, timeout_cb, timeout > 0 ? timeout : 0., 0.);
    if (timeout >= 0) tarry_timer_start(e->loop, &w->timer);
    lua_settop(L, 0);
    return tarry_rt_park(L, h, waiter_cancel, w);
}

static int event_gc(lua_State *L)
{
    tarry_event *e = luaL_checkudata(L, 1, TARRY_EVENT_MT);
    while (e->waiters) {              /* nobody can set it any more: forget the waits */
        waiter *w = e->waiters;
        tarry_co_forget_wait(w->h);
        unlink_waiter(w);
        free(w);
    }
    return 0;
}

static int event_new(lua_State *L)
{
    tarry_event *e = lua_newuserdatauv(L, sizeof *e, 1);
    e->loop = tarry_rt_loop(tarry_rt_get(L));
    e->flag = 0;
    e->waiters = NULL;
    luaL_setmetatable(L, TARRY_EVENT_MT);
    tarry_rt_push_anchor(L);
    lua_setiuservalue(L, -2, 1);
    return 1;
}

static int event_tostring(lua_State *L)
{
    tarry_event *e = luaL_checkudata(L, 1, TARRY_EVENT_MT);
    lua_pushfstring(L, "<tarry.Event %s>", e->flag ? "set" : (e->waiters ? "waited on" : "clear"));
    return 1;
}

void tarry_event_open(lua_State *L)
{
    static const luaL_Reg methods[] = { { "set", event_set }, { "wait", event_wait }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_EVENT_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, event_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, event_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, event_new);
    lua_setfield(L, -2, "Event");
}
