/* libtarry.so's client: open/close, the pool of blocking connections and the blocking defers.
 * Thread-safe through one mutex and one condition variable: a caller takes an idle connection
 * (checked first: one the server closed is replaced), or opens one while fewer than max exist,
 * or waits until another caller gives one back. No lock is held while talking to PostgreSQL. */
#include <stdlib.h>
#include <string.h>

#include "client_private.h"
#include "tarry_private.h"        /* tarry_pg_connect, tarry_pg_idle_ok (pq.c: no Lua) */

#define MAX_CONNECTIONS 1000

/* A connection of the pool's own, connected now; NULL with "connection: ..." in err. */
static pooled *pool_connect(const tarry_client *c, char *err, size_t errlen)
{
    char msg[CLIENT_ERR];
    pooled *p = malloc(sizeof *p);
    PGconn *pg = p ? tarry_pg_connect(c->conninfo, 0, msg, sizeof msg) : NULL;
    if (!pg) {
        cjob_err(err, errlen, "connection: cannot connect to PostgreSQL: %s", p ? msg : "out of memory");
        free(p);
        return NULL;
    }
    PQsetnonblocking(pg, 0);
    p->pg = pg;
    cjob_watch_fatal(pg, &p->fatal);
    return p;
}

static void pooled_close(pooled *p)
{
    PQfinish(p->pg);
    free(p);
}

/* An idle healthy connection, or a new one; waits while all max are in use. */
static pooled *pool_acquire(tarry_client *c, char *err, size_t errlen)
{
    pooled *p;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        if (c->nidle > 0) {
            p = c->idle[--c->nidle];
            pthread_mutex_unlock(&c->lock);
            if (tarry_pg_idle_ok(p->pg) && !PQisBusy(p->pg) && !p->fatal) return p;   /* parses a FATAL */
            pooled_close(p);                 /* closed by the server meanwhile: replace it */
            pthread_mutex_lock(&c->lock);
            c->nopen--;
        } else if (c->nopen < c->max) {
            break;
        } else {
            pthread_cond_wait(&c->freed, &c->lock);
        }
    }
    c->nopen++;                              /* a slot is ours while we connect */
    pthread_mutex_unlock(&c->lock);
    if ((p = pool_connect(c, err, errlen))) return p;
    pthread_mutex_lock(&c->lock);
    c->nopen--;
    pthread_cond_signal(&c->freed);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Back to the pool if still usable, else closed (its slot freed either way). */
static void pool_release(tarry_client *c, pooled *p)
{
    int keep = PQstatus(p->pg) == CONNECTION_OK && PQtransactionStatus(p->pg) == PQTRANS_IDLE && !p->fatal;
    if (!keep) pooled_close(p);
    pthread_mutex_lock(&c->lock);
    if (keep) c->idle[c->nidle++] = p;
    else c->nopen--;
    pthread_cond_signal(&c->freed);
    pthread_mutex_unlock(&c->lock);
}

static tarry_client *client_new(const char *conninfo, int max)
{
    tarry_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->freed, NULL);
    c->max = max;
    c->conninfo = strdup(conninfo);
    c->idle = calloc((size_t)max, sizeof *c->idle);
    c->async = c->conninfo ? async_new(c->conninfo) : NULL;
    if (!c->conninfo || !c->idle || !c->async) {
        tarry_client_close(c);
        return NULL;
    }
    return c;
}

tarry_client *tarry_client_open(const char *conninfo, int max_connections, char *err, size_t errlen)
{
    tarry_client *c;
    pooled *p;
    if (!conninfo || max_connections < 1 || max_connections > MAX_CONNECTIONS) {
        cjob_err(err, errlen, "invalid_options: %s", !conninfo ? "conninfo is NULL"
                 : "max_connections must be 1 to 1000");
        return NULL;
    }
    if (!(c = client_new(conninfo, max_connections))) {
        cjob_err(err, errlen, "connection: out of memory");
        return NULL;
    }
    if (!(p = pool_connect(c, err, errlen))) {
        tarry_client_close(c);
        return NULL;
    }
    c->idle[c->nidle++] = p;
    c->nopen = 1;
    return c;
}

void tarry_client_close(tarry_client *c)
{
    if (!c) return;
    async_free(c->async);
    while (c->nidle > 0) pooled_close(c->idle[--c->nidle]);
    pthread_cond_destroy(&c->freed);
    pthread_mutex_destroy(&c->lock);
    free(c->idle);
    free(c->conninfo);
    free(c);
}

int64_t tarry_defer(tarry_client *c, const char *task_name, const char *args_json,
                    const tarry_defer_options *opts, char *err, size_t errlen)
{
    cjob j;
    pooled *p;
    int64_t id;
    if (!c) { cjob_err(err, errlen, "connection: the client is NULL"); return 0; }
    if (!cjob_check(&j, task_name, args_json, opts, err, errlen)) return 0;
    if (!(p = pool_acquire(c, err, errlen))) return 0;
    id = cjob_exec(p->pg, c->conninfo, &j, err, errlen);
    pool_release(c, p);
    return id;
}

int64_t tarry_defer_on(PGconn *conn, const char *task_name, const char *args_json,
                       const tarry_defer_options *opts, char *err, size_t errlen)
{
    cjob j;
    if (!cjob_check(&j, task_name, args_json, opts, err, errlen)) return 0;
    if (!conn) { cjob_err(err, errlen, "connection: conn is NULL"); return 0; }
    if (PQstatus(conn) != CONNECTION_OK) {
        cjob_conn_error(conn, NULL, "the connection is broken", err, errlen);
        return 0;
    }
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF || PQisBusy(conn)) {
        cjob_err(err, errlen, "connection: conn is busy (a query in flight, or pipeline mode)");
        return 0;
    }
    return cjob_exec(conn, NULL, &j, err, errlen);
}
