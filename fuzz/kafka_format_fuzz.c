
/*
 * Copyright (C) aai-nginx authors
 *
 * libFuzzer target for the Kafka events' formatting and escaping
 * (ngx_http_aai_kafka_event.c, included here for its static functions, with
 * the module's other files, which hold the directive's handler and the
 * statistics callback): an aai_kafka_format directive parsed by the
 * module's own handler, then an event printed from variable values the
 * input gives (strings with any bytes, numbers, booleans, not found), and
 * the librdkafka statistics JSON the module reads.
 *
 * Input: the directive's arguments after its name, separated by spaces,
 * up to a newline; then the variables' values, each a length byte (255:
 * not found) and that many bytes.  An input starting with '{' is a
 * statistics document instead.
 *
 * Invariants checked: the event is valid JSON (cJSON parses it back) with
 * one member per field, valid UTF-8 without control characters, shorter
 * than the size the module computed for it.
 */


#include "ngx_fuzz.h"

#include "../ngx_http_aai_kafka_module.c"
#include "../ngx_http_aai_kafka_event.c"
#include "../ngx_http_aai_kafka_producer.c"
#include "../ngx_http_aai_kafka_metrics.c"


#define FUZZ_VARS  32


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static ngx_http_variable_value_t  fuzz_vars[FUZZ_VARS];
static ngx_uint_t                 fuzz_nindex;
static ngx_uint_t                 fuzz_ncomplex;


ngx_int_t
ngx_http_get_variable_index(ngx_conf_t *cf, ngx_str_t *name)
{
    return fuzz_nindex++ % FUZZ_VARS;
}


ngx_http_variable_value_t *
ngx_http_get_indexed_variable(ngx_http_request_t *r, ngx_uint_t index)
{
    return &fuzz_vars[index];
}


ngx_int_t
ngx_http_compile_complex_value(ngx_http_compile_complex_value_t *ccv)
{
    ngx_memzero(ccv->complex_value, sizeof(ngx_http_complex_value_t));

    ccv->complex_value->value = *ccv->value;

    return NGX_OK;
}


/* a complex value is the value of the last variables, from the end */

ngx_int_t
ngx_http_complex_value(ngx_http_request_t *r, ngx_http_complex_value_t *val,
    ngx_str_t *value)
{
    ngx_http_variable_value_t  *vv;

    vv = &fuzz_vars[FUZZ_VARS - 1 - fuzz_ncomplex++ % FUZZ_VARS];

    if (vv->not_found) {
        return NGX_ERROR;
    }

    value->data = vv->data;
    value->len = vv->len;

    return NGX_OK;
}


void
ngx_aai_metrics_observe(ngx_aai_metrics_t *m, ngx_int_t metric,
    ngx_uint_t value)
{
}


/* UTF-8 as RFC 3629 has it, and no byte below 0x20 */

static void
fuzz_check_utf8(u_char *p, size_t len)
{
    u_char  *end;
    size_t   skip;

    end = p + len;

    while (p < end) {
        if (*p < 0x20) {
            abort();
        }

        if (*p < 0x80) {
            p++;
            continue;
        }

        if (ngx_http_aai_kafka_utf8_seq(p, end, &skip) == 0) {
            abort();
        }

        p += (*p >= 0xf0) ? 4 : (*p >= 0xe0) ? 3 : 2;
    }
}


static void
fuzz_stats(const uint8_t *data, size_t size)
{
    char                            *json;
    ngx_http_aai_kafka_worker_t      w;
    ngx_http_aai_kafka_main_conf_t   kmcf;

    json = malloc(size);
    ngx_memcpy(json, data, size);

    ngx_memzero(&w, sizeof(ngx_http_aai_kafka_worker_t));
    ngx_memzero(&kmcf, sizeof(ngx_http_aai_kafka_main_conf_t));
    w.kmcf = &kmcf;

    (void) ngx_http_aai_kafka_stats_cb(NULL, json, size, &w);

    free(json);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                              n;
    cJSON                           *back, *item;
    size_t                           len, bound;
    ngx_str_t                        args[64], line, out;
    ngx_uint_t                       nargs, i;
    ngx_pool_t                      *pool;
    ngx_conf_t                      *cf;
    ngx_command_t                    cmd;
    ngx_fuzz_in_t                    in, words;
    ngx_http_request_t               r;
    ngx_http_aai_kafka_field_t      *f;
    ngx_http_aai_kafka_format_t     *fmt;
    ngx_http_aai_kafka_main_conf_t   kmcf;

    ngx_fuzz_init();

    if (size && data[0] == '{') {
        fuzz_stats(data, size);
        return 0;
    }

    in.p = data;
    in.last = data + size;

    line = ngx_fuzz_field(&in, '\n');

    words.p = line.data;
    words.last = line.data + line.len;

    ngx_str_set(&args[0], "aai_kafka_format");
    nargs = 1;

    while (words.p < words.last && nargs < 64) {
        args[nargs++] = ngx_fuzz_field(&words, ' ');
    }

    if (nargs < 2) {
        return 0;
    }

    fuzz_nindex = 0;
    fuzz_ncomplex = 0;

    for (i = 0; i < FUZZ_VARS; i++) {
        len = ngx_fuzz_byte(&in);

        ngx_memzero(&fuzz_vars[i], sizeof(ngx_http_variable_value_t));

        if (len == 255) {
            fuzz_vars[i].not_found = 1;
            continue;
        }

        len = ngx_min(len, (size_t) (in.last - in.p));

        fuzz_vars[i].data = (u_char *) in.p;
        fuzz_vars[i].len = len;
        fuzz_vars[i].valid = 1;

        in.p += len;
    }

    pool = ngx_fuzz_pool();
    cf = ngx_fuzz_conf(pool, args, nargs);

    ngx_memzero(&cmd, sizeof(ngx_command_t));
    ngx_str_set(&cmd.name, "aai_kafka_format");

    ngx_memzero(&kmcf, sizeof(ngx_http_aai_kafka_main_conf_t));

    if (ngx_http_aai_kafka_format(cf, &cmd, &kmcf) != NGX_CONF_OK) {
        ngx_destroy_pool(pool);
        return 0;
    }

    fmt = kmcf.formats->elts;
    f = fmt->fields->elts;

    ngx_memzero(&r, sizeof(ngx_http_request_t));
    r.pool = pool;

    /* the largest the event may be: what json() allows for */

    bound = fmt->size + sizeof("{}") + 8;

    for (i = 0; i < fmt->fields->nelts; i++) {
        bound += 6 * 3 * 256 + 2 + 5;
    }

    if (ngx_http_aai_kafka_json(&r, fmt, &out) == NGX_OK) {

        if (out.len >= bound) {
            abort();
        }

        fuzz_check_utf8(out.data, out.len);

        back = cJSON_ParseWithLength((char *) out.data, out.len);
        if (back == NULL) {
            fprintf(stderr, "not JSON: %.*s\n", (int) out.len, out.data);
            abort();
        }

        n = 0;

        cJSON_ArrayForEach(item, back) {
            if ((ngx_uint_t) n >= fmt->fields->nelts
                || ngx_strcmp(item->string, f[n].name) != 0)
            {
                abort();
            }

            n++;
        }

        if ((ngx_uint_t) n != fmt->fields->nelts) {
            abort();
        }

        cJSON_Delete(back);
    }

    ngx_http_aai_kafka_trees_free(&kmcf);
    ngx_destroy_pool(pool);

    return 0;
}
