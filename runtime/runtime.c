/* The per-state runtime: a private libev loop and the scheduler of the coroutines tarry owns.
 *
 * A tarry coroutine is a Lua thread started by spawn (later also by the worker, one per job).
 * It runs until it parks on an event (a timer, a query on an async connection, another
 * coroutine's end); the event's callback pushes the outcome onto the coroutine's stack and
 * resumes it from the thread that drives the loop (run() or handle:result()). A plain
 * coroutine.yield() inside a tarry coroutine just lets the others run first.
 * handle:interrupt(err) raises err inside a coroutine at its next yield point (see below). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ev.h>

#include "tarry_private.h"

static const char RT_KEY = 'r';       /* registry: the runtime's anchor userdata */
static const char OWNED_KEY = 'o';    /* registry: thread -> handle of every running coroutine */
static const char UNSEEN_KEY = 'u';   /* registry: handle -> true for failures nobody looked at */
static const char SPARE_KEY = 's';    /* registry: threads of coroutines that returned, to reuse */

/* Spare threads kept for the next spawns. A new thread starts with a small stack and call-info
   list that its first calls grow, and is freed by the collector later: a worker spawns a
   coroutine per job, so reusing the thread of one that returned saves both. */
enum { SPARE_MAX = 256 };

enum { CO_RUNNING, CO_OK, CO_ERROR };

struct tarry_rt {
    struct ev_loop *loop;
    lua_State *L;           /* the thread driving the loop, while one does */
    int alive;              /* spawned coroutines that have not finished */
    int driving;
    tarry_co *current;      /* the tarry coroutine being resumed, if any */
    ev_idle ready;          /* runs the ready queue without blocking the loop */
    tarry_co *ready_head, *ready_tail;
    int nready;
    int in_pass;            /* ready_cb is resuming the ready queue */
    tarry_rt_hook *after_pass;   /* to run when that pass ends (tarry_rt_after_pass) */
    tarry_poll *poll;       /* the pollfd a host loop may watch (pollfd.c) */
    long resumes;           /* coroutines resumed so far (step() returns its share) */
    int nspare;             /* threads in the SPARE_KEY list */
};

/* The handle userdata. User values: 1 the thread (nil once it returned: the thread may run
   another coroutine then, and co is NULL), 2 the outcome table (nil while it runs, and
   after a success without results), 3 the joiners (a list, made by the first), 4 the error of an
   interrupt not yet delivered. */
struct tarry_co {
    tarry_rt *rt;
    lua_State *co;
    int nargs;              /* values on the coroutine's stack for its next resume */
    int status;
    int waiting;            /* parked on an event (else a plain yield: it is ready again) */
    void (*cancel)(void *); /* undoes the pending wait (interrupted, cancelled, runtime gone) */
    void *cancel_data;
    int queued;             /* in the ready queue */
    tarry_co *next_ready;
    tarry_co *joined;       /* the coroutine whose result it waits for, if any */
    int interrupted;        /* an interrupt waits for delivery (its error in user value 4) */
    int hooked;             /* the count hook that raises it is armed; the thread's own hook: */
    lua_Hook old_hook;
    int old_mask, old_count;
};

static void co_resume(tarry_co *h);

double tarry_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void push_registry_table(lua_State *L, const void *key)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE) return;
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* ---- the ready queue ----
 * Coroutines to resume on the next loop iteration, in order. A coroutine leaves it when it is
 * resumed or when it finishes otherwise (cancelled): the queue never holds a finished handle,
 * which nothing else may keep alive. */

static void ready_push(tarry_co *h)
{
    tarry_rt *rt = h->rt;
    if (h->queued) return;
    h->queued = 1;
    h->next_ready = NULL;
    if (rt->ready_tail) rt->ready_tail->next_ready = h; else rt->ready_head = h;
    rt->ready_tail = h;
    rt->nready++;
    ev_idle_start(rt->loop, &rt->ready);
    tarry_poll_ready(rt->poll);
}

static void ready_remove(tarry_co *h)
{
    tarry_rt *rt = h->rt;
    tarry_co *prev = NULL;
    if (!h->queued) return;
    for (tarry_co *it = rt->ready_head; it; prev = it, it = it->next_ready) {
        if (it != h) continue;
        if (prev) prev->next_ready = h->next_ready; else rt->ready_head = h->next_ready;
        if (rt->ready_tail == h) rt->ready_tail = prev;
        break;
    }
    h->next_ready = NULL;
    h->queued = 0;
    rt->nready--;
}

/* Resume what was ready when this iteration began; what those push waits for the next one, so
   a coroutine that yields in a loop cannot starve the loop's other watchers. */
static void ready_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    tarry_rt *rt = w->data;
    (void)revents;
    ev_idle_stop(loop, w);
    rt->in_pass = 1;
    for (int n = rt->nready; n > 0 && rt->ready_head; n--) {
        tarry_co *h = rt->ready_head;
        ready_remove(h);
        if (h->status == CO_RUNNING) co_resume(h);
    }
    rt->in_pass = 0;
    while (rt->after_pass) {
        tarry_rt_hook *hook = rt->after_pass;
        rt->after_pass = hook->next;
        hook->next = NULL;
        hook->linked = 0;
        hook->fn(hook->data);
    }
    if (rt->ready_head) ev_idle_start(loop, w);
}

int tarry_rt_after_pass(tarry_rt *rt, tarry_rt_hook *hook)
{
    if (!rt->in_pass) return 0;
    if (hook->linked) return 1;
    hook->linked = 1;
    hook->next = rt->after_pass;
    rt->after_pass = hook;
    return 1;
}

void tarry_rt_cancel_after_pass(tarry_rt *rt, tarry_rt_hook *hook)
{
    tarry_rt_hook **pp = &rt->after_pass;
    if (!hook->linked) return;
    while (*pp && *pp != hook) pp = &(*pp)->next;
    if (*pp) *pp = hook->next;
    hook->next = NULL;
    hook->linked = 0;
}

/* ---- the runtime object ---- */

static int rt_gc(lua_State *L)
{
    tarry_rt **p = lua_touserdata(L, 1);
    tarry_rt *rt = *p;
    if (!rt) return 0;
    push_registry_table(L, &OWNED_KEY);
    lua_pushnil(L);
    while (lua_next(L, -2)) {          /* undo the waits of coroutines still parked */
        tarry_co *h = lua_touserdata(L, -1);
        if (h && h->cancel) { h->cancel(h->cancel_data); h->cancel = NULL; }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    ev_idle_stop(rt->loop, &rt->ready);
    ev_loop_destroy(rt->loop);
    tarry_poll_free(rt->poll);
    free(rt);
    *p = NULL;
    return 0;
}

static tarry_rt *rt_create(lua_State *L)
{
    tarry_rt **p = lua_newuserdatauv(L, sizeof *p, 0);
    tarry_rt *rt = calloc(1, sizeof *rt);
    *p = NULL;
    if (!rt) luaL_error(L, "out of memory");
    rt->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (!rt->loop) { free(rt); luaL_error(L, "tarry: cannot create an event loop"); return NULL; }
    if (!(rt->poll = tarry_poll_new(rt->loop))) {
        ev_loop_destroy(rt->loop);
        free(rt);
        luaL_error(L, "tarry: cannot create an eventfd: %s", strerror(errno));
        return NULL;
    }
    ev_idle_init(&rt->ready, ready_cb);
    ev_set_priority(&rt->ready, EV_MAXPRI);   /* runs every iteration, however busy the loop */
    rt->ready.data = rt;
    *p = rt;
    lua_newtable(L);
    lua_pushcfunction(L, rt_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &RT_KEY);
    return rt;
}

tarry_rt *tarry_rt_get(lua_State *L)
{
    tarry_rt *rt = NULL;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &RT_KEY) == LUA_TUSERDATA)
        rt = *(tarry_rt **)lua_touserdata(L, -1);
    lua_pop(L, 1);
    return rt ? rt : rt_create(L);
}

void tarry_rt_push_anchor(lua_State *L)
{
    tarry_rt_get(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &RT_KEY);
}

struct ev_loop *tarry_rt_loop(tarry_rt *rt) { return rt->loop; }
tarry_poll *tarry_rt_poll(tarry_rt *rt) { return rt->poll; }
int tarry_rt_has_ready(tarry_rt *rt) { return rt->ready_head != NULL; }
lua_State *tarry_co_state(tarry_co *h) { return h->co; }

/* ---- ownership ---- */

tarry_co *tarry_rt_current(lua_State *L)
{
    tarry_co *h;
    if (!lua_isyieldable(L)) return NULL;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &OWNED_KEY) != LUA_TTABLE) { lua_pop(L, 1); return NULL; }
    lua_pushthread(L);
    lua_rawget(L, -2);
    h = luaL_testudata(L, -1, TARRY_CO_MT);
    lua_pop(L, 2);
    return (h && h->status == CO_RUNNING && h->co == L) ? h : NULL;
}

/* Push the handle of a running coroutine (looked up by its thread) onto L.  [-0, +1, -] */
static void push_handle(lua_State *L, tarry_co *h)
{
    push_registry_table(L, &OWNED_KEY);
    lua_pushthread(h->co);
    lua_xmove(h->co, L, 1);
    lua_rawget(L, -2);
    lua_remove(L, -2);
}

/* ---- parking and waking ---- */

static int park_k(lua_State *L, int status, lua_KContext base)
{
    int n = lua_gettop(L) - (int)base;
    (void)status;
    if (n < 1) return 0;
    if (!lua_toboolean(L, (int)base + 1)) {
        lua_pushvalue(L, (int)base + 2);
        return lua_error(L);
    }
    return n - 1;
}

int tarry_rt_park(lua_State *L, tarry_co *h, void (*cancel)(void *), void *cancel_data)
{
    h->waiting = 1;
    h->cancel = cancel;
    h->cancel_data = cancel_data;
    return lua_yieldk(L, 0, (lua_KContext)lua_gettop(L), park_k);
}

/* Always through the ready queue, never resumed here: the waker is usually a libev or libpq
   callback in the middle of its own bookkeeping (a pool handing out a result), and the woken
   coroutine may do anything next (query again, close the connector) that frees what that
   callback still uses. The ready queue runs on the next loop iteration, outside every callback,
   and coroutines never nest inside each other. */
void tarry_rt_wake(tarry_co *h, int nvalues)
{
    h->nargs = nvalues;
    h->cancel = NULL;
    ready_push(h);
}

/* ---- interrupting ----
 * handle:interrupt(err) raises err inside a coroutine at its next yield point, as if the call it
 * waits in raised it. The error waits in the handle (user value 4) until it is delivered:
 *   parked on a wait      the wait is undone (its cancel function) and the coroutine queued;
 *                         resumed, park_k gets `false, err` and raises it;
 *   woken, not resumed    the same: the values of the wake give way to `false, err`;
 *   ready or running      a count hook on its thread raises err at the next Lua instruction it
 *                         runs (after a plain coroutine.yield(), as that call returns); if it
 *                         parks before (C code only), that park is undone as above.
 * Nothing is resumed here: a woken coroutine goes through the ready queue like any other. */

/* Push the pending interrupt's error onto L and forget it.  [-0, +1, -] */
static void take_interrupt(lua_State *L, tarry_co *h)
{
    push_handle(L, h);
    lua_getiuservalue(L, -1, 4);
    lua_pushnil(L);
    lua_setiuservalue(L, -3, 4);
    lua_remove(L, -2);
    h->interrupted = 0;
}

static void disarm_hook(tarry_co *h)
{
    if (!h->hooked) return;
    lua_sethook(h->co, h->old_hook, h->old_mask, h->old_count);
    h->hooked = 0;
}

/* The count hook: gives the thread its own hook back and raises the interrupt there. */
static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    tarry_co *h;
    (void)ar;
    push_registry_table(L, &OWNED_KEY);
    lua_pushthread(L);
    lua_rawget(L, -2);
    h = luaL_testudata(L, -1, TARRY_CO_MT);
    lua_pop(L, 2);                      /* the OWNED table keeps h */
    if (!h || h->co != L || !h->hooked) {
        lua_sethook(L, NULL, 0, 0);     /* a thread created meanwhile inherited the hook */
        return;
    }
    disarm_hook(h);
    take_interrupt(L, h);
    lua_error(L);
}

static void arm_hook(tarry_co *h)
{
    if (h->hooked) return;
    h->old_hook = lua_gethook(h->co);
    h->old_mask = lua_gethookmask(h->co);
    h->old_count = lua_gethookcount(h->co);
    lua_sethook(h->co, interrupt_hook, LUA_MASKCOUNT, 1);
    h->hooked = 1;
}

/* Undo h's pending wait and queue it: it resumes with the interrupt. */
static void undo_wait(tarry_co *h)
{
    if (h->cancel) h->cancel(h->cancel_data);
    h->cancel = NULL;
    h->cancel_data = NULL;
    h->joined = NULL;
    h->nargs = 0;
    ready_push(h);
}

/* The pending interrupt as h resumes: a parked coroutine gets `false, err` in place of its wake
   values (park_k raises it); any other gets the hook. Returns the number of values to resume with. */
static int deliver_interrupt(lua_State *L, tarry_co *h, int nargs)
{
    if (!h->waiting) { arm_hook(h); return nargs; }
    disarm_hook(h);
    lua_pop(h->co, nargs);
    lua_pushboolean(h->co, 0);
    take_interrupt(L, h);
    lua_xmove(L, h->co, 1);
    return 2;
}

void tarry_co_interrupt(lua_State *L, tarry_co *h)
{
    if (h->status != CO_RUNNING || h->interrupted) { lua_pop(L, 1); return; }
    push_handle(L, h);
    lua_insert(L, -2);
    lua_setiuservalue(L, -2, 4);
    lua_pop(L, 1);
    h->interrupted = 1;
    if (h->rt->current == h) arm_hook(h);
    else if (h->waiting && !h->queued) undo_wait(h);
}

/* ---- finishing ---- */

/* Store the outcome in user value 2: {n=, ...} or {err=, traceback=}; nothing (nil) for a
   success without results, as most jobs are.  [-0, +0, m] */
static void store_outcome(lua_State *L, int hidx, tarry_co *h, int st, int nres)
{
    if (st == LUA_OK && nres == 0) return;
    lua_createtable(L, nres, 2);
    if (st == LUA_OK) {
        lua_xmove(h->co, L, nres);
        for (int i = nres; i >= 1; i--) lua_rawseti(L, -(i + 1), i);
        lua_pushinteger(L, nres);
        lua_setfield(L, -2, "n");
    } else {
        lua_xmove(h->co, L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) luaL_traceback(L, h->co, lua_tostring(L, -1), 0);
        else luaL_traceback(L, h->co, "(error object is not a string)", 0);
        lua_setfield(L, -3, "traceback");
        lua_setfield(L, -2, "err");
    }
    lua_setiuservalue(L, hidx, 2);
}

/* Push `true, results...` or `false, err` from handle at hidx onto thread T; returns count. */
static int push_outcome(lua_State *L, int hidx, lua_State *T)
{
    tarry_co *h = lua_touserdata(L, hidx);
    int n, t;
    if (lua_getiuservalue(L, hidx, 2) == LUA_TNIL) {      /* succeeded, no results */
        lua_pop(L, 1);
        lua_pushboolean(T, 1);
        return 1;
    }
    t = lua_gettop(L);
    if (h->status == CO_ERROR) {
        lua_pushboolean(T, 0);
        lua_getfield(L, t, "err");
        lua_xmove(L, T, 1);
        lua_remove(L, t);
        return 2;
    }
    lua_getfield(L, t, "n");
    n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(T, n + 1, "too many results");
    lua_pushboolean(T, 1);
    for (int i = 1; i <= n; i++) { lua_rawgeti(L, t, i); lua_xmove(L, T, 1); }
    lua_remove(L, t);
    return n + 1;
}

/* Wake the coroutines still waiting in h:result() (an interrupted one stopped waiting). */
static void wake_joiners(lua_State *L, int hidx)
{
    tarry_co *h = lua_touserdata(L, hidx);
    if (lua_getiuservalue(L, hidx, 3) == LUA_TNIL) { lua_pop(L, 1); return; }   /* no one waits */
    int nj = (int)luaL_len(L, -1);
    for (int i = 1; i <= nj; i++) {
        lua_rawgeti(L, -1, i);
        tarry_co *j = lua_touserdata(L, -1);
        lua_pop(L, 1);
        if (!j || j->status != CO_RUNNING || j->joined != h) continue;
        j->joined = NULL;
        tarry_rt_wake(j, push_outcome(L, hidx, j->co));
    }
    lua_pop(L, 1);
}

/* A coroutine returned: its thread (empty stack, no call, every upvalue and <close> variable
   closed) joins the spare list, unless the list is full. The handle lets go of it.  [-0, +0, m] */
static void keep_spare(lua_State *L, int hidx, tarry_co *h)
{
    tarry_rt *rt = h->rt;
    if (rt->nspare >= SPARE_MAX || lua_status(h->co) != LUA_OK || lua_gettop(h->co) != 0) return;
    push_registry_table(L, &SPARE_KEY);
    lua_getiuservalue(L, hidx, 1);
    lua_rawseti(L, -2, ++rt->nspare);
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setiuservalue(L, hidx, 1);
    h->co = NULL;
}

/* Push a thread for a new coroutine: a spare one, with L's hook as a new thread would have, or
   a new one.  [-0, +1, m] */
static lua_State *take_thread(lua_State *L, tarry_rt *rt)
{
    lua_State *co;
    if (rt->nspare == 0) return lua_newthread(L);
    push_registry_table(L, &SPARE_KEY);
    lua_rawgeti(L, -1, rt->nspare);
    lua_pushnil(L);
    lua_rawseti(L, -3, rt->nspare--);
    lua_remove(L, -2);
    co = lua_tothread(L, -1);
    lua_sethook(co, lua_gethook(L), lua_gethookmask(L), lua_gethookcount(L));
    return co;
}

static void co_finish(lua_State *L, tarry_co *h, int st, int nres, int seen)
{
    tarry_rt *rt = h->rt;
    int hidx;
    ready_remove(h);              /* cancelled while ready: once unanchored it may be collected */
    push_handle(L, h);
    hidx = lua_gettop(L);
    disarm_hook(h);
    if (h->interrupted) {                       /* it ended before the interrupt reached it */
        h->interrupted = 0;
        lua_pushnil(L);
        lua_setiuservalue(L, hidx, 4);
    }
    store_outcome(L, hidx, h, st, nres);
    h->status = (st == LUA_OK) ? CO_OK : CO_ERROR;
    if (st != LUA_OK) lua_resetthread(h->co);   /* runs its pending <close> variables */
    if (st != LUA_OK && !seen) {
        push_registry_table(L, &UNSEEN_KEY);
        lua_pushvalue(L, hidx);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    push_registry_table(L, &OWNED_KEY);
    lua_pushthread(h->co);
    lua_xmove(h->co, L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    if (st == LUA_OK) keep_spare(L, hidx, h);
    rt->alive--;
    wake_joiners(L, hidx);
    lua_pop(L, 1);
    if (rt->alive == 0 && rt->driving) ev_break(rt->loop, EVBREAK_ONE);
}

static void co_resume(tarry_co *h)
{
    tarry_rt *rt = h->rt;
    int nres, st, nargs = h->nargs;
    tarry_co *outer = rt->current;
    h->nargs = 0;
    if (h->interrupted) nargs = deliver_interrupt(rt->L, h, nargs);
    h->waiting = 0;
    h->cancel = NULL;
    rt->current = h;
    rt->resumes++;
    st = lua_resume(h->co, rt->L, nargs, &nres);
    rt->current = outer;
    if (st == LUA_YIELD) {
        lua_pop(h->co, nres);
        if (!h->waiting) ready_push(h);
        else if (h->interrupted) undo_wait(h);   /* it parked before the hook could fire */
        return;
    }
    co_finish(rt->L, h, st, nres, 0);
}

/* ---- spawn, run, result ---- */

int tarry_rt_spawn(lua_State *L, int first)
{
    tarry_rt *rt = tarry_rt_get(L);
    int top = lua_gettop(L), nargs = top - first;
    lua_State *co;
    tarry_co *h;
    luaL_checktype(L, first, LUA_TFUNCTION);
    co = take_thread(L, rt);
    h = lua_newuserdatauv(L, sizeof *h, 4);
    memset(h, 0, sizeof *h);
    h->rt = rt;
    h->co = co;
    h->nargs = nargs;
    luaL_setmetatable(L, TARRY_CO_MT);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 1);
    for (int i = first; i <= top; i++) lua_pushvalue(L, i);
    lua_xmove(L, co, nargs + 1);
    push_registry_table(L, &OWNED_KEY);
    lua_pushvalue(L, -3);               /* thread */
    lua_pushvalue(L, -3);               /* handle */
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_remove(L, -2);                  /* the thread */
    rt->alive++;
    ready_push(h);
    return 1;
}

static void deadlock(lua_State *L, tarry_rt *rt)
{
    rt->driving = 0;
    tarry_poll_end(rt->poll, rt->ready_head != NULL);
    luaL_error(L, "tarry: %d coroutine(s) wait for an event that can never come (deadlock)", rt->alive);
}

/* Drive the loop on L until `until` finishes (or, when NULL, every coroutine has). */
static void drive(lua_State *L, tarry_rt *rt, tarry_co *until)
{
    lua_State *prev = rt->L;
    rt->driving = 1;
    rt->L = L;
    tarry_poll_begin(rt->poll, 0);
    while (until ? until->status == CO_RUNNING : rt->alive > 0) {
        /* libev does not block when no watcher is active and then returns 0 */
        if (!ev_run(rt->loop, EVRUN_ONCE) && (until ? until->status == CO_RUNNING : rt->alive > 0)) {
            rt->L = prev;
            deadlock(L, rt);
        }
    }
    tarry_poll_end(rt->poll, rt->ready_head != NULL);
    rt->driving = 0;
    rt->L = prev;
}

static void check_can_drive(lua_State *L, tarry_rt *rt, const char *what)
{
    if (tarry_rt_current(L))
        luaL_error(L, "%s cannot be called from inside a tarry coroutine (it would block the loop)", what);
    if (rt->driving)
        luaL_error(L, "%s cannot be called here: tarry's loop is running but this code is not in a "
                      "coroutine tarry owns (inside a C call or a coroutine of your own)", what);
}

/* Raise the first failure no one retrieved with :result(), if any.  */
static void raise_unseen(lua_State *L)
{
    push_registry_table(L, &UNSEEN_KEY);
    lua_pushnil(L);
    if (!lua_next(L, -2)) { lua_pop(L, 1); return; }
    lua_pop(L, 1);                               /* value */
    lua_pushvalue(L, -1);
    lua_pushnil(L);
    lua_rawset(L, -4);                           /* seen now */
    lua_getiuservalue(L, -1, 2);
    lua_getfield(L, -1, "err");
    lua_error(L);
}

/* step(): at most this many loop iterations, each resuming what was ready as it began; so work
   that a result or a finished coroutine makes ready runs in the same step, and a coroutine that
   yields in a loop still cannot keep the host's frame. */
#define STEP_ROUNDS 8

static void step_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop; (void)t; (void)revents;
}

/* Block in libev until a watcher fires or timeout seconds pass. */
static void step_wait(tarry_rt *rt, double timeout)
{
    ev_timer t;
    ev_timer_init(&t, step_timer_cb, timeout, 0.);
    tarry_timer_start(rt->loop, &t);
    ev_run(rt->loop, EVRUN_ONCE);
    tarry_timer_stop(rt->loop, &t);
}

int tarry_rt_step(lua_State *L, double timeout)
{
    tarry_rt *rt = tarry_rt_get(L);
    lua_State *prev = rt->L;
    long before = rt->resumes;
    check_can_drive(L, rt, "step()");
    rt->driving = 1;
    rt->L = L;
    tarry_poll_begin(rt->poll, 1);
    if (timeout > 0 && !rt->ready_head) step_wait(rt, timeout);
    for (int i = 0; i < STEP_ROUNDS; i++) {
        ev_run(rt->loop, EVRUN_NOWAIT);
        if (!rt->ready_head) break;
    }
    tarry_poll_end(rt->poll, rt->ready_head != NULL);
    rt->driving = 0;
    rt->L = prev;
    raise_unseen(L);
    return (int)(rt->resumes - before);
}

int tarry_rt_run(lua_State *L)
{
    tarry_rt *rt = tarry_rt_get(L);
    check_can_drive(L, rt, "run()");
    drive(L, rt, NULL);
    raise_unseen(L);
    return 0;
}

static void mark_seen(lua_State *L, int hidx)
{
    push_registry_table(L, &UNSEEN_KEY);
    lua_pushvalue(L, hidx);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* An interrupted joiner stops waiting: the joined coroutine's end must not wake it. */
static void forget_join(void *data)
{
    ((tarry_co *)data)->joined = NULL;
}

/* handle:result() -> the function's results, or raises its error. Waits (parks inside a
   tarry coroutine, drives the loop elsewhere) while it is still running.  [-0, +n, e] */
static int co_result(lua_State *L)
{
    tarry_co *h = luaL_checkudata(L, 1, TARRY_CO_MT);
    tarry_co *me;
    lua_settop(L, 1);
    if (h->status == CO_RUNNING) {
        me = tarry_rt_current(L);
        if (me == h) return luaL_error(L, "a coroutine cannot wait for its own result");
        if (me) {
            if (lua_getiuservalue(L, 1, 3) == LUA_TNIL) {   /* the first to wait for it */
                lua_pop(L, 1);
                lua_newtable(L);
                lua_pushvalue(L, -1);
                lua_setiuservalue(L, 1, 3);
            }
            push_handle(L, me);
            lua_rawseti(L, -2, luaL_len(L, -2) + 1);
            lua_pop(L, 1);
            mark_seen(L, 1);
            me->joined = h;
            return tarry_rt_park(L, me, forget_join, me);
        }
        check_can_drive(L, h->rt, "handle:result()");
        drive(L, h->rt, h);
    }
    mark_seen(L, 1);
    int n = push_outcome(L, 1, L);
    if (!lua_toboolean(L, -n)) return lua_error(L);
    return n - 1;
}

/* handle:cancel([err]): stop a coroutine now. Its pending wait is undone, its <close>
   variables run, and its result becomes the error err (default {code="cancelled"}).
   No-op on a finished coroutine; a coroutine cannot cancel itself.  [-(1|2), +0, e] */
static int co_cancel(lua_State *L)
{
    tarry_co *h = luaL_checkudata(L, 1, TARRY_CO_MT);
    if (h->status != CO_RUNNING) return 0;
    if (h->rt->current == h) return luaL_error(L, "a coroutine cannot cancel itself");
    if (h->cancel) h->cancel(h->cancel_data);
    h->cancel = NULL;
    lua_resetthread(h->co);
    if (lua_isnoneornil(L, 2)) tarry_push_error(h->co, "cancelled", "the coroutine was cancelled");
    else { lua_pushvalue(L, 2); lua_xmove(L, h->co, 1); }
    co_finish(L, h, LUA_ERRRUN, 1, 1);
    return 0;
}

/* handle:interrupt([err]): raise err inside the coroutine at its next yield point, as if the
   call it waits in raised it (a sleep, a query, an Event or Listener wait, a result(): that wait
   is undone at once); a coroutine that is ready or running gets it at the next Lua instruction
   it runs (after a plain coroutine.yield(), as that call returns). It may catch it. err defaults
   to the error object {code = "interrupted"}. No-op on a finished coroutine, and while an earlier
   interrupt was not delivered yet.  [-2, +0, e] */
static int co_interrupt(lua_State *L)
{
    tarry_co *h = luaL_checkudata(L, 1, TARRY_CO_MT);
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) tarry_push_error(L, "interrupted", "the coroutine was interrupted");
    else lua_pushvalue(L, 2);
    tarry_co_interrupt(L, h);
    return 0;
}

static int co_status(lua_State *L)
{
    tarry_co *h = luaL_checkudata(L, 1, TARRY_CO_MT);
    static const char *const names[] = { "running", "succeeded", "failed" };
    lua_pushstring(L, names[h->status]);
    return 1;
}

/* tostring(handle): "<tarry.Coroutine running|succeeded|failed|cancelled 0x...>"; a failure
   whose error is the {code = "cancelled"} object reads as cancelled.  [-1, +1, m] */
static int co_tostring(lua_State *L)
{
    tarry_co *h = luaL_checkudata(L, 1, TARRY_CO_MT);
    static const char *const names[] = { "running", "succeeded", "failed" };
    const char *name = names[h->status];
    if (h->status == CO_ERROR && lua_getiuservalue(L, 1, 2) == LUA_TTABLE
        && lua_getfield(L, -1, "err") == LUA_TTABLE && luaL_getmetafield(L, -1, "__name") != LUA_TNIL) {
        if (strcmp(lua_tostring(L, -1), TARRY_ERROR_MT) == 0 && lua_getfield(L, -2, "code") == LUA_TSTRING
            && strcmp(lua_tostring(L, -1), "cancelled") == 0)
            name = "cancelled";
    }
    lua_pushfstring(L, "<tarry.Coroutine %s %p>", name, (void *)h);
    return 1;
}

/* ---- sleep ---- */

typedef struct sleep_wait {
    ev_timer timer;
    tarry_co *h;
    struct ev_loop *loop;
} sleep_wait;

static void sleep_cancel(void *data)
{
    sleep_wait *w = data;
    tarry_timer_stop(w->loop, &w->timer);
    free(w);
}

static void sleep_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    sleep_wait *w = (sleep_wait *)t;
    tarry_co *h = w->h;
    (void)revents;
    tarry_timer_stop(loop, t);
    free(w);
    lua_pushboolean(h->co, 1);
    tarry_rt_wake(h, 1);
}

static void sleep_blocking(double s)
{
    struct timespec ts = { (time_t)s, (long)((s - floor(s)) * 1e9) };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

/* tarry.sleep(seconds): parks the running tarry coroutine on a timer; blocks elsewhere. [-1, +0, e] */
int tarry_rt_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    tarry_co *h;
    sleep_wait *w;
    luaL_argcheck(L, s >= 0 && s == s && s < 1e9, 1, "must be a number of seconds >= 0");
    h = tarry_rt_current(L);
    if (!h) { sleep_blocking(s); return 0; }
    w = malloc(sizeof *w);
    if (!w) return luaL_error(L, "out of memory");
    w->h = h;
    w->loop = h->rt->loop;
    ev_timer_init(&w->timer, sleep_cb, s, 0.);
    tarry_timer_start(w->loop, &w->timer);
    lua_settop(L, 0);
    return tarry_rt_park(L, h, sleep_cancel, w);
}

static int l_spawn(lua_State *L) { return tarry_rt_spawn(L, 1); }
static int l_run(lua_State *L) { return tarry_rt_run(L); }
static int l_now(lua_State *L) { lua_pushnumber(L, tarry_now()); return 1; }
static int l_in_coroutine(lua_State *L) { lua_pushboolean(L, tarry_rt_current(L) != NULL); return 1; }

void tarry_runtime_open(lua_State *L)
{
    static const luaL_Reg co_methods[] = {
        { "result", co_result }, { "status", co_status }, { "cancel", co_cancel },
        { "interrupt", co_interrupt }, { NULL, NULL } };
    static const luaL_Reg funcs[] = {
        { "spawn", l_spawn }, { "run", l_run }, { "sleep", tarry_rt_sleep }, { "now", l_now },
        { "in_coroutine", l_in_coroutine }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_CO_MT);
    luaL_newlib(L, co_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, co_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
    tarry_poll_open(L);
    tarry_rt_get(L);    /* made first, so finalized last: after every object that uses its loop */
}

void tarry_co_forget_wait(tarry_co *h)
{
    h->cancel = NULL;
    h->cancel_data = NULL;
}
