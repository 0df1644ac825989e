
/*
 * Copyright (C) aai-nginx authors
 *
 * Stand-ins for the nginx core functions and globals the fuzz targets
 * reach (see ngx_fuzz.h).  Written here for the fuzz targets, to the
 * documented behaviour of each function; simpler than nginx's, never
 * linked into a module.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_fuzz.h"


/* globals of nginx core */

volatile ngx_cycle_t  *ngx_cycle;
volatile ngx_msec_t    ngx_current_msec;
volatile ngx_time_t   *ngx_cached_time;
ngx_uint_t             ngx_process = NGX_PROCESS_WORKER;
ngx_uint_t             ngx_exiting;
ngx_uint_t             ngx_test_config;
ngx_pid_t              ngx_pid = 1;
ngx_uint_t             ngx_pagesize = 4096;
sig_atomic_t           ngx_quit;
sig_atomic_t           ngx_terminate;
ngx_rbtree_t           ngx_event_timer_rbtree;
ngx_queue_t            ngx_posted_events;
uint32_t              *ngx_crc32_table_short;

ngx_log_t              ngx_fuzz_log;
ngx_cycle_t            ngx_fuzz_cycle;

static ngx_time_t      ngx_fuzz_time;
static uint32_t        ngx_fuzz_crc_short[16];
static int             ngx_fuzz_verbose;


void
ngx_fuzz_init(void)
{
    uint32_t    c;
    ngx_uint_t  i, j;

    if (ngx_cycle) {
        return;
    }

    ngx_fuzz_verbose = getenv("FUZZ_VERBOSE") != NULL;

    ngx_fuzz_log.log_level = NGX_LOG_DEBUG_ALL | NGX_LOG_DEBUG;

    ngx_fuzz_cycle.log = &ngx_fuzz_log;
    ngx_cycle = &ngx_fuzz_cycle;

    ngx_fuzz_time.sec = 1700000000;
    ngx_fuzz_time.msec = 0;
    ngx_cached_time = &ngx_fuzz_time;
    ngx_current_msec = 1000000;

    ngx_queue_init(&ngx_posted_events);

    for (i = 0; i < 16; i++) {
        c = (uint32_t) i;

        for (j = 0; j < 4; j++) {
            c = (c & 1) ? (c >> 1) ^ 0xedb88320 : c >> 1;
        }

        ngx_fuzz_crc_short[i] = c;
    }

    ngx_crc32_table_short = ngx_fuzz_crc_short;
}


void
ngx_fuzz_run_posted(void)
{
    ngx_queue_t  *q;
    ngx_event_t  *ev;

    while (!ngx_queue_empty(&ngx_posted_events)) {
        q = ngx_queue_head(&ngx_posted_events);
        ev = ngx_queue_data(q, ngx_event_t, queue);

        ngx_delete_posted_event(ev);

        ev->handler(ev);
    }
}


ngx_uint_t
ngx_fuzz_byte(ngx_fuzz_in_t *in)
{
    return (in->p < in->last) ? *in->p++ : 0;
}


ngx_str_t
ngx_fuzz_field(ngx_fuzz_in_t *in, u_char sep)
{
    const u_char  *s;
    ngx_str_t      f;

    s = in->p;

    while (in->p < in->last && *in->p != sep) {
        in->p++;
    }

    f.data = (u_char *) s;
    f.len = in->p - s;

    if (in->p < in->last) {
        in->p++;
    }

    return f;
}


/* memory */

void *
ngx_alloc(size_t size, ngx_log_t *log)
{
    return malloc(size ? size : 1);
}


void *
ngx_calloc(size_t size, ngx_log_t *log)
{
    return calloc(1, size ? size : 1);
}


ngx_pool_t *
ngx_create_pool(size_t size, ngx_log_t *log)
{
    ngx_pool_t  *pool;

    pool = calloc(1, sizeof(ngx_pool_t));
    if (pool == NULL) {
        return NULL;
    }

    pool->log = log;
    pool->max = size;
    pool->current = pool;

    return pool;
}


ngx_pool_t *
ngx_fuzz_pool(void)
{
    return ngx_create_pool(4096, &ngx_fuzz_log);
}


void
ngx_destroy_pool(ngx_pool_t *pool)
{
    ngx_pool_large_t    *l, *next;
    ngx_pool_cleanup_t  *c;

    for (c = pool->cleanup; c; c = c->next) {
        if (c->handler) {
            c->handler(c->data);
        }
    }

    for (l = pool->large; l; l = next) {
        next = l->next;
        free(l->alloc);
        free(l);
    }

    free(pool);
}


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    void              *p;
    ngx_pool_large_t  *l;

    l = malloc(sizeof(ngx_pool_large_t));
    if (l == NULL) {
        return NULL;
    }

    p = malloc(size ? size : 1);
    if (p == NULL) {
        free(l);
        return NULL;
    }

    l->alloc = p;
    l->next = pool->large;
    pool->large = l;

    return p;
}


void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    return ngx_pnalloc(pool, size);
}


void *
ngx_pcalloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    p = ngx_pnalloc(pool, size);

    if (p) {
        ngx_memzero(p, size);
    }

    return p;
}


void *
ngx_pmemalign(ngx_pool_t *pool, size_t size, size_t alignment)
{
    return ngx_pnalloc(pool, size);
}


ngx_int_t
ngx_pfree(ngx_pool_t *pool, void *p)
{
    ngx_pool_large_t  *l;

    for (l = pool->large; l; l = l->next) {
        if (l->alloc == p) {
            free(l->alloc);
            l->alloc = NULL;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


ngx_pool_cleanup_t *
ngx_pool_cleanup_add(ngx_pool_t *p, size_t size)
{
    ngx_pool_cleanup_t  *c;

    c = ngx_pcalloc(p, sizeof(ngx_pool_cleanup_t));
    if (c == NULL) {
        return NULL;
    }

    if (size) {
        c->data = ngx_pcalloc(p, size);
        if (c->data == NULL) {
            return NULL;
        }
    }

    c->next = p->cleanup;
    p->cleanup = c;

    return c;
}


ngx_array_t *
ngx_array_create(ngx_pool_t *p, ngx_uint_t n, size_t size)
{
    ngx_array_t  *a;

    a = ngx_palloc(p, sizeof(ngx_array_t));
    if (a == NULL) {
        return NULL;
    }

    if (ngx_array_init(a, p, n, size) != NGX_OK) {
        return NULL;
    }

    return a;
}


void *
ngx_array_push_n(ngx_array_t *a, ngx_uint_t n)
{
    void        *elts;
    ngx_uint_t   nalloc;

    if (a->nelts + n > a->nalloc) {
        nalloc = 2 * ngx_max(n, a->nalloc);

        elts = ngx_palloc(a->pool, nalloc * a->size);
        if (elts == NULL) {
            return NULL;
        }

        ngx_memcpy(elts, a->elts, a->nelts * a->size);
        a->elts = elts;
        a->nalloc = nalloc;
    }

    elts = (u_char *) a->elts + a->size * a->nelts;
    a->nelts += n;

    return elts;
}


void *
ngx_array_push(ngx_array_t *a)
{
    return ngx_array_push_n(a, 1);
}


void *
ngx_list_push(ngx_list_t *l)
{
    void             *elt;
    ngx_list_part_t  *last;

    last = l->last;

    if (last->nelts == l->nalloc) {
        last = ngx_palloc(l->pool, sizeof(ngx_list_part_t));
        if (last == NULL) {
            return NULL;
        }

        last->elts = ngx_palloc(l->pool, l->nalloc * l->size);
        if (last->elts == NULL) {
            return NULL;
        }

        last->nelts = 0;
        last->next = NULL;

        l->last->next = last;
        l->last = last;
    }

    elt = (char *) last->elts + l->size * last->nelts;
    last->nelts++;

    return elt;
}


/* strings */

void
ngx_strlow(u_char *dst, u_char *src, size_t n)
{
    while (n--) {
        *dst++ = ngx_tolower(*src);
        src++;
    }
}


ngx_int_t
ngx_strncasecmp(u_char *s1, u_char *s2, size_t n)
{
    ngx_uint_t  c1, c2;

    while (n--) {
        c1 = *s1++;
        c2 = *s2++;

        /* ngx_tolower() evaluates its argument more than once */
        c1 = ngx_tolower(c1);
        c2 = ngx_tolower(c2);

        if (c1 != c2) {
            return c1 - c2;
        }

        if (c1 == 0) {
            return 0;
        }
    }

    return 0;
}


ngx_int_t
ngx_strcasecmp(u_char *s1, u_char *s2)
{
    return ngx_strncasecmp(s1, s2, (size_t) -1);
}


ngx_int_t
ngx_memn2cmp(u_char *s1, u_char *s2, size_t n1, size_t n2)
{
    int  m;

    m = ngx_memcmp(s1, s2, ngx_min(n1, n2));

    if (m || n1 == n2) {
        return m;
    }

    return (n1 < n2) ? -1 : 1;
}


u_char *
ngx_cpystrn(u_char *dst, u_char *src, size_t n)
{
    if (n == 0) {
        return dst;
    }

    while (--n) {
        *dst = *src;

        if (*dst == '\0') {
            return dst;
        }

        dst++;
        src++;
    }

    *dst = '\0';

    return dst;
}


u_char *
ngx_pstrdup(ngx_pool_t *pool, ngx_str_t *src)
{
    u_char  *dst;

    dst = ngx_pnalloc(pool, src->len);
    if (dst == NULL) {
        return NULL;
    }

    ngx_memcpy(dst, src->data, src->len);

    return dst;
}


u_char *
ngx_hex_dump(u_char *dst, u_char *src, size_t len)
{
    static const u_char  hex[] = "0123456789abcdef";

    while (len--) {
        *dst++ = hex[*src >> 4];
        *dst++ = hex[*src++ & 0xf];
    }

    return dst;
}


ngx_uint_t
ngx_hash_key(u_char *data, size_t len)
{
    ngx_uint_t  i, key;

    key = 0;

    for (i = 0; i < len; i++) {
        key = ngx_hash(key, data[i]);
    }

    return key;
}


u_char *
ngx_strerror(ngx_err_t err, u_char *errstr, size_t size)
{
    return ngx_cpymem(errstr, "error", ngx_min(size, 5));
}


/* numbers: digits only, NGX_ERROR when empty or past the type's maximum */

static int64_t
ngx_fuzz_atoi(u_char *line, size_t n, int64_t max)
{
    int64_t  v;

    if (n == 0) {
        return NGX_ERROR;
    }

    v = 0;

    while (n--) {
        if (*line < '0' || *line > '9') {
            return NGX_ERROR;
        }

        if (v > (max - (*line - '0')) / 10) {
            return NGX_ERROR;
        }

        v = v * 10 + (*line++ - '0');
    }

    return v;
}


ngx_int_t
ngx_atoi(u_char *line, size_t n)
{
    return (ngx_int_t) ngx_fuzz_atoi(line, n, NGX_MAX_INT_T_VALUE);
}


ssize_t
ngx_atosz(u_char *line, size_t n)
{
    return (ssize_t) ngx_fuzz_atoi(line, n, NGX_MAX_SIZE_T_VALUE / 2);
}


off_t
ngx_atoof(u_char *line, size_t n)
{
    return (off_t) ngx_fuzz_atoi(line, n, NGX_MAX_OFF_T_VALUE);
}


time_t
ngx_atotm(u_char *line, size_t n)
{
    return (time_t) ngx_fuzz_atoi(line, n, NGX_MAX_TIME_T_VALUE);
}


/* a size or an offset: digits, then k, m or g (either case) */

static int64_t
ngx_fuzz_parse_scaled(ngx_str_t *line, int64_t max, ngx_uint_t g)
{
    size_t   len;
    int64_t  v, scale;

    len = line->len;

    if (len == 0) {
        return NGX_ERROR;
    }

    switch (line->data[len - 1]) {
    case 'K':
    case 'k':
        len--;
        scale = 1024;
        break;

    case 'M':
    case 'm':
        len--;
        scale = 1024 * 1024;
        break;

    case 'G':
    case 'g':
        if (!g) {
            return NGX_ERROR;
        }

        len--;
        scale = 1024 * 1024 * 1024;
        break;

    default:
        scale = 1;
    }

    v = ngx_fuzz_atoi(line->data, len, max);

    if (v == NGX_ERROR || v > max / scale) {
        return NGX_ERROR;
    }

    return v * scale;
}


ssize_t
ngx_parse_size(ngx_str_t *line)
{
    return (ssize_t) ngx_fuzz_parse_scaled(line, NGX_MAX_SIZE_T_VALUE / 2, 0);
}


off_t
ngx_parse_offset(ngx_str_t *line)
{
    return (off_t) ngx_fuzz_parse_scaled(line, NGX_MAX_OFF_T_VALUE, 1);
}


/*
 * A time: numbers with units (y M w d h m s, and ms unless is_sec), spaces
 * between; a bare number is in seconds (is_sec) or milliseconds.
 */

ngx_int_t
ngx_parse_time(ngx_str_t *line, ngx_uint_t is_sec)
{
    u_char   *p, *last;
    int64_t   v, total, scale, max;

    p = line->data;
    last = p + line->len;
    max = NGX_MAX_INT_T_VALUE;
    total = 0;

    if (p == last) {
        return NGX_ERROR;
    }

    while (p < last) {

        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        v = 0;

        while (p < last && *p >= '0' && *p <= '9') {
            if (v > (max - 9) / 10) {
                return NGX_ERROR;
            }

            v = v * 10 + (*p++ - '0');
        }

        scale = is_sec ? 1 : 1000;

        if (p < last) {
            switch (*p++) {
            case 'y': scale *= 60 * 60 * 24 * 365; break;
            case 'M': scale *= 60 * 60 * 24 * 30; break;
            case 'w': scale *= 60 * 60 * 24 * 7; break;
            case 'd': scale *= 60 * 60 * 24; break;
            case 'h': scale *= 60 * 60; break;
            case 's': break;
            case 'm':
                if (p < last && *p == 's') {
                    if (is_sec) {
                        return NGX_ERROR;
                    }

                    p++;
                    scale = 1;
                    break;
                }

                scale *= 60;
                break;

            case ' ':
                p--;
                break;

            default:
                return NGX_ERROR;
            }

        } else if (!is_sec) {
            scale = 1;
        }

        if (v > max / scale || total > max - v * scale) {
            return NGX_ERROR;
        }

        total += v * scale;

        while (p < last && *p == ' ') {
            p++;
        }
    }

    return (ngx_int_t) total;
}


/*
 * nginx's formats: %[0][width][u|m|x|X|.N|*]* then one of O T z i d l D L
 * A M r p c Z N % s V v e f.  The arguments are consumed with the types
 * nginx's ngx_vslprintf() uses; the text is close to its own.
 */

u_char *
ngx_vslprintf(u_char *buf, u_char *last, const char *fmt, va_list args)
{
    int                   n;
    double                d;
    u_char               *s;
    char                  num[64], spec[16], *sp;
    size_t                len, slen;
    int64_t               i64;
    uint64_t              u64;
    ngx_str_t            *v;
    ngx_uint_t            width, zero, hex, sign, max, star;
    ngx_variable_value_t *vv;

    while (*fmt && buf < last) {

        if (*fmt != '%') {
            *buf++ = *fmt++;
            continue;
        }

        fmt++;

        zero = (*fmt == '0');
        width = 0;
        sign = 1;
        hex = 0;
        max = 0;
        star = 0;
        slen = (size_t) -1;

        while (*fmt >= '0' && *fmt <= '9') {
            width = width * 10 + (*fmt++ - '0');
        }

        for ( ;; ) {
            switch (*fmt) {
            case 'u': sign = 0; fmt++; continue;
            case 'm': max = 1; fmt++; continue;
            case 'X': hex = 2; sign = 0; fmt++; continue;
            case 'x': hex = 1; sign = 0; fmt++; continue;
            case '*': star = 1; slen = va_arg(args, size_t); fmt++; continue;
            case '.':
                fmt++;
                while (*fmt >= '0' && *fmt <= '9') {
                    fmt++;
                }
                continue;
            }

            break;
        }

        (void) max;
        (void) star;

        i64 = 0;
        u64 = 0;

        switch (*fmt) {

        case 'V':
            v = va_arg(args, ngx_str_t *);
            len = ngx_min((size_t) (last - buf), v->len);
            buf = ngx_cpymem(buf, v->data, len);
            fmt++;
            continue;

        case 'v':
            vv = va_arg(args, ngx_variable_value_t *);
            len = ngx_min((size_t) (last - buf), vv->len);
            buf = ngx_cpymem(buf, vv->data, len);
            fmt++;
            continue;

        case 's':
            s = va_arg(args, u_char *);

            if (slen == (size_t) -1) {
                while (*s && buf < last) {
                    *buf++ = *s++;
                }

            } else {
                len = ngx_min((size_t) (last - buf), slen);
                buf = ngx_cpymem(buf, s, len);
            }

            fmt++;
            continue;

        case 'O': i64 = va_arg(args, off_t); sign = 1; break;
        case 'T': i64 = va_arg(args, time_t); sign = 1; break;
        case 'M': u64 = va_arg(args, ngx_msec_t); sign = 0; break;
        case 'z':
            if (sign) { i64 = va_arg(args, ssize_t); }
            else { u64 = va_arg(args, size_t); }
            break;
        case 'i':
            if (sign) { i64 = va_arg(args, ngx_int_t); }
            else { u64 = va_arg(args, ngx_uint_t); }
            break;
        case 'd':
            if (sign) { i64 = va_arg(args, int); }
            else { u64 = va_arg(args, u_int); }
            break;
        case 'l':
            if (sign) { i64 = va_arg(args, long); }
            else { u64 = va_arg(args, u_long); }
            break;
        case 'D':
            if (sign) { i64 = va_arg(args, int32_t); }
            else { u64 = va_arg(args, uint32_t); }
            break;
        case 'L':
            if (sign) { i64 = va_arg(args, int64_t); }
            else { u64 = va_arg(args, uint64_t); }
            break;
        case 'A':
            if (sign) { i64 = va_arg(args, ngx_atomic_int_t); }
            else { u64 = va_arg(args, ngx_atomic_uint_t); }
            break;
        case 'r': u64 = va_arg(args, rlim_t); sign = 0; break;
        case 'p': u64 = (uintptr_t) va_arg(args, void *); hex = 1; sign = 0;
            break;
        case 'e':
        case 'f':
            d = va_arg(args, double);
            i64 = (d > -9e18 && d < 9e18) ? (int64_t) d : 0;
            sign = 1;
            break;

        case 'c':
            *buf++ = (u_char) (va_arg(args, int) & 0xff);
            fmt++;
            continue;

        case 'Z':
            *buf++ = '\0';
            fmt++;
            continue;

        case 'N':
            *buf++ = '\n';
            fmt++;
            continue;

        case '%':
            *buf++ = '%';
            fmt++;
            continue;

        default:
            *buf++ = *fmt++;
            continue;
        }

        sp = spec;
        *sp++ = '%';

        if (zero) {
            *sp++ = '0';
        }

        sp += snprintf(sp, 8, "%u", (unsigned) ngx_min(width, 60));
        *sp++ = 'l';
        *sp++ = 'l';
        *sp++ = hex == 2 ? 'X' : hex ? 'x' : sign ? 'd' : 'u';
        *sp = '\0';

        if (sign) {
            n = snprintf(num, sizeof(num), spec, (long long) i64);
        } else {
            n = snprintf(num, sizeof(num), spec, (unsigned long long) u64);
        }

        len = ngx_min((size_t) (last - buf), (size_t) n);
        buf = ngx_cpymem(buf, num, len);
        fmt++;
    }

    return buf;
}


u_char *
ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, (void *) -1, fmt, args);
    va_end(args);

    return p;
}


u_char *
ngx_snprintf(u_char *buf, size_t max, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + max, fmt, args);
    va_end(args);

    return p;
}


u_char *
ngx_slprintf(u_char *buf, u_char *last, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, last, fmt, args);
    va_end(args);

    return p;
}


/* logs: every message is formatted, and printed with FUZZ_VERBOSE=1 */

static void
ngx_fuzz_vlog(ngx_uint_t level, const char *fmt, va_list args)
{
    u_char  *p;
    u_char   text[NGX_MAX_ERROR_STR];

    p = ngx_vslprintf(text, text + sizeof(text), fmt, args);

    if (ngx_fuzz_verbose) {
        fprintf(stderr, "[%u] %.*s\n", (unsigned) level, (int) (p - text),
                text);
    }
}


void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    ngx_fuzz_vlog(level, fmt, args);
    va_end(args);
}


void ngx_cdecl
ngx_conf_log_error(ngx_uint_t level, ngx_conf_t *cf, ngx_err_t err,
    const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    ngx_fuzz_vlog(level, fmt, args);
    va_end(args);
}


/* configuration */

ngx_conf_t *
ngx_fuzz_conf(ngx_pool_t *pool, ngx_str_t *args, ngx_uint_t nelts)
{
    ngx_str_t   *a;
    ngx_uint_t   i;
    ngx_conf_t  *cf;

    cf = ngx_pcalloc(pool, sizeof(ngx_conf_t));
    if (cf == NULL) {
        return NULL;
    }

    cf->pool = pool;
    cf->temp_pool = pool;
    cf->cycle = &ngx_fuzz_cycle;
    cf->log = &ngx_fuzz_log;

    cf->conf_file = ngx_pcalloc(pool, sizeof(ngx_conf_file_t));
    if (cf->conf_file == NULL) {
        return NULL;
    }

    ngx_str_set(&cf->conf_file->file.name, "fuzz.conf");
    cf->conf_file->line = 1;

    cf->args = ngx_array_create(pool, nelts ? nelts : 1, sizeof(ngx_str_t));
    if (cf->args == NULL) {
        return NULL;
    }

    /* as nginx's parser leaves them: each argument NUL-terminated */

    for (i = 0; i < nelts; i++) {
        a = ngx_array_push(cf->args);
        if (a == NULL) {
            return NULL;
        }

        a->len = args[i].len;
        a->data = ngx_pnalloc(pool, a->len + 1);
        if (a->data == NULL) {
            return NULL;
        }

        ngx_memcpy(a->data, args[i].data, a->len);
        a->data[a->len] = '\0';
    }

    return cf;
}


/* nginx's slots, as ngx_conf_file.c documents them */

#define ngx_fuzz_slot(type, unset, parse)                                     \
    type             *fp;                                                     \
    ngx_str_t        *value;                                                  \
    ngx_int_t         n;                                                      \
    ngx_conf_post_t  *post;                                                   \
                                                                              \
    fp = (type *) ((char *) conf + cmd->offset);                              \
                                                                              \
    if (*fp != unset) {                                                       \
        return "is duplicate";                                                \
    }                                                                         \
                                                                              \
    value = cf->args->elts;                                                   \
    n = parse;                                                                \
                                                                              \
    if (n == NGX_ERROR) {                                                     \
        return "invalid value";                                               \
    }                                                                         \
                                                                              \
    *fp = (type) n;                                                           \
                                                                              \
    if (cmd->post) {                                                          \
        post = cmd->post;                                                     \
        return post->post_handler(cf, post, fp);                              \
    }                                                                         \
                                                                              \
    return NGX_CONF_OK


char *
ngx_conf_set_msec_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_fuzz_slot(ngx_msec_t, NGX_CONF_UNSET_MSEC,
                  ngx_parse_time(&value[1], 0));
}


char *
ngx_conf_set_sec_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_fuzz_slot(time_t, NGX_CONF_UNSET, ngx_parse_time(&value[1], 1));
}


char *
ngx_conf_set_size_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_fuzz_slot(size_t, NGX_CONF_UNSET_SIZE, ngx_parse_size(&value[1]));
}


char *
ngx_conf_set_num_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_fuzz_slot(ngx_int_t, NGX_CONF_UNSET,
                  ngx_atoi(value[1].data, value[1].len));
}


/* events: timers are not kept (a target fires one by hand) */

void
ngx_rbtree_insert(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
}


void
ngx_rbtree_delete(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
}


ngx_int_t
ngx_handle_read_event(ngx_event_t *rev, ngx_uint_t flags)
{
    return NGX_OK;
}


ngx_int_t
ngx_handle_write_event(ngx_event_t *wev, size_t lowat)
{
    return NGX_OK;
}


/* time: the fuzz clock moves only when a target moves it */

void
ngx_time_update(void)
{
}


/*
 * shared memory: a zone that nginx never mapped (shm.addr NULL), as in
 * "nginx -t"; the clients then keep their state to themselves
 */

ngx_shm_zone_t *
ngx_shared_memory_add(ngx_conf_t *cf, ngx_str_t *name, size_t size,
    void *tag)
{
    ngx_shm_zone_t  *zone;

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_shm_zone_t));
    if (zone == NULL) {
        return NULL;
    }

    zone->shm.size = size;
    zone->shm.name = *name;
    zone->tag = tag;

    return zone;
}


/* thread pools are names only: no task is run */

#if (NGX_THREADS)

#include <ngx_thread_pool.h>

static u_char  ngx_fuzz_thread_pool[64];

ngx_thread_pool_t *
ngx_thread_pool_add(ngx_conf_t *cf, ngx_str_t *name)
{
    return (ngx_thread_pool_t *) ngx_fuzz_thread_pool;
}

#endif


void
ngx_fuzz_trap(const char *name)
{
    fprintf(stderr, "fuzz: %s() reached: not modelled by the target\n",
            name);
    abort();
}


#if (NGX_SSL)

/*
 * The Redis client's tls=on: no OpenSSL context is made in the fuzz
 * targets; ngx_aai_redis_create() then fails as on a context that cannot
 * be made, which ends the configuration.
 */

ngx_int_t
ngx_ssl_create(ngx_ssl_t *ssl, ngx_uint_t protocols, void *data)
{
    return NGX_ERROR;
}

#endif
