
/*
 * Copyright (C) aai-nginx authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_aai_metrics.h"


#define NGX_AAI_METRICS_MAGIC    0x4d494141    /* "AAIM" */
#define NGX_AAI_METRICS_VERSION  1
#define NGX_AAI_METRICS_PREFIX   "aai_metrics_"
#define NGX_AAI_METRICS_ZONES    16

#define NGX_AAI_SLOT_VALUE       0
#define NGX_AAI_SLOT_BUCKET      1
#define NGX_AAI_SLOT_SUM         2
#define NGX_AAI_SLOT_COUNT       3

#define NGX_AAI_BOUND_INF        ((uint64_t) -1)


/* configuration-time description of one slot */
typedef struct {
    ngx_str_t                    family;
    ngx_str_t                    help;
    ngx_str_t                    labels;
    ngx_uint_t                   type;
    ngx_uint_t                   kind;
    uint64_t                     bound;
    ngx_uint_t                   scale;
} ngx_aai_metrics_desc_t;


/* shared memory: a header, the slots, then the strings they point to */
typedef struct {
    uint32_t                     family;    /* offsets into the strings */
    uint32_t                     help;
    uint32_t                     labels;
    uint16_t                     type;
    uint16_t                     kind;
    uint64_t                     bound;
    uint64_t                     scale;
    ngx_atomic_t                 value;
} ngx_aai_metrics_slot_t;


typedef struct {
    uint32_t                     magic;
    uint32_t                     version;
    uint32_t                     nslots;
    uint32_t                     strings;   /* offset from the header */
    uint32_t                     size;      /* of the whole block */
    uint32_t                     reserved;
    ngx_aai_metrics_slot_t       slots[1];
} ngx_aai_metrics_shm_t;


struct ngx_aai_metrics_s {
    ngx_array_t                  descs;     /* ngx_aai_metrics_desc_t */
    ngx_str_t                    name;
    void                        *tag;
    ngx_shm_zone_t              *zone;
    ngx_aai_metrics_shm_t       *shm;
};


static ngx_int_t ngx_aai_metrics_push(ngx_aai_metrics_t *m, ngx_uint_t type,
    ngx_uint_t kind, const char *family, const char *help, ngx_str_t *labels,
    uint64_t bound, ngx_uint_t scale);
static uint32_t ngx_aai_metrics_signature(ngx_aai_metrics_t *m);
static size_t ngx_aai_metrics_layout(ngx_aai_metrics_t *m, size_t *strings);
static void ngx_aai_metrics_build(ngx_aai_metrics_t *m,
    ngx_aai_metrics_shm_t *shm, size_t size, size_t strings);
static ngx_uint_t ngx_aai_metrics_same(ngx_aai_metrics_shm_t *a,
    ngx_aai_metrics_shm_t *b);
static ngx_int_t ngx_aai_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_aai_metrics_handler(ngx_http_request_t *r);
static size_t ngx_aai_metrics_walk(ngx_buf_t *b);
static size_t ngx_aai_metrics_zone_len(ngx_aai_metrics_shm_t *shm);
static u_char *ngx_aai_metrics_render(u_char *p,
    ngx_aai_metrics_shm_t **shm, ngx_uint_t n);
static ngx_uint_t ngx_aai_metrics_seen(ngx_aai_metrics_shm_t **shm,
    ngx_uint_t z, ngx_uint_t first, u_char *family);
static u_char *ngx_aai_metrics_render_family(u_char *p,
    ngx_aai_metrics_shm_t *shm, ngx_uint_t first, u_char *family);
static u_char *ngx_aai_metrics_render_slot(u_char *p,
    ngx_aai_metrics_shm_t *shm, ngx_aai_metrics_slot_t *s, uint64_t *cum);
static u_char *ngx_aai_metrics_scaled(u_char *p, uint64_t v, uint64_t scale);


static const char  *ngx_aai_metrics_types[] = {
    "untyped", "counter", "gauge", "histogram"
};


ngx_aai_metrics_t *
ngx_aai_metrics_create(ngx_conf_t *cf, const char *module, void *tag)
{
    size_t              len;
    ngx_aai_metrics_t  *m;

    m = ngx_pcalloc(cf->pool, sizeof(ngx_aai_metrics_t));
    if (m == NULL) {
        return NULL;
    }

    if (ngx_array_init(&m->descs, cf->pool, 16,
                       sizeof(ngx_aai_metrics_desc_t))
        != NGX_OK)
    {
        return NULL;
    }

    len = sizeof(NGX_AAI_METRICS_PREFIX) - 1 + ngx_strlen(module);

    m->name.data = ngx_pnalloc(cf->pool, len);
    if (m->name.data == NULL) {
        return NULL;
    }

    m->name.len = ngx_sprintf(m->name.data, NGX_AAI_METRICS_PREFIX "%s",
                              module)
                  - m->name.data;
    m->tag = tag;

    return m;
}


/* the configuration's pool, for what a caller builds labels in */

ngx_pool_t *
ngx_aai_metrics_pool(ngx_aai_metrics_t *m)
{
    return m->descs.pool;
}


ngx_int_t
ngx_aai_metrics_add(ngx_aai_metrics_t *m, ngx_uint_t type,
    const char *family, const char *help, ngx_str_t *labels)
{
    return ngx_aai_metrics_push(m, type, NGX_AAI_SLOT_VALUE, family, help,
                                labels, 0, 1);
}


ngx_int_t
ngx_aai_metrics_add_histogram(ngx_aai_metrics_t *m, const char *family,
    const char *help, ngx_str_t *labels, const ngx_uint_t *bounds,
    ngx_uint_t nbounds, ngx_uint_t scale)
{
    ngx_int_t   first;
    ngx_uint_t  i;

    first = m->descs.nelts;

    for (i = 0; i <= nbounds; i++) {
        if (ngx_aai_metrics_push(m, NGX_AAI_METRIC_HISTOGRAM,
                                 NGX_AAI_SLOT_BUCKET, family, help, labels,
                                 i < nbounds ? bounds[i] : NGX_AAI_BOUND_INF,
                                 scale)
            == NGX_ERROR)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_aai_metrics_push(m, NGX_AAI_METRIC_HISTOGRAM, NGX_AAI_SLOT_SUM,
                             family, help, labels, 0, scale)
        == NGX_ERROR
        || ngx_aai_metrics_push(m, NGX_AAI_METRIC_HISTOGRAM,
                                NGX_AAI_SLOT_COUNT, family, help, labels, 0,
                                scale)
           == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    return first;
}


ngx_int_t
ngx_aai_metrics_add_redis_latency(ngx_aai_metrics_t *m, const char *family,
    const char *help)
{
    static const ngx_uint_t  bounds[] = {
        100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
        250000, 500000, 1000000
    };

    return ngx_aai_metrics_add_histogram(m, family, help, NULL, bounds,
                                         sizeof(bounds) / sizeof(bounds[0]),
                                         1000000);
}


static ngx_int_t
ngx_aai_metrics_push(ngx_aai_metrics_t *m, ngx_uint_t type, ngx_uint_t kind,
    const char *family, const char *help, ngx_str_t *labels, uint64_t bound,
    ngx_uint_t scale)
{
    ngx_aai_metrics_desc_t  *d;

    d = ngx_array_push(&m->descs);
    if (d == NULL) {
        return NGX_ERROR;
    }

    d->family.data = (u_char *) family;
    d->family.len = ngx_strlen(family);
    d->help.data = (u_char *) help;
    d->help.len = ngx_strlen(help);

    if (labels) {
        d->labels = *labels;

    } else {
        ngx_str_null(&d->labels);
    }

    d->type = type;
    d->kind = kind;
    d->bound = bound;
    d->scale = scale ? scale : 1;

    return m->descs.nelts - 1;
}


ngx_int_t
ngx_aai_metrics_zone(ngx_conf_t *cf, ngx_aai_metrics_t *m)
{
    u_char  *p;
    size_t   size, strings;

    size = ngx_aai_metrics_layout(m, &strings);

    /*
     * The zone's name carries a signature of the layout: a reload that
     * keeps the layout reuses the zone and its values, one that changes it
     * gets a new zone, and the old one stays with the old cycle as long as
     * the old workers write to it.
     */

    p = ngx_pnalloc(cf->pool, m->name.len + 1 + 8);
    if (p == NULL) {
        return NGX_ERROR;
    }

    m->name.len = ngx_sprintf(p, "%V_%08xD", &m->name,
                              ngx_aai_metrics_signature(m))
                  - p;
    m->name.data = p;

    /* the slab pool's own pages, plus ours */
    size = ngx_align(size, ngx_pagesize) + 8 * ngx_pagesize;

    m->zone = ngx_shared_memory_add(cf, &m->name, size, m->tag);
    if (m->zone == NULL) {
        return NGX_ERROR;
    }

    m->zone->init = ngx_aai_metrics_init_zone;
    m->zone->data = m;

    return NGX_OK;
}


static uint32_t
ngx_aai_metrics_signature(ngx_aai_metrics_t *m)
{
    uint32_t                 crc;
    ngx_uint_t               i;
    ngx_aai_metrics_desc_t  *d;

    d = m->descs.elts;
    ngx_crc32_init(crc);

    for (i = 0; i < m->descs.nelts; i++) {
        ngx_crc32_update(&crc, d[i].family.data, d[i].family.len);
        ngx_crc32_update(&crc, (u_char *) "\0", 1);
        ngx_crc32_update(&crc, d[i].labels.data, d[i].labels.len);
        ngx_crc32_update(&crc, (u_char *) "\0", 1);
        ngx_crc32_update(&crc, (u_char *) &d[i].type, sizeof(ngx_uint_t));
        ngx_crc32_update(&crc, (u_char *) &d[i].kind, sizeof(ngx_uint_t));
        ngx_crc32_update(&crc, (u_char *) &d[i].bound, sizeof(uint64_t));
        ngx_crc32_update(&crc, (u_char *) &d[i].scale, sizeof(ngx_uint_t));
    }

    ngx_crc32_final(crc);

    return crc;
}


static size_t
ngx_aai_metrics_layout(ngx_aai_metrics_t *m, size_t *strings)
{
    size_t                   len;
    ngx_uint_t               i;
    ngx_aai_metrics_desc_t  *d;

    d = m->descs.elts;
    len = 0;

    for (i = 0; i < m->descs.nelts; i++) {
        len += d[i].family.len + d[i].help.len + d[i].labels.len + 3;
    }

    *strings = offsetof(ngx_aai_metrics_shm_t, slots)
               + m->descs.nelts * sizeof(ngx_aai_metrics_slot_t);

    return *strings + len;
}


static void
ngx_aai_metrics_build(ngx_aai_metrics_t *m, ngx_aai_metrics_shm_t *shm,
    size_t size, size_t strings)
{
    u_char                  *base, *p;
    ngx_uint_t               i;
    ngx_aai_metrics_desc_t  *d;
    ngx_aai_metrics_slot_t  *s;

    ngx_memzero(shm, size);

    shm->magic = NGX_AAI_METRICS_MAGIC;
    shm->version = NGX_AAI_METRICS_VERSION;
    shm->nslots = m->descs.nelts;
    shm->strings = strings;
    shm->size = size;

    base = (u_char *) shm;
    p = base + strings;
    d = m->descs.elts;

    for (i = 0; i < m->descs.nelts; i++) {
        s = &shm->slots[i];

        s->family = p - base;
        p = ngx_cpymem(p, d[i].family.data, d[i].family.len);
        *p++ = '\0';

        s->help = p - base;
        p = ngx_cpymem(p, d[i].help.data, d[i].help.len);
        *p++ = '\0';

        s->labels = p - base;

        /* no labels: data is NULL, which memcpy() must not be given */

        if (d[i].labels.len) {
            p = ngx_cpymem(p, d[i].labels.data, d[i].labels.len);
        }

        *p++ = '\0';

        s->type = d[i].type;
        s->kind = d[i].kind;
        s->bound = d[i].bound;
        s->scale = d[i].scale;
    }
}


/* the same slots in the same order: values can be kept across a reload */

static ngx_uint_t
ngx_aai_metrics_same(ngx_aai_metrics_shm_t *a, ngx_aai_metrics_shm_t *b)
{
    ngx_uint_t               i;
    ngx_aai_metrics_slot_t  *x, *y;

    if (a->magic != b->magic || a->version != b->version
        || a->nslots != b->nslots || a->size != b->size)
    {
        return 0;
    }

    for (i = 0; i < a->nslots; i++) {
        x = &a->slots[i];
        y = &b->slots[i];

        if (x->type != y->type || x->kind != y->kind || x->bound != y->bound
            || x->scale != y->scale
            || ngx_strcmp((u_char *) a + x->family, (u_char *) b + y->family)
               != 0
            || ngx_strcmp((u_char *) a + x->labels, (u_char *) b + y->labels)
               != 0)
        {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_aai_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_aai_metrics_t  *m = shm_zone->data;

    size_t                  size, strings;
    ngx_slab_pool_t        *shpool;
    ngx_aai_metrics_shm_t  *old, *shm;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    size = ngx_aai_metrics_layout(m, &strings);

    shm = ngx_slab_alloc(shpool, size);
    if (shm == NULL) {
        return NGX_ERROR;
    }

    ngx_aai_metrics_build(m, shm, size, strings);

    old = data ? ((ngx_aai_metrics_t *) data)->shm : NULL;

    /*
     * A reused zone has the same layout (its name says so): keep the old
     * block, which the old workers still write to until they exit.
     * Should the layouts differ all the same, the old block is left alone
     * for the same reason.
     */

    if (old && ngx_aai_metrics_same(old, shm)) {
        ngx_slab_free(shpool, shm);
        shm = old;
    }

    m->shm = shm;

    /* what the "aai_metrics" handler of any module finds in the cycle */
    shpool->data = shm;

    return NGX_OK;
}


void
ngx_aai_metrics_inc(ngx_aai_metrics_t *m, ngx_int_t idx,
    ngx_atomic_int_t delta)
{
    if (m == NULL || m->shm == NULL || idx < 0) {
        return;
    }

    (void) ngx_atomic_fetch_add(&m->shm->slots[idx].value, delta);
}


void
ngx_aai_metrics_set(ngx_aai_metrics_t *m, ngx_int_t idx,
    ngx_atomic_uint_t value)
{
    if (m == NULL || m->shm == NULL || idx < 0) {
        return;
    }

    m->shm->slots[idx].value = value;
}


void
ngx_aai_metrics_observe(ngx_aai_metrics_t *m, ngx_int_t idx,
    ngx_uint_t value)
{
    ngx_aai_metrics_slot_t  *s;

    if (m == NULL || m->shm == NULL || idx < 0) {
        return;
    }

    s = &m->shm->slots[idx];

    while (s->kind == NGX_AAI_SLOT_BUCKET && s->bound < value) {
        s++;
    }

    /* the +Inf bucket stops the walk for any value */

    (void) ngx_atomic_fetch_add(&s->value, 1);

    while (s->kind == NGX_AAI_SLOT_BUCKET) {
        s++;
    }

    (void) ngx_atomic_fetch_add(&s[0].value, value);     /* _sum */
    (void) ngx_atomic_fetch_add(&s[1].value, 1);         /* _count */
}


char *
ngx_aai_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate or conflicts with another content handler";
    }

    clcf->handler = ngx_aai_metrics_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_aai_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    static ngx_str_t  type = ngx_string("text/plain; version=0.0.4");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    b = ngx_create_temp_buf(r->pool, ngx_aai_metrics_walk(NULL) + 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_aai_metrics_walk(b);

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type = type;
    r->headers_out.content_type_len = type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    if (b->last == b->pos) {
        b->sync = 1;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * Every metrics zone of the running cycle: with b == NULL, returns the
 * length their text can take; else renders them into b.
 */

static size_t
ngx_aai_metrics_walk(ngx_buf_t *b)
{
    size_t                  len;
    ngx_uint_t              i, n;
    ngx_list_part_t        *part;
    ngx_shm_zone_t         *zone;
    ngx_aai_metrics_shm_t  *shm, *zones[NGX_AAI_METRICS_ZONES];

    len = 0;
    n = 0;
    part = (ngx_list_part_t *) &ngx_cycle->shared_memory.part;
    zone = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            zone = part->elts;
            i = 0;
        }

        if (zone[i].shm.addr == NULL
            || zone[i].shm.name.len <= sizeof(NGX_AAI_METRICS_PREFIX) - 1
            || ngx_strncmp(zone[i].shm.name.data, NGX_AAI_METRICS_PREFIX,
                           sizeof(NGX_AAI_METRICS_PREFIX) - 1)
               != 0)
        {
            continue;
        }

        shm = ((ngx_slab_pool_t *) zone[i].shm.addr)->data;

        if (shm == NULL || shm->magic != NGX_AAI_METRICS_MAGIC
            || shm->version != NGX_AAI_METRICS_VERSION)
        {
            continue;
        }

        if (n == NGX_AAI_METRICS_ZONES) {
            continue;
        }

        zones[n++] = shm;
        len += ngx_aai_metrics_zone_len(shm);
    }

    if (b != NULL) {
        b->last = ngx_aai_metrics_render(b->last, zones, n);
    }

    return len;
}


static size_t
ngx_aai_metrics_zone_len(ngx_aai_metrics_shm_t *shm)
{
    u_char                  *base;
    size_t                   len;
    ngx_uint_t               i;
    ngx_aai_metrics_slot_t  *s;

    base = (u_char *) shm;
    len = 0;

    for (i = 0; i < shm->nslots; i++) {
        s = &shm->slots[i];

        /* "# HELP f h\n# TYPE f histogram\n" once, "f_bucket{l,le="x"} v\n" */
        len += 2 * ngx_strlen(base + s->family)
               + ngx_strlen(base + s->help)
               + ngx_strlen(base + s->labels)
               + 2 * NGX_INT64_LEN + 64;
    }

    return len;
}


/*
 * Each family once, with its HELP and TYPE, and all its samples together,
 * whichever modules' zones hold them (the aai_redis_* families are in the
 * limiter's and the cache's): families in order of first use.
 */

static u_char *
ngx_aai_metrics_render(u_char *p, ngx_aai_metrics_shm_t **shm, ngx_uint_t n)
{
    u_char                  *family;
    ngx_uint_t               z, i, k;
    ngx_aai_metrics_slot_t  *s;

    for (z = 0; z < n; z++) {

        for (i = 0; i < shm[z]->nslots; i++) {
            s = &shm[z]->slots[i];
            family = (u_char *) shm[z] + s->family;

            if (ngx_aai_metrics_seen(shm, z, i, family)) {
                continue;
            }

            p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                            family, (u_char *) shm[z] + s->help, family,
                            ngx_aai_metrics_types[s->type & 3]);

            for (k = z; k < n; k++) {
                p = ngx_aai_metrics_render_family(p, shm[k],
                                                  k == z ? i : 0, family);
            }
        }
    }

    return p;
}


/* whether a slot before slot "first" of zone z, in any zone, is of family */

static ngx_uint_t
ngx_aai_metrics_seen(ngx_aai_metrics_shm_t **shm, ngx_uint_t z,
    ngx_uint_t first, u_char *family)
{
    ngx_uint_t  k, j, end;

    for (k = 0; k <= z; k++) {
        end = (k == z) ? first : shm[k]->nslots;

        for (j = 0; j < end; j++) {
            if (ngx_strcmp((u_char *) shm[k] + shm[k]->slots[j].family,
                           family)
                == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


/* the samples of one family in one zone, from its slot "first" on */

static u_char *
ngx_aai_metrics_render_family(u_char *p, ngx_aai_metrics_shm_t *shm,
    ngx_uint_t first, u_char *family)
{
    uint64_t                 cum;
    ngx_uint_t               i;
    ngx_aai_metrics_slot_t  *s;

    cum = 0;

    for (i = first; i < shm->nslots; i++) {
        s = &shm->slots[i];

        if (ngx_strcmp((u_char *) shm + s->family, family) == 0) {
            p = ngx_aai_metrics_render_slot(p, shm, s, &cum);
        }
    }

    return p;
}


static u_char *
ngx_aai_metrics_render_slot(u_char *p, ngx_aai_metrics_shm_t *shm,
    ngx_aai_metrics_slot_t *s, uint64_t *cum)
{
    u_char      *base, *labels;
    uint64_t     v;
    const char  *sep;

    base = (u_char *) shm;
    labels = base + s->labels;
    sep = *labels ? "," : "";
    v = s->value;

    switch (s->kind) {

    case NGX_AAI_SLOT_BUCKET:
        *cum += v;

        if (s->bound == NGX_AAI_BOUND_INF) {
            p = ngx_sprintf(p, "%s_bucket{%s%sle=\"+Inf\"} %uL\n",
                            base + s->family, labels, sep, *cum);
            return p;
        }

        p = ngx_sprintf(p, "%s_bucket{%s%sle=\"", base + s->family, labels,
                        sep);
        p = ngx_aai_metrics_scaled(p, s->bound, s->scale);
        return ngx_sprintf(p, "\"} %uL\n", *cum);

    case NGX_AAI_SLOT_SUM:
        p = ngx_sprintf(p, "%s_sum%s%s%s ", base + s->family,
                        *labels ? "{" : "", labels, *labels ? "}" : "");
        p = ngx_aai_metrics_scaled(p, v, s->scale);
        *p++ = LF;
        return p;

    case NGX_AAI_SLOT_COUNT:
        *cum = 0;
        return ngx_sprintf(p, "%s_count%s%s%s %uL\n", base + s->family,
                           *labels ? "{" : "", labels, *labels ? "}" : "",
                           v);

    default:
        return ngx_sprintf(p, "%s%s%s%s %uL\n", base + s->family,
                           *labels ? "{" : "", labels, *labels ? "}" : "",
                           v);
    }
}


/* v / scale as a decimal without trailing zeros: 500/1000000 -> 0.0005 */

static u_char *
ngx_aai_metrics_scaled(u_char *p, uint64_t v, uint64_t scale)
{
    u_char    frac[NGX_INT64_LEN];
    size_t    n, digits;
    uint64_t  f, s;

    p = ngx_sprintf(p, "%uL", v / scale);

    f = v % scale;
    if (scale <= 1 || f == 0) {
        return p;
    }

    digits = 0;
    for (s = scale; s > 1; s /= 10) {
        digits++;
    }

    n = ngx_sprintf(frac, "%uL", f) - frac;

    while (n && frac[n - 1] == '0') {
        n--;
        digits--;
    }

    *p++ = '.';

    for (s = n; s < digits; s++) {
        *p++ = '0';
    }

    return ngx_cpymem(p, frac, n);
}
