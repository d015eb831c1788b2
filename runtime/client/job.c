/* One job of the C client: checked as tarry's Lua defer checks it, inserted with the same
 * server-side function (procrastinate_defer_jobs_v1), its failure worded as one line. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "client_private.h"
#include "defer_limits.h"
#include "tarry_private.h"        /* tarry_pg_error_code, tarry_pg_message, tarry_pg_redact (no Lua) */

/* The Lua path's statement (runtime/app.c) for a batch of one, with the job's fields as
   parameters: the same function, the same casts, the same clamping of far schedules. */
static const char INSERT_SQL[] =
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW($1::varchar, $2::varchar, $3::integer,"
    " $4::text, $5::text, $6::jsonb, CASE WHEN $7::float8 IS NOT NULL THEN"
    " LEAST(to_timestamp($7::float8), '9999-12-31 23:59:59.999999+00') END)"
    "::procrastinate_job_to_defer_v1])) AS id";

void cjob_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static size_t utf8_chars(const char *s)
{
    size_t chars = 0;
    for (; *s; s++) chars += ((unsigned char)*s & 0xC0) != 0x80;
    return chars;
}

/* 1 if s is valid UTF-8 (jansson refuses to make a string of anything else). */
static int utf8_ok(const char *s)
{
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

/* A text option: NULL (absent) or valid UTF-8 of at most max bytes. */
static int check_text(const char *name, const char *s, size_t max, char *err, size_t errlen)
{
    if (!s) return 1;
    if (!utf8_ok(s))
        cjob_err(err, errlen, "invalid_job: %s is not valid UTF-8", name);
    else if (strlen(s) > max)
        cjob_err(err, errlen, "invalid_job: %s has %zu bytes, more than the %d allowed (it is a key "
                 "of a PostgreSQL index)", name, strlen(s), MAX_LOCK_BYTES);
    else return 1;
    return 0;
}

static int check_names(const char *task, const char *queue, char *err, size_t errlen)
{
    if (!task || !*task || !utf8_ok(task) || utf8_chars(task) > MAX_NAME_CHARS)
        cjob_err(err, errlen, "invalid_job: task name must be valid UTF-8 of 1 to %d characters",
                 MAX_NAME_CHARS);
    else if (!*queue || !utf8_ok(queue) || strlen(queue) > MAX_QUEUE_BYTES)
        cjob_err(err, errlen, "invalid_job: queue name \"%.60s\" must be valid UTF-8 of 1 to %d bytes "
                 "(the NOTIFY channel procrastinate_queue_v1#<queue> must stay under 64 bytes)",
                 queue, MAX_QUEUE_BYTES);
    else return 1;
    return 0;
}

static const char *json_kind(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    default: return "an object";
    }
}

/* args must parse as one JSON object (no duplicate keys, valid UTF-8, no \u0000) of at most
   16 MiB. Its text goes to PostgreSQL as it is. */
static int check_args(const char *args, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j;
    size_t n = strlen(args);
    if (n > MAX_ARGS_BYTES) {
        cjob_err(err, errlen, "invalid_args: args_json has %zu bytes, more than the %d allowed (16 MiB)",
                 n, MAX_ARGS_BYTES);
        return 0;
    }
    j = json_loadb(args, n, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &je);
    if (!j) {
        cjob_err(err, errlen, "invalid_args: args_json is not valid JSON: %s (line %d, column %d)",
                 je.text, je.line, je.column);
        return 0;
    }
    if (!json_is_object(j)) {
        cjob_err(err, errlen, "invalid_args: args_json must be a JSON object, got %s", json_kind(j));
        json_decref(j);
        return 0;
    }
    json_decref(j);
    return 1;
}

static int check_schedule(double at, char *buf, size_t n, char *err, size_t errlen)
{
    buf[0] = 0;
    if (!isfinite(at)) {
        cjob_err(err, errlen, "invalid_job: schedule_at must be a finite number (seconds since the epoch)");
        return 0;
    }
    if (at != 0) snprintf(buf, n, "%.17g", at > MAX_SCHEDULE ? MAX_SCHEDULE : at);
    return 1;
}

int cjob_check(cjob *j, const char *task, const char *args, const tarry_defer_options *o,
               char *err, size_t errlen)
{
    static const tarry_defer_options defaults = { NULL, NULL, NULL, 0, 0 };
    const char *queue;
    if (!o) o = &defaults;
    queue = o->queue ? o->queue : "default";
    if (!args) args = "{}";
    if (!check_names(task, queue, err, errlen) || !check_text("lock", o->lock, MAX_LOCK_BYTES, err, errlen)
        || !check_text("queueing_lock", o->queueing_lock, MAX_LOCK_BYTES, err, errlen)
        || !check_schedule(o->schedule_at, j->at, sizeof j->at, err, errlen)
        || !check_args(args, err, errlen))
        return 0;
    snprintf(j->priority, sizeof j->priority, "%d", o->priority);
    j->params[0] = queue;
    j->params[1] = task;
    j->params[2] = j->priority;
    j->params[3] = o->lock;
    j->params[4] = o->queueing_lock;
    j->params[5] = args;
    j->params[6] = j->at[0] ? j->at : NULL;
    return 1;
}

static void note_fatal(void *arg, const PGresult *res)
{
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (severity && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0)) *(int *)arg = 1;
}

void cjob_watch_fatal(PGconn *conn, int *fatal)
{
    *fatal = 0;
    PQsetNoticeReceiver(conn, note_fatal, fatal);
}

int cjob_send(PGconn *conn, const cjob *j)
{
    return PQsendQueryParams(conn, INSERT_SQL, JOB_PARAMS, NULL, j->params, NULL, NULL, 0);
}

void cjob_conn_error(PGconn *conn, const char *conninfo, const char *what, char *err, size_t errlen)
{
    char msg[CLIENT_ERR];
    if (conninfo) tarry_pg_error(conn, conninfo, msg, sizeof msg);
    else tarry_pg_message(msg, sizeof msg, conn ? PQerrorMessage(conn) : "out of memory");
    cjob_err(err, errlen, "connection: %s%s%s", what, *msg ? ": " : "", msg);
}

/* "code: message (SQLSTATE xxxxx)", as tostring() of tarry's Lua error object words it. */
static void result_error(PGconn *conn, const char *conninfo, const PGresult *res, char *err, size_t errlen)
{
    const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *code = tarry_pg_error_code(sqlstate, constraint, conn);
    char msg[CLIENT_ERR];
    if (strcmp(code, "already_enqueued") == 0) {
        const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        snprintf(msg, sizeof msg, "a job with the same queueing lock is already waiting (%s)",
                 detail ? detail : constraint);
    } else if (primary) {
        tarry_pg_message(msg, sizeof msg, primary);
    } else {
        cjob_conn_error(conn, conninfo, "the insert failed", err, errlen);
        return;
    }
    if (sqlstate) cjob_err(err, errlen, "%s: %s (SQLSTATE %s)", code, msg, sqlstate);
    else cjob_err(err, errlen, "%s: %s", code, msg);
}

int64_t cjob_result(PGconn *conn, const char *conninfo, const PGresult *res, char *err, size_t errlen)
{
    char *end;
    long long id;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        result_error(conn, conninfo, res, err, errlen);
        return 0;
    }
    id = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), &end, 10) : 0;
    if (id <= 0) cjob_err(err, errlen, "database: the insert returned no job id");
    return id > 0 ? (int64_t)id : 0;
}

int64_t cjob_exec(PGconn *conn, const char *conninfo, const cjob *j, char *err, size_t errlen)
{
    PGresult *res = PQexecParams(conn, INSERT_SQL, JOB_PARAMS, NULL, j->params, NULL, NULL, 0);
    int64_t id = cjob_result(conn, conninfo, res, err, errlen);
    PQclear(res);
    return id;
}
