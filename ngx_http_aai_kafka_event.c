
/*
 * Copyright (C) aai-nginx authors
 *
 * The Kafka module's events: a format's fields compiled from the directive,
 * the JSON of an event printed from a request's variables, its topic and
 * headers, and the headers packed for the spool.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_aai_kafka.h"


typedef struct {
    char                             *name;
    char                             *value;
    ngx_uint_t                        type;
    ngx_uint_t                        optional;
} ngx_http_aai_kafka_default_field_t;


static u_char *ngx_http_aai_kafka_buffer(size_t size);
static cJSON *ngx_http_aai_kafka_tree(ngx_http_aai_kafka_format_t *fmt);
static void ngx_http_aai_kafka_tree_reset(cJSON *tree);
static ngx_int_t ngx_http_aai_kafka_field(ngx_http_request_t *r,
    ngx_http_aai_kafka_field_t *f, cJSON *item, size_t *size);
static ngx_int_t ngx_http_aai_kafka_string(ngx_pool_t *pool, ngx_str_t *v,
    cJSON *item, size_t *size);
static ngx_int_t ngx_http_aai_kafka_number(ngx_pool_t *pool, ngx_str_t *v,
    cJSON *item, size_t *size);
static void ngx_http_aai_kafka_bool(ngx_str_t *v, cJSON *item, size_t *size);
static size_t ngx_http_aai_kafka_utf8_seq(u_char *p, u_char *end,
    size_t *skip);
static size_t ngx_http_aai_kafka_utf8_len(u_char *p, size_t n,
    ngx_uint_t *valid);
static u_char *ngx_http_aai_kafka_utf8_copy(u_char *dst, u_char *p,
    size_t n);
static ngx_uint_t ngx_http_aai_kafka_is_number(u_char *p, size_t n);
static ngx_int_t ngx_http_aai_kafka_compile_value(ngx_conf_t *cf,
    ngx_http_aai_kafka_field_t *field, ngx_str_t *value);
static ngx_uint_t ngx_http_aai_kafka_variable_exists(ngx_conf_t *cf,
    char *name);


static ngx_http_aai_kafka_default_field_t  ngx_http_aai_kafka_fields[] = {
    { "ts", "$msec", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "ip", "$remote_addr", NGX_HTTP_AAI_KAFKA_STRING, 0 },
    { "method", "$request_method", NGX_HTTP_AAI_KAFKA_STRING, 0 },
    { "uri", "$uri", NGX_HTTP_AAI_KAFKA_STRING, 0 },
    { "status", "$status", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "latency", "$request_time", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "user", "$aai_user", NGX_HTTP_AAI_KAFKA_STRING, 1 },
    { "ratelimit", "$aai_ratelimit_status", NGX_HTTP_AAI_KAFKA_STRING, 1 },
    { "cache", "$aai_cache_status", NGX_HTTP_AAI_KAFKA_STRING, 1 },
    { "upstream_time", "$upstream_response_time",
      NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { "bytes", "$bytes_sent", NGX_HTTP_AAI_KAFKA_NUMBER, 0 },
    { NULL, NULL, 0, 0 }
};


/* the topic a variable names, one of those declared by topics= */

ngx_int_t
ngx_http_aai_kafka_pick(ngx_http_request_t *r,
    ngx_http_aai_kafka_main_conf_t *kmcf, ngx_http_aai_kafka_event_t *ev,
    ngx_uint_t *t)
{
    ngx_str_t    v, *names;
    ngx_uint_t   i, *idx;

    if (ngx_http_complex_value(r, ev->topic_value, &v) != NGX_OK) {
        return NGX_ERROR;
    }

    names = kmcf->topics.elts;
    idx = ev->topics->elts;

    for (i = 0; i < ev->topics->nelts; i++) {
        if (names[idx[i]].len == v.len
            && ngx_strncmp(names[idx[i]].data, v.data, v.len) == 0)
        {
            *t = idx[i];
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* the headers of an event; NULL when there are none or memory ran out */

rd_kafka_headers_t *
ngx_http_aai_kafka_headers(ngx_http_request_t *r, ngx_array_t *headers)
{
    ngx_str_t                     v;
    ngx_uint_t                    i;
    rd_kafka_headers_t           *hdrs;
    ngx_http_aai_kafka_header_t  *h;

    hdrs = rd_kafka_headers_new(headers->nelts);
    if (hdrs == NULL) {
        return NULL;
    }

    h = headers->elts;

    for (i = 0; i < headers->nelts; i++) {
        if (ngx_http_complex_value(r, h[i].value, &v) != NGX_OK) {
            ngx_str_null(&v);
        }

        /* copied: nothing of the request is referenced */

        if (rd_kafka_header_add(hdrs, (char *) h[i].name.data,
                                (ssize_t) h[i].name.len, v.data,
                                (ssize_t) v.len)
            != RD_KAFKA_RESP_ERR_NO_ERROR)
        {
            rd_kafka_headers_destroy(hdrs);
            return NULL;
        }
    }

    return hdrs;
}


/*
 * Headers in a record of the spool: for each, the name's length (2), the
 * value's length (4, 0xffffffff: null), the name, the value.
 */

ngx_int_t
ngx_http_aai_kafka_pack(rd_kafka_headers_t *hdrs, ngx_str_t *out)
{
    u_char                       *p;
    size_t                        size, nlen, vlen;
    uint16_t                      u16;
    uint32_t                      u32;
    ngx_uint_t                    i;
    const char                   *name;
    const void                   *value;
    ngx_http_aai_kafka_worker_t  *w;

    ngx_str_null(out);

    if (hdrs == NULL || rd_kafka_header_cnt(hdrs) == 0) {
        return NGX_OK;
    }

    w = &ngx_http_aai_kafka_worker;

    size = 0;

    for (i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &vlen)
                == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
    {
        nlen = ngx_strlen(name);

        if (nlen > 0xffff || vlen >= 0xffffffff) {
            return NGX_ERROR;
        }

        size += 6 + nlen + vlen;
    }

    if (w->hbuf_size < size) {
        p = ngx_alloc(ngx_max(size, 256), ngx_cycle->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (w->hbuf) {
            ngx_free(w->hbuf);
        }

        w->hbuf = p;
        w->hbuf_size = ngx_max(size, 256);
    }

    p = w->hbuf;

    for (i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &vlen)
                == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
    {
        nlen = ngx_strlen(name);

        u16 = (uint16_t) nlen;
        u32 = value ? (uint32_t) vlen : 0xffffffff;

        p = ngx_cpymem(p, &u16, 2);
        p = ngx_cpymem(p, &u32, 4);
        p = ngx_cpymem(p, name, nlen);
        p = ngx_cpymem(p, value, value ? vlen : 0);
    }

    out->data = w->hbuf;
    out->len = p - w->hbuf;

    return NGX_OK;
}


/* NULL when there are none, or they do not parse: the event goes without */

rd_kafka_headers_t *
ngx_http_aai_kafka_unpack(ngx_str_t *in)
{
    u_char              *p, *last;
    uint16_t             nlen;
    uint32_t             vlen;
    rd_kafka_headers_t  *hdrs;

    if (in->len == 0) {
        return NULL;
    }

    hdrs = rd_kafka_headers_new(4);
    if (hdrs == NULL) {
        return NULL;
    }

    p = in->data;
    last = in->data + in->len;

    while (p < last) {
        if (last - p < 6) {
            goto invalid;
        }

        ngx_memcpy(&nlen, p, 2);
        ngx_memcpy(&vlen, p + 2, 4);
        p += 6;

        if ((size_t) (last - p) < nlen
            || (vlen != 0xffffffff && (size_t) (last - p) - nlen < vlen))
        {
            goto invalid;
        }

        if (rd_kafka_header_add(hdrs, (char *) p, nlen,
                                vlen == 0xffffffff ? NULL : p + nlen,
                                vlen == 0xffffffff ? 0 : (ssize_t) vlen)
            != RD_KAFKA_RESP_ERR_NO_ERROR)
        {
            goto invalid;
        }

        p += nlen + ((vlen == 0xffffffff) ? 0 : vlen);
    }

    return hdrs;

invalid:

    rd_kafka_headers_destroy(hdrs);

    return NULL;
}


/*
 * The event of a format, printed by cJSON from a tree of the format's
 * fields that each worker builds once: per event the items only point to
 * the values, in the request pool, and are reset to null once printed.
 * The text goes to a buffer of the worker, which librdkafka copies.
 */

ngx_int_t
ngx_http_aai_kafka_json(ngx_http_request_t *r,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *out)
{
    int                          len;
    cJSON                       *tree, *item;
    size_t                       size;
    u_char                      *buf;
    ngx_uint_t                   i;
    ngx_http_aai_kafka_field_t  *f;

    tree = fmt->tree ? fmt->tree : ngx_http_aai_kafka_tree(fmt);
    if (tree == NULL) {
        return NGX_ERROR;
    }

    size = fmt->size + sizeof("{}");

    f = fmt->fields->elts;
    item = tree->child;

    for (i = 0; i < fmt->fields->nelts; i++, item = item->next) {
        if (ngx_http_aai_kafka_field(r, &f[i], item, &size) != NGX_OK) {
            goto failed;
        }
    }

    /* cJSON asks for a few bytes more than it writes */

    size += 8;

    if (size > 0x7fffffff) {
        goto failed;
    }

    len = (int) size;

    buf = ngx_http_aai_kafka_buffer(size);
    if (buf == NULL) {
        goto failed;
    }

    if (!cJSON_PrintPreallocated(tree, (char *) buf, len, 0)) {
        goto failed;
    }

    ngx_http_aai_kafka_tree_reset(tree);

    out->data = buf;
    out->len = ngx_strlen(buf);

    return NGX_OK;

failed:

    ngx_http_aai_kafka_tree_reset(tree);

    return NGX_ERROR;
}


static u_char *
ngx_http_aai_kafka_buffer(size_t size)
{
    u_char                       *buf;
    ngx_http_aai_kafka_worker_t  *w;

    w = &ngx_http_aai_kafka_worker;

    if (w->buf_size >= size) {
        return w->buf;
    }

    size = ngx_max(size, 1024);

    buf = ngx_alloc(size, ngx_cycle->log);
    if (buf == NULL) {
        return NULL;
    }

    if (w->buf) {
        ngx_free(w->buf);
    }

    w->buf = buf;
    w->buf_size = size;

    return buf;
}


static cJSON *
ngx_http_aai_kafka_tree(ngx_http_aai_kafka_format_t *fmt)
{
    cJSON                       *tree, *item;
    ngx_uint_t                   i;
    ngx_http_aai_kafka_field_t  *f;

    tree = cJSON_CreateObject();
    if (tree == NULL) {
        return NULL;
    }

    f = fmt->fields->elts;

    for (i = 0; i < fmt->fields->nelts; i++) {
        item = cJSON_CreateNull();
        if (item == NULL) {
            cJSON_Delete(tree);
            return NULL;
        }

        /* the name is the format's, in the cycle's pool */

        if (!cJSON_AddItemToObjectCS(tree, f[i].name, item)) {
            cJSON_Delete(item);
            cJSON_Delete(tree);
            return NULL;
        }
    }

    fmt->tree = tree;

    return tree;
}


/* every item null again: nothing points into a request pool */

static void
ngx_http_aai_kafka_tree_reset(cJSON *tree)
{
    cJSON  *item;

    for (item = tree->child; item; item = item->next) {
        item->type = cJSON_NULL | (item->type & cJSON_StringIsConst);
        item->valuestring = NULL;
    }
}


void
ngx_http_aai_kafka_trees_free(ngx_http_aai_kafka_main_conf_t *kmcf)
{
    ngx_uint_t                    i;
    ngx_http_aai_kafka_format_t  *fmt;

    if (kmcf->default_format && kmcf->default_format->tree) {
        cJSON_Delete(kmcf->default_format->tree);
        kmcf->default_format->tree = NULL;
    }

    fmt = kmcf->formats ? kmcf->formats->elts : NULL;

    for (i = 0; fmt && i < kmcf->formats->nelts; i++) {
        if (fmt[i].tree) {
            cJSON_Delete(fmt[i].tree);
            fmt[i].tree = NULL;
        }
    }
}


static ngx_int_t
ngx_http_aai_kafka_field(ngx_http_request_t *r, ngx_http_aai_kafka_field_t *f,
    cJSON *item, size_t *size)
{
    ngx_str_t                   v;
    ngx_http_variable_value_t  *vv;

    ngx_str_null(&v);

    if (f->index != NGX_ERROR) {
        vv = ngx_http_get_indexed_variable(r, f->index);

        if (vv != NULL && !vv->not_found) {
            v.data = vv->data;
            v.len = vv->len;
        }

    } else if (f->value) {
        if (ngx_http_complex_value(r, f->value, &v) != NGX_OK) {
            ngx_str_null(&v);
        }
    }

    if (v.len) {
        switch (f->type) {

        case NGX_HTTP_AAI_KAFKA_NUMBER:
            return ngx_http_aai_kafka_number(r->pool, &v, item, size);

        case NGX_HTTP_AAI_KAFKA_BOOL:
            ngx_http_aai_kafka_bool(&v, item, size);
            return NGX_OK;

        default: /* NGX_HTTP_AAI_KAFKA_STRING */
            return ngx_http_aai_kafka_string(r->pool, &v, item, size);
        }
    }

    *size += sizeof("null") - 1;

    return NGX_OK;
}


/* a value the item prints, not its own: cJSON_Delete() leaves it alone */

#define ngx_http_aai_kafka_set(item, t, s)                                    \
    (item)->type = (t) | cJSON_IsReference                                    \
                   | ((item)->type & cJSON_StringIsConst);                    \
    (item)->valuestring = (char *) (s)


static ngx_int_t
ngx_http_aai_kafka_string(ngx_pool_t *pool, ngx_str_t *v, cJSON *item,
    size_t *size)
{
    u_char      *s, *last;
    size_t       n;
    ngx_uint_t   valid;

    /*
     * cJSON copies bytes of 0x80 and above as they are: anything that is
     * not UTF-8 becomes U+FFFD here, and so does a NUL byte, which a
     * C string cannot carry.
     */

    n = ngx_http_aai_kafka_utf8_len(v->data, v->len, &valid);

    s = ngx_pnalloc(pool, n + 1);
    if (s == NULL) {
        return NGX_ERROR;
    }

    if (valid) {
        last = ngx_cpymem(s, v->data, n);

    } else {
        last = ngx_http_aai_kafka_utf8_copy(s, v->data, v->len);
    }

    *last = '\0';

    /* every byte may become "\u00XX" */
    *size += 6 * n + sizeof("\"\"") - 1;

    ngx_http_aai_kafka_set(item, cJSON_String, s);

    return NGX_OK;
}


static ngx_int_t
ngx_http_aai_kafka_number(ngx_pool_t *pool, ngx_str_t *v, cJSON *item,
    size_t *size)
{
    u_char  *s;

    if (v->len >= NGX_INT64_LEN + 32
        || !ngx_http_aai_kafka_is_number(v->data, v->len))
    {
        *size += sizeof("null") - 1;
        return NGX_OK;
    }

    s = ngx_pnalloc(pool, v->len + 1);
    if (s == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(s, v->data, v->len);
    s[v->len] = '\0';

    *size += v->len;

    ngx_http_aai_kafka_set(item, cJSON_Raw, s);

    return NGX_OK;
}


static void
ngx_http_aai_kafka_bool(ngx_str_t *v, cJSON *item, size_t *size)
{
    int  type;

    *size += sizeof("false") - 1;

    type = cJSON_NULL;

    switch (v->len) {

    case 1:
        if (v->data[0] == '1') {
            type = cJSON_True;

        } else if (v->data[0] == '0') {
            type = cJSON_False;
        }

        break;

    case 2:
        if (ngx_strncasecmp(v->data, (u_char *) "on", 2) == 0) {
            type = cJSON_True;

        } else if (ngx_strncasecmp(v->data, (u_char *) "no", 2) == 0) {
            type = cJSON_False;
        }

        break;

    case 3:
        if (ngx_strncasecmp(v->data, (u_char *) "yes", 3) == 0) {
            type = cJSON_True;

        } else if (ngx_strncasecmp(v->data, (u_char *) "off", 3) == 0) {
            type = cJSON_False;
        }

        break;

    case 4:
        if (ngx_strncasecmp(v->data, (u_char *) "true", 4) == 0) {
            type = cJSON_True;
        }

        break;

    case 5:
        if (ngx_strncasecmp(v->data, (u_char *) "false", 5) == 0) {
            type = cJSON_False;
        }

        break;
    }

    item->type = type | (item->type & cJSON_StringIsConst);
}


/*
 * The length of a valid UTF-8 sequence at p (1 to 4), or 0 when the bytes
 * at p are not one; *skip is then the length of the maximal ill-formed
 * subpart to replace with one U+FFFD (Unicode 15, 3.9, U+FFFD substitution).
 */

static size_t
ngx_http_aai_kafka_utf8_seq(u_char *p, u_char *end, size_t *skip)
{
    u_char  c, lo, hi;
    size_t  n, i;

    c = *p;

    *skip = 1;

    if (c < 0x80) {
        return c ? 1 : 0;
    }

    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        lo = (c == 0xe0) ? 0xa0 : 0x80;
        hi = (c == 0xed) ? 0x9f : 0xbf;

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        lo = (c == 0xf0) ? 0x90 : 0x80;
        hi = (c == 0xf4) ? 0x8f : 0xbf;

    } else {
        return 0;
    }

    for (i = 1; i < n; i++) {

        if (p + i == end) {
            *skip = i;
            return 0;
        }

        if (p[i] < lo || p[i] > hi) {
            *skip = i;
            return 0;
        }

        lo = 0x80;
        hi = 0xbf;
    }

    return n;
}


static size_t
ngx_http_aai_kafka_utf8_len(u_char *p, size_t n, ngx_uint_t *valid)
{
    u_char  *end;
    size_t   len, seq, skip;

    end = p + n;
    len = 0;

    *valid = 1;

    while (p < end) {

        if (*p >= 0x20 && *p < 0x80) {
            p++;
            len++;
            continue;
        }

        seq = ngx_http_aai_kafka_utf8_seq(p, end, &skip);

        if (seq) {
            p += seq;
            len += seq;

        } else {
            p += skip;
            len += 3;
            *valid = 0;
        }
    }

    return len;
}


static u_char *
ngx_http_aai_kafka_utf8_copy(u_char *dst, u_char *p, size_t n)
{
    u_char  *end;
    size_t   seq, skip;

    end = p + n;

    while (p < end) {

        seq = ngx_http_aai_kafka_utf8_seq(p, end, &skip);

        if (seq) {
            dst = ngx_cpymem(dst, p, seq);
            p += seq;
            continue;
        }

        /* U+FFFD REPLACEMENT CHARACTER */

        *dst++ = 0xef;
        *dst++ = 0xbf;
        *dst++ = 0xbd;

        p += skip;
    }

    return dst;
}


/* the JSON number grammar (RFC 8259, 6) */

static ngx_uint_t
ngx_http_aai_kafka_is_number(u_char *p, size_t n)
{
    u_char  *end, *start;

    end = p + n;

    if (p < end && *p == '-') {
        p++;
    }

    if (p == end) {
        return 0;
    }

    if (*p == '0') {
        p++;

    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

    } else {
        return 0;
    }

    if (p < end && *p == '.') {
        start = ++p;

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == start) {
            return 0;
        }
    }

    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }

        start = p;

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }

        if (p == start) {
            return 0;
        }
    }

    return p == end;
}


/* name=value[:number|:string|:bool] */

char *
ngx_http_aai_kafka_format_field(ngx_conf_t *cf,
    ngx_http_aai_kafka_format_t *fmt, ngx_str_t *arg)
{
    u_char                      *eq, *p;
    ngx_str_t                    name, value;
    ngx_uint_t                   i;
    ngx_http_aai_kafka_field_t  *f;

    eq = (u_char *) ngx_strchr(arg->data, '=');

    if (eq == NULL || eq == arg->data || eq == arg->data + arg->len - 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid field \"%V\" in \"aai_kafka_format\", "
                           "expected name=value", arg);
        return NGX_CONF_ERROR;
    }

    name.data = arg->data;
    name.len = eq - arg->data;

    for (p = name.data; p < eq; p++) {
        if (!ngx_http_aai_kafka_name_char(*p)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid field name \"%V\" in "
                               "\"aai_kafka_format\"", &name);
            return NGX_CONF_ERROR;
        }
    }

    f = fmt->fields->elts;

    for (i = 0; i < fmt->fields->nelts; i++) {
        if (f[i].name_len == name.len
            && ngx_strncmp(f[i].name, name.data, name.len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate field \"%V\" in "
                               "\"aai_kafka_format\"", &name);
            return NGX_CONF_ERROR;
        }
    }

    f = ngx_array_push(fmt->fields);
    if (f == NULL) {
        return NGX_CONF_ERROR;
    }

    f->name = ngx_pnalloc(cf->pool, name.len + 1);
    if (f->name == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_cpystrn((u_char *) f->name, name.data, name.len + 1);
    f->name_len = name.len;

    /* "name":, */
    fmt->size += name.len + 4;

    value.data = eq + 1;
    value.len = arg->data + arg->len - value.data;

    f->type = NGX_HTTP_AAI_KAFKA_STRING;

#define ngx_http_aai_kafka_suffix(v, s)                                       \
    ((v)->len > sizeof(s) - 1                                                 \
     && ngx_strncmp((v)->data + (v)->len - (sizeof(s) - 1), s,               \
                    sizeof(s) - 1) == 0)

    if (ngx_http_aai_kafka_suffix(&value, ":number")) {
        f->type = NGX_HTTP_AAI_KAFKA_NUMBER;
        value.len -= sizeof(":number") - 1;

    } else if (ngx_http_aai_kafka_suffix(&value, ":bool")) {
        f->type = NGX_HTTP_AAI_KAFKA_BOOL;
        value.len -= sizeof(":bool") - 1;

    } else if (ngx_http_aai_kafka_suffix(&value, ":string")) {
        value.len -= sizeof(":string") - 1;
    }

#undef ngx_http_aai_kafka_suffix

    if (ngx_http_aai_kafka_compile_value(cf, f, &value) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value in field \"%V\" of "
                           "\"aai_kafka_format\"", arg);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* a lone variable is read by index (and may be "not found") */

static ngx_int_t
ngx_http_aai_kafka_compile_value(ngx_conf_t *cf,
    ngx_http_aai_kafka_field_t *field, ngx_str_t *value)
{
    u_char     *p, *end;
    ngx_str_t   var;

    field->index = NGX_ERROR;
    field->value = NULL;

    if (value->len == 0) {
        return NGX_ERROR;
    }

    var.len = 0;

    if (value->len > 1 && value->data[0] == '$') {
        p = value->data + 1;
        end = value->data + value->len;

        if (*p == '{' && end[-1] == '}') {
            p++;
            end--;
        }

        var.data = p;

        while (p < end && (ngx_http_aai_kafka_isalnum(*p) || *p == '_')) {
            p++;
        }

        if (p == end && p > var.data) {
            var.len = end - var.data;
        }
    }

    if (var.len) {
        field->index = ngx_http_get_variable_index(cf, &var);
        return (field->index == NGX_ERROR) ? NGX_ERROR : NGX_OK;
    }

    field->value = ngx_http_aai_kafka_complex(cf, value);

    return (field->value == NULL) ? NGX_ERROR : NGX_OK;
}


/*
 * The fields of an event without format=.  The suite's own variables are
 * used when their modules are loaded, and are null otherwise.
 */

ngx_int_t
ngx_http_aai_kafka_default_format(ngx_conf_t *cf,
    ngx_http_aai_kafka_main_conf_t *kmcf)
{
    ngx_str_t                            value;
    ngx_http_aai_kafka_field_t          *f;
    ngx_http_aai_kafka_format_t         *fmt;
    ngx_http_aai_kafka_default_field_t  *d;

    fmt = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_kafka_format_t));
    if (fmt == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&fmt->name, "default");

    fmt->fields = ngx_array_create(cf->pool, 12,
                                   sizeof(ngx_http_aai_kafka_field_t));
    if (fmt->fields == NULL) {
        return NGX_ERROR;
    }

    for (d = ngx_http_aai_kafka_fields; d->name; d++) {
        f = ngx_array_push(fmt->fields);
        if (f == NULL) {
            return NGX_ERROR;
        }

        f->name = d->name;
        f->name_len = ngx_strlen(d->name);
        f->type = d->type;
        f->index = NGX_ERROR;
        f->value = NULL;

        fmt->size += f->name_len + 4;

        if (d->optional
            && !ngx_http_aai_kafka_variable_exists(cf, d->value + 1))
        {
            continue;
        }

        value.data = (u_char *) d->value;
        value.len = ngx_strlen(d->value);

        if (ngx_http_aai_kafka_compile_value(cf, f, &value) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    kmcf->default_format = fmt;

    return NGX_OK;
}


/* before ngx_http_variables_init_vars(): looks without adding */

static ngx_uint_t
ngx_http_aai_kafka_variable_exists(ngx_conf_t *cf, char *name)
{
    size_t                      len;
    ngx_uint_t                  i;
    ngx_hash_key_t             *key;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    if (cmcf->variables_keys == NULL) {
        return 0;
    }

    len = ngx_strlen(name);
    key = cmcf->variables_keys->keys.elts;

    for (i = 0; i < cmcf->variables_keys->keys.nelts; i++) {
        if (key[i].key.len == len
            && ngx_strncmp(key[i].key.data, name, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}
