/* Shared by the C client's files (runtime/client/): a checked job ready to send, the error
 * line every failure becomes, the two halves of a client. No Lua anywhere in here. */
#ifndef TARRY_CLIENT_PRIVATE_H
#define TARRY_CLIENT_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <libpq-fe.h>

#include "tarry_client.h"

#define CLIENT_ERR 512                      /* bytes of one error line */
#define JOB_PARAMS 7

/* One job as the statement's parameters: queue, task, priority, lock, queueing_lock, args,
   scheduled_at (NULL entries are SQL NULLs). The pointers point into the caller's strings
   (tarry_defer) or into owned copies (a pending handle). */
typedef struct cjob {
    const char *params[JOB_PARAMS];
    char priority[16];
    char at[32];
} cjob;

/* job.c */
/* Check a defer's arguments as tarry's Lua defer does; fill j (pointing into the arguments).
   0 with "invalid_args: ..." / "invalid_job: ..." in err when refused. */
int cjob_check(cjob *j, const char *task, const char *args, const tarry_defer_options *o,
               char *err, size_t errlen);
/* Send j on conn (PQsendQueryParams); 1 or 0 as libpq says. */
int cjob_send(PGconn *conn, const cjob *j);
/* Run j blocking on conn: the id, or 0 with the error line in err. */
int64_t cjob_exec(PGconn *conn, const char *conninfo, const cjob *j, char *err, size_t errlen);
/* The id in a result, or 0 with the error line ("already_enqueued: ...") in err. */
int64_t cjob_result(PGconn *conn, const char *conninfo, const PGresult *res, char *err, size_t errlen);
/* "connection: <what>: <libpq's message, one line, no password>" into err. */
void cjob_conn_error(PGconn *conn, const char *conninfo, const char *what, char *err, size_t errlen);
/* printf into err, never overflowing; errlen 0 or err NULL: nothing. */
void cjob_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A connection with what its notice receiver saw: a FATAL sent while idle (the server is
   terminating it, a restart) means the connection is gone even before the socket closes. */
typedef struct pooled { PGconn *pg; int fatal; } pooled;
/* Watch conn's notices for FATAL into *fatal (quietly: nothing is printed). */
void cjob_watch_fatal(PGconn *conn, int *fatal);

/* pending.c: the non-blocking half, one connection, its own lock. */
typedef struct async_side async_side;
async_side *async_new(const char *conninfo);
void async_free(async_side *a);             /* fails what is left: "connection: the client was closed" */

struct tarry_client {
    char *conninfo;
    pthread_mutex_t lock;                   /* the blocking pool */
    pthread_cond_t freed;                   /* a connection went back to the pool */
    int max, nopen, nidle;
    pooled **idle;                          /* max slots */
    async_side *async;
};

#endif
