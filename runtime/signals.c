/* tarry.Signals: POSIX signals as events on the runtime's loop (libev's ev_signal).
 *
 *   local sig = tarry.core.Signals{ "INT", "TERM" }
 *   local name = sig:wait()   -- "INT": parks the coroutine until one arrives
 *   sig:close()               -- the signals get their default action back
 *
 * While it is open the signals do not kill the process; they queue here. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <ev.h>

#include "tarry_private.h"

#define TARRY_SIGNALS_MT "tarry.Signals"
#define MAX_WATCHED 6
#define QUEUE 16

static const struct { const char *name; int num; } known[] = {
    { "INT", SIGINT }, { "TERM", SIGTERM }, { "HUP", SIGHUP }, { "QUIT", SIGQUIT },
    { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { NULL, 0 } };

typedef struct tarry_signals {
    struct ev_loop *loop;
    ev_signal watchers[MAX_WATCHED];
    int nwatch;
    int queue[QUEUE];          /* indexes into known[] of signals not yet waited for */
    int nqueued;
    tarry_co *waiter;
} tarry_signals;

static void push_name(lua_State *L, int k) { lua_pushstring(L, known[k].name); }

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    tarry_signals *s = w->data;
    int k = 0;
    (void)loop; (void)revents;
    while (known[k].num != w->signum) k++;
    if (s->waiter) {
        tarry_co *h = s->waiter;
        s->waiter = NULL;
        lua_pushboolean(tarry_co_state(h), 1);
        push_name(tarry_co_state(h), k);
        tarry_rt_wake(h, 2);
    } else if (s->nqueued < QUEUE) {
        s->queue[s->nqueued++] = k;
    }
}

static void waiter_cancel(void *data)
{
    ((tarry_signals *)data)->waiter = NULL;
}

static void stop_all(tarry_signals *s)
{
    for (int i = 0; i < s->nwatch; i++) {
        ev_ref(s->loop);               /* undo the ev_unref of signals_new before stopping */
        ev_signal_stop(s->loop, &s->watchers[i]);
    }
    s->nwatch = 0;
}

/* sig:wait() -> the name of the next signal ("INT"). Only in a tarry coroutine.  [-1, +1, e] */
static int signals_wait(lua_State *L)
{
    tarry_signals *s = luaL_checkudata(L, 1, TARRY_SIGNALS_MT);
    tarry_co *h;
    if (s->nqueued > 0) {
        push_name(L, s->queue[0]);
        memmove(s->queue, s->queue + 1, (size_t)--s->nqueued * sizeof s->queue[0]);
        return 1;
    }
    if (s->nwatch == 0) return luaL_error(L, "the signal watcher is closed");
    if (s->waiter) return luaL_error(L, "another coroutine already waits for these signals");
    if (!(h = tarry_rt_current(L)))
        return luaL_error(L, "Signals:wait() can only be called in a coroutine tarry runs");
    s->waiter = h;
    lua_settop(L, 0);
    return tarry_rt_park(L, h, waiter_cancel, s);
}

static int signals_close(lua_State *L)
{
    tarry_signals *s = luaL_checkudata(L, 1, TARRY_SIGNALS_MT);
    stop_all(s);
    if (s->waiter) {
        tarry_co *h = s->waiter;
        s->waiter = NULL;
        lua_pushboolean(tarry_co_state(h), 1);
        lua_pushnil(tarry_co_state(h));
        tarry_rt_wake(h, 2);
    }
    return 0;
}

static int signals_gc(lua_State *L)
{
    tarry_signals *s = luaL_checkudata(L, 1, TARRY_SIGNALS_MT);
    if (s->waiter) tarry_co_forget_wait(s->waiter);
    s->waiter = NULL;
    stop_all(s);
    return 0;
}

/* core.Signals{ "INT", "TERM", ... } -> a watcher of those signals.  [-1, +1, e] */
static int signals_new(lua_State *L)
{
    tarry_signals *s;
    int n;
    luaL_checktype(L, 1, LUA_TTABLE);
    n = (int)luaL_len(L, 1);
    luaL_argcheck(L, n >= 1 && n <= MAX_WATCHED, 1, "name 1 to 6 signals");
    s = lua_newuserdatauv(L, sizeof *s, 1);
    memset(s, 0, sizeof *s);
    s->loop = tarry_rt_loop(tarry_rt_get(L));
    luaL_setmetatable(L, TARRY_SIGNALS_MT);
    tarry_rt_push_anchor(L);
    lua_setiuservalue(L, -2, 1);
    for (int i = 1; i <= n; i++) {
        const char *name;
        int k = 0;
        lua_rawgeti(L, 1, i);
        name = luaL_checkstring(L, -1);
        if (strncmp(name, "SIG", 3) == 0) name += 3;
        while (known[k].name && strcmp(known[k].name, name) != 0) k++;
        if (!known[k].name) { stop_all(s); return luaL_error(L, "unknown signal '%s'", name); }
        lua_pop(L, 1);
        ev_signal_init(&s->watchers[s->nwatch], signal_cb, known[k].num);
        s->watchers[s->nwatch].data = s;
        ev_signal_start(s->loop, &s->watchers[s->nwatch]);
        ev_unref(s->loop);             /* a signal watcher alone does not keep the loop alive */
        s->nwatch++;
    }
    return 1;
}

void tarry_signals_open(lua_State *L)
{
    static const luaL_Reg methods[] = { { "wait", signals_wait }, { "close", signals_close }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_SIGNALS_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, signals_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, signals_close);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    lua_pushcfunction(L, signals_new);
    lua_setfield(L, -2, "Signals");
}
