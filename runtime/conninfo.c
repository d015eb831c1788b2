/* Keeping a conninfo's passwords out of what tarry prints. libpq's messages about a conninfo it
   cannot parse quote parts of it ("invalid percent-encoded token", a whole malformed URI), so
   every message that may come from a connection attempt goes through tarry_pg_redact, with the
   secrets found in the conninfo's text whether or not libpq can parse it. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "tarry_private.h"

#define MAX_SECRETS 16
#define MASK "***"

typedef struct Secrets {
    const char *p[MAX_SECRETS];
    size_t n[MAX_SECRETS];
    int count;
} Secrets;

static void add(Secrets *k, const char *p, size_t n)
{
    if (n > 0 && k->count < MAX_SECRETS) {
        k->p[k->count] = p;
        k->n[k->count++] = n;
    }
}

static void scan(Secrets *k, const char *p, const char *end, int depth);

static int has_prefix(const char *p, const char *end, const char *prefix)
{
    size_t n = strlen(prefix);
    return (size_t)(end - p) >= n && strncmp(p, prefix, n) == 0;
}

static const char *find(const char *p, const char *end, char c)
{
    const char *f = memchr(p, c, (size_t)(end - p));
    return f ? f : end;
}

/* The password of the user info: between the first ':' and the last '@' before the query, and
   each '/'-separated piece of it (a raw '/' in it makes libpq misread the URI and quote a piece). */
static void scan_userinfo(Secrets *k, const char *p, const char *end)
{
    const char *at = NULL, *colon, *q;
    for (q = p; q < end; q++)
        if (*q == '@') at = q;
    if (at == NULL || (colon = find(p, at, ':')) == at)
        return;
    add(k, colon + 1, (size_t)(at - colon - 1));
    if (find(colon + 1, at, '/') == at)
        return;
    for (p = colon + 1; p < at; p = q + 1) {
        q = find(p, at, '/');
        add(k, p, (size_t)(q - p));
    }
}

/* postgresql://[user[:password]@]host.../db?password=...&... */
static void scan_uri(Secrets *k, const char *p, const char *end)
{
    const char *query = find(p, end, '?'), *amp;
    scan_userinfo(k, p, query);
    for (p = query + 1; p < end; p = amp + 1) {
        amp = find(p, end, '&');
        if (has_prefix(p, amp, "password="))
            add(k, p + 9, (size_t)(amp - p - 9));
    }
}

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && isspace((unsigned char)*p))
        p++;
    return p;
}

/* A value of `key = value`: quoted (with backslash escapes) or up to the next space. Sets
   [*v, *vend) to its raw text and returns where the value ends. */
static const char *value_of(const char *p, const char *end, const char **v, const char **vend)
{
    int quoted = p < end && *p == '\'';
    p += quoted;
    *v = p;
    while (p < end && (quoted ? *p != '\'' : !isspace((unsigned char)*p)))
        p += (*p == '\\' && p + 1 < end) ? 2 : 1;
    *vend = p < end ? p : end;
    return p + (quoted && p < end);
}

/* key = value ...: each password, and what a dbname that is itself a conninfo holds. */
static void scan_pairs(Secrets *k, const char *p, const char *end, int depth)
{
    const char *key, *keyend, *v, *vend;
    while ((p = skip_space(p, end)) < end) {
        for (key = p; p < end && *p != '=' && !isspace((unsigned char)*p); p++) {}
        keyend = p;
        p = skip_space(p, end);
        if (p >= end || *p != '=')
            return;                          /* libpq refuses the rest: nothing more to read */
        p = value_of(skip_space(p + 1, end), end, &v, &vend);
        if (keyend - key == 8 && strncmp(key, "password", 8) == 0)
            add(k, v, (size_t)(vend - v));
        else if (keyend - key == 6 && strncmp(key, "dbname", 6) == 0)
            scan(k, v, vend, depth + 1);
    }
}

static void scan(Secrets *k, const char *p, const char *end, int depth)
{
    if (depth > 2)
        return;
    if (has_prefix(p, end, "postgresql://") || has_prefix(p, end, "postgres://"))
        scan_uri(k, find(p, end, '/') + 2, end);
    else if (find(p, end, '=') < end)
        scan_pairs(k, p, end, depth);
}

/* The secret that starts at text, or -1. */
static int match(const Secrets *k, const char *text)
{
    for (int i = 0; i < k->count; i++)
        if (strncmp(text, k->p[i], k->n[i]) == 0)
            return i;
    return -1;
}

static void redact_with(const Secrets *k, const char *text, char *out, size_t outlen)
{
    size_t used = 0;
    int i;
    while (*text && used + 1 < outlen) {
        if ((i = match(k, text)) >= 0) {
            size_t n = strlen(MASK) < outlen - 1 - used ? strlen(MASK) : outlen - 1 - used;
            memcpy(out + used, MASK, n);
            used += n;
            text += k->n[i];
        } else {
            out[used++] = *text++;
        }
    }
    out[used] = 0;
}

void tarry_pg_redact(const char *conninfo, const char *text, char *out, size_t outlen)
{
    Secrets k = {{NULL}, {0}, 0};
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    if (outlen == 0)
        return;
    for (PQconninfoOption *o = opts; o && o->keyword; o++)   /* as libpq decoded it */
        if (strcmp(o->keyword, "password") == 0 && o->val)
            add(&k, o->val, strlen(o->val));
    scan(&k, conninfo, conninfo + strlen(conninfo), 0);
    redact_with(&k, text, out, outlen);
    PQconninfoFree(opts);
}

void tarry_pg_error(PGconn *pg, const char *conninfo, char *out, size_t outlen)
{
    char raw[1024];
    tarry_pg_message(raw, sizeof raw, pg ? PQerrorMessage(pg) : "out of memory");
    tarry_pg_redact(conninfo, raw, out, outlen);
}
