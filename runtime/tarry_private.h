/* Prototypes shared between the runtime's C files. Not installed; C hosts use tarry.h. */
#ifndef TARRY_PRIVATE_H
#define TARRY_PRIVATE_H

#include <stddef.h>
#include <lua.h>
#include <lauxlib.h>
#include <libpq-fe.h>

#include <jansson.h>
#include "json.h"

/* The JSON codec (json.c); declared in json.h too. */
void tarry_json_push(lua_State *L, const json_t *j);
int tarry_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen);
#include "tarry.h"

#define TARRY_APP_MT "tarry.App"
#define TARRY_SYNC_MT "tarry.SyncPgConnector"
#define TARRY_PG_MT "tarry.PgConnector"
#define TARRY_CO_MT "tarry.Coroutine"
#define TARRY_ERROR_MT "tarry.Error"

/* ---- core.c ---- */
int tarry_open_core(lua_State *L);

/* ---- runtime.c: the per-state runtime: one private libev loop and the coroutine scheduler ---- */
typedef struct tarry_co tarry_co;
/* The runtime of this Lua state, created on first use (kept in the registry).  [-0, +0, m] */
tarry_rt *tarry_rt_get(lua_State *L);
/* Push the runtime's anchor userdata (objects that use the loop keep it alive).  [-0, +1, m] */
void tarry_rt_push_anchor(lua_State *L);
struct ev_loop *tarry_rt_loop(tarry_rt *rt);
/* The tarry coroutine running in L if tarry owns it and it can yield here, else NULL. */
tarry_co *tarry_rt_current(lua_State *L);
/* Park the running tarry coroutine h until tarry_rt_wake; must be used as `return tarry_rt_park(L, h)`.
   The waker pushes `true, results...` or `false, err` onto tarry_co_state(h) first; the park
   returns the results to the Lua caller, or raises err. cancel(cancel_data) undoes the wait when
   the coroutine stops waiting otherwise (interrupted, cancelled, or the runtime goes away); it
   must not resume anything. */
int tarry_rt_park(lua_State *L, tarry_co *h, void (*cancel)(void *), void *cancel_data);
lua_State *tarry_co_state(tarry_co *h);
void tarry_rt_wake(tarry_co *h, int nvalues);
/* Work to do once the pass over the ready queue under way ends, outside every coroutine: a pool
   sends then the defers that the coroutines of the pass queued, as one statement. fn must not
   resume anything (it may wake). */
typedef struct tarry_rt_hook {
    void (*fn)(void *data);
    void *data;
    struct tarry_rt_hook *next;
    int linked;
} tarry_rt_hook;
/* Run hook once the pass under way ends (1; a hook already waiting is not added twice); 0, with
   nothing done, when no pass is under way: then the caller acts at once. */
int tarry_rt_after_pass(tarry_rt *rt, tarry_rt_hook *hook);
/* Take back a waiting hook (its owner goes away). */
void tarry_rt_cancel_after_pass(tarry_rt *rt, tarry_rt_hook *hook);
/* The pending wait's owner freed it: the runtime must not cancel it any more. */
void tarry_co_forget_wait(tarry_co *h);
/* Deliver the error on top of L inside h at its next yield point (handle:interrupt; runtime.c
   says how). No-op on a finished h or one with an interrupt still pending.  [-1, +0, m] */
void tarry_co_interrupt(lua_State *L, tarry_co *h);
int tarry_rt_spawn(lua_State *L, int first_arg);   /* [-0, +1, e] fn and args from first_arg up */
int tarry_rt_run(lua_State *L);                    /* [-0, +0, e] */
int tarry_rt_sleep(lua_State *L);                  /* core.sleep(seconds) */
double tarry_now(void);                            /* wall clock, seconds since the epoch */
void tarry_runtime_open(lua_State *L);             /* registers tarry.Coroutine */

/* Run what is ready (waiting at most timeout seconds for work when none is); never blocks with
   0. Returns the number of coroutines resumed; raises the first unseen failure, as run().  [e] */
int tarry_rt_step(lua_State *L, double timeout);
/* 1 if coroutines wait in the ready queue. */
int tarry_rt_has_ready(tarry_rt *rt);

/* ---- pollfd.c: the runtime as one pollable fd (app:pollfd, app:timeout; rationale there) ----
   Every ev_io and ev_timer tarry starts goes through these, never ev_io_start & co directly, so
   that the pollfd and timeout() see it; a watcher is stopped through them before it is freed. */
struct ev_loop;
struct ev_io;
struct ev_timer;
struct ev_async;
void tarry_io_start(struct ev_loop *loop, struct ev_io *w);
void tarry_io_stop(struct ev_loop *loop, struct ev_io *w);
void tarry_timer_start(struct ev_loop *loop, struct ev_timer *w);
void tarry_timer_stop(struct ev_loop *loop, struct ev_timer *w);
/* ev_async_send that also makes the pollfd readable: use it for every cross-thread wake-up.
   Thread-safe, as ev_async_send. */
void tarry_rt_async_send(struct ev_loop *loop, struct ev_async *w);
typedef struct tarry_poll tarry_poll;
tarry_poll *tarry_poll_new(struct ev_loop *loop);   /* NULL if out of memory or fds */
void tarry_poll_free(tarry_poll *p);
tarry_poll *tarry_rt_poll(tarry_rt *rt);
int tarry_poll_fd(tarry_poll *p);                    /* -1 with errno on failure */
double tarry_poll_next_timer(tarry_poll *p);         /* seconds, -1 for none */
void tarry_poll_ready(tarry_poll *p);                /* a coroutine became ready */
void tarry_poll_begin(tarry_poll *p, int drain);     /* a step (drain) or a drive begins */
void tarry_poll_end(tarry_poll *p, int ready);       /* ... ends, coroutines still ready or not */
void tarry_poll_open(lua_State *L);                  /* core.step, core.pollfd, core.timeout... */

/* ---- errors.c: error objects {code=, message=, sqlstate=, constraint=} ---- */
/* Push a new error object.  [-0, +1, m] */
void tarry_push_error(lua_State *L, const char *code, const char *fmt, ...);
/* Push the error object for a failed PGresult (NULL: use the connection's message).  [-0, +1, m] */
void tarry_push_pg_error(lua_State *L, PGconn *conn, const PGresult *res);
void tarry_errors_open(lua_State *L);

/* ---- pg.c: libpq helpers shared by the connectors; those without Lua live in pq.c ---- */
typedef enum { TARRY_RESULT_ROWS, TARRY_RESULT_IDS } tarry_result_kind;
typedef struct tarry_query {
    const char *sql;
    int nparams;                  /* 0: sent as a simple query (several statements allowed) */
    const char *const *params;    /* NULL entries are SQL NULLs */
    tarry_result_kind kind;
    int rows;                     /* > 0: a defer of `rows` jobs whose one parameter is a JSON array:
                                     the async pool may send it with others as one statement */
    int prepare;                  /* 1: a hot statement, prepared on each connection once */
} tarry_query;
#define TARRY_MAX_PARAMS 32
/* Connect with a blocking call bounded by connect_timeout; NULL with a message in err on failure. */
PGconn *tarry_pg_connect(const char *conninfo, int connect_timeout, char *err, size_t errlen);
/* Non-blocking connect start with the same parameters (PQconnectStartParams). */
PGconn *tarry_pg_connect_start(const char *conninfo, int connect_timeout);
/* Per-connection settings tarry wants (quiet notices). */
void tarry_pg_setup(PGconn *conn);
/* 1 if an idle connection is still usable (reads what the server sent without blocking). */
int tarry_pg_idle_ok(PGconn *conn);
/* Push a successful result as the query's kind asks (rows table or ids array).  [-0, +1, m] */
void tarry_pg_push_result(lua_State *L, const PGresult *res, tarry_result_kind kind);
int tarry_pg_result_ok(const PGresult *res);
/* The hot statements prepared on one connection, by a hash of their text (pg.c). */
#define TARRY_MAX_PREPARED 16
#define TARRY_STMT_NAME 24
typedef struct tarry_prepared { int n; unsigned long long hash[TARRY_MAX_PREPARED]; } tarry_prepared;
enum { TARRY_SEND_PLAIN, TARRY_SEND_PREPARED, TARRY_SEND_PREPARE };
/* How to send q on a connection with prep (NULL: prepared statements off): as an unnamed
   statement, by the name written to name, or prepare name first (then tarry_pg_prepared_add). */
int tarry_pg_plan(const tarry_prepared *prep, const tarry_query *q, char name[TARRY_STMT_NAME]);
void tarry_pg_prepared_add(tarry_prepared *prep, const char *name);
/* PQsendPrepare of q's text under name: libpq's 1 or 0. */
int tarry_pg_send_prepare(PGconn *conn, const char *name, const tarry_query *q);
/* Run q blocking on conn, waiting at most timeout seconds (0: no limit); push the result
   (return 1) or an error object (return 0). Late: a "connection" error, and conn keeps a query
   in flight (PQtransactionStatus is not idle), so its owner drops it. prep: the statements
   prepared on conn (NULL: prepare none). */
int tarry_pg_exec(lua_State *L, PGconn *conn, const tarry_query *q, double timeout, tarry_prepared *prep);
/* Send q (by name when it is prepared as name, else PQsendQueryParams, or PQsendQuery when it
   has no parameters): libpq's 1 or 0. */
int tarry_pg_send(PGconn *conn, const tarry_query *q, const char *name);
/* Of a query's results keep the first error, else the last one (res is taken over). */
void tarry_pg_keep_result(PGresult **kept, PGresult *res);
/* A libpq message on one line: newlines folded into spaces, no trailing blanks. */
void tarry_pg_message(char *out, size_t outlen, const char *msg);
/* The message of a query that outlived its deadline (printf format of the seconds). */
#define TARRY_LATE_MESSAGE "no answer from PostgreSQL within %g s (query_timeout): connection dropped"
/* The default query deadline of tarry's connectors, in seconds: TARRY_QUERY_TIMEOUT from the
   environment (the command line's --query-timeout sets it), else 30; NaN when the variable is
   malformed (tarry_opt_seconds then raises, naming it). */
double tarry_query_timeout_default(void);
#define TARRY_QUERY_TIMEOUT_MAX 1e6
/* core.set_default_query_timeout(seconds): setenv TARRY_QUERY_TIMEOUT.  [-1, +0, v] */
int tarry_set_default_query_timeout(lua_State *L);
double tarry_monotonic(void);                       /* seconds, CLOCK_MONOTONIC */
/* The error code of a failed query: already_enqueued, connection or database (sqlstate NULL:
   no result from the server, a connection error). */
const char *tarry_pg_error_code(const char *sqlstate, const char *constraint, PGconn *conn);
/* A printable description of a conninfo, without its password. */
void tarry_pg_describe(const char *conninfo, char *out, size_t outlen);
/* ---- conninfo.c: no password of a conninfo in what tarry prints ---- */
/* text into out (outlen bytes) with each password conninfo holds (keyword, URI user info or query
   parameter, also in a dbname that is a conninfo) replaced by "***". */
void tarry_pg_redact(const char *conninfo, const char *text, char *out, size_t outlen);
/* pg's last error message, trimmed and redacted with conninfo ("out of memory" without pg). */
void tarry_pg_error(PGconn *pg, const char *conninfo, char *out, size_t outlen);
/* Read query parameters from Lua values at [first, last] into params (strings kept on the stack).  */
int tarry_pg_params(lua_State *L, int first, int last, const char **params);

/* Connector options from the table at t: an integer in [min, 10000] (def when absent), the conninfo. */
int tarry_opt_int(lua_State *L, int t, const char *name, int def, int min);
/* A boolean (def when absent). */
int tarry_opt_bool(lua_State *L, int t, const char *name, int def);
/* The default of prepared_statements: true unless TARRY_PREPARED_STATEMENTS is 0, false or off
   (for a transaction-pooling PgBouncer in front of a CLI or an app that does not set it). */
int tarry_prepared_default(void);
const char *tarry_opt_conninfo(lua_State *L, int t);
/* A number of seconds in [0, 1e6] (def when absent). */
double tarry_opt_seconds(lua_State *L, int t, const char *name, double def);
/* Raise (blamed on the caller) for a key of the table at t that allowed (NULL-terminated) lacks. */
void tarry_opt_check(lua_State *L, int t, const char *type, const char *const allowed[]);
/* The options both C connectors accept (add new ones here). */
#define TARRY_CONNECTOR_OPTIONS "conninfo", "min_size", "max_size", "connect_timeout", "query_timeout", \
    "prepared_statements"

/* ---- sync_connector.c ---- */
typedef struct tarry_sync tarry_sync;
tarry_sync *tarry_sync_check(lua_State *L, int idx);
tarry_sync *tarry_sync_test(lua_State *L, int idx);
/* Push a new SyncPgConnector.  [-0, +1, e] */
tarry_sync *tarry_sync_new(lua_State *L, const char *conninfo, int min_size, int max_size, int connect_timeout,
                           double query_timeout, int prepared_statements);
/* Run q on a pooled blocking connection; pushes the result, or raises the error object.  [-0, +1, e] */
int tarry_sync_query(lua_State *L, tarry_sync *s, const tarry_query *q);
/* The connections it holds now (idle and in use), and its max_size. */
void tarry_sync_counts(tarry_sync *s, int *nopen, int *max_size);
void tarry_sync_open(lua_State *L);

/* ---- pg_pool.c: the async connector's pool of non-blocking connections on the loop ---- */
typedef struct tarry_pool tarry_pool;
/* A pool with no connection yet, on rt's loop; NULL if out of memory. */
tarry_pool *tarry_pool_new(tarry_rt *rt, const char *conninfo, int max_size, int connect_timeout,
                           double query_timeout, int prepared_statements);
/* Connect n connections now, blocking: 0 with a message in err when one cannot. */
int tarry_pool_connect(tarry_pool *p, int n, char *err, size_t errlen);
/* Start n connections connecting in the loop (a failure reaches the queries waiting for them). */
void tarry_pool_start(tarry_pool *p, int n);
/* Park the running coroutine h until q's result arrives (use as `return tarry_pool_query(...)`). */
int tarry_pool_query(lua_State *L, tarry_pool *p, tarry_co *h, const tarry_query *q);
/* Run q blocking on an idle pooled connection: pushes the result (1) or an error object (0);
   -1 (nothing pushed) when none is idle. */
int tarry_pool_exec(lua_State *L, tarry_pool *p, const tarry_query *q);
int tarry_pool_size(const tarry_pool *p);          /* connections open or opening */
/* Pending queries get a "connection" error (wake) or are forgotten (the runtime is going away);
   the connections go. Freed now, or once out of the callback that runs. */
void tarry_pool_close(tarry_pool *p, int wake);

/* ---- pg_connector.c: tarry.PgConnector, the pool's Lua face ---- */
/* Run q through the connector at idx, choosing at call time: the async pool (yielding only this
   coroutine) inside an owned coroutine once open, else a blocking connection. Use as
   `return tarry_connector_query(...)`: it pushes one result or raises an error object. */
int tarry_connector_query(lua_State *L, int idx, const tarry_query *q);
/* 1 if the value at idx is one of the C connectors. */
int tarry_is_c_connector(lua_State *L, int idx);
void tarry_pg_connector_open(lua_State *L);

/* ---- event.c, signals.c, listener.c ---- */
void tarry_event_open(lua_State *L);
void tarry_signals_open(lua_State *L);
void tarry_listener_open(lua_State *L);
int tarry_listen(lua_State *L);   /* core.listen(conninfo, channels, connect_timeout, query_timeout) */

/* ---- http.c: tarry.HttpServer (libmicrohttpd on the loop) ---- */
void tarry_http_open(lua_State *L);

/* ---- app.c ---- */
void tarry_app_open(lua_State *L);

/* ---- threads.c: tarry.ThreadPool, the threads of blocking task bodies ---- */
void tarry_threads_open(lua_State *L);

#endif
