/*
 * kslow: a librdkafka plugin for the aai-nginx tests (a test tool, not part
 * of the modules).  Loaded with the producer property
 * "plugin.library.paths", it makes rd_kafka_destroy() of a handle that has
 * raised a fatal error take 3 seconds, as joining a broker thread that is
 * stuck (a name being resolved, a plugin of its own) may.  Other handles
 * are destroyed as usual.
 *
 *   cc -shared -fPIC -o kslow.so t/kslow.c -lrdkafka
 */

#include <time.h>

#include <librdkafka/rdkafka.h>


static rd_kafka_resp_err_t
kslow_on_destroy(rd_kafka_t *rk, void *ic_opaque)
{
    char             buf[256];
    struct timespec  ts;

    if (rd_kafka_fatal_error(rk, buf, sizeof(buf))
        == RD_KAFKA_RESP_ERR_NO_ERROR)
    {
        return RD_KAFKA_RESP_ERR_NO_ERROR;
    }

    ts.tv_sec = 3;
    ts.tv_nsec = 0;

    while (nanosleep(&ts, &ts) == -1) {
        /* interrupted: sleep the rest */
    }

    return RD_KAFKA_RESP_ERR_NO_ERROR;
}


static rd_kafka_resp_err_t
kslow_on_new(rd_kafka_t *rk, const rd_kafka_conf_t *conf, void *ic_opaque,
    char *errstr, size_t errstr_size)
{
    return rd_kafka_interceptor_add_on_destroy(rk, "kslow", kslow_on_destroy,
                                               NULL);
}


rd_kafka_resp_err_t
conf_init(rd_kafka_conf_t *conf, void **plug_opaquep, char *errstr,
    size_t errstr_size)
{
    return rd_kafka_conf_interceptor_add_on_new(conf, "kslow", kslow_on_new,
                                                NULL);
}
