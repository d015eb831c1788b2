/* A 60 Hz frame loop that defers one job per frame through libtarry.so's non-blocking API and
 * never waits for PostgreSQL: each frame queues a job (tarry_defer_start), lets the client make
 * progress (tarry_client_step, which never blocks), collects the handles that completed, then
 * sleeps until the next frame. It records the time each frame spent in tarry and prints the
 * distribution, then waits (bounded, polling tarry_client_fd) for the last answers. It also
 * counts the frames in which a tarry call blocked: a voluntary context switch of this thread
 * during the calls (the kernel's own count, unlike the times, is not blurred by a busy machine
 * preempting us).
 *
 *   build/examples/frame_loop [CONNINFO [SECONDS]]     (CONNINFO "" : the PG* variables; 3 s)
 * Exit status 0 when every job was deferred. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <tarry_client.h>

#define FPS 60

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
    struct timespec ts = { (time_t)t, (long)((t - (double)(time_t)t) * 1e9) };
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* This thread's context switches so far (Linux: RUSAGE_THREAD): voluntary (it waited) or not
   (the kernel preempted it). */
static long switches(int voluntary)
{
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return voluntary ? u.ru_nvcsw : u.ru_nivcsw;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The handles not yet completed, compacted; counts what completed. */
typedef struct inflight { tarry_pending **h; int n, done, failed; } inflight;

static void collect(inflight *f)
{
    int kept = 0;
    for (int i = 0; i < f->n; i++) {
        int st = tarry_pending_state(f->h[i]);
        if (st == TARRY_PENDING) { f->h[kept++] = f->h[i]; continue; }
        if (st == TARRY_DONE) f->done++;
        else if (f->failed++ == 0) fprintf(stderr, "frame_loop: %s\n", tarry_pending_error(f->h[i]));
        tarry_pending_free(f->h[i]);
    }
    f->n = kept;
}

/* One frame's work for tarry: queue a job, step, collect. */
static void frame(tarry_client *c, inflight *f, int i)
{
    char args[64], err[512];
    tarry_defer_options o = { "frames", NULL, NULL, 0, 0 };
    snprintf(args, sizeof args, "{\"frame\": %d}", i);
    tarry_pending *h = tarry_defer_start(c, "game.frame", args, &o, err, sizeof err);
    if (h) f->h[f->n++] = h;
    else if (f->failed++ == 0) fprintf(stderr, "frame_loop: %s\n", err);
    tarry_client_step(c);
    collect(f);
}

/* After the last frame: poll the client's fd until every answer is in (at most 10 s). */
static void drain(tarry_client *c, inflight *f)
{
    double end = now() + 10;
    while (f->n > 0 && now() < end) {
        int ev = tarry_client_events(c);
        double t = tarry_client_timeout(c);
        struct pollfd p = { tarry_client_fd(c),
                            (short)((ev & TARRY_POLLIN ? POLLIN : 0) | (ev & TARRY_POLLOUT ? POLLOUT : 0)), 0 };
        poll(&p, p.fd >= 0 ? 1 : 0, t < 0 || t > 0.1 ? 100 : (int)(t * 1000));
        tarry_client_step(c);
        collect(f);
    }
}

static void report(const char *what, double *ms, int n)
{
    qsort(ms, (size_t)n, sizeof *ms, by_value);
    printf("%s: p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", what, ms[n / 2], ms[(n * 99) / 100], ms[n - 1]);
}

int main(int argc, char **argv)
{
    const char *conninfo = argc > 1 ? argv[1] : "";
    int frames = (int)((argc > 2 ? atof(argv[2]) : 3) * FPS), stalled = 0, blocked = 0, preempted = 0;
    char err[512];
    tarry_client *c = tarry_client_open(conninfo, 1, err, sizeof err);
    double *busy = calloc((size_t)frames, sizeof *busy), *interval = calloc((size_t)frames, sizeof *interval);
    inflight f = { calloc((size_t)frames, sizeof *f.h), 0, 0, 0 };
    if (!c) { fprintf(stderr, "frame_loop: %s\n", err); return 1; }
    double start = now(), last = start;
    for (int i = 0; i < frames; i++) {
        long waited = switches(1), taken = switches(0);
        double t0 = now();
        frame(c, &f, i);
        busy[i] = (now() - t0) * 1e3;
        blocked += switches(1) != waited;
        preempted += switches(0) != taken;
        interval[i] = (t0 - last) * 1e3;
        last = t0;
        stalled += busy[i] > 1e3 / FPS;
        sleep_until(start + (double)(i + 1) / FPS);
    }
    drain(c, &f);
    printf("frames %d, deferred %d, failed %d, still pending %d\n", frames, f.done, f.failed, f.n);
    report("time in tarry per frame", busy, frames);
    report("frame interval", interval + 1, frames - 1);
    printf("frames over the %.1f ms budget: %d\n", 1e3 / FPS, stalled);
    printf("frames in which tarry blocked: %d (preempted by the kernel: %d)\n", blocked, preempted);
    for (int i = 0; i < f.n; i++) tarry_pending_free(f.h[i]);
    tarry_client_close(c);
    free(f.h); free(busy); free(interval);
    return f.done == frames ? 0 : 1;
}
