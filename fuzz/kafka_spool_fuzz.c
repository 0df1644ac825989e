
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for the reader of the Kafka spool's files
 * (ngx_http_aai_kafka_spool.c, included here for its static functions):
 * what a replay reads back from disk, after a crash, a full disk or
 * someone's editor, is outside data.
 *
 * Input: a mode byte, then the file.  Mode bit 0: the rest is turned into
 * well-formed records first (each a topic, key, headers and value length
 * byte, 255 for no key, then their bytes), so that the CRC and the field
 * checks are passed and the deeper paths reached; bit 1: the file is cut
 * by the next byte's count; bit 2: the file is said to be longer than
 * what was read (the reader asks for more); bit 3: the producer refuses
 * its second event (queue full).
 *
 * Invariants checked: every event handed to the producer lies within the
 * bytes read, its topic is not empty, and the reader never moves past
 * what it read.
 */


#include "ngx_fuzz.h"

#include "../ngx_http_aai_kafka_spool.c"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


uint32_t  ngx_crc32_table256[256];


static ngx_http_aai_kafka_spool_t      fuzz_spool;
static ngx_http_aai_kafka_spool_shm_t  fuzz_shm;
static ngx_http_aai_kafka_spool_io_t   fuzz_io;
static u_char                         *fuzz_buf;
static size_t                          fuzz_len;
static ngx_uint_t                      fuzz_events;
static ngx_uint_t                      fuzz_refuse;


void
ngx_aai_metrics_inc(ngx_aai_metrics_t *m, ngx_int_t idx,
    ngx_atomic_int_t delta)
{
}


ngx_int_t
ngx_thread_task_post(ngx_thread_pool_t *tp, ngx_thread_task_t *task)
{
    /* the disk is never reached: the operation stays under way */
    return NGX_OK;
}


static void
fuzz_within(ngx_str_t *s)
{
    if (s->len == 0) {
        return;
    }

    if (s->data < fuzz_buf || s->data + s->len > fuzz_buf + fuzz_len) {
        abort();
    }
}


static ngx_int_t
fuzz_produce(ngx_str_t *topic, ngx_str_t *key, ngx_str_t *value,
    ngx_str_t *headers, void *opaque)
{
    if (topic->len == 0) {
        abort();
    }

    fuzz_within(topic);
    fuzz_within(key);
    fuzz_within(value);
    fuzz_within(headers);

    if (fuzz_refuse && ++fuzz_events == 2) {
        return NGX_AGAIN;
    }

    return NGX_OK;
}


static void
fuzz_crc_table(void)
{
    uint32_t    c;
    ngx_uint_t  i, k;

    for (i = 0; i < 256; i++) {
        c = (uint32_t) i;

        for (k = 0; k < 8; k++) {
            c = (c & 1) ? 0xedb88320 ^ (c >> 1) : c >> 1;
        }

        ngx_crc32_table256[i] = c;
    }
}


/* well-formed records from the input's fields; returns the file's length */

static size_t
fuzz_records(const uint8_t *in, size_t n, u_char *out)
{
    u_char      *p, *body;
    size_t       tlen, klen, hlen, vlen, need;
    uint16_t     t16;
    uint32_t     u32, nokey;
    ngx_uint_t   has_key;

    p = out;

    while (n >= 4) {
        tlen = in[0] ? in[0] : 1;
        has_key = (in[1] != 255);
        klen = has_key ? in[1] : 0;
        hlen = in[2];
        vlen = in[3];
        in += 4;
        n -= 4;

        need = tlen + klen + hlen + vlen;

        if (n < need) {
            break;
        }

        ngx_memcpy(p, ngx_http_aai_kafka_spool_magic, 4);
        u32 = (uint32_t) (NGX_HTTP_AAI_KAFKA_SPOOL_BODY + need);
        ngx_memcpy(p + 4, &u32, 4);

        body = p + NGX_HTTP_AAI_KAFKA_SPOOL_HDR;
        t16 = (uint16_t) tlen;
        ngx_memcpy(body, &t16, 2);
        ngx_memzero(body + 2, 2);
        nokey = NGX_HTTP_AAI_KAFKA_SPOOL_NO_KEY;
        u32 = has_key ? (uint32_t) klen : nokey;
        ngx_memcpy(body + 4, &u32, 4);
        u32 = (uint32_t) hlen;
        ngx_memcpy(body + 8, &u32, 4);
        ngx_memcpy(body + NGX_HTTP_AAI_KAFKA_SPOOL_BODY, in, need);

        u32 = ngx_crc32_long(body, NGX_HTTP_AAI_KAFKA_SPOOL_BODY + need);
        ngx_memcpy(p + 8, &u32, 4);

        p = body + NGX_HTTP_AAI_KAFKA_SPOOL_BODY + need;
        in += need;
        n -= need;
    }

    return p - out;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t                              len, cut;
    ngx_uint_t                          mode;
    static ngx_uint_t                   inited;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    if (!inited) {
        ngx_fuzz_init();
        fuzz_crc_table();
        ngx_str_set(&fuzz_spool.path, "/nonexistent");
        inited = 1;
    }

    if (size < 2) {
        return 0;
    }

    mode = data[0];
    cut = data[1];
    data += 2;
    size -= 2;

    /* a record adds 12 + 12 bytes to 4 bytes of fields at most */
    fuzz_buf = malloc(size * 7 + 1);
    if (fuzz_buf == NULL) {
        return 0;
    }

    if (mode & 1) {
        len = fuzz_records(data, size, fuzz_buf);

    } else {
        ngx_memcpy(fuzz_buf, data, size);
        len = size;
    }

    if ((mode & 2) && cut < len) {
        len -= cut;
    }

    /* the bytes read, exactly: an overread is seen */
    fuzz_len = len;
    fuzz_buf = realloc(fuzz_buf, len ? len : 1);
    if (fuzz_buf == NULL) {
        return 0;
    }

    fuzz_events = 0;
    fuzz_refuse = mode & 8;

    ngx_memzero(&fuzz_shm, sizeof(fuzz_shm));
    fuzz_spool.shm = &fuzz_shm;
    fuzz_spool.produce = fuzz_produce;
    fuzz_spool.rate = 1000;

    sw = &ngx_http_aai_kafka_spool_worker;
    ngx_memzero(sw, sizeof(ngx_http_aai_kafka_spool_worker_t));

    sw->spool = &fuzz_spool;
    sw->io = &fuzz_io;
    sw->wfd = NGX_INVALID_FILE;
    sw->rfd = NGX_INVALID_FILE;
    sw->rname = "fuzz.spool";
    sw->replaying = 1;
    sw->rbuf = fuzz_buf;
    sw->rcap = len;
    sw->rlen = len;
    sw->rsize = (off_t) len + ((mode & 4) ? 1 + cut : 0);
    sw->rbudget = 100000;

    ngx_http_aai_kafka_spool_chunk();

    if (sw->rpos > sw->rlen) {
        abort();
    }

    /* the reader may have freed ours and taken a larger one */
    if (sw->rbuf != fuzz_buf) {
        ngx_free(sw->rbuf);

    } else {
        free(fuzz_buf);
    }

    fuzz_buf = NULL;

    return 0;
}
