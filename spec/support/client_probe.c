/* The specs' way into libtarry.so (spec/client_spec.lua): one defer (or several) through one of
 * the client's paths, each outcome printed as a line "id=N" or "error=<the error line>".
 *
 *   client_probe PATH CONNINFO TASK ARGS_JSON [queue=Q] [lock=L] [qlock=K] [priority=N] [at=T]
 *                [count=N] [sql=S] [terminate=1]
 *   PATH: defer     tarry_defer on a client (count times)
 *         start     tarry_defer_start, then step until done (poll on the fd, at most 20 s)
 *         commit    tarry_defer_on(PGconn*) between BEGIN and COMMIT (sql= runs first, inside)
 *         rollback  the same with ROLLBACK
 *   terminate=1: after the first defer, terminate every other backend of this role (the
 *   client's connections) and wait until they are gone, then do the rest.
 *   pause=DIR: after the i-th defer, wait (at most 60 s) until the file DIR/i exists (the spec
 *   stops or starts the server meanwhile).
 * Exit status: 0 when the probe ran (whatever the outcomes), 2 on misuse. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <libpq-fe.h>
#include <tarry_client.h>

typedef struct probe {
    const char *path, *conninfo, *task, *args, *sql, *pause;
    tarry_defer_options o;
    int count, terminate;
} probe;

static void print_outcome(int64_t id, const char *err)
{
    if (id > 0) printf("id=%lld\n", (long long)id);
    else printf("error=%s\n", err);
    fflush(stdout);
}

static int parse(probe *p, int argc, char **argv)
{
    if (argc < 5) return 0;
    *p = (probe){ argv[1], argv[2], argv[3], strcmp(argv[4], "NULL") == 0 ? NULL : argv[4], NULL, NULL,
                  { NULL, NULL, NULL, 0, 0 }, 1, 0 };
    for (int i = 5; i < argc; i++) {
        char *v = strchr(argv[i], '=');
        if (!v) return 0;
        *v++ = 0;
        if (strcmp(argv[i], "queue") == 0) p->o.queue = v;
        else if (strcmp(argv[i], "lock") == 0) p->o.lock = v;
        else if (strcmp(argv[i], "qlock") == 0) p->o.queueing_lock = v;
        else if (strcmp(argv[i], "priority") == 0) p->o.priority = atoi(v);
        else if (strcmp(argv[i], "at") == 0) p->o.schedule_at = strtod(v, NULL);
        else if (strcmp(argv[i], "count") == 0) p->count = atoi(v);
        else if (strcmp(argv[i], "sql") == 0) p->sql = v;
        else if (strcmp(argv[i], "terminate") == 0) p->terminate = atoi(v);
        else if (strcmp(argv[i], "pause") == 0) p->pause = v;
        else return 0;
    }
    return 1;
}

/* Terminate the other backends of this role and wait (at most 10 s) until they are gone. */
static void terminate_others(const char *conninfo)
{
    PGconn *pg = PQconnectdb(conninfo);
    PQclear(PQexec(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE usename = current_user AND pid <> pg_backend_pid()"));
    for (int i = 0; i < 1000; i++) {
        PGresult *r = PQexec(pg, "SELECT count(*) FROM pg_stat_activity "
                                 "WHERE usename = current_user AND pid <> pg_backend_pid()");
        int left = atoi(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (left == 0) break;
        usleep(10000);
    }
    PQfinish(pg);
}

/* Wait (at most 60 s) for the file <dir>/<i>. */
static void pause_for(const char *dir, int i)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%d", dir, i);
    for (int k = 0; k < 6000 && access(path, F_OK) != 0; k++) usleep(10000);
}

/* Step the client until h completes (bounded), waiting on its fd in between. */
static void wait_pending(tarry_client *c, tarry_pending *h)
{
    for (int i = 0; i < 2000 && tarry_pending_state(h) == TARRY_PENDING; i++) {
        int ev = tarry_client_events(c);
        double t = tarry_client_timeout(c);
        struct pollfd pfd = { tarry_client_fd(c), (short)((ev & TARRY_POLLIN ? POLLIN : 0) |
                                                          (ev & TARRY_POLLOUT ? POLLOUT : 0)), 0 };
        poll(&pfd, pfd.fd >= 0 ? 1 : 0, t >= 0 && t < 0.01 ? (int)(t * 1000) : 10);
        tarry_client_step(c);
    }
}

static void one(tarry_client *c, const probe *p)
{
    char err[512] = "";
    if (strcmp(p->path, "defer") == 0) {
        int64_t id = tarry_defer(c, p->task, p->args, &p->o, err, sizeof err);
        print_outcome(id, err);
        return;
    }
    tarry_pending *h = tarry_defer_start(c, p->task, p->args, &p->o, err, sizeof err);
    if (!h) { print_outcome(0, err); return; }
    wait_pending(c, h);
    print_outcome(tarry_pending_id(h), tarry_pending_state(h) == TARRY_PENDING ? "still pending"
                                                                                : tarry_pending_error(h));
    tarry_pending_free(h);
}

static int with_client(const probe *p)
{
    char err[512];
    tarry_client *c = tarry_client_open(p->conninfo, 2, err, sizeof err);
    if (!c) { print_outcome(0, err); return 0; }
    for (int i = 0; i < p->count; i++) {
        one(c, p);
        if (i == 0 && p->terminate) terminate_others(p->conninfo);
        if (p->pause && i + 1 < p->count) pause_for(p->pause, i + 1);
    }
    tarry_client_close(c);
    return 0;
}

static int in_transaction(const probe *p, int commit)
{
    char err[512] = "";
    PGconn *pg = PQconnectdb(p->conninfo);
    if (PQstatus(pg) != CONNECTION_OK) { fprintf(stderr, "%s", PQerrorMessage(pg)); return 2; }
    PQclear(PQexec(pg, "BEGIN"));
    if (p->sql) PQclear(PQexec(pg, p->sql));
    print_outcome(tarry_defer_on(pg, p->task, p->args, &p->o, err, sizeof err), err);
    PGresult *r = PQexec(pg, commit ? "COMMIT" : "ROLLBACK");
    printf("%s=%s\n", commit ? "commit" : "rollback", PQcmdStatus(r));
    PQclear(r);
    PQfinish(pg);
    return 0;
}

int main(int argc, char **argv)
{
    probe p;
    if (!parse(&p, argc, argv)) {
        fprintf(stderr, "usage: client_probe defer|start|commit|rollback CONNINFO TASK ARGS [k=v...]\n");
        return 2;
    }
    if (strcmp(p.path, "commit") == 0 || strcmp(p.path, "rollback") == 0)
        return in_transaction(&p, strcmp(p.path, "commit") == 0);
    if (strcmp(p.path, "defer") == 0 || strcmp(p.path, "start") == 0) return with_client(&p);
    fprintf(stderr, "client_probe: unknown path %s\n", p.path);
    return 2;
}
