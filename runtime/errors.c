/* Error objects: what a failed defer (or query) raises. A table with a stable `code`, a
 * `message`, and from PostgreSQL the `sqlstate`, `constraint` and `detail`; it prints well. */
#include <stdarg.h>
#include <string.h>

#include "tarry_private.h"

void tarry_push_error(lua_State *L, const char *code, const char *fmt, ...)
{
    va_list ap;
    lua_createtable(L, 0, 5);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, TARRY_ERROR_MT);
}

/* Push s without the trailing newline libpq puts on its messages.  [-0, +1, m] */
static void push_trimmed(lua_State *L, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ')) n--;
    lua_pushlstring(L, s ? s : "", n);
}

static void set_field(lua_State *L, const char *name, const char *value)
{
    if (!value) return;
    push_trimmed(L, value);
    lua_setfield(L, -2, name);
}

void tarry_push_pg_error(lua_State *L, PGconn *conn, const PGresult *res)
{
    const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *code = tarry_pg_error_code(sqlstate, constraint, conn);
    lua_createtable(L, 0, 6);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    if (strcmp(code, "already_enqueued") == 0) {
        const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        lua_pushfstring(L, "a job with the same queueing lock is already waiting (%s)",
                        detail ? detail : constraint);
        lua_setfield(L, -2, "message");
    } else if (primary) {
        set_field(L, "message", primary);
    } else {
        set_field(L, "message", conn ? PQerrorMessage(conn) : "cannot reach the database");
    }
    set_field(L, "sqlstate", sqlstate);
    set_field(L, "constraint", constraint);
    if (res) set_field(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
    luaL_setmetatable(L, TARRY_ERROR_MT);
}

/* tostring(err): "tarry: <code>: <message> (SQLSTATE xxxxx)".  [-0, +1, m] */
static int error_tostring(lua_State *L)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "tarry: ");
    lua_getfield(L, 1, "code");
    luaL_addvalue(&b);
    luaL_addstring(&b, ": ");
    lua_getfield(L, 1, "message");
    luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
    luaL_addvalue(&b);
    if (lua_getfield(L, 1, "sqlstate") == LUA_TSTRING) {
        luaL_addstring(&b, " (SQLSTATE ");
        luaL_addvalue(&b);
        luaL_addchar(&b, ')');
    } else {
        lua_pop(L, 1);
    }
    luaL_pushresult(&b);
    return 1;
}

/* core.error(code, message) -> a new error object (for connectors written in Lua).  [-2, +1, m] */
static int l_error(lua_State *L)
{
    const char *code = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    tarry_push_error(L, code, "%s", msg);
    return 1;
}

/* core.is_error(v) -> true if v is a tarry error object.  [-1, +1, -] */
static int l_is_error(lua_State *L)
{
    int r = 0;
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, TARRY_ERROR_MT);
        r = lua_rawequal(L, -1, -2);
    }
    lua_pushboolean(L, r);
    return 1;
}

void tarry_errors_open(lua_State *L)
{
    luaL_newmetatable(L, TARRY_ERROR_MT);
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_error);
    lua_setfield(L, -2, "error");
    lua_pushcfunction(L, l_is_error);
    lua_setfield(L, -2, "is_error");
}
