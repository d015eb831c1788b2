/* tcp_proxy: a TCP forwarder that the fault-injection specs put between a tarry worker and
 * PostgreSQL (test support only: built into build/bin, never installed).
 *
 *   tcp_proxy [--withhold-server-fin] TARGET_PORT [TARGET_ADDR]   (numeric IPv4, default 127.0.0.1)
 *
 * It listens on 127.0.0.1 only, on a port the kernel picks, prints "listening 127.0.0.1:PORT", and
 * forwards every connection it accepts to TARGET_ADDR:TARGET_PORT: one poll() loop, no threads.
 * Signals switch its mode (read through a signalfd, so the loop sees them in order); each switch
 * is acknowledged by a line on stdout once it is in effect:
 *
 *   SIGUSR1  hold ("mode hold"): nothing is written to either side any more, and every socket stays
 *            open (no FIN, no RST). The proxy still reads into its per-connection buffers (64 KiB
 *            each way) until they fill, so it knows who tried to talk: the first bytes held from a
 *            side of connection N during a hold print "held N client" or "held N server" (a reply
 *            to a query already delivered). New connections are accepted and connected upstream, and
 *            forward nothing either. To both peers this is a network gone silent; the kernel still
 *            ACKs, so TCP keepalives do not see it and only an application deadline does. A
 *            connection whose peer closes or fails during the hold is reset on both sides and what
 *            it held is dropped ("drop N"): a query the client gave up on is never delivered late.
 *   SIGUSR2  forward ("mode forward", the initial mode): what was held is delivered, in order.
 *   SIGHUP   cut ("cut K"): reset every open connection (RST both ways), keep listening.
 *   SIGTERM, SIGINT  close everything and exit 0.
 *
 * --withhold-server-fin: when the server closes connection N, what it sent before is delivered
 * but its FIN is not passed on ("withheld N"): to the client, a session whose last words (a
 * FATAL, say) have arrived while its end has not, as while a terminated backend is still exiting.
 * The connection is reset once the client writes to it or closes it.
 *
 * Other lines: "accept N" (connection N opened), "close N" (closed by its peers, both ways).
 * Connections are numbered from 1 in the order they were accepted.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 512
#define BUF_SIZE 65536

/* Bytes read from one side, not yet written to the other. */
typedef struct {
    char data[BUF_SIZE];
    size_t start, end;
    bool eof;      /* the reading side sent FIN */
    bool shut;     /* ... and we passed it on (shutdown(SHUT_WR) of the writing side) */
} buffer;

/* side 0 is the client, side 1 the server; buf[i] holds what side i sent. */
typedef struct {
    int fd[2];
    int id;
    bool connecting;   /* the upstream connect() is in progress */
    bool held[2];      /* "held N client|server" already printed during this hold */
    buffer buf[2];
} conn;

typedef struct {
    int listen_fd, signal_fd;
    struct sockaddr_in target;
    bool hold, quit, withhold_server_fin;
    int next_id, count;
    conn *conns[MAX_CONNS];
    struct pollfd fds[2 + 2 * MAX_CONNS];
} proxy;

static int nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Close with SO_LINGER 0: the peer gets an RST, not a FIN. */
static void reset_fd(int fd)
{
    struct linger lg = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void conn_free(proxy *p, int k, bool reset, const char *what)
{
    conn *c = p->conns[k];
    for (int i = 0; i < 2; i++) {
        if (reset) reset_fd(c->fd[i]);
        else close(c->fd[i]);
    }
    if (what) printf("%s %d\n", what, c->id);
    free(c);
    p->conns[k] = p->conns[--p->count];
}

static int upstream(proxy *p, bool *connecting)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (nonblocking(fd) < 0) { close(fd); return -1; }
    *connecting = false;
    if (connect(fd, (struct sockaddr *)&p->target, sizeof p->target) == 0) return fd;
    if (errno == EINPROGRESS) { *connecting = true; return fd; }
    close(fd);
    return -1;
}

static void accept_one(proxy *p)
{
    int cfd = accept(p->listen_fd, NULL, NULL);
    if (cfd < 0) return;
    conn *c = p->count < MAX_CONNS ? calloc(1, sizeof *c) : NULL;
    if (!c || nonblocking(cfd) < 0 || (c->fd[1] = upstream(p, &c->connecting)) < 0) {
        free(c);
        reset_fd(cfd);
        return;
    }
    c->fd[0] = cfd;
    c->id = ++p->next_id;
    p->conns[p->count++] = c;
    printf("accept %d\n", c->id);
}

/* Read what side i sent into its buffer. false: the connection failed. */
static bool pull(proxy *p, conn *c, int i)
{
    buffer *b = &c->buf[i];
    ssize_t n = read(c->fd[i], b->data + b->end, BUF_SIZE - b->end);
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    if (n == 0) { b->eof = true; return !p->hold; }
    if (p->hold && !c->held[i]) {
        c->held[i] = true;
        printf("held %d %s\n", c->id, i == 0 ? "client" : "server");
    }
    b->end += (size_t)n;
    return true;
}

/* Write what side i sent to the other side; pass its FIN on once everything went (but the
   server's, with --withhold-server-fin). */
static bool push(proxy *p, conn *c, int i)
{
    buffer *b = &c->buf[i];
    if (b->end > b->start) {
        ssize_t n = write(c->fd[1 - i], b->data + b->start, b->end - b->start);
        if (n < 0) return errno == EAGAIN || errno == EINTR;
        b->start += (size_t)n;
        if (b->start == b->end) b->start = b->end = 0;
    }
    if (b->eof && !b->shut && b->end == b->start) {
        if (i == 1 && p->withhold_server_fin) printf("withheld %d\n", c->id);
        else shutdown(c->fd[1 - i], SHUT_WR);
        b->shut = true;
    }
    return true;
}

static bool connected(conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) return false;
    c->connecting = false;
    return true;
}

static bool can_read(const conn *c, int i)
{
    return !c->buf[i].eof && c->buf[i].end < BUF_SIZE;
}

static short events_of(const proxy *p, const conn *c, int i)
{
    short ev = 0;
    if (c->connecting) return i == 1 ? POLLOUT : 0;
    if (can_read(c, i)) ev |= POLLIN;
    if (!p->hold && c->buf[1 - i].end > c->buf[1 - i].start) ev |= POLLOUT;
    return ev;
}

/* One connection after poll(): false when it failed (or its peer hung up during a hold). */
static bool serve(proxy *p, conn *c, const struct pollfd *pf)
{
    if (c->connecting) {
        if (pf[1].revents && !connected(c)) return false;
        if (c->connecting) return true;
    }
    for (int i = 0; i < 2; i++) {
        short re = pf[i].revents;
        if (re & (POLLERR | POLLNVAL)) return false;
        if (!(re & (POLLIN | POLLHUP))) continue;
        if (can_read(c, i)) {
            if (!pull(p, c, i)) return false;
        } else if (re & POLLHUP) {
            return false;            /* gone both ways: nothing more comes from it or gets to it */
        }
    }
    if (!p->hold)
        for (int i = 0; i < 2; i++)
            if (!push(p, c, i)) return false;
    return true;
}

static bool finished(const proxy *p, const conn *c)
{
    return c->buf[0].shut && c->buf[1].shut && !p->withhold_server_fin;
}

static void cut_all(proxy *p)
{
    int n = p->count;
    while (p->count > 0) conn_free(p, p->count - 1, true, NULL);
    printf("cut %d\n", n);
}

static void on_signal(proxy *p)
{
    struct signalfd_siginfo si;
    while (read(p->signal_fd, &si, sizeof si) == (ssize_t)sizeof si) {
        switch (si.ssi_signo) {
        case SIGUSR1: p->hold = true; printf("mode hold\n"); break;
        case SIGUSR2:
            p->hold = false;
            for (int k = 0; k < p->count; k++) p->conns[k]->held[0] = p->conns[k]->held[1] = false;
            printf("mode forward\n");
            break;
        case SIGHUP: cut_all(p); break;
        default: p->quit = true; break;
        }
    }
}

static int poll_once(proxy *p)
{
    int n = 0;
    p->fds[n++] = (struct pollfd){ .fd = p->signal_fd, .events = POLLIN };
    p->fds[n++] = (struct pollfd){ .fd = p->listen_fd, .events = POLLIN };
    for (int k = 0; k < p->count; k++)
        for (int i = 0; i < 2; i++)
            p->fds[n++] = (struct pollfd){ .fd = p->conns[k]->fd[i], .events = events_of(p, p->conns[k], i) };
    if (poll(p->fds, (nfds_t)n, -1) < 0) return errno == EINTR ? 0 : -1;
    /* Connections first, in poll's order: accept and signals may reorder the array. */
    for (int k = p->count - 1; k >= 0; k--) {
        conn *c = p->conns[k];
        if (!serve(p, c, &p->fds[2 + 2 * k])) conn_free(p, k, true, p->hold ? "drop" : "close");
        else if (finished(p, c)) conn_free(p, k, false, "close");
    }
    if (p->fds[1].revents & POLLIN) accept_one(p);
    if (p->fds[0].revents & POLLIN) on_signal(p);
    return 0;
}

static int listen_local(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0 ||
        nonblocking(fd) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        perror("tcp_proxy: listen");
        if (fd >= 0) close(fd);
        return -1;
    }
    printf("listening 127.0.0.1:%d\n", ntohs(a.sin_port));
    return fd;
}

static int signals_fd(void)
{
    sigset_t set;
    sigemptyset(&set);
    int sigs[] = { SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&set, sigs[i]);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) return -1;
    signal(SIGPIPE, SIG_IGN);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

static bool parse_target(proxy *p, int argc, char **argv)
{
    char *end;
    if (argc > 1 && strcmp(argv[1], "--withhold-server-fin") == 0) {
        p->withhold_server_fin = true;
        argc--;
        argv++;
    }
    long port = argc > 1 ? strtol(argv[1], &end, 10) : 0;
    if (argc < 2 || argc > 3 || *end || port < 1 || port > 65535) return false;
    p->target.sin_family = AF_INET;
    p->target.sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, argc > 2 ? argv[2] : "127.0.0.1", &p->target.sin_addr) == 1;
}

int main(int argc, char **argv)
{
    proxy *p = calloc(1, sizeof *p);
    int status = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!p) return 1;
    if (!parse_target(p, argc, argv)) {
        fprintf(stderr, "usage: tcp_proxy [--withhold-server-fin] TARGET_PORT [TARGET_IPV4]\n");
        free(p);
        return 2;
    }
    p->signal_fd = signals_fd();
    p->listen_fd = p->signal_fd < 0 ? -1 : listen_local();
    if (p->listen_fd >= 0) {
        status = 0;
        while (!p->quit && status == 0) status = poll_once(p);
        if (status) perror("tcp_proxy: poll");
        while (p->count > 0) conn_free(p, p->count - 1, false, NULL);
        close(p->listen_fd);
    }
    if (p->signal_fd >= 0) close(p->signal_fd);
    free(p);
    return status ? 1 : 0;
}
