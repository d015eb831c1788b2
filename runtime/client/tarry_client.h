/* libtarry.so: defer tarry jobs from C, C++ or any language's FFI, without Lua.
 *
 * The client inserts jobs exactly as tarry's Lua `task:defer` does (one call of PostgreSQL's
 * procrastinate_defer_jobs_v1, so queueing locks, `already_enqueued` and the NOTIFY a worker
 * listens for behave the same). Link with -ltarry; it needs libpq and jansson, never Lua.
 *
 * Errors: every function that can fail writes one line into err (errlen bytes, always
 * NUL-terminated when errlen > 0; err may be NULL), code first, with the codes of tarry's Lua
 * error objects:
 *   "invalid_args: ..."      args_json is not a JSON object, or passes 16 MiB (nothing inserted)
 *   "invalid_job: ..."       a task name, queue, lock or schedule that cannot be stored (nothing inserted)
 *   "invalid_options: ..."   a bad argument to tarry_client_open
 *   "already_enqueued: ..."  a waiting job holds the queueing lock (SQLSTATE 23505)
 *   "connection: ..."        PostgreSQL cannot be reached, or the connection broke during the call
 *   "database: ..."          any other PostgreSQL error (its SQLSTATE in parentheses)
 * Passwords of the conninfo never appear in a message.
 *
 * Threads: a tarry_client is thread-safe; see each function. The blocking calls hold one of at
 * most max_connections connections for the duration of one insert; more callers than that wait
 * for a free one. */
#ifndef TARRY_CLIENT_H
#define TARRY_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TARRY_CLIENT_API __attribute__((visibility("default")))
#else
#define TARRY_CLIENT_API
#endif

#ifndef LIBPQ_FE_H
typedef struct pg_conn PGconn;              /* libpq's connection (<libpq-fe.h>; C11 allows both) */
#endif
typedef struct tarry_client tarry_client;
typedef struct tarry_pending tarry_pending;

typedef struct tarry_defer_options {
    const char *queue;          /* NULL: "default" */
    const char *lock;           /* NULL: none */
    const char *queueing_lock;  /* NULL: none */
    int priority;               /* 0 */
    double schedule_at;         /* unix seconds; 0: now */
} tarry_defer_options;

/* ---- the client ---- */

/* A client for the database of conninfo (a libpq connection string or URI), with a pool of at
   most max_connections (1 to 1000) blocking connections for tarry_defer, and one non-blocking
   connection for tarry_defer_start, made when first needed. Connects one pooled connection
   before it returns, so a wrong conninfo or a database that is down is reported here:
   NULL with "connection: ..." in err. BLOCKS for that connect (bounded by the conninfo's
   connect_timeout, 5 s by default). Any thread. */
TARRY_CLIENT_API tarry_client *tarry_client_open(const char *conninfo, int max_connections,
                                                 char *err, size_t errlen);

/* Closes every connection and frees c (NULL: nothing). Handles still pending fail with
   "connection: the client was closed" and stay valid until tarry_pending_free. Does not block
   beyond closing sockets. Call it once, when no other thread uses c any more. */
TARRY_CLIENT_API void tarry_client_close(tarry_client *c);

/* ---- blocking defers ---- */

/* Inserts one job of task_name with args_json (a JSON object; NULL: "{}") and opts (NULL: the
   defaults). Returns the job id (> 0), or 0 with a one-line message in err (code first).
   BLOCKS for one round trip to PostgreSQL (and a connect when no pooled connection is idle;
   waits while all max_connections are busy). Any thread, many at once. A pooled connection
   the server closed meanwhile is replaced before use; one that breaks during the insert gives
   "connection: ..." and is replaced on the next call (the job may or may not have been
   inserted: tarry never inserts twice behind your back). */
TARRY_CLIENT_API int64_t tarry_defer(tarry_client *c, const char *task_name, const char *args_json,
                                     const tarry_defer_options *opts, char *err, size_t errlen);

/* The same insert on the host's own libpq connection, inside whatever transaction it has open
   (the job exists only if that transaction commits; its NOTIFY is sent at commit). A failure
   inside a transaction aborts that transaction, as any failed statement does. BLOCKS for one
   round trip on conn. Any thread that may use conn (libpq connections are not shared between
   threads); conn must be idle (no query in flight, not in pipeline mode). */
TARRY_CLIENT_API int64_t tarry_defer_on(PGconn *conn, const char *task_name, const char *args_json,
                                        const tarry_defer_options *opts, char *err, size_t errlen);

/* ---- non-blocking defers, for frame loops and event loops ----
 *
 * tarry_defer_start queues a job and returns at once; tarry_client_step sends queued jobs and
 * reads answers on the client's non-blocking connection, and never blocks. Drive it from a
 * frame loop (call step once per frame) or from a poll loop: wait for tarry_client_fd to be
 * readable (or writable when tarry_client_events says so) or for tarry_client_timeout, then
 * step. These may be called from any thread (they take the client's lock, which is never held
 * across a wait for the network); one thread driving step is the usual set-up. */

enum tarry_pending_state {
    TARRY_PENDING = 0,          /* queued or sent, no answer yet */
    TARRY_DONE = 1,             /* inserted: tarry_pending_id gives the id */
    TARRY_FAILED = 2            /* not inserted (or unknown, for "connection"): see tarry_pending_error */
};

/* Checks the job as tarry_defer does and queues it; returns a handle, or NULL with
   "invalid_args: ..." / "invalid_job: ..." in err when the job is refused (nothing queued).
   NEVER BLOCKS. Any thread. The handle belongs to the caller: free it with tarry_pending_free. */
TARRY_CLIENT_API tarry_pending *tarry_defer_start(tarry_client *c, const char *task_name,
                                                  const char *args_json,
                                                  const tarry_defer_options *opts,
                                                  char *err, size_t errlen);

/* Makes progress: connects (PQconnectPoll), sends queued jobs, reads answers, completes handles.
   Returns the number of handles it completed (done or failed). When the connection fails, every
   handle queued or in flight fails with "connection: ..." and the next tarry_defer_start
   connects again. NEVER BLOCKS. Any thread. */
TARRY_CLIENT_API int tarry_client_step(tarry_client *c);

/* The socket to watch for the non-blocking side, or -1 while there is none (nothing queued yet,
   or after a failure). It changes when the client reconnects: read it again after each step.
   NEVER BLOCKS. Any thread. */
TARRY_CLIENT_API int tarry_client_fd(tarry_client *c);

#define TARRY_POLLIN 1
#define TARRY_POLLOUT 2
/* What to wait for on tarry_client_fd: TARRY_POLLIN, | TARRY_POLLOUT while connecting or while
   a send is not fully written; 0 with no fd. NEVER BLOCKS. Any thread. */
TARRY_CLIENT_API int tarry_client_events(tarry_client *c);

/* Seconds until tarry_client_step must run even if the fd stays quiet: 0 when queued jobs wait
   to be sent, the time left before a connect attempt times out, or -1 when only the fd matters.
   NEVER BLOCKS. Any thread. */
TARRY_CLIENT_API double tarry_client_timeout(tarry_client *c);

/* Jobs queued or in flight (not yet completed). NEVER BLOCKS. Any thread. */
TARRY_CLIENT_API int tarry_client_pending(tarry_client *c);

/* ---- a pending handle ----
 * Readable from any thread; the id and error are set before the state changes (release/acquire),
 * so read the state first. */

/* TARRY_PENDING, TARRY_DONE or TARRY_FAILED. NEVER BLOCKS. */
TARRY_CLIENT_API int tarry_pending_state(const tarry_pending *h);
/* The job id once TARRY_DONE, else 0. NEVER BLOCKS. */
TARRY_CLIENT_API int64_t tarry_pending_id(const tarry_pending *h);
/* The one-line error once TARRY_FAILED ("already_enqueued: ..."), else NULL. Valid until the
   handle is freed. NEVER BLOCKS. */
TARRY_CLIENT_API const char *tarry_pending_error(const tarry_pending *h);
/* Frees h (NULL: nothing). A handle still pending is detached: its job is still inserted and
   the client frees the handle when the answer arrives (or at close). NEVER BLOCKS. Any thread,
   once per handle. */
TARRY_CLIENT_API void tarry_pending_free(tarry_pending *h);

#ifdef __cplusplus
}
#endif

#endif
