/* libpq helpers shared by the blocking and the async connectors. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#include "tarry_private.h"

/* Push one field converted by its type: bool, integers, floats, json/jsonb, else text. A json
   value Lua cannot hold (an integer beyond 64 bits, ...) becomes an undecodable_json error object
   naming the place ("args.n: integer does not fit in 64 bits"): one such row fails neither the
   whole result nor, in the worker, the other jobs of its fetch. */
static void push_value(lua_State *L, const PGresult *res, int row, int col)
{
    const char *v = PQgetvalue(res, row, col);
    int len = PQgetlength(res, row, col);
    char err[512];
    switch (PQftype(res, col)) {
    case 16: lua_pushboolean(L, v[0] == 't'); break;                       /* bool */
    case 20: case 21: case 23: case 26:                                    /* int8/2/4, oid */
        lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10)); break;
    case 700: case 701: lua_pushnumber(L, strtod(v, NULL)); break;         /* float4/8 */
    case 114: case 3802:                                                   /* json, jsonb */
        if (!tarry_json_decode_as(L, v, (size_t)len, PQfname(res, col), err, sizeof err))
            tarry_push_error(L, "undecodable_json", "%s", err);
        break;
    default: lua_pushlstring(L, v, (size_t)len);
    }
}

/* The rows as tables keyed by column name (the names made into Lua strings once per result,
   above the list while it is filled). */
static void push_rows(lua_State *L, const PGresult *res)
{
    int nrows = PQntuples(res), ncols = PQnfields(res), list;
    luaL_checkstack(L, ncols + 4, "too many columns");
    lua_createtable(L, nrows, 0);
    list = lua_gettop(L);
    for (int c = 0; c < ncols; c++) lua_pushstring(L, PQfname(res, c));
    for (int r = 0; r < nrows; r++) {
        lua_createtable(L, 0, ncols);
        for (int c = 0; c < ncols; c++) {
            if (PQgetisnull(res, r, c)) continue;
            lua_pushvalue(L, list + 1 + c);
            push_value(L, res, r, c);
            lua_rawset(L, -3);
        }
        lua_rawseti(L, list, r + 1);
    }
    lua_settop(L, list);
}

static void push_ids(lua_State *L, const PGresult *res)
{
    int nrows = PQntuples(res), n = 0;
    lua_createtable(L, nrows, 0);
    for (int r = 0; r < nrows; r++) {
        if (PQgetisnull(res, r, 0)) continue;
        lua_pushinteger(L, (lua_Integer)strtoll(PQgetvalue(res, r, 0), NULL, 10));
        lua_rawseti(L, -2, ++n);
    }
}

void tarry_pg_push_result(lua_State *L, const PGresult *res, tarry_result_kind kind)
{
    if (kind == TARRY_RESULT_IDS) push_ids(L, res);
    else push_rows(L, res);
}

int tarry_pg_send(PGconn *conn, const tarry_query *q, const char *name)
{
    if (name) return PQsendQueryPrepared(conn, name, q->nparams, q->params, NULL, NULL, 0);
    return q->nparams > 0
        ? PQsendQueryParams(conn, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0)
        : PQsendQuery(conn, q->sql);
}

/* ---- prepared statements ----
 * A hot statement (q->prepare) is prepared once per connection, named after a hash of its
 * text, and then sent by name: PostgreSQL parses and plans it once per connection (a generic
 * plan once it pays off) instead of once per call. Off (prep NULL): unnamed statements only,
 * as a transaction-pooling PgBouncer needs. */

static unsigned long long sql_hash(const char *sql)
{
    unsigned long long h = 14695981039346656037ULL;            /* FNV-1a, 64 bits */
    for (const unsigned char *p = (const unsigned char *)sql; *p; p++) h = (h ^ *p) * 1099511628211ULL;
    return h;
}

int tarry_pg_plan(const tarry_prepared *prep, const tarry_query *q, char name[TARRY_STMT_NAME])
{
    unsigned long long h;
    if (!prep || !q->prepare || q->nparams == 0) return TARRY_SEND_PLAIN;
    h = sql_hash(q->sql);
    snprintf(name, TARRY_STMT_NAME, "tarry_%016llx", h);
    for (int i = 0; i < prep->n; i++)
        if (prep->hash[i] == h) return TARRY_SEND_PREPARED;
    return prep->n < TARRY_MAX_PREPARED ? TARRY_SEND_PREPARE : TARRY_SEND_PLAIN;
}

void tarry_pg_prepared_add(tarry_prepared *prep, const char *name)
{
    if (prep->n < TARRY_MAX_PREPARED) prep->hash[prep->n++] = strtoull(name + 6, NULL, 16);
}

int tarry_pg_send_prepare(PGconn *conn, const char *name, const tarry_query *q)
{
    return PQsendPrepare(conn, name, q->sql, q->nparams, NULL);
}

/* Wait for the socket (POLLIN or POLLOUT) until the deadline (0: none): 1 ready, 0 late. */
static int wait_socket(PGconn *conn, short events, double deadline)
{
    struct pollfd pfd = { PQsocket(conn), events, 0 };
    for (;;) {
        double left = deadline > 0 ? deadline - tarry_monotonic() : -1;
        int ms = left < 0 ? -1 : (int)ceil(left * 1000);
        int r;
        if (deadline > 0 && left <= 0) return 0;
        r = poll(&pfd, 1, ms);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return 1;        /* let libpq report what is wrong with the socket */
    }
}

/* Collect the result of what was just sent, until deadline (0: none; timeout: its seconds, for
   the message). Returns the result (the first error, else the last one), or NULL with the reason
   in err. A connection left with a query in flight (late, broken) is no longer idle: its owner
   must drop it. */
static PGresult *collect(PGconn *conn, double deadline, double timeout, char *err, size_t errlen)
{
    PGresult *kept = NULL, *res;
    int f;
    while ((f = PQflush(conn)) > 0)
        if (!wait_socket(conn, POLLIN | POLLOUT, deadline)) goto late;
    if (f < 0) { tarry_pg_message(err, errlen, PQerrorMessage(conn)); return NULL; }
    for (int alive = 1;;) {
        while (!PQisBusy(conn)) {          /* also what arrived before the connection broke */
            if (!(res = PQgetResult(conn))) return kept;
            tarry_pg_keep_result(&kept, res);
        }
        if (!alive) break;
        if (!wait_socket(conn, POLLIN, deadline)) goto late;
        alive = PQconsumeInput(conn);
    }
    PQclear(kept);
    tarry_pg_message(err, errlen, PQerrorMessage(conn));
    return NULL;
late:
    PQclear(kept);
    snprintf(err, errlen, TARRY_LATE_MESSAGE, timeout);
    return NULL;
}

static PGresult *send_failed(PGconn *conn, char *err, size_t errlen)
{
    tarry_pg_message(err, errlen, PQerrorMessage(conn));
    return NULL;
}

/* Send q (preparing it first when it is hot and new on conn) and collect its result, waiting at
   most `timeout` seconds in all (0: no limit); as collect() returns. */
static PGresult *exec_deadline(PGconn *conn, const tarry_query *q, double timeout, tarry_prepared *prep,
                               char *err, size_t errlen)
{
    double deadline = timeout > 0 ? tarry_monotonic() + timeout : 0;
    char name[TARRY_STMT_NAME];
    int plan = tarry_pg_plan(prep, q, name);
    if (plan == TARRY_SEND_PREPARE) {
        PGresult *res;
        if (!tarry_pg_send_prepare(conn, name, q)) return send_failed(conn, err, errlen);
        res = collect(conn, deadline, timeout, err, errlen);
        if (!res || !tarry_pg_result_ok(res)) return res;
        PQclear(res);
        tarry_pg_prepared_add(prep, name);
    }
    if (!tarry_pg_send(conn, q, plan == TARRY_SEND_PLAIN ? NULL : name)) return send_failed(conn, err, errlen);
    return collect(conn, deadline, timeout, err, errlen);
}

int tarry_pg_exec(lua_State *L, PGconn *conn, const tarry_query *q, double timeout, tarry_prepared *prep)
{
    char err[512];
    PGresult *res = exec_deadline(conn, q, timeout, prep, err, sizeof err);
    int ok = res && tarry_pg_result_ok(res);
    if (!res) tarry_push_error(L, "connection", "%s", err);
    else if (ok) tarry_pg_push_result(L, res, q->kind);
    else tarry_push_pg_error(L, conn, res);
    PQclear(res);
    return ok;
}

/* A Lua value as a query parameter's text; pushes the string it points into. */
static const char *param_text(lua_State *L, int i)
{
    char err[256];
    switch (lua_type(L, i)) {
    case LUA_TNIL: case LUA_TLIGHTUSERDATA: lua_pushnil(L); return NULL;    /* nil / tarry.null */
    case LUA_TBOOLEAN: lua_pushstring(L, lua_toboolean(L, i) ? "true" : "false"); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, i)) lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, i));
        else { char buf[64]; snprintf(buf, sizeof buf, "%.17g", lua_tonumber(L, i)); lua_pushstring(L, buf); }
        break;
    case LUA_TSTRING: lua_pushvalue(L, i); break;
    case LUA_TTABLE: {
        size_t len;
        char *text = tarry_json_encode(L, i, "parameter", 0, &len, err, sizeof err);
        if (!text) luaL_error(L, "query parameter %d: %s", i, err);
        lua_pushlstring(L, text, len);
        free(text);
        break;
    }
    default: luaL_error(L, "query parameter %d: cannot send a %s", i, luaL_typename(L, i));
    }
    return lua_tostring(L, -1);
}

int tarry_pg_params(lua_State *L, int first, int last, const char **params)
{
    int n = last - first + 1;
    if (n > TARRY_MAX_PARAMS) luaL_error(L, "too many query parameters (at most %d)", TARRY_MAX_PARAMS);
    luaL_checkstack(L, n, "too many query parameters");
    for (int i = 0; i < n; i++) params[i] = param_text(L, first + i);
    return n < 0 ? 0 : n;
}

static void redact_in_place(const char *conninfo, char *text, size_t len)
{
    char copy[512];
    snprintf(copy, sizeof copy, "%s", text);
    tarry_pg_redact(conninfo, copy, text, len);
}

/* A printable description of a conninfo without secrets: "dbname=x host=y" ("(libpq defaults)"). */
void tarry_pg_describe(const char *conninfo, char *out, size_t outlen)
{
    static const char *const shown[] = { "dbname", "host", "port", "user", NULL };
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    size_t used = 0;
    out[0] = 0;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        for (int i = 0; shown[i]; i++) {
            if (strcmp(o->keyword, shown[i]) != 0 || !o->val || !*o->val) continue;
            int n = snprintf(out + used, outlen - used, "%s%s=%s", used ? " " : "", o->keyword, o->val);
            if (n > 0 && (size_t)n < outlen - used) used += (size_t)n;
        }
    }
    PQconninfoFree(opts);
    if (!used) snprintf(out, outlen, "(libpq defaults)");
    else redact_in_place(conninfo, out, outlen);   /* a dbname may be a conninfo with a password */
}

double tarry_query_timeout_default(void)
{
    const char *v = getenv("TARRY_QUERY_TIMEOUT");
    char *end;
    double s;
    if (!v || !*v) return 30.0;
    s = strtod(v, &end);
    return *end == 0 && s >= 0 && s <= TARRY_QUERY_TIMEOUT_MAX ? s : NAN;
}

/* core.set_default_query_timeout(seconds): the default of every connector made from now on that
   does not set query_timeout, this process's threads included (the command line calls it before
   it loads --app, so before any thread starts). The environment is the one place a thread's own
   Lua state reads it from, as TARRY_PREPARED_STATEMENTS.  [-1, +0, v] */
int tarry_set_default_query_timeout(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    char buf[32];
    luaL_argcheck(L, s >= 0 && s <= TARRY_QUERY_TIMEOUT_MAX, 1, "seconds from 0 to 1000000 expected");
    snprintf(buf, sizeof buf, "%.17g", s);
    if (setenv("TARRY_QUERY_TIMEOUT", buf, 1) != 0) return luaL_error(L, "setenv: %s", strerror(errno));
    return 0;
}

int tarry_prepared_default(void)
{
    const char *v = getenv("TARRY_PREPARED_STATEMENTS");
    return !(v && (strcmp(v, "0") == 0 || strcmp(v, "false") == 0 || strcmp(v, "off") == 0));
}

int tarry_opt_bool(lua_State *L, int t, const char *name, int def)
{
    int v = def, type = lua_getfield(L, t, name);
    if (type != LUA_TNIL) {
        if (type != LUA_TBOOLEAN) luaL_error(L, "option '%s' must be true or false", name);
        v = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

int tarry_opt_int(lua_State *L, int t, const char *name, int def, int min)
{
    int v = def;
    if (lua_getfield(L, t, name) != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < min || lua_tointeger(L, -1) > 10000)
            luaL_error(L, "option '%s' must be an integer from %d to 10000", name, min);
        v = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

double tarry_opt_seconds(lua_State *L, int t, const char *name, double def)
{
    double v = def;
    if (lua_getfield(L, t, name) != LUA_TNIL) {
        if (!lua_isnumber(L, -1) || !(lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) <= 1e6))
            luaL_error(L, "option '%s' must be a number of seconds from 0 to 1000000", name);
        v = lua_tonumber(L, -1);
    } else if (isnan(def)) {              /* a default from the environment that is malformed */
        luaL_error(L, "option '%s': TARRY_QUERY_TIMEOUT in the environment must be a number of seconds "
                      "from 0 to 1000000, got '%s'", name, getenv("TARRY_QUERY_TIMEOUT"));
    }
    lua_pop(L, 1);
    return v;
}

static int allowed_key(lua_State *L, int idx, const char *const allowed[])
{
    for (int i = 0; allowed[i]; i++)
        if (lua_type(L, idx) == LUA_TSTRING && strcmp(lua_tostring(L, idx), allowed[i]) == 0) return 1;
    return 0;
}

/* Misuse: a key of the options table at t that is not in allowed (NULL-terminated) is refused,
   blamed on the caller: "file:line: tarry.PgConnector: unknown option 'connifo' (known: ...)". */
void tarry_opt_check(lua_State *L, int t, const char *type, const char *const allowed[])
{
    luaL_Buffer b;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (allowed_key(L, -1, allowed)) continue;
        const char *key = luaL_tolstring(L, -1, NULL);
        luaL_buffinit(L, &b);
        luaL_where(L, 1);
        luaL_addvalue(&b);
        lua_pushfstring(L, "%s: unknown option '%s' (known: ", type, key);
        luaL_addvalue(&b);
        for (int i = 0; allowed[i]; i++) {
            if (i) luaL_addstring(&b, ", ");
            luaL_addstring(&b, allowed[i]);
        }
        luaL_addchar(&b, ')');
        luaL_pushresult(&b);
        lua_error(L);
    }
}

const char *tarry_opt_conninfo(lua_State *L, int t)
{
    const char *conninfo = "";
    if (lua_getfield(L, t, "conninfo") != LUA_TNIL) conninfo = luaL_checkstring(L, -1);
    lua_pop(L, 1);   /* the string stays alive in the options table */
    return conninfo;
}
