
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for the limiter script's reply
 * (ngx_http_aai_ratelimit_batch.c, included here for its static
 * functions): a batch of requests, each checking one or more zones, and
 * the reply Redis sent for it, parsed by hiredis's reader, checked by
 * ngx_http_aai_ratelimit_check_reply() and, when it passes, read record by
 * record by ngx_http_aai_ratelimit_parse() as the reply handler does.
 *
 * Input: byte 0 the number of requests (1-8); per request a byte: bits 0-2
 * its zones (1-8), bit 3 the short reply of a sliding window without
 * burst, bit 4 not sent, bit 5 gone before the reply; then the reply in
 * RESP.
 *
 * Invariants checked: a reply that passes the check is read only inside
 * its elements (AddressSanitizer: the element array is hiredis's own
 * allocation), the zone it names as the most restrictive exists.
 */


#include "ngx_fuzz.h"

#include "ngx_http_aai_ratelimit_srcs.h"


#define FUZZ_SLOTS  8
#define FUZZ_ZONES  8


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


/*
 * hiredis allocates an array reply's element pointers when it reads the
 * header: "*67000000" costs 536 MB at once (and seconds to free) before
 * any element arrives.  Such inputs are left out here, where the reader
 * is hiredis's own; the suite's client (redis_reply) bounds it.
 */

static ngx_uint_t
fuzz_huge_array(const u_char *p, const u_char *last)
{
    uint64_t  n;

    for ( /* void */ ; p < last; p++) {
        if (*p != '*') {
            continue;
        }

        n = 0;

        while (p + 1 < last && p[1] >= '0' && p[1] <= '9' && n < 1000000) {
            n = n * 10 + (*++p - '0');
        }

        if (n > 65536) {
            return 1;
        }
    }

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void                              *obj;
    size_t                             len;
    ngx_uint_t                         i, k, flags;
    redisReply                        *reply, **e;
    redisReader                       *reader;
    ngx_fuzz_in_t                      in;
    ngx_http_aai_ratelimit_ctx_t      *ctx;
    ngx_http_aai_ratelimit_slot_t     *slot;
    ngx_http_aai_ratelimit_zone_t      zone;

    static ngx_http_aai_ratelimit_batch_t   b;
    static ngx_http_aai_ratelimit_ctx_t     ctxs[FUZZ_SLOTS];
    static ngx_http_aai_ratelimit_zone_t   *zones[FUZZ_ZONES];
    static ngx_http_aai_ratelimit_result_t  results[FUZZ_SLOTS][FUZZ_ZONES];

    ngx_fuzz_init();

    in.p = data;
    in.last = data + size;

    ngx_memzero(&zone, sizeof(ngx_http_aai_ratelimit_zone_t));
    zone.window_ms = 1000;

    for (i = 0; i < FUZZ_ZONES; i++) {
        zones[i] = &zone;
    }

    ngx_memzero(&b, sizeof(ngx_http_aai_ratelimit_batch_t));
    b.nslots = ngx_fuzz_byte(&in) % FUZZ_SLOTS + 1;

    for (i = 0; i < b.nslots; i++) {
        flags = ngx_fuzz_byte(&in);
        slot = &b.slots[i];
        ctx = &ctxs[i];

        ngx_memzero(ctx, sizeof(ngx_http_aai_ratelimit_ctx_t));
        ctx->nzones = (flags & 7) + 1;
        ctx->zones = zones;
        ctx->results = results[i];

        slot->nzones = (u_char) ctx->nzones;
        slot->fast = (flags & 8) ? 1 : 0;
        slot->sent = (flags & 0x10) ? 0 : 1;
        slot->ctx = (flags & 0x20) ? NULL : ctx;

        b.nzones += ctx->nzones;
    }

    if (fuzz_huge_array(in.p, in.last)) {
        return 0;
    }

    reader = redisReaderCreate();
    if (reader == NULL) {
        abort();
    }

    len = in.last - in.p;

    if (redisReaderFeed(reader, (const char *) in.p, len) != REDIS_OK) {
        abort();
    }

    obj = NULL;

    if (redisReaderGetReply(reader, &obj) != REDIS_OK || obj == NULL) {
        redisReaderFree(reader);
        return 0;
    }

    reply = obj;

    if (reply->type != REDIS_REPLY_ERROR
        && ngx_http_aai_ratelimit_check_reply(&b, reply) == NGX_OK)
    {
        /* as ngx_http_aai_ratelimit_reply_handler() reads it */

        e = reply->element;

        for (i = 0; i < b.nslots; i++) {
            slot = &b.slots[i];

            if (!slot->sent) {
                continue;
            }

            len = ngx_http_aai_ratelimit_reply_len(slot, e);

            if (slot->ctx) {
                ngx_memzero(results[i], sizeof(results[i]));
                ngx_http_aai_ratelimit_parse(slot->ctx, slot, e);

                for (k = 0; k < slot->ctx->nzones; k++) {
                    if (results[i][k].rejected > 1) {
                        abort();
                    }
                }
            }

            e += len;
        }

        if (reply->elements && e != reply->element + reply->elements) {
            abort();
        }
    }

    freeReplyObject(reply);
    redisReaderFree(reader);

    return 0;
}
