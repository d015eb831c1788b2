/* tarry.HttpServer: an HTTP server (GNU libmicrohttpd) on the runtime's libev loop, no threads.
 *
 *   local srv = core.HttpServer{ host = "127.0.0.1", port = 8470,    -- port 0: any free port
 *     handler = function(req)    -- runs in a new tarry coroutine for each request
 *       -- req.method, req.path, req.query, req.headers (lower-case names), req.body
 *       req:respond(200, { ["Content-Type"] = "text/plain" }, "hi")   --> false if the client left
 *     end }
 *   srv:port()                   --> 8470
 *   srv:close()
 *
 * Internal: reached as tarry.core.HttpServer by tarry/dashboard/ only, and deliberately not in the
 * public tarry table (README, Dashboard: "From Lua"). Mechanism only: routing, auth and every
 * other policy are Lua's (tarry/dashboard/). MHD runs in
 * epoll mode with external polling: its one epoll fd is watched by an ev_io, its timeout by an
 * ev_timer, and each readiness calls MHD_run. A complete request is suspended
 * (MHD_suspend_connection) and handed to the Lua handler in a coroutine of its own (the runtime's
 * scheduler); req:respond resumes it with the response, so a handler can wait on the database
 * without blocking the loop. No coroutine waits for requests, so a server alone does not keep
 * core.run() going: whoever serves keeps a coroutine of its own (waiting for a signal). */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sys/socket.h>
#include <ev.h>
#include <microhttpd.h>

#include "tarry_private.h"

/* libmicrohttpd is opened when the first server starts, not linked: a process that serves nothing
   (a worker without --dashboard, every other command) does not map it, nor the pages it touches
   in its dependencies (about 160 KiB resident). The table is the process's, filled once and only
   read afterwards; nothing of a server's state is in it. */
#define MHD_FUNCTIONS(X) X(start_daemon) X(stop_daemon) X(run) X(get_timeout) X(get_daemon_info) \
    X(get_connection_values) X(create_response_from_buffer) X(destroy_response) X(add_response_header) \
    X(queue_response) X(suspend_connection) X(resume_connection)
#define MHD_POINTER(name) __typeof__(MHD_##name) *name;
static struct { MHD_FUNCTIONS(MHD_POINTER) } mhd;
static char mhd_error[256];
static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;

static void mhd_open(void)
{
    void *lib = dlopen(TARRY_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
    const char *missing = NULL;
    if (!lib) {
        snprintf(mhd_error, sizeof mhd_error, "%s", dlerror());
        return;
    }
#define MHD_LOAD(name) if (!missing && !(*(void **)&mhd.name = dlsym(lib, "MHD_" #name))) missing = "MHD_" #name;
    MHD_FUNCTIONS(MHD_LOAD)
#undef MHD_LOAD
    if (missing) snprintf(mhd_error, sizeof mhd_error, "%s has no %s", TARRY_MHD_SONAME, missing);
}

/* Raises unless libmicrohttpd could be opened. */
static void mhd_need(lua_State *L)
{
    pthread_once(&mhd_once, mhd_open);
    if (mhd_error[0]) {
        tarry_push_error(L, "listen", "the HTTP server needs libmicrohttpd: %s", mhd_error);
        lua_error(L);
    }
}

#define TARRY_HTTP_MT "tarry.HttpServer"
#define TARRY_HTTP_REQ_MT "tarry.HttpRequest"
#define DEFAULT_MAX_BODY (1024 * 1024)

typedef struct http_req http_req;

typedef struct tarry_http {
    struct MHD_Daemon *d;
    struct ev_loop *loop;
    ev_io io;
    ev_timer timer;
    lua_State *T;                /* a thread whose stack holds the handler at 1; spawns from there */
    http_req *live;              /* every request MHD still knows */
    size_t max_body;
    unsigned port;
    char host[64];
} tarry_http;

typedef struct req_ud { http_req *r; } req_ud;

struct http_req {
    tarry_http *srv;
    struct MHD_Connection *conn;
    const char *method, *url;    /* MHD's, valid while the connection lives */
    char *body;
    size_t len, cap;
    int suspended, too_large;
    struct MHD_Response *resp;
    unsigned status;
    req_ud *ud;                  /* the Lua object holding it, or NULL */
    http_req *next_live, *prev_live;
};

/* ---- driving MHD from libev ---- */

static void http_run(tarry_http *s)
{
    MHD_UNSIGNED_LONG_LONG ms;
    mhd.run(s->d);
    tarry_timer_stop(s->loop, &s->timer);
    if (mhd.get_timeout(s->d, &ms) == MHD_YES) {
        ev_timer_set(&s->timer, (double)ms / 1000.0, 0.);
        tarry_timer_start(s->loop, &s->timer);
    }
}

/* Run MHD at the next loop iteration (after a resume: the answer goes out then). */
static void http_kick(tarry_http *s)
{
    tarry_timer_stop(s->loop, &s->timer);
    ev_timer_set(&s->timer, 0., 0.);
    tarry_timer_start(s->loop, &s->timer);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop; (void)revents;
    http_run(w->data);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop; (void)revents;
    http_run(w->data);
}

/* The one function that starts and stops the watchers (through the runtime's helpers, so that a
   host polling the loop, app:pollfd, sees them). */
static void http_watch(tarry_http *s, int fd, int on)
{
    if (on) {
        ev_io_init(&s->io, io_cb, fd, EV_READ);
        s->io.data = s;
        ev_timer_init(&s->timer, timer_cb, 0., 0.);
        s->timer.data = s;
        tarry_io_start(s->loop, &s->io);
    } else {
        tarry_io_stop(s->loop, &s->io);
        tarry_timer_stop(s->loop, &s->timer);
    }
}

/* ---- requests ---- */

static enum MHD_Result header_cb(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    lua_State *L = cls;
    char name[128];
    size_t i;
    (void)kind;
    for (i = 0; key[i] && i < sizeof name - 1; i++) name[i] = (char)tolower((unsigned char)key[i]);
    name[i] = '\0';
    lua_pushstring(L, value ? value : "");
    lua_setfield(L, -2, name);
    return MHD_YES;
}

static enum MHD_Result query_cb(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    lua_State *L = cls;
    (void)kind;
    lua_pushstring(L, value ? value : "");
    lua_setfield(L, -2, key);
    return MHD_YES;
}

/* Push the Lua object of r (a tarry.HttpRequest with its fields).  [-0, +1, m] */
static void push_request(lua_State *L, http_req *r)
{
    req_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->r = r;
    r->ud = u;
    luaL_setmetatable(L, TARRY_HTTP_REQ_MT);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r->url);
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, r->body ? r->body : "", r->len);
    lua_setfield(L, -2, "body");
    lua_newtable(L);
    mhd.get_connection_values(r->conn, MHD_HEADER_KIND, header_cb, L);
    lua_setfield(L, -2, "headers");
    lua_newtable(L);
    mhd.get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, query_cb, L);
    lua_setfield(L, -2, "query");
    lua_setiuservalue(L, -2, 1);
}

/* In a protected call on the server's thread: [handler, r as light userdata] -> a coroutine
   running handler(request).  [-2, +1, m] */
static int spawn_handler(lua_State *T)
{
    http_req *r = lua_touserdata(T, 2);
    lua_pop(T, 1);
    push_request(T, r);
    tarry_rt_spawn(T, 1);
    return 1;
}

/* A complete request: to the Lua handler, in a new coroutine (a 500 if it cannot be made). */
static void hand_over(tarry_http *s, http_req *r)
{
    lua_State *T = s->T;
    lua_pushcfunction(T, spawn_handler);
    lua_pushvalue(T, 1);
    lua_pushlightuserdata(T, r);
    if (lua_pcall(T, 2, 0, 0) == LUA_OK) return;
    lua_pop(T, 1);
    if (r->ud) r->ud->r = NULL;
    r->ud = NULL;
    if ((r->resp = mhd.create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT))) {
        r->status = 500;
        mhd.resume_connection(r->conn);
        http_kick(s);
    }
}

static void free_request(http_req *r)
{
    tarry_http *s = r->srv;
    if (r->prev_live) r->prev_live->next_live = r->next_live; else s->live = r->next_live;
    if (r->next_live) r->next_live->prev_live = r->prev_live;
    if (r->ud) r->ud->r = NULL;
    if (r->resp) mhd.destroy_response(r->resp);
    free(r->body);
    free(r);
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t)
{
    (void)cls; (void)c; (void)t;
    if (*con_cls) free_request(*con_cls);
    *con_cls = NULL;
}

static enum MHD_Result answer_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *resp = mhd.create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret;
    if (!resp) return MHD_NO;
    mhd.add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
    ret = mhd.queue_response(c, status, resp);
    mhd.destroy_response(resp);
    return ret;
}

static void add_body(http_req *r, const char *data, size_t n)
{
    if (r->too_large || r->len + n > r->srv->max_body) { r->too_large = 1; return; }
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        char *b;
        while (cap < r->len + n) cap *= 2;
        if (!(b = realloc(r->body, cap))) { r->too_large = 1; return; }
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
}

static http_req *new_request(tarry_http *s, struct MHD_Connection *c, const char *url, const char *method)
{
    http_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->srv = s;
    r->conn = c;
    r->url = url;
    r->method = method;
    r->next_live = s->live;
    if (s->live) s->live->prev_live = r;
    s->live = r;
    return r;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *data, size_t *size, void **con_cls)
{
    tarry_http *s = cls;
    http_req *r = *con_cls;
    (void)version;
    if (!r) return (*con_cls = new_request(s, c, url, method)) ? MHD_YES : MHD_NO;
    if (*size) { add_body(r, data, *size); *size = 0; return MHD_YES; }
    if (r->resp) {
        enum MHD_Result ret = mhd.queue_response(c, r->status, r->resp);
        mhd.destroy_response(r->resp);
        r->resp = NULL;
        return ret;
    }
    if (r->too_large) return answer_text(c, 413, "request body too large\n");
    if (r->suspended) return answer_text(c, 503, "the server is closing\n");  /* resumed by close() */
    r->suspended = 1;
    mhd.suspend_connection(c);
    hand_over(s, r);
    return MHD_YES;
}

/* req:respond(status, headers, body) -> true, or false when the request is gone (the client
   left, the server closed, or it was answered already).  [-4, +1, e] */
static int req_respond(lua_State *L)
{
    req_ud *u = luaL_checkudata(L, 1, TARRY_HTTP_REQ_MT);
    lua_Integer status = luaL_checkinteger(L, 2);
    size_t len;
    const char *body = luaL_optlstring(L, 4, "", &len);
    http_req *r = u->r;
    struct MHD_Response *resp;
    luaL_argcheck(L, status >= 100 && status <= 599, 2, "an HTTP status from 100 to 599");
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    if (!r || r->resp || !r->suspended) { lua_pushboolean(L, 0); return 1; }
    if (!(resp = mhd.create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY)))
        return luaL_error(L, "out of memory");
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
                mhd.add_response_header(resp, lua_tostring(L, -2), lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    r->resp = resp;
    r->status = (unsigned)status;
    r->ud = NULL;
    u->r = NULL;
    mhd.resume_connection(r->conn);
    http_kick(r->srv);
    lua_pushboolean(L, 1);
    return 1;
}

/* req.method, req.path, req.query, req.headers, req.body; req:respond.  [-2, +1, -] */
static int req_index(lua_State *L)
{
    luaL_checkudata(L, 1, TARRY_HTTP_REQ_MT);
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL) return 1;
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "respond") == 0) {
        lua_pushcfunction(L, req_respond);
        return 1;
    }
    return 1;
}

/* A request Lua dropped without an answer gets a 500, so the client is not left waiting. */
static int req_gc(lua_State *L)
{
    req_ud *u = luaL_checkudata(L, 1, TARRY_HTTP_REQ_MT);
    http_req *r = u->r;
    if (!r) return 0;
    r->resp = mhd.create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    r->status = 500;
    r->ud = NULL;
    u->r = NULL;
    if (r->resp) { mhd.resume_connection(r->conn); http_kick(r->srv); }
    return 0;
}

static int req_tostring(lua_State *L)
{
    req_ud *u = luaL_checkudata(L, 1, TARRY_HTTP_REQ_MT);
    if (u->r) lua_pushfstring(L, "<tarry.HttpRequest %s %s>", u->r->method, u->r->url);
    else lua_pushliteral(L, "<tarry.HttpRequest answered>");
    return 1;
}

/* ---- the server ---- */

static tarry_http *check_http(lua_State *L)
{
    return luaL_checkudata(L, 1, TARRY_HTTP_MT);
}

/* srv:close(): stop listening; requests still waiting for their answer get a 503. Idempotent;
   also __close and __gc.  [-1, +0, -] */
static int http_close(lua_State *L)
{
    tarry_http *s = check_http(L);
    if (!s->d) return 0;
    for (http_req *r = s->live; r; r = r->next_live) {
        if (r->ud) { r->ud->r = NULL; r->ud = NULL; }
        if (r->suspended && !r->resp) mhd.resume_connection(r->conn);
    }
    mhd.run(s->d);
    http_watch(s, -1, 0);
    mhd.stop_daemon(s->d);
    s->d = NULL;
    while (s->live) free_request(s->live);    /* any MHD did not report completed */
    return 0;
}

/* srv:port() -> the port it listens on (the one chosen, for port 0).  [-1, +1, -] */
static int http_port(lua_State *L)
{
    lua_pushinteger(L, check_http(L)->port);
    return 1;
}

static int http_tostring(lua_State *L)
{
    tarry_http *s = check_http(L);
    lua_pushfstring(L, "<tarry.HttpServer %s:%d %s>", s->host, (int)s->port, s->d ? "listening" : "closed");
    return 1;
}

static int resolve(const char *host, unsigned port, struct sockaddr_storage *out, socklen_t *outlen)
{
    struct addrinfo hints, *res;
    char service[16];
    int rc;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(service, sizeof service, "%u", port);
    if ((rc = getaddrinfo(host, service, &hints, &res)) != 0) return rc;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void start_daemon(lua_State *L, tarry_http *s, struct sockaddr_storage *sa)
{
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | (sa->ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    const union MHD_DaemonInfo *info;
    mhd_need(L);
    errno = 0;
    s->d = mhd.start_daemon(flags, 0, NULL, NULL, access_cb, s,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)sa,
                            MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
                            MHD_OPTION_END);
    if (!s->d) {
        tarry_push_error(L, "listen", "cannot listen on %s:%d: %s", s->host, (int)s->port,
                         errno ? strerror(errno) : "libmicrohttpd refused to start");
        lua_error(L);
    }
    if ((info = mhd.get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT))) s->port = info->port;
    info = mhd.get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    http_watch(s, info->epoll_fd, 1);
    http_run(s);
}

/* core.HttpServer{ host = "127.0.0.1", port = 8470, max_body = 1 MiB, handler = fn } -> a
   listening server; handler(request) runs in a new tarry coroutine per request;
   raises an error object (code "listen") when it cannot bind.  [-1, +1, e] */
static int http_new(lua_State *L)
{
    static const char *const allowed[] = { "host", "port", "max_body", "handler", NULL };
    struct sockaddr_storage sa;
    socklen_t salen;
    tarry_http *s;
    const char *host;
    lua_Integer port, max_body;
    int rc;
    luaL_checktype(L, 1, LUA_TTABLE);
    tarry_opt_check(L, 1, "HttpServer", allowed);
    lua_getfield(L, 1, "host");
    host = luaL_optstring(L, -1, "127.0.0.1");
    lua_getfield(L, 1, "port");
    port = luaL_optinteger(L, -1, 8470);
    luaL_argcheck(L, port >= 0 && port <= 65535, 1, "port must be from 0 to 65535");
    luaL_argcheck(L, strlen(host) < 64, 1, "host is too long");
    lua_getfield(L, 1, "max_body");
    max_body = luaL_optinteger(L, -1, DEFAULT_MAX_BODY);
    luaL_argcheck(L, max_body >= 0, 1, "max_body must be a number of bytes >= 0");
    lua_getfield(L, 1, "handler");
    luaL_argcheck(L, lua_isfunction(L, -1), 1, "handler must be a function(request)");
    s = lua_newuserdatauv(L, sizeof *s, 2);
    memset(s, 0, sizeof *s);
    s->loop = tarry_rt_loop(tarry_rt_get(L));
    s->port = (unsigned)port;
    s->max_body = (size_t)max_body;
    strcpy(s->host, host);
    luaL_setmetatable(L, TARRY_HTTP_MT);
    tarry_rt_push_anchor(L);
    lua_setiuservalue(L, -2, 1);
    s->T = lua_newthread(L);
    lua_pushvalue(L, -3);            /* the handler, at 1 on the thread's stack */
    lua_xmove(L, s->T, 1);
    lua_setiuservalue(L, -2, 2);
    if ((rc = resolve(host, s->port, &sa, &salen)) != 0) {
        tarry_push_error(L, "listen", "cannot listen on %s:%d: %s", host, (int)port, gai_strerror(rc));
        return lua_error(L);
    }
    start_daemon(L, s, &sa);
    return 1;
}

void tarry_http_open(lua_State *L)
{
    static const luaL_Reg methods[] = { { "close", http_close },
        { "port", http_port }, { NULL, NULL } };
    luaL_newmetatable(L, TARRY_HTTP_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, http_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, http_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, http_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_newmetatable(L, TARRY_HTTP_REQ_MT);
    lua_pushcfunction(L, req_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, req_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, req_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, http_new);
    lua_setfield(L, -2, "HttpServer");
}
