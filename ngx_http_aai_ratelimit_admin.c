
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_http_aai_ratelimit_module: "aai_ratelimit_admin", a location that
 * shows (GET) or resets (DELETE) a key of a zone, in JSON:
 *
 *     GET /ratelimit-admin?zone=chat&key=alice
 *     {"zone":"chat","key":"alice","count":12,"remaining":38,"reset":41,
 *      "in_flight":0,"policy":"\"chat\";q=50;w=60","limit":50,"window":60,
 *      "algorithm":"sliding"}
 *
 * One Redis command (EVAL of a short read-only script, or DEL), sent from
 * the content handler; the response is sent from its reply handler, within
 * the Redis timeout.  "reset": seconds until the quota is fully back.
 */


#include "ngx_http_aai_ratelimit.h"


typedef struct {
    ngx_http_request_t                *request;
    ngx_aai_redis_cmd_t               *cmd;
    ngx_http_aai_ratelimit_zone_t     *zone;
    ngx_str_t                          key;       /* as given */
    ngx_str_t                          rkey;      /* in Redis */
    ngx_uint_t                         delete;
} ngx_http_aai_ratelimit_admin_ctx_t;


static ngx_int_t ngx_http_aai_ratelimit_admin_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_aai_ratelimit_admin_key(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key, ngx_str_t *out);
static void ngx_http_aai_ratelimit_admin_reply(ngx_aai_redis_result_t *res,
    void *data);
static void ngx_http_aai_ratelimit_admin_cleanup(void *data);
static ngx_int_t ngx_http_aai_ratelimit_admin_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *error, ngx_str_t *arg);
static ngx_int_t ngx_http_aai_ratelimit_admin_send(ngx_http_request_t *r,
    ngx_uint_t status, u_char *body, size_t len);


/*
 * Reads a key: returns the units counted in the window now, the seconds until
 * the quota is fully back, and the leases held (concurrency= zones).
 * ARGV: algorithm, limit, window (us).
 */

static const char  ngx_http_aai_ratelimit_admin_script[] =
    "local t = redis.call('TIME')\n"
    "local now = t[1] * 1000000 + t[2]\n"
    "local k, alg = KEYS[1], tonumber(ARGV[1])\n"
    "local lim, win = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local ty = redis.call('TYPE', k)['ok']\n"
    "local used, reset, flight = 0, 0, 0\n"
    "if alg == 0 and ty == 'list' then\n"
    "  local h = redis.call('LRANGE', k, 0, -1)\n"
    "  for i = 1, #h do\n"
    "    local v = tonumber(h[i]) or 0\n"
    "    if v > now - win then\n"
    "      used = used + 1\n"
    "      if v + win - now > reset then reset = v + win - now end\n"
    "    end\n"
    "  end\n"
    "elseif alg == 1 and ty == 'string' then\n"
    "  local tat = tonumber(redis.call('GET', k)) or 0\n"
    "  if tat > now then\n"
    "    used, reset = math.ceil((tat - now) * lim / win), tat - now\n"
    "  end\n"
    "elseif alg == 2 and ty == 'string' then\n"
    "  local f = redis.call('BITFIELD', k, 'GET', 'i64', 0, 'GET', 'i64', 64,\n"
    "                       'GET', 'i64', 128)\n"
    "  local s, c, p = f[1], f[2], f[3]\n"
    "  local cws = math.floor(now / win) * win\n"
    "  if s == cws - win then c, p, s = 0, c, cws end\n"
    "  if s == cws then\n"
    "    used = math.floor(c + p * (cws + win - now) / win)\n"
    "    if c > 0 then reset = cws + 2 * win - now\n"
    "    elseif p > 0 then reset = cws + win - now end\n"
    "  end\n"
    "elseif alg == 3 and ty == 'zset' then\n"
    "  flight = redis.call('ZCOUNT', k, '(' .. string.format('%d', now),\n"
    "                      '+inf')\n"
    "  used = flight\n"
    "  local h = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')\n"
    "  if h[2] and tonumber(h[2]) > now then reset = tonumber(h[2]) - now end\n"
    "end\n"
    "return {used, math.ceil(reset / 1000000), flight}\n";


static const char  *ngx_http_aai_ratelimit_algorithms[] = {
    "sliding", "gcra", "counter", "concurrency"
};


/* aai_ratelimit_admin; */

char *
ngx_http_aai_ratelimit_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_aai_ratelimit_admin_handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_aai_ratelimit_admin_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_aai_ratelimit_admin_handler(ngx_http_request_t *r)
{
    ngx_int_t                            rc;
    ngx_str_t                            name, arg, key, argv[7];
    ngx_uint_t                           i;
    ngx_pool_cleanup_t                  *cln;
    ngx_http_aai_ratelimit_zone_t      **zones, *zone;
    ngx_http_aai_ratelimit_admin_ctx_t  *ctx;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_DELETE))) {
        return ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_NOT_ALLOWED,
                                                  "method not allowed, use "
                                                  "GET or DELETE", NULL);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);

    if (ngx_http_arg(r, (u_char *) "zone", 4, &name) != NGX_OK
        || name.len == 0)
    {
        return ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "missing zone", NULL);
    }

    zone = NULL;
    zones = mcf->zones.elts;

    for (i = 0; i < mcf->zones.nelts; i++) {
        if (zones[i]->name.len == name.len
            && ngx_strncmp(zones[i]->name.data, name.data, name.len) == 0)
        {
            zone = zones[i];
            break;
        }
    }

    if (zone == NULL || zone->key == NULL) {
        return ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "unknown zone", &name);
    }

    if (ngx_http_arg(r, (u_char *) "key", 3, &arg) != NGX_OK
        || arg.len == 0)
    {
        return ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "missing key", NULL);
    }

    if (arg.len > 4096) {
        return ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "key too long", NULL);
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_aai_ratelimit_admin_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the key as the zone's key evaluates: %XX and + decoded */

    ctx->key.data = ngx_pnalloc(r->pool, arg.len);
    if (ctx->key.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    {
        u_char  *src, *dst;

        src = arg.data;
        dst = ctx->key.data;

        ngx_unescape_uri(&dst, &src, arg.len, NGX_UNESCAPE_URI);

        ctx->key.len = dst - ctx->key.data;
    }

    for (i = 0; i < ctx->key.len; i++) {
        if (ctx->key.data[i] == '+') {
            ctx->key.data[i] = ' ';
        }
    }

    if (ngx_http_aai_ratelimit_admin_key(r, zone, &ctx->key, &key)
        != NGX_OK)
    {
        return ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "invalid key, an IP "
                                                  "address is expected",
                                                  &ctx->key);
    }

    if (mcf->redis == NULL) {
        return ngx_http_aai_ratelimit_admin_error(r,
                                    NGX_HTTP_SERVICE_UNAVAILABLE,
                                    "no aai_ratelimit_redis", NULL);
    }

    ctx->request = r;
    ctx->zone = zone;
    ctx->delete = (r->method == NGX_HTTP_DELETE);

    if (ctx->delete) {
        ngx_str_set(&argv[0], "DEL");
        argv[1] = key;

    } else {
        ngx_str_set(&argv[0], "EVAL");
        argv[1].data = (u_char *) ngx_http_aai_ratelimit_admin_script;
        argv[1].len = sizeof(ngx_http_aai_ratelimit_admin_script) - 1;
        ngx_str_set(&argv[2], "1");
        argv[3] = key;

        for (i = 0; i < 3; i++) {
            argv[4 + i] = zone->args[i];
        }
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_aai_ratelimit_admin_cleanup;
    cln->data = ctx;

    ctx->cmd = ngx_aai_redis_send(mcf->redis, r->connection->log,
                                  ctx->delete ? 2 : 7, argv,
                                  ngx_http_aai_ratelimit_admin_reply, ctx);
    if (ctx->cmd == NULL) {
        return ngx_http_aai_ratelimit_admin_error(r,
                                    NGX_HTTP_SERVICE_UNAVAILABLE,
                                    "Redis unavailable", NULL);
    }

    ctx->rkey = key;

    r->main->count++;

    return NGX_DONE;
}


/* the Redis key: for a $binary_remote_addr zone, the address in binary */

static ngx_int_t
ngx_http_aai_ratelimit_admin_key(ngx_http_request_t *r,
    ngx_http_aai_ratelimit_zone_t *zone, ngx_str_t *key, ngx_str_t *out)
{
    u_char     *p;
    size_t      len;
    in_addr_t   a4;
    u_char      buf[16];

    len = key->len;
    p = key->data;

    if (zone->key->value.len == sizeof("$binary_remote_addr") - 1
        && ngx_strncmp(zone->key->value.data, "$binary_remote_addr",
                       zone->key->value.len) == 0)
    {
        a4 = ngx_inet_addr(key->data, key->len);

        if (a4 != INADDR_NONE) {
            ngx_memcpy(buf, &a4, 4);
            len = 4;

#if (NGX_HAVE_INET6)
        } else if (ngx_inet6_addr(key->data, key->len, buf) == NGX_OK) {
            len = 16;
#endif

        } else {
            return NGX_DECLINED;
        }

        p = buf;
    }

    out->data = ngx_pnalloc(r->pool, zone->prefix.len + len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    out->len = ngx_cpymem(ngx_cpymem(out->data, zone->prefix.data,
                                     zone->prefix.len), p, len)
               - out->data;

    return NGX_OK;
}


static void
ngx_http_aai_ratelimit_admin_reply(ngx_aai_redis_result_t *res, void *data)
{
    ngx_http_aai_ratelimit_admin_ctx_t *ctx = data;

    u_char                              *p, *body;
    size_t                               len;
    ngx_int_t                            rc;
    ngx_uint_t                           used, reset, flight, i;
    redisReply                          *reply, **e;
    ngx_connection_t                    *c;
    ngx_http_request_t                  *r;
    ngx_http_aai_ratelimit_zone_t       *zone;
    ngx_http_aai_ratelimit_main_conf_t  *mcf;

    ctx->cmd = NULL;

    r = ctx->request;
    c = r->connection;
    zone = ctx->zone;
    reply = res->reply;

    ngx_http_set_log_request(c->log, r);

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        rc = ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                                res->error ? res->error
                                                : "Redis replied in error",
                                                NULL);
        goto done;
    }

    if (ctx->delete) {

        /* Redis has done it: this instance's blocklist forgets the key */

        mcf = ngx_http_get_module_main_conf(r, ngx_http_aai_ratelimit_module);
        ngx_http_aai_ratelimit_unblock(mcf, zone, &ctx->rkey);
    }

    len = sizeof("{\"zone\":\"\",\"key\":\"\",\"count\":,\"remaining\":,"
                 "\"reset\":,\"in_flight\":,\"policy\":\"\\\"\\\";q=;w=\","
                 "\"limit\":,\"window\":,\"algorithm\":\"concurrency\","
                 "\"deleted\":}\n")
          + 2 * zone->name.len + 6 * ctx->key.len
          + 10 * NGX_INT64_LEN;

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    p = ngx_sprintf(body, "{\"zone\":\"%V\",\"key\":\"", &zone->name);
    p = (u_char *) ngx_escape_json(p, ctx->key.data, ctx->key.len);

    if (ctx->delete) {
        p = ngx_sprintf(p, "\",\"deleted\":%d}\n",
                        reply->type == REDIS_REPLY_INTEGER
                        && reply->integer > 0);

        rc = ngx_http_aai_ratelimit_admin_send(r, NGX_HTTP_OK, body,
                                               p - body);
        goto done;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) {
        rc = ngx_http_aai_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                                "unexpected Redis reply",
                                                NULL);
        goto done;
    }

    e = reply->element;

    for (i = 0; i < 3; i++) {
        if (e[i]->type != REDIS_REPLY_INTEGER || e[i]->integer < 0) {
            rc = ngx_http_aai_ratelimit_admin_error(r,
                                          NGX_HTTP_SERVICE_UNAVAILABLE,
                                          "unexpected Redis reply", NULL);
            goto done;
        }
    }

    used = (ngx_uint_t) e[0]->integer;
    reset = (ngx_uint_t) e[1]->integer;
    flight = (ngx_uint_t) e[2]->integer;

    p = ngx_sprintf(p, "\",\"count\":%ui,\"remaining\":%ui,\"reset\":%ui,"
                    "\"in_flight\":%ui,"
                    "\"policy\":\"\\\"%V\\\";q=%ui;w=%uL\","
                    "\"limit\":%ui,\"window\":%uL,\"algorithm\":\"%s\"}\n",
                    used, used < zone->limit ? zone->limit - used : 0, reset,
                    flight, &zone->name, zone->limit, zone->window / 1000000,
                    zone->limit, zone->window / 1000000,
                    ngx_http_aai_ratelimit_algorithms[zone->algorithm]);

    rc = ngx_http_aai_ratelimit_admin_send(r, NGX_HTTP_OK, body, p - body);

done:

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_aai_ratelimit_admin_cleanup(void *data)
{
    ngx_http_aai_ratelimit_admin_ctx_t *ctx = data;

    if (ctx->cmd) {
        ngx_aai_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }
}


static ngx_int_t
ngx_http_aai_ratelimit_admin_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *error, ngx_str_t *arg)
{
    u_char  *p, *body;
    size_t   len;

    len = sizeof("{\"error\":\": \\\"\\\"\"}\n") + ngx_strlen(error)
          + (arg ? 6 * arg->len : 0);

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(body, "{\"error\":\"%s", error);

    if (arg) {
        p = ngx_cpymem(p, ": \\\"", 4);
        p = (u_char *) ngx_escape_json(p, arg->data, arg->len);
        p = ngx_cpymem(p, "\\\"", 2);
    }

    p = ngx_cpymem(p, "\"}\n", 3);

    return ngx_http_aai_ratelimit_admin_send(r, status, body, p - body);
}


static ngx_int_t
ngx_http_aai_ratelimit_admin_send(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body;
    b->last = body + len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
