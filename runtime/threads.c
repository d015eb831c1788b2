/* tarry.ThreadPool: the threads that run blocking task bodies, each with its own Lua state.
 *
 *   local pool = core.ThreadPool{ threads = 2, app_file = "app.lua", conninfo = nil }
 *   pool:signatures()            -- what each thread's app registered (tarry/worker/blocking.lua)
 *   pool:run(id, job_json)       -- in a tarry coroutine: parks it until a thread ran the job;
 *                                -- -> true | false, message, code, traceback
 *   pool:abort(id, reason)       -- raise the job's stop flag (1 aborted, 2 timeout)
 *   pool:close([timeout])        -- stop and join the threads -> how many could not be joined
 *
 * Rationale. Lua states are independent, so each thread owns one (luaL_newstate, the standard
 * libraries, tarry's preload, the same package.path/cpath as the creating state), loads the app
 * file in it through tarry.worker.blocking, and then takes jobs from one queue (mutex + condvar).
 * Only bytes cross: the job as JSON in; an error's message, code and traceback out. A finished job
 * goes to the done list and the creating state's loop is woken by one ev_async (pool_notify: sends
 * merge, the callback drains everything queued). Everything a coroutine or the loop touches (the
 * parked handle, the in-flight list, the watcher) is touched only by the creating thread; the
 * threads touch only the queues (under the mutex) and a job's atomic stop flag.
 * A thread is never cancelled: close() raises the stop flag of every job still running, waits at
 * most `timeout` seconds for each thread, and detaches one that is still inside a task (a
 * blocking C call cannot be interrupted); such a thread's state and the pool stay allocated (the
 * thread uses them) and its result is dropped. The pool is in no C global: it hangs off its
 * userdata. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <ev.h>
#include <lualib.h>

#include "tarry_private.h"

#define TARRY_POOL_MT "tarry.ThreadPool"
#define MAX_THREADS 1024

typedef struct bjob {
    struct bjob *next;          /* in the todo or the done list (under the mutex) */
    struct bjob *next_inflight; /* in the creator's in-flight list (creator only) */
    lua_Integer id;
    char *input;
    size_t input_len;
    atomic_int stop;            /* 0, or 1 aborted, 2 timeout: set by the creator, read by the thread */
    int ok;
    char *message, *code, *traceback;   /* filled by the thread on failure */
    tarry_co *h;                /* the parked coroutine; NULL once it stopped waiting (creator only) */
} bjob;

typedef struct pool pool;

typedef struct bthread {
    pool *p;
    pthread_t tid;
    int index;                  /* tarry.thread_id */
    int started;                /* pthread_create succeeded */
    bjob *current;              /* the job it runs (the thread only) */
    char *signature, *error;    /* its load's outcome (written before `loaded` under the mutex) */
} bthread;

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cond;        /* a job queued, a stop, a thread loaded or exited */
    bjob *todo_head, *todo_tail, *done_head;
    int stopping;
    int closed;                 /* the creator went away: a late thread must not notify */
    int nloaded;
    int nexited;
    int nthreads;
    bthread *threads;
    char *app_file, *conninfo, *path, *cpath;
    /* the creator's side */
    struct ev_loop *loop;
    ev_async async;
    int async_started;
    int inflight;
    bjob *inflight_head;
};

/* ---- jobs ---- */

static void job_free(bjob *j)
{
    if (!j) return;
    free(j->input);
    free(j->message);
    free(j->code);
    free(j->traceback);
    free(j);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* ---- the thread's side ---- */

/* The loop's wake-up: one place, so a host-driven loop can route it elsewhere. */
static void pool_notify(pool *p)
{
    tarry_rt_async_send(p->loop, &p->async);
}

/* core-less helpers given to tarry.worker.blocking in the thread's state */
static int thread_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    struct timespec ts;
    if (!(s > 0)) return 0;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
    return 0;
}

/* should_abort() -> 0, or 1 aborted, 2 timeout: the stop flag of the job this thread runs. */
static int thread_stop_flag(lua_State *L)
{
    bthread *t = lua_touserdata(L, lua_upvalueindex(1));
    lua_pushinteger(L, t->current ? atomic_load(&t->current->stop) : 0);
    return 1;
}

static int traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void set_string_field(lua_State *L, const char *field, const char *value)
{
    lua_getglobal(L, "package");
    lua_pushstring(L, value);
    lua_setfield(L, -2, field);
    lua_pop(L, 1);
}

/* Boot: the libraries, the paths, then blocking.thread_load(app_file, thread_id, conninfo, sleep,
   stop_flag) -> signature, run. Leaves run on the stack.  [-0, +2, e] */
static int thread_boot(lua_State *L)
{
    bthread *t = lua_touserdata(L, 1);
    pool *p = t->p;
    luaL_openlibs(L);
    tarry_openlibs(L);
    set_string_field(L, "path", p->path);
    set_string_field(L, "cpath", p->cpath);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "tarry.worker.blocking");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "thread_load");
    lua_pushstring(L, p->app_file);
    lua_pushinteger(L, t->index);
    if (p->conninfo) lua_pushstring(L, p->conninfo); else lua_pushnil(L);
    lua_pushcfunction(L, thread_sleep);
    lua_pushlightuserdata(L, t);
    lua_pushcclosure(L, thread_stop_flag, 1);
    lua_call(L, 5, 2);
    luaL_checkstring(L, -2);
    luaL_checktype(L, -1, LUA_TFUNCTION);
    return 2;
}

/* Report the load's outcome to the creator (waiting in pool_new). */
static void report_loaded(bthread *t, const char *signature, const char *error)
{
    pool *p = t->p;
    pthread_mutex_lock(&p->mu);
    t->signature = dup_or_null(signature);
    t->error = dup_or_null(error);
    if (!t->signature && !t->error) t->error = dup_or_null("out of memory");
    p->nloaded++;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

/* The next job, or NULL once the pool stops. */
static bjob *take_job(pool *p)
{
    bjob *j;
    pthread_mutex_lock(&p->mu);
    while (!p->todo_head && !p->stopping) pthread_cond_wait(&p->cond, &p->mu);
    j = p->stopping ? NULL : p->todo_head;
    if (j) {
        p->todo_head = j->next;
        if (!p->todo_head) p->todo_tail = NULL;
        j->next = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    return j;
}

static void finish_job(pool *p, bjob *j)
{
    int notify;
    pthread_mutex_lock(&p->mu);
    notify = !p->closed;
    if (notify) {
        j->next = p->done_head;
        p->done_head = j;
        pool_notify(p);            /* under the mutex: the creator cannot stop the watcher meanwhile */
    }
    pthread_mutex_unlock(&p->mu);
    if (!notify) job_free(j);
}

/* Copy the string at idx (if any) out of L. */
static char *copy_string(lua_State *L, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    char *out;
    if (!s) return NULL;
    if ((out = malloc(n + 1))) { memcpy(out, s, n); out[n] = 0; }
    return out;
}

/* Run one job: run(job_json) -> true | false, message, code, traceback. With the run function at
   index 2 and the traceback handler at index 1. */
static void run_job(lua_State *L, bjob *j)
{
    int status;
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    lua_pushlstring(L, j->input, j->input_len);
    status = lua_pcall(L, 1, 4, 1);
    if (status != LUA_OK) {             /* outside the task's own xpcall: out of memory, mostly */
        j->ok = 0;
        j->message = copy_string(L, -1);
        if (!j->message)
            j->message = dup_or_null(status == LUA_ERRMEM ? "not enough memory" : "error in a blocking thread");
        j->traceback = dup_or_null(j->message);
        return;
    }
    j->ok = lua_toboolean(L, 3);
    if (j->ok) return;
    j->message = copy_string(L, 4);
    j->code = copy_string(L, 5);
    j->traceback = copy_string(L, 6);
    if (!j->message) j->message = dup_or_null("a blocking task failed");
}

static void *thread_main(void *arg)
{
    bthread *t = arg;
    lua_State *L = luaL_newstate();
    bjob *j;
    if (!L) { report_loaded(t, NULL, "cannot create a Lua state (out of memory)"); goto out; }
    lua_pushcfunction(L, traceback_handler);
    lua_pushcfunction(L, thread_boot);
    lua_pushlightuserdata(L, t);
    if (lua_pcall(L, 1, 2, 1) != LUA_OK) {
        report_loaded(t, NULL, lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot load the app");
        goto out;
    }
    report_loaded(t, lua_tostring(L, -2), NULL);
    lua_remove(L, -2);                  /* stack: handler, run */
    while ((j = take_job(t->p))) {
        t->current = j;
        run_job(L, j);
        t->current = NULL;
        finish_job(t->p, j);
        lua_gc(L, LUA_GCSTEP, 0);
    }
out:
    if (L) lua_close(L);
    pthread_mutex_lock(&t->p->mu);
    t->p->nexited++;
    pthread_cond_broadcast(&t->p->cond);
    pthread_mutex_unlock(&t->p->mu);
    return NULL;
}

/* ---- the creator's side ---- */

static pool *check_pool(lua_State *L)
{
    pool **pp = luaL_checkudata(L, 1, TARRY_POOL_MT);
    if (!*pp) luaL_error(L, "the thread pool is closed");
    return *pp;
}

static void inflight_remove(pool *p, bjob *j)
{
    for (bjob **it = &p->inflight_head; *it; it = &(*it)->next_inflight) {
        if (*it != j) continue;
        *it = j->next_inflight;
        break;
    }
    if (--p->inflight == 0) ev_unref(p->loop);     /* idle threads keep no loop alive */
}

/* Wake the coroutine waiting for j: true, or false, message, code, traceback. */
static void deliver(bjob *j)
{
    lua_State *co = tarry_co_state(j->h);
    lua_pushboolean(co, 1);                 /* the park protocol: ok, then the results */
    lua_pushboolean(co, j->ok);
    if (j->ok) { tarry_rt_wake(j->h, 2); return; }
    lua_pushstring(co, j->message);
    if (j->code) lua_pushstring(co, j->code); else lua_pushnil(co);
    if (j->traceback) lua_pushstring(co, j->traceback); else lua_pushnil(co);
    tarry_rt_wake(j->h, 5);
}

/* The loop's side of pool_notify: every finished job, each to its coroutine. */
static void async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    pool *p = w->data;
    bjob *j, *next;
    (void)loop; (void)revents;
    pthread_mutex_lock(&p->mu);
    j = p->done_head;
    p->done_head = NULL;
    pthread_mutex_unlock(&p->mu);
    for (; j; j = next) {
        next = j->next;
        inflight_remove(p, j);
        if (j->h) deliver(j);
        job_free(j);
    }
}

/* The coroutine stopped waiting (cancelled by the worker's shutdown): the job's end is dropped. */
static void run_cancel(void *data)
{
    bjob *j = data;
    j->h = NULL;
    atomic_store(&j->stop, 1);
}

/* pool:run(id, job_json) -> true | false, message, code, traceback. In a tarry coroutine only.
   [-2, +(1|4), e] */
static int pool_run(lua_State *L)
{
    pool *p = check_pool(L);
    lua_Integer id = luaL_checkinteger(L, 2);
    size_t n;
    const char *json = luaL_checklstring(L, 3, &n);
    tarry_co *h = tarry_rt_current(L);
    bjob *j;
    if (!h) return luaL_error(L, "ThreadPool:run() can only be called in a coroutine tarry runs");
    if (!(j = calloc(1, sizeof *j)) || !(j->input = malloc(n + 1))) {
        free(j);
        return luaL_error(L, "out of memory");
    }
    memcpy(j->input, json, n + 1);
    j->input_len = n;
    j->id = id;
    j->h = h;
    if (p->inflight++ == 0) ev_ref(p->loop);
    j->next_inflight = p->inflight_head;
    p->inflight_head = j;
    pthread_mutex_lock(&p->mu);
    if (p->todo_tail) p->todo_tail->next = j; else p->todo_head = j;
    p->todo_tail = j;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    lua_settop(L, 0);
    return tarry_rt_park(L, h, run_cancel, j);
}

/* pool:abort(id, reason) -> true if that job is in flight. reason 1 aborted, 2 timeout; the
   first one wins.  [-3, +1, e] */
static int pool_abort(lua_State *L)
{
    pool *p = check_pool(L);
    lua_Integer id = luaL_checkinteger(L, 2);
    int reason = (int)luaL_optinteger(L, 3, 1), none = 0;
    for (bjob *j = p->inflight_head; j; j = j->next_inflight) {
        if (j->id != id) continue;
        atomic_compare_exchange_strong(&j->stop, &none, reason);
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    return 1;
}

/* pool:signatures() -> { [thread_id] = signature }.  [-1, +1, m] */
static int pool_signatures(lua_State *L)
{
    pool *p = check_pool(L);
    lua_createtable(L, p->nthreads, 0);
    for (int i = 0; i < p->nthreads; i++) {
        lua_pushstring(L, p->threads[i].signature);
        lua_rawseti(L, -2, p->threads[i].index);
    }
    return 1;
}

static void free_pool(pool *p)
{
    bjob *j, *next;
    for (j = p->todo_head; j; j = next) { next = j->next; job_free(j); }
    for (j = p->done_head; j; j = next) { next = j->next; job_free(j); }
    for (int i = 0; p->threads && i < p->nthreads; i++) { free(p->threads[i].signature); free(p->threads[i].error); }
    free(p->threads);
    free(p->app_file);
    free(p->conninfo);
    free(p->path);
    free(p->cpath);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* Wait until every started thread exited or the deadline passed (timeout < 0: no deadline); 1 if
   they all did. */
static int wait_exited(pool *p, int nstarted, double timeout)
{
    struct timespec until;
    int all;
    if (timeout < 0) timeout = 1e9;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)timeout;
    until.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
    if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&p->mu);
    while (p->nexited < nstarted && pthread_cond_timedwait(&p->cond, &p->mu, &until) != ETIMEDOUT) {}
    all = p->nexited >= nstarted;
    if (!all) p->closed = 1;            /* late threads drop their results */
    pthread_mutex_unlock(&p->mu);
    return all;
}

/* Stop the threads: raise every in-flight job's stop flag, wait up to timeout seconds, join
   them; detach those still running. Returns how many were detached. */
static int stop_pool(pool *p, double timeout)
{
    int nstarted = 0, all, none;
    for (bjob *j = p->inflight_head; j; j = j->next_inflight) {
        none = 0;
        atomic_compare_exchange_strong(&j->stop, &none, 1);
    }
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) nstarted += p->threads[i].started;
    all = wait_exited(p, nstarted, p->inflight == 0 ? -1 : timeout);   /* idle threads exit at once */
    if (p->async_started) {
        if (p->inflight == 0) ev_ref(p->loop);  /* balance the ev_unref of an idle watcher */
        ev_async_stop(p->loop, &p->async);
    }
    for (bjob *j = p->inflight_head; j; j = j->next_inflight) {
        if (j->h) tarry_co_forget_wait(j->h);   /* its coroutine waits no more (never woken) */
        j->h = NULL;
    }
    if (!all) {
        for (int i = 0; i < p->nthreads; i++) if (p->threads[i].started) pthread_detach(p->threads[i].tid);
        return nstarted - p->nexited;
    }
    for (int i = 0; i < p->nthreads; i++) if (p->threads[i].started) pthread_join(p->threads[i].tid, NULL);
    for (bjob *j = p->inflight_head, *next; j; j = next) { next = j->next_inflight; job_free(j); }
    p->todo_head = p->done_head = NULL;       /* those were in flight too: freed above */
    free_pool(p);
    return 0;
}

/* pool:close([timeout = 0]) -> the number of threads still running a task (detached, not
   joined). __gc and __close too.  [-(1|2), +1, -] */
static int pool_close(lua_State *L)
{
    pool **pp = luaL_checkudata(L, 1, TARRY_POOL_MT);
    double timeout = luaL_optnumber(L, 2, 0);
    pool *p = *pp;
    *pp = NULL;
    lua_pushinteger(L, p ? stop_pool(p, timeout > 0 ? timeout : 0) : 0);
    return 1;
}

static int pool_tostring(lua_State *L)
{
    pool **pp = luaL_checkudata(L, 1, TARRY_POOL_MT);
    if (!*pp) lua_pushliteral(L, "<tarry.ThreadPool closed>");
    else lua_pushfstring(L, "<tarry.ThreadPool %d threads, %d jobs running, app %s>", (*pp)->nthreads,
                         (*pp)->inflight, (*pp)->app_file);
    return 1;
}

/* Start the threads with every signal blocked (the loop's thread handles them). */
static int start_threads(pool *p, char *err, size_t errlen)
{
    sigset_t all, old;
    int rc = 0;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < p->nthreads && rc == 0; i++) {
        bthread *t = &p->threads[i];
        t->p = p;
        t->index = i + 1;
        rc = pthread_create(&t->tid, NULL, thread_main, t);
        if (rc == 0) t->started = 1;
        else snprintf(err, errlen, "cannot start blocking thread %d: %s", i + 1, strerror(rc));
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0;
}

/* Wait for every started thread's load; the first load error into err (0), else 1. */
static int wait_loaded(pool *p, char *err, size_t errlen)
{
    int nstarted = 0, ok = 1;
    for (int i = 0; i < p->nthreads; i++) nstarted += p->threads[i].started;
    pthread_mutex_lock(&p->mu);
    while (p->nloaded < nstarted) pthread_cond_wait(&p->cond, &p->mu);
    for (int i = 0; i < p->nthreads && ok; i++) {
        if (!p->threads[i].error) continue;
        snprintf(err, errlen, "blocking thread %d cannot load the app file %s: %s", i + 1, p->app_file,
                 p->threads[i].error);
        ok = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return ok;
}

static char *package_string(lua_State *L, const char *field)
{
    char *s;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, field);
    s = dup_or_null(lua_tostring(L, -1));
    lua_pop(L, 2);
    return s ? s : dup_or_null("");
}

static pool *pool_alloc(lua_State *L, int nthreads, const char *app_file, const char *conninfo)
{
    pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->nthreads = nthreads;
    p->threads = calloc((size_t)nthreads, sizeof *p->threads);
    p->app_file = dup_or_null(app_file);
    p->conninfo = dup_or_null(conninfo);
    p->path = package_string(L, "path");
    p->cpath = package_string(L, "cpath");
    p->loop = tarry_rt_loop(tarry_rt_get(L));
    if (!p->threads || !p->app_file || (conninfo && !p->conninfo) || !p->path || !p->cpath) {
        free_pool(p);
        return NULL;
    }
    ev_async_init(&p->async, async_cb);
    p->async.data = p;
    ev_async_start(p->loop, &p->async);
    ev_unref(p->loop);                  /* only jobs in flight keep the loop alive */
    p->async_started = 1;
    return p;
}

/* core.ThreadPool{ threads = N, app_file = path, conninfo = s|nil } -> pool, once every thread
   loaded the app; raises an error object (code "blocking_threads") naming the thread, the file and
   the error when one cannot start or load it.  [-1, +1, e] */
static int pool_new(lua_State *L)
{
    int n, started, loaded;
    const char *app_file, *conninfo;
    char err[1024] = "", lerr[1024] = "";
    pool **pp, *p;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "threads");
    n = (int)luaL_checkinteger(L, -1);
    luaL_argcheck(L, n >= 1 && n <= MAX_THREADS, 1, "threads must be in [1, 1024]");
    lua_getfield(L, 1, "app_file");
    app_file = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "conninfo");
    conninfo = luaL_optstring(L, -1, NULL);
    pp = lua_newuserdatauv(L, sizeof *pp, 1);
    *pp = NULL;
    luaL_setmetatable(L, TARRY_POOL_MT);
    tarry_rt_push_anchor(L);                /* the loop outlives the pool's watcher */
    lua_setiuservalue(L, -2, 1);
    if (!(p = pool_alloc(L, n, app_file, conninfo))) return luaL_error(L, "out of memory");
    *pp = p;
    started = start_threads(p, err, sizeof err);
    loaded = wait_loaded(p, lerr, sizeof lerr);       /* also after a failed start: joins need it */
    if (!started || !loaded) {
        lua_pushcfunction(L, pool_close);
        lua_pushvalue(L, -2);
        lua_call(L, 1, 0);
        tarry_push_error(L, "blocking_threads", "%s", started ? lerr : err);
        return lua_error(L);
    }
    return 1;
}

/* core.ncpus() -> the number of online processors (at least 1). */
static int core_ncpus(lua_State *L)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    lua_pushinteger(L, n > 0 ? n : 1);
    return 1;
}

void tarry_threads_open(lua_State *L)
{
    static const luaL_Reg methods[] = { { "run", pool_run }, { "abort", pool_abort },
        { "signatures", pool_signatures }, { "close", pool_close }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_POOL_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, pool_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, pool_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, pool_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, pool_new);
    lua_setfield(L, -2, "ThreadPool");
    lua_pushcfunction(L, core_ncpus);
    lua_setfield(L, -2, "ncpus");
}
