/* The runtime as one pollable file descriptor, for hosts that drive tarry from their own loop
 * (luv, cqueues, a game's frame loop), in cqueues' terms:
 *
 *   app:pollfd()    -> fd: readable (level-triggered) whenever a step has work
 *   app:events()    -> "r"
 *   app:timeout()   -> seconds until tarry needs a step even if the fd stays quiet (0: coroutines
 *                      are ready), or nil when it needs none
 *   app:step([t])   -> runs what is ready, waiting at most t seconds (default 0: never blocks)
 *
 * Why an epoll set of tarry's own. libev keeps its backend fd private, and its timers and tarry's
 * ready queue are no fds at all. Digging libev's epoll fd out (from /proc, or a private field of
 * an ev_embed) would lean on libev's internals and still leave timers and the ready queue out. So
 * the pollfd is an epoll set that tarry fills itself, and it holds exactly what a step would act on:
 *   - every fd a tarry ev_io watcher watches, for the same events: tarry's ev_io starts and stops
 *     all go through tarry_io_start / tarry_io_stop, which keep the list and mirror it;
 *   - a timerfd armed at the earliest active tarry timer (tarry_timer_start / tarry_timer_stop keep
 *     that list: libev's timer heap is private too), re-armed when a step or a drive ends;
 *   - an eventfd, written when a coroutine becomes ready outside a step (host code set an Event),
 *     when coroutines are still ready as a step ends, and by tarry_rt_async_send from any thread.
 * The fds are level-triggered: a socket stays readable until libev's callback reads it; the
 * eventfd and the timerfd are drained as a step begins. Until a host asks for the pollfd, the
 * lists are kept but no system call is made: run() and the tarry executable pay nothing.
 * Not covered: libev's signal watchers (tarry.Signals) - a host that embeds tarry keeps signals. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <ev.h>

#include "tarry_private.h"

typedef struct io_entry { ev_io *w; int fd, events; } io_entry;

struct tarry_poll {
    struct ev_loop *loop;
    int efd;                    /* eventfd: from the start (other threads may write it) */
    int epfd, tfd;              /* the pollfd and its timerfd: -1 until a host asks */
    int hold;                   /* in a step or a drive: arming waits for its end */
    int signaled;               /* efd written since the last drain (this thread's view) */
    io_entry *ios;
    int nios, capios;
    ev_timer **timers;
    int ntimers, captimers;
};

tarry_poll *tarry_poll_new(struct ev_loop *loop)
{
    tarry_poll *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->loop = loop;
    p->epfd = p->tfd = -1;
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->efd < 0) { free(p); return NULL; }
    ev_set_userdata(loop, p);
    return p;
}

void tarry_poll_free(tarry_poll *p)
{
    if (!p) return;
    close(p->efd);
    if (p->epfd >= 0) close(p->epfd);
    if (p->tfd >= 0) close(p->tfd);
    free(p->ios);
    free(p->timers);
    free(p);
}

static int grow(void **arr, int *cap, int n, size_t size)
{
    void *bigger;
    if (n < *cap) return 1;
    bigger = realloc(*arr, (size_t)(*cap ? *cap * 2 : 8) * size);
    if (!bigger) return 0;
    *arr = bigger;
    *cap = *cap ? *cap * 2 : 8;
    return 1;
}

/* ---- io: mirrored into the epoll set ---- */

/* Give fd in the set the union of the events its tarry watchers want (none: out of the set).
   A closed fd left the set by itself, so ENOENT and EBADF are no errors here. */
static void mirror(tarry_poll *p, int fd)
{
    struct epoll_event e = { 0 };
    int events = 0;
    if (p->epfd < 0) return;
    for (int i = 0; i < p->nios; i++)
        if (p->ios[i].fd == fd) events |= p->ios[i].events;
    e.events = (events & EV_READ ? EPOLLIN : 0) | (events & EV_WRITE ? EPOLLOUT : 0);
    e.data.fd = fd;
    if (!events) { epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL); return; }
    if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, fd, &e) < 0 && errno == ENOENT)
        epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &e);
}

static int io_find(tarry_poll *p, ev_io *w)
{
    for (int i = 0; i < p->nios; i++)
        if (p->ios[i].w == w) return i;
    return -1;
}

void tarry_io_start(struct ev_loop *loop, struct ev_io *w)
{
    tarry_poll *p = ev_userdata(loop);
    int i;
    ev_io_start(loop, w);
    if (!p) return;
    if ((i = io_find(p, w)) < 0) {
        if (!grow((void **)&p->ios, &p->capios, p->nios, sizeof *p->ios)) return;
        i = p->nios++;
    }
    p->ios[i] = (io_entry){ w, w->fd, w->events & (EV_READ | EV_WRITE) };
    mirror(p, w->fd);
}

void tarry_io_stop(struct ev_loop *loop, struct ev_io *w)
{
    tarry_poll *p = ev_userdata(loop);
    int i, fd;
    ev_io_stop(loop, w);
    if (!p || (i = io_find(p, w)) < 0) return;
    fd = p->ios[i].fd;
    p->ios[i] = p->ios[--p->nios];
    mirror(p, fd);
}

/* ---- timers: the earliest one arms the timerfd ---- */

/* Seconds until the earliest active tarry timer is due (0 if it is), or -1 without one. Timers
   libev stopped by firing leave the list here (their owners keep them until they stop them). */
double tarry_poll_next_timer(tarry_poll *p)
{
    double next = -1;
    if (p->ntimers) ev_now_update(p->loop);
    for (int i = 0; i < p->ntimers; i++) {
        double left;
        if (!ev_is_active(p->timers[i])) { p->timers[i--] = p->timers[--p->ntimers]; continue; }
        left = ev_timer_remaining(p->loop, p->timers[i]);
        if (left < 0) left = 0;
        if (next < 0 || left < next) next = left;
    }
    return next;
}

static void arm(tarry_poll *p)
{
    struct itimerspec its;
    double next;
    if (p->tfd < 0) return;
    memset(&its, 0, sizeof its);
    next = tarry_poll_next_timer(p);
    if (next >= 0) {
        its.it_value.tv_sec = (time_t)next;
        its.it_value.tv_nsec = (long)((next - floor(next)) * 1e9);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    }
    timerfd_settime(p->tfd, 0, &its, NULL);
}

void tarry_timer_start(struct ev_loop *loop, struct ev_timer *w)
{
    tarry_poll *p = ev_userdata(loop);
    int i;
    ev_timer_start(loop, w);
    if (!p) return;
    for (i = 0; i < p->ntimers && p->timers[i] != w; i++) {}
    if (i == p->ntimers) {
        if (!grow((void **)&p->timers, &p->captimers, p->ntimers, sizeof *p->timers)) return;
        p->timers[p->ntimers++] = w;
    }
    if (!p->hold) arm(p);
}

void tarry_timer_stop(struct ev_loop *loop, struct ev_timer *w)
{
    tarry_poll *p = ev_userdata(loop);
    ev_timer_stop(loop, w);
    if (!p) return;
    for (int i = 0; i < p->ntimers; i++) {
        if (p->timers[i] != w) continue;
        p->timers[i] = p->timers[--p->ntimers];
        break;
    }
    if (!p->hold) arm(p);
}

/* ---- the eventfd ---- */

static void efd_write(int efd)
{
    uint64_t one = 1;
    while (write(efd, &one, sizeof one) < 0 && errno == EINTR) {}
}

static void drain(int fd)
{
    uint64_t n;
    if (fd >= 0) while (read(fd, &n, sizeof n) < 0 && errno == EINTR) {}
}

void tarry_rt_async_send(struct ev_loop *loop, struct ev_async *w)
{
    tarry_poll *p = ev_userdata(loop);
    ev_async_send(loop, w);               /* first: a step that drained our eventfd sees it */
    if (p) efd_write(p->efd);
}

/* A coroutine became ready: outside a step, the host must come and step. */
void tarry_poll_ready(tarry_poll *p)
{
    if (p->epfd < 0 || p->hold || p->signaled) return;
    p->signaled = 1;
    efd_write(p->efd);
}

/* A step (drain = 1) or a drive begins: the fd's own state is ours until it ends. A step drains
   the eventfd first, so what any thread writes from now on wakes the host again. */
void tarry_poll_begin(tarry_poll *p, int drain_first)
{
    p->hold = 1;
    if (!drain_first) return;
    drain(p->efd);
    drain(p->tfd);
    p->signaled = 0;
}

/* ... and ends, with coroutines still ready or not. */
void tarry_poll_end(tarry_poll *p, int ready)
{
    p->hold = 0;
    arm(p);
    if (ready) tarry_poll_ready(p);
}

static int add_fd(int epfd, int fd)
{
    struct epoll_event e = { 0 };
    e.events = EPOLLIN;
    e.data.fd = fd;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
}

/* The pollfd, made on first use with what tarry watches now; -1 (errno set) if it cannot be. */
int tarry_poll_fd(tarry_poll *p)
{
    if (p->epfd >= 0) return p->epfd;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (p->epfd < 0 || p->tfd < 0 || add_fd(p->epfd, p->efd) < 0 || add_fd(p->epfd, p->tfd) < 0) {
        int err = errno;
        if (p->epfd >= 0) close(p->epfd);
        if (p->tfd >= 0) close(p->tfd);
        p->epfd = p->tfd = -1;
        errno = err;
        return -1;
    }
    for (int i = 0; i < p->nios; i++) mirror(p, p->ios[i].fd);
    arm(p);
    return p->epfd;
}

/* ---- the app's methods (installed by tarry/app.lua; every app of a state shares the runtime) ---- */

/* app:pollfd() -> fd: readable whenever app:step() has work.  [-1, +1, e] */
static int l_pollfd(lua_State *L)
{
    tarry_rt *rt;
    int fd;
    luaL_checkudata(L, 1, TARRY_APP_MT);
    rt = tarry_rt_get(L);
    if ((fd = tarry_poll_fd(tarry_rt_poll(rt))) < 0)
        return luaL_error(L, "app:pollfd(): cannot create the pollfd: %s", strerror(errno));
    if (tarry_rt_has_ready(rt)) tarry_poll_ready(tarry_rt_poll(rt));   /* made ready before */
    lua_pushinteger(L, fd);
    return 1;
}

/* app:events() -> "r": the pollfd is only ever watched for reading.  [-1, +1, e] */
static int l_events(lua_State *L)
{
    luaL_checkudata(L, 1, TARRY_APP_MT);
    lua_pushliteral(L, "r");
    return 1;
}

/* app:timeout() -> seconds until tarry needs a step even if the pollfd stays quiet: 0 when
   coroutines are ready, nil when nothing but the pollfd can bring work.  [-1, +1, e] */
static int l_timeout(lua_State *L)
{
    tarry_rt *rt;
    double next;
    luaL_checkudata(L, 1, TARRY_APP_MT);
    rt = tarry_rt_get(L);
    next = tarry_rt_has_ready(rt) ? 0 : tarry_poll_next_timer(tarry_rt_poll(rt));
    if (next < 0) lua_pushnil(L);
    else lua_pushnumber(L, next);
    return 1;
}

/* app:step([timeout]) -> the number of coroutines resumed. Runs what is ready; with nothing
   ready, waits at most timeout seconds (default 0: never blocks) for something to be. Raises
   the first failure of a spawned coroutine whose result nobody asked for, as app:run().
   Not from inside a tarry coroutine.  [-(1|2), +1, e] */
static int l_step(lua_State *L)
{
    double timeout;
    luaL_checkudata(L, 1, TARRY_APP_MT);
    timeout = luaL_optnumber(L, 2, 0);
    luaL_argcheck(L, timeout >= 0 && timeout < 1e9, 2, "must be a number of seconds >= 0");
    lua_pushinteger(L, tarry_rt_step(L, timeout));
    return 1;
}

void tarry_poll_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        { "app_pollfd", l_pollfd }, { "app_events", l_events }, { "app_timeout", l_timeout },
        { "app_step", l_step }, { NULL, NULL } };
    luaL_setfuncs(L, funcs, 0);
}
