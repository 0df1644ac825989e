
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for what the Redis Cluster client reads from a node
 * (ngx_aai_redis_cluster*.c, included here): the CLUSTER SLOTS reply, read
 * by hiredis's reader from the input as RESP; the MOVED and ASK errors;
 * the slot of a key and of a command's keys.
 *
 * Input: byte 0 chooses (0-127: a RESP reply for the slot map parser, else
 * a redirect error), the rest is the reply or the error text; the rest is
 * also a command, its arguments separated by "\n", whose slot is taken.
 *
 * Invariants checked: every range parsed is within the 16384 slots with
 * its start before its end, a port in 1..65535 and a host inside the
 * reply; a redirect's slot is below 16384, its host inside the input; a
 * slot is below 16384.  On the first input the CRC16 is checked against
 * Redis's own test vector ("123456789": 0x31C3) and hash tags against the
 * examples of the Redis Cluster specification.
 */


#include "ngx_fuzz.h"

#include "../ngx_aai_redis_cluster.c"
#include "../ngx_aai_redis_cluster_slots.c"
#include "../ngx_aai_redis_cluster_route.c"
#include "../ngx_aai_redis_cluster_split.c"
#include "../ngx_aai_redis_int.h"


#define FUZZ_RANGES  64


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
fuzz_check_slots(void)
{
    static ngx_uint_t  done;

    if (done++) {
        return;
    }

    if (ngx_aai_redis_cluster_crc16((u_char *) "123456789", 9) != 0x31c3
        || ngx_aai_redis_cluster_slot((u_char *) "123456789", 9) != 12739
        || ngx_aai_redis_cluster_slot((u_char *) "{user1000}.following", 20)
           != ngx_aai_redis_cluster_slot((u_char *) "user1000", 8)
        || ngx_aai_redis_cluster_slot((u_char *) "foo{}{bar}", 10)
           != (ngx_aai_redis_cluster_crc16((u_char *) "foo{}{bar}", 10)
               & 16383)
        || ngx_aai_redis_cluster_slot((u_char *) "foo{{bar}}zap", 13)
           != ngx_aai_redis_cluster_slot((u_char *) "{bar", 4)
        || ngx_aai_redis_cluster_slot((u_char *) "foo{bar}{zap}", 13)
           != ngx_aai_redis_cluster_slot((u_char *) "bar", 3))
    {
        abort();
    }
}


/*
 * In nginx the reply comes through ngx_aai_redis_reader_create()'s reader
 * (ngx_aai_redis_conn.c), whose arrays are bounded: the same bound here.
 */

static redisReplyObjectFunctions   fuzz_fn;
static void                      *(*fuzz_array_fn)(const redisReadTask *task,
                                                   int elements);


static void *
fuzz_create_array(const redisReadTask *task, int elements)
{
    return elements > NGX_AAI_REDIS_MAX_ELEMENTS
           ? NULL : fuzz_array_fn(task, elements);
}


static redisReader *
fuzz_reader_create(void)
{
    redisReader  *reader;

    reader = redisReaderCreate();

    if (reader != NULL) {
        if (fuzz_array_fn == NULL) {
            fuzz_fn = *reader->fn;
            fuzz_array_fn = fuzz_fn.createArray;
            fuzz_fn.createArray = fuzz_create_array;
        }

        reader->fn = &fuzz_fn;
    }

    return reader;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                         *p, *last, *nl;
    void                           *obj;
    ngx_int_t                       n, i, slot;
    ngx_str_t                       host, argv[16];
    ngx_uint_t                      s, port, argc;
    redisReader                    *reader;
    ngx_aai_redis_cluster_range_t   ranges[FUZZ_RANGES];

    ngx_fuzz_init();
    fuzz_check_slots();

    if (size < 1) {
        return 0;
    }

    p = (u_char *) data + 1;
    last = (u_char *) data + size;

    if (data[0] < 128) {
        reader = fuzz_reader_create();
        if (reader == NULL) {
            return 0;
        }

        obj = NULL;

        if (redisReaderFeed(reader, (const char *) p, last - p) == REDIS_OK
            && redisReaderGetReply(reader, &obj) == REDIS_OK
            && obj != NULL)
        {
            n = ngx_aai_redis_cluster_parse_slots(obj, ranges, FUZZ_RANGES);

            for (i = 0; i < n; i++) {
                if (ranges[i].start > ranges[i].end
                    || ranges[i].end >= NGX_AAI_REDIS_CLUSTER_SLOTS
                    || ranges[i].port < 1 || ranges[i].port > 65535
                    || ranges[i].host.len >= NGX_SOCKADDR_STRLEN)
                {
                    abort();
                }
            }

            freeReplyObject(obj);
        }

        redisReaderFree(reader);

    } else if (ngx_aai_redis_cluster_parse_redirect(p, last - p, &s, &host,
                                                    &port)
               == NGX_OK)
    {
        if (s >= NGX_AAI_REDIS_CLUSTER_SLOTS || port < 1 || port > 65535
            || host.data < p || host.data + host.len > last)
        {
            abort();
        }
    }

    if (ngx_aai_redis_cluster_slot(p, last - p)
        >= NGX_AAI_REDIS_CLUSTER_SLOTS)
    {
        abort();
    }

    argc = 0;

    while (p <= last && argc < 16) {
        nl = ngx_strlchr(p, last, '\n');
        if (nl == NULL) {
            nl = last;
        }

        argv[argc].data = p;
        argv[argc++].len = nl - p;
        p = nl + 1;
    }

    slot = ngx_aai_redis_cluster_cmd_slot(argc, argv);

    if (slot != NGX_ERROR && slot > NGX_AAI_REDIS_CLUSTER_ANY) {
        abort();
    }

    return 0;
}
