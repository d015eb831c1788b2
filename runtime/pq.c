/* libpq helpers that need no Lua: how tarry connects, checks an idle connection and words
 * libpq's messages. Shared by the Lua runtime and by libtarry.so (runtime/client/), which must
 * not reference a Lua symbol. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#include "tarry_private.h"

#define QUEUEING_LOCK_INDEX "procrastinate_jobs_queueing_lock_idx_v1"

/* tarry's defaults come first and the conninfo (expanded as dbname) last, so whatever the
   user's conninfo sets wins. TCP keepalives find a peer that vanished without a FIN while the
   connection is idle (about 25 s), tcp_user_timeout one that stopped acknowledging what we
   sent; both are ignored on Unix sockets. A peer that acknowledges but never answers (a stuck
   proxy) is what the per-query deadline (query_timeout) is for. */
#define CONNECT_PARAMS 9
static void connect_params(const char *conninfo, int timeout, const char **kw, const char **val,
                           char *timeout_buf, size_t buflen)
{
    static const char *const fixed[][2] = {
        { "fallback_application_name", "tarry" }, { "keepalives", "1" }, { "keepalives_idle", "10" },
        { "keepalives_interval", "5" }, { "keepalives_count", "3" }, { "tcp_user_timeout", "30000" } };
    int n = 0;
    snprintf(timeout_buf, buflen, "%d", timeout > 0 ? timeout : 5);
    kw[n] = "connect_timeout"; val[n++] = timeout_buf;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) { kw[n] = fixed[i][0]; val[n++] = fixed[i][1]; }
    kw[n] = "dbname"; val[n++] = conninfo;
    kw[n] = NULL; val[n] = NULL;
}

PGconn *tarry_pg_connect(const char *conninfo, int connect_timeout, char *err, size_t errlen)
{
    const char *kw[CONNECT_PARAMS + 1], *val[CONNECT_PARAMS + 1];
    char tbuf[16];
    PGconn *conn;
    connect_params(conninfo, connect_timeout, kw, val, tbuf, sizeof tbuf);
    conn = PQconnectdbParams(kw, val, 1);
    if (conn && PQstatus(conn) == CONNECTION_OK) {
        tarry_pg_setup(conn);
        PQsetnonblocking(conn, 1);       /* tarry_pg_exec waits with poll() and a deadline */
        return conn;
    }
    tarry_pg_error(conn, conninfo, err, errlen);   /* one line, no password */
    PQfinish(conn);
    return NULL;
}

PGconn *tarry_pg_connect_start(const char *conninfo, int connect_timeout)
{
    const char *kw[CONNECT_PARAMS + 1], *val[CONNECT_PARAMS + 1];
    char tbuf[16];
    PGconn *conn;
    connect_params(conninfo, connect_timeout, kw, val, tbuf, sizeof tbuf);
    conn = PQconnectStartParams(kw, val, 1);
    if (conn) tarry_pg_setup(conn);
    return conn;
}

/* Notices (and the FATAL a terminated idle backend sends) are not for the user's terminal. */
static void quiet_notices(void *arg, const char *message)
{
    (void)arg; (void)message;
}

void tarry_pg_setup(PGconn *conn)
{
    PQsetNoticeProcessor(conn, quiet_notices, NULL);
}

/* An idle connection is usable if it is not in a transaction and the server has not closed it.
   A terminated backend sends a FATAL message and then closes: after reading what is there
   (libpq sockets never block), a peek that returns 0 bytes is the end of the stream. Checked before
   every query, so the usual case (nothing arrived) costs one system call: the peek. */
int tarry_pg_idle_ok(PGconn *conn)
{
    char byte;
    ssize_t n;
    if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE) return 0;
    n = recv(PQsocket(conn), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 1;
    if (n <= 0) return 0;
    if (!PQconsumeInput(conn) || recv(PQsocket(conn), &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0) return 0;
    return PQstatus(conn) == CONNECTION_OK;
}

int tarry_pg_result_ok(const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY;
}

double tarry_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void tarry_pg_message(char *out, size_t outlen, const char *msg)
{
    size_t n = 0;
    for (const char *p = msg ? msg : ""; *p && n + 1 < outlen; p++) {
        if (*p == '\n' || *p == '\t') {                  /* libpq's messages span lines */
            if (n > 0 && out[n - 1] != ' ') out[n++] = ' ';
        } else {
            out[n++] = *p;
        }
    }
    while (n > 0 && out[n - 1] == ' ') n--;
    out[n] = 0;
}

const char *tarry_pg_error_code(const char *sqlstate, const char *constraint, PGconn *conn)
{
    if (!sqlstate) return "connection";
    if (strcmp(sqlstate, "23505") == 0 && constraint && strcmp(constraint, QUEUEING_LOCK_INDEX) == 0)
        return "already_enqueued";
    /* 08P01 is a protocol violation (a wrong number of parameters, say) on a live connection. */
    if (strcmp(sqlstate, "08P01") == 0 && !(conn && PQstatus(conn) == CONNECTION_BAD)) return "database";
    if (strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "57P0", 4) == 0) return "connection";
    if (conn && PQstatus(conn) == CONNECTION_BAD) return "connection";
    return "database";
}

void tarry_pg_keep_result(PGresult **kept, PGresult *res)
{
    if (!*kept || (tarry_pg_result_ok(*kept) && !tarry_pg_result_ok(res))) {
        PQclear(*kept);
        *kept = res;
    } else {
        PQclear(res);
    }
}
