/* The client's non-blocking half: one libpq connection in pipeline mode, driven only by
 * tarry_client_step, which never waits (poll with a zero timeout, PQconnectPoll, PQflush,
 * PQconsumeInput). tarry_defer_start queues a copy of the job; step connects when there is
 * work, sends what is queued (each job followed by a sync point, so one failure fails only its
 * own job), and completes handles in the order their answers arrive. A connection that breaks
 * fails what was in flight ("connection": it may or may not have been inserted) and keeps what
 * was not sent yet for the next connection; a connect that fails fails everything waiting. */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "client_private.h"
#include "tarry_private.h"        /* tarry_pg_connect_start, tarry_monotonic (pq.c: no Lua) */

enum { SIDE_NONE, SIDE_CONNECTING, SIDE_READY };

struct tarry_pending {
    _Atomic int state;
    int64_t id;
    char error[CLIENT_ERR];
    async_side *side;
    int detached;                  /* freed by its owner while pending: the side frees it */
    PGresult *res;                 /* the answer so far (first error, else last result) */
    cjob job;                      /* its text parameters point into copy */
    char *copy;
    tarry_pending *next;
};

typedef struct hlist { tarry_pending *head, *tail; int n; } hlist;

struct async_side {
    pthread_mutex_t lock;
    char *conninfo;
    PGconn *pg;
    int state, want_write, fatal;      /* fatal: the server sent FATAL (cjob_watch_fatal) */
    double deadline;               /* of the connect attempt; 0: none */
    hlist queued, sent;
};

/* ---- lists and handles ---- */

static void push(hlist *l, tarry_pending *h)
{
    h->next = NULL;
    if (l->tail) l->tail->next = h;
    else l->head = h;
    l->tail = h;
    l->n++;
}

static tarry_pending *pop(hlist *l)
{
    tarry_pending *h = l->head;
    if (!h) return NULL;
    l->head = h->next;
    if (!l->head) l->tail = NULL;
    l->n--;
    return h;
}

static void handle_free(tarry_pending *h)
{
    PQclear(h->res);
    free(h->copy);
    free(h);
}

/* Publish the outcome (id and error first, then the state), or free a detached handle. */
static void complete(tarry_pending *h, int64_t id)
{
    PQclear(h->res);
    h->res = NULL;
    if (h->detached) { handle_free(h); return; }
    h->id = id;
    atomic_store_explicit(&h->state, id > 0 ? TARRY_DONE : TARRY_FAILED, memory_order_release);
}

static int fail_all(hlist *l, const char *msg)
{
    int n = 0;
    tarry_pending *h;
    while ((h = pop(l))) {
        snprintf(h->error, sizeof h->error, "%s", msg);
        complete(h, 0);
        n++;
    }
    return n;
}

/* A handle owning copies of the job's strings (the params that point into j's own buffers
   are pointed at the handle's). */
static tarry_pending *handle_new(async_side *a, const cjob *j)
{
    size_t len[JOB_PARAMS], total = 0;
    tarry_pending *h = calloc(1, sizeof *h);
    char *p;
    if (!h) return NULL;
    for (int i = 0; i < JOB_PARAMS; i++) total += len[i] = j->params[i] ? strlen(j->params[i]) + 1 : 0;
    if (!(h->copy = p = malloc(total ? total : 1))) { free(h); return NULL; }
    for (int i = 0; i < JOB_PARAMS; i++) {
        h->job.params[i] = j->params[i] ? memcpy(p, j->params[i], len[i]) : NULL;
        p += len[i];
    }
    h->side = a;
    atomic_init(&h->state, TARRY_PENDING);
    return h;
}

/* ---- the connection ---- */

static void drop_connection(async_side *a)
{
    PQfinish(a->pg);
    a->pg = NULL;
    a->state = SIDE_NONE;
    a->want_write = 0;
}

/* The connection broke: what was sent fails, what was queued waits for the next one. */
static int broken(async_side *a, const char *what)
{
    char msg[CLIENT_ERR];
    cjob_conn_error(a->pg, a->conninfo, what, msg, sizeof msg);
    drop_connection(a);
    return fail_all(&a->sent, msg);
}

/* A connect that failed: everything waiting fails with its reason. */
static int connect_failed(async_side *a, const char *why)
{
    char msg[CLIENT_ERR], reason[CLIENT_ERR];
    if (why) snprintf(reason, sizeof reason, "%s", why);
    else tarry_pg_error(a->pg, a->conninfo, reason, sizeof reason);
    cjob_err(msg, sizeof msg, "connection: cannot connect to PostgreSQL: %s", reason);
    drop_connection(a);
    return fail_all(&a->sent, msg) + fail_all(&a->queued, msg);
}

/* The connect_timeout the attempt uses (tarry's default or the conninfo's), in seconds. */
static double connect_timeout(PGconn *pg)
{
    PQconninfoOption *opts = PQconninfo(pg);
    double t = 0;
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val) t = atof(o->val);
    PQconninfoFree(opts);
    return t;
}

static int start_connect(async_side *a)
{
    double t;
    a->pg = tarry_pg_connect_start(a->conninfo, 0);
    if (!a->pg || PQstatus(a->pg) == CONNECTION_BAD) return connect_failed(a, NULL);
    cjob_watch_fatal(a->pg, &a->fatal);
    t = connect_timeout(a->pg);
    a->deadline = t > 0 ? tarry_monotonic() + t : 0;
    a->state = SIDE_CONNECTING;
    a->want_write = 1;
    return 0;
}

/* 1 if the socket is ready for what we wait for (never waits). */
static int socket_ready(async_side *a, short events)
{
    struct pollfd p = { PQsocket(a->pg), events, 0 };
    return poll(&p, 1, 0) > 0;
}

static int advance_connect(async_side *a)
{
    PostgresPollingStatusType r;
    if (a->deadline > 0 && tarry_monotonic() > a->deadline) return connect_failed(a, "timeout expired");
    if (!socket_ready(a, a->want_write ? POLLOUT : POLLIN)) return 0;
    r = PQconnectPoll(a->pg);
    if (r == PGRES_POLLING_FAILED) return connect_failed(a, NULL);
    a->want_write = r == PGRES_POLLING_WRITING;
    if (r != PGRES_POLLING_OK) return 0;
    if (PQsetnonblocking(a->pg, 1) != 0 || !PQenterPipelineMode(a->pg)) return connect_failed(a, NULL);
    a->state = SIDE_READY;
    a->want_write = 0;
    return 0;
}

/* ---- sending and reading ---- */

static int send_queued(async_side *a)
{
    tarry_pending *h;
    int f;
    while ((h = a->queued.head)) {
        if (!cjob_send(a->pg, &h->job) || !PQpipelineSync(a->pg)) return broken(a, "sending a job failed");
        push(&a->sent, pop(&a->queued));
    }
    if ((f = PQflush(a->pg)) < 0) return broken(a, "sending a job failed");
    a->want_write = f > 0;
    return 0;
}

/* One result for the oldest job in flight: kept until its sync point completes it. */
static int take_result(async_side *a, PGresult *res)
{
    tarry_pending *h = a->sent.head;
    if (PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
        tarry_pg_keep_result(&h->res, res);
        return 0;
    }
    PQclear(res);
    pop(&a->sent);
    complete(h, cjob_result(a->pg, a->conninfo, h->res, h->error, sizeof h->error));
    return 1;
}

/* With nothing in flight, whether the server said FATAL (PQconsumeInput only reads: PQisBusy
   parses, and an idle connection hands an error to its notice receiver). */
static int told_fatal(async_side *a)
{
    if (a->sent.head) return 0;
    PQisBusy(a->pg);
    return a->fatal;
}

static int read_results(async_side *a)
{
    int n = 0, nulls = 0;
    PGresult *res;
    if (!PQconsumeInput(a->pg) || PQstatus(a->pg) == CONNECTION_BAD || told_fatal(a))
        return broken(a, "the connection broke");
    while (a->sent.head && !PQisBusy(a->pg) && nulls < 2) {
        if (!(res = PQgetResult(a->pg))) { nulls++; continue; }   /* end of one query's results */
        nulls = 0;
        n += take_result(a, res);
    }
    if (PQstatus(a->pg) == CONNECTION_BAD) n += broken(a, "the connection broke");
    return n;
}

/* ---- the side, as client.c sees it ---- */

async_side *async_new(const char *conninfo)
{
    async_side *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->conninfo = strdup(conninfo);
    if (!a->conninfo) { free(a); return NULL; }
    pthread_mutex_init(&a->lock, NULL);
    return a;
}

void async_free(async_side *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->lock);
    fail_all(&a->sent, "connection: the client was closed");
    fail_all(&a->queued, "connection: the client was closed");
    drop_connection(a);
    pthread_mutex_unlock(&a->lock);
    pthread_mutex_destroy(&a->lock);
    free(a->conninfo);
    free(a);
}

static int step_locked(async_side *a)
{
    int n = 0;
    if (a->state == SIDE_READY) n += read_results(a);
    if (a->state == SIDE_NONE && a->queued.head) n += start_connect(a);
    if (a->state == SIDE_CONNECTING) n += advance_connect(a);
    if (a->state == SIDE_READY && (a->queued.head || a->want_write)) n += send_queued(a);
    return n;
}

/* ---- the public calls ---- */

tarry_pending *tarry_defer_start(tarry_client *c, const char *task_name, const char *args_json,
                                 const tarry_defer_options *opts, char *err, size_t errlen)
{
    cjob j;
    tarry_pending *h;
    if (!c) { cjob_err(err, errlen, "connection: the client is NULL"); return NULL; }
    if (!cjob_check(&j, task_name, args_json, opts, err, errlen)) return NULL;
    if (!(h = handle_new(c->async, &j))) { cjob_err(err, errlen, "connection: out of memory"); return NULL; }
    pthread_mutex_lock(&c->async->lock);
    push(&c->async->queued, h);
    pthread_mutex_unlock(&c->async->lock);
    return h;
}

int tarry_client_step(tarry_client *c)
{
    int n;
    pthread_mutex_lock(&c->async->lock);
    n = step_locked(c->async);
    pthread_mutex_unlock(&c->async->lock);
    return n;
}

int tarry_client_fd(tarry_client *c)
{
    int fd;
    pthread_mutex_lock(&c->async->lock);
    fd = c->async->pg ? PQsocket(c->async->pg) : -1;
    pthread_mutex_unlock(&c->async->lock);
    return fd;
}

int tarry_client_events(tarry_client *c)
{
    async_side *a = c->async;
    int ev = 0;
    pthread_mutex_lock(&a->lock);
    if (a->state == SIDE_CONNECTING) ev = a->want_write ? TARRY_POLLOUT : TARRY_POLLIN;
    else if (a->state == SIDE_READY) ev = TARRY_POLLIN | (a->want_write ? TARRY_POLLOUT : 0);
    pthread_mutex_unlock(&a->lock);
    return ev;
}

double tarry_client_timeout(tarry_client *c)
{
    async_side *a = c->async;
    double t = -1;
    pthread_mutex_lock(&a->lock);
    if (a->state == SIDE_CONNECTING && a->deadline > 0) {
        t = a->deadline - tarry_monotonic();
        if (t < 0) t = 0;
    } else if (a->state != SIDE_CONNECTING && a->queued.head) {
        t = 0;
    }
    pthread_mutex_unlock(&a->lock);
    return t;
}

int tarry_client_pending(tarry_client *c)
{
    int n;
    pthread_mutex_lock(&c->async->lock);
    n = c->async->queued.n + c->async->sent.n;
    pthread_mutex_unlock(&c->async->lock);
    return n;
}

int tarry_pending_state(const tarry_pending *h)
{
    return atomic_load_explicit(&((tarry_pending *)h)->state, memory_order_acquire);
}

int64_t tarry_pending_id(const tarry_pending *h)
{
    return tarry_pending_state(h) == TARRY_DONE ? h->id : 0;
}

const char *tarry_pending_error(const tarry_pending *h)
{
    return tarry_pending_state(h) == TARRY_FAILED ? h->error : NULL;
}

void tarry_pending_free(tarry_pending *h)
{
    async_side *a;
    if (!h) return;
    if (tarry_pending_state(h) != TARRY_PENDING) { handle_free(h); return; }
    a = h->side;
    pthread_mutex_lock(&a->lock);
    if (tarry_pending_state(h) == TARRY_PENDING) {
        h->detached = 1;
        h = NULL;
    }
    pthread_mutex_unlock(&a->lock);
    if (h) handle_free(h);
}
