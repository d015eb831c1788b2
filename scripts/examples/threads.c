/* Many threads deferring through one libtarry.so client at once (tarry_defer is blocking and
 * thread-safe; the client lends each call one of its pooled connections).
 *
 *   build/examples/threads [CONNINFO [THREADS [DEFERS_PER_THREAD [MAX_CONNECTIONS [start]]]]]
 *   (defaults: "" = the PG* variables, 8 threads, 1000 defers each, 8 connections)
 * With "start" the threads use the non-blocking API instead: each queues its jobs with
 * tarry_defer_start and waits for its handles (freeing every tenth one at once, still pending:
 * the client frees it when its answer arrives), while the main thread drives tarry_client_step.
 * Prints the throughput; exit status 0 when every defer returned an id. */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <tarry_client.h>

typedef struct worker {
    pthread_t thread;
    tarry_client *client;
    int index, count, failed;
    atomic_int *running;
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

/* The non-blocking variant of run(): start everything, then wait for the handles kept. */
static void *run_started(void *arg)
{
    worker *w = arg;
    char args[64], err[512];
    tarry_defer_options o = { "threads", NULL, NULL, w->index, 0 };
    tarry_pending **h = calloc((size_t)w->count, sizeof *h);
    for (int i = 0; i < w->count; i++) {
        snprintf(args, sizeof args, "{\"thread\": %d, \"i\": %d}", w->index, i);
        h[i] = tarry_defer_start(w->client, "tool.work", args, &o, err, sizeof err);
        if (!h[i] && w->failed++ == 0) fprintf(stderr, "threads: thread %d: %s\n", w->index, err);
        if (h[i] && i % 10 == 0) { tarry_pending_free(h[i]); h[i] = NULL; }   /* detached */
    }
    for (int i = 0; i < w->count; i++) {
        for (int k = 0; h[i] && tarry_pending_state(h[i]) == TARRY_PENDING && k < 20000; k++) usleep(1000);
        if (h[i] && tarry_pending_state(h[i]) != TARRY_DONE && w->failed++ == 0)
            fprintf(stderr, "threads: thread %d: %s\n", w->index,
                    tarry_pending_state(h[i]) == TARRY_PENDING ? "still pending" : tarry_pending_error(h[i]));
        tarry_pending_free(h[i]);
    }
    free(h);
    atomic_fetch_sub(w->running, 1);
    return NULL;
}

/* The main thread of the non-blocking variant: step until the threads are done and nothing is
   pending (bounded by 60 s). */
static void drive(tarry_client *c, atomic_int *running)
{
    for (int k = 0; k < 60000 && (atomic_load(running) > 0 || tarry_client_pending(c) > 0); k++) {
        int ev = tarry_client_events(c);
        struct pollfd p = { tarry_client_fd(c), (short)((ev & TARRY_POLLIN ? POLLIN : 0) |
                                                        (ev & TARRY_POLLOUT ? POLLOUT : 0)), 0 };
        poll(&p, p.fd >= 0 ? 1 : 0, tarry_client_timeout(c) == 0 ? 0 : 1);
        tarry_client_step(c);
    }
}

int main(int argc, char **argv)
{
    const char *conninfo = argc > 1 ? argv[1] : "";
    int nthreads = argc > 2 ? atoi(argv[2]) : 8, per = argc > 3 ? atoi(argv[3]) : 1000;
    int maxconn = argc > 4 ? atoi(argv[4]) : 8, failed = 0, started = argc > 5;
    atomic_int running = nthreads;
    char err[512];
    tarry_client *c = tarry_client_open(conninfo, maxconn, err, sizeof err);
    worker *w = calloc((size_t)nthreads, sizeof *w);
    if (!c) { fprintf(stderr, "threads: %s\n", err); return 1; }
    double t0 = now();
    for (int i = 0; i < nthreads; i++) {
        w[i] = (worker){ .client = c, .index = i, .count = per, .running = &running };
        pthread_create(&w[i].thread, NULL, started ? run_started : run, &w[i]);
    }
    if (started) drive(c, &running);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(w[i].thread, NULL);
        failed += w[i].failed;
    }
    double s = now() - t0;
    printf("%d threads x %d %s: %d jobs in %.3f s (%.0f jobs/s), %d failed\n", nthreads, per,
           started ? "defer_starts" : "defers", nthreads * per - failed, s,
           (nthreads * per - failed) / s, failed);
    tarry_client_close(c);
    free(w);
    return failed == 0 ? 0 : 1;
}
