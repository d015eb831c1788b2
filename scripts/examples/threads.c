/* Many threads deferring through one libtarry.so client at once (tarry_defer is blocking and
 * thread-safe; the client lends each call one of its pooled connections).
 *
 *   build/examples/threads [CONNINFO [THREADS [DEFERS_PER_THREAD [MAX_CONNECTIONS]]]]
 *   (defaults: "" = the PG* variables, 8 threads, 1000 defers each, 8 connections)
 * Prints the throughput; exit status 0 when every defer returned an id. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <tarry_client.h>

typedef struct worker {
    pthread_t thread;
    tarry_client *client;
    int index, count, failed;
} worker;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *run(void *arg)
{
    worker *w = arg;
    char args[64], err[512];
    tarry_defer_options o = { "threads", NULL, NULL, w->index, 0 };
    for (int i = 0; i < w->count; i++) {
        snprintf(args, sizeof args, "{\"thread\": %d, \"i\": %d}", w->index, i);
        if (tarry_defer(w->client, "tool.work", args, &o, err, sizeof err) > 0) continue;
        if (w->failed++ == 0) fprintf(stderr, "threads: thread %d: %s\n", w->index, err);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *conninfo = argc > 1 ? argv[1] : "";
    int nthreads = argc > 2 ? atoi(argv[2]) : 8, per = argc > 3 ? atoi(argv[3]) : 1000;
    int maxconn = argc > 4 ? atoi(argv[4]) : 8, failed = 0;
    char err[512];
    tarry_client *c = tarry_client_open(conninfo, maxconn, err, sizeof err);
    worker *w = calloc((size_t)nthreads, sizeof *w);
    if (!c) { fprintf(stderr, "threads: %s\n", err); return 1; }
    double t0 = now();
    for (int i = 0; i < nthreads; i++) {
        w[i] = (worker){ .client = c, .index = i, .count = per };
        pthread_create(&w[i].thread, NULL, run, &w[i]);
    }
    for (int i = 0; i < nthreads; i++) {
        pthread_join(w[i].thread, NULL);
        failed += w[i].failed;
    }
    double s = now() - t0;
    printf("%d threads x %d defers: %d jobs in %.3f s (%.0f jobs/s), %d failed\n", nthreads, per,
           nthreads * per - failed, s, (nthreads * per - failed) / s, failed);
    tarry_client_close(c);
    free(w);
    return failed == 0 ? 0 : 1;
}
