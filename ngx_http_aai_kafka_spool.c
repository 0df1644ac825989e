
/*
 * Copyright (C) aai-nginx authors
 *
 * The Kafka module's disk spool.  Each worker appends the events Kafka
 * could not take to a file of its own, <path>/<ms>-<pid>-<seq>.spool, which
 * it holds locked (flock) while it writes; a file is closed once nothing was
 * appended for a second (or at 16 MB).  A worker replays a file only while
 * it holds the file's lock, so two workers, old and new ones across reloads,
 * never replay the same file at once; it removes the file once every event
 * of it was delivered (delivery reports).  Every open, lock, read, write and
 * unlink runs in a thread of an nginx thread pool, one task at a time per
 * worker: the event loop never waits on the disk.
 *
 * A record: magic (4 bytes, 0xff 'A' 'K' 0xfe: 0xff never occurs in
 * UTF-8), the body's length (4), the CRC-32 of the body (4); the body: the
 * topic's length (2), zero (2), the key's length (4, 0xffffffff: none), the
 * headers' length (4), the topic, the key, the headers (packed by the
 * module), the value.  Integers in the host's byte order.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <dirent.h>
#include <sys/file.h>

#include "ngx_http_aai_kafka_spool.h"


#define NGX_HTTP_AAI_KAFKA_SPOOL_HDR      12
#define NGX_HTTP_AAI_KAFKA_SPOOL_BODY     12
#define NGX_HTTP_AAI_KAFKA_SPOOL_NO_KEY   0xffffffff

/* the largest record read back: anything larger is corrupt */
#define NGX_HTTP_AAI_KAFKA_SPOOL_RECORD   (64 * 1024 * 1024)

/* events kept in memory while the disk is busy, at most */
#define NGX_HTTP_AAI_KAFKA_SPOOL_PENDING  (16 * 1024 * 1024)

#define NGX_HTTP_AAI_KAFKA_SPOOL_READ     (256 * 1024)
#define NGX_HTTP_AAI_KAFKA_SPOOL_ROTATE   (16 * 1024 * 1024)

/* a file nothing was appended to for this long is closed, then replayed */
#define NGX_HTTP_AAI_KAFKA_SPOOL_IDLE     1000

/* between two looks for a file to replay, and after a replay failed */
#define NGX_HTTP_AAI_KAFKA_SPOOL_RETRY    1000

/*
 * between two looks for files while the spool's bytes say none: files no
 * worker of this instance counted, those the old instance's workers write
 * at their exit after a binary upgrade
 */
#define NGX_HTTP_AAI_KAFKA_SPOOL_LOOK     5000

/* replay goes in steps of rate / 10 events */
#define NGX_HTTP_AAI_KAFKA_SPOOL_STEP     100

#define NGX_HTTP_AAI_KAFKA_SPOOL_NONE     0
#define NGX_HTTP_AAI_KAFKA_SPOOL_WRITE    1
#define NGX_HTTP_AAI_KAFKA_SPOOL_SCAN     2
#define NGX_HTTP_AAI_KAFKA_SPOOL_READ_OP  3
#define NGX_HTTP_AAI_KAFKA_SPOOL_FINISH   4


static const u_char  ngx_http_aai_kafka_spool_magic[4] = {
    0xff, 'A', 'K', 0xfe
};


/* a task of the thread pool: filled by the worker, read back when done */

typedef struct {
    ngx_uint_t                        op;
    ngx_fd_t                          fd;
    char                             *dir;
    char                             *name;       /* path + file name */
    char                             *skip;       /* SCAN: the own file */
    u_char                           *buf;
    size_t                            len;
    off_t                             offset;
    ssize_t                           n;
    off_t                             size;
    off_t                             total;
    uint64_t                          oldest;
    uint64_t                          started;    /* count: before this */
    ngx_uint_t                        count;
    ngx_uint_t                        close;
    ngx_uint_t                        unlink;
    ngx_err_t                         err;
    const char                       *what;
} ngx_http_aai_kafka_spool_io_t;


typedef struct {
    ngx_http_aai_kafka_spool_t       *spool;
    ngx_thread_task_t                *task;
    ngx_http_aai_kafka_spool_io_t    *io;
    size_t                            name_size;
    ngx_uint_t                        busy;
    ngx_uint_t                        ready;
    ngx_uint_t                        count;      /* the files found */
    uint64_t                          started;

    /* appending */
    ngx_fd_t                          wfd;
    char                             *wname;
    off_t                             wsize;
    ngx_uint_t                        seq;
    ngx_msec_t                        wlast;
    u_char                           *pending;
    size_t                            plen;
    size_t                            psize;
    ngx_uint_t                        pcount;
    u_char                           *writing;    /* the task's */
    size_t                            wlen;
    size_t                            wbuf_size;
    ngx_uint_t                        wcount;

    /* replaying */
    ngx_fd_t                          rfd;
    char                             *rname;
    off_t                             rsize;
    off_t                             roff;       /* of rbuf[0] */
    u_char                           *rbuf;
    size_t                            rcap;
    size_t                            rlen;
    size_t                            rpos;
    ngx_uint_t                        rbudget;
    ngx_msec_t                        rstep;
    ngx_uint_t                        inflight;
    ngx_uint_t                        gen;
    ngx_msec_t                        next_scan;
    ngx_msec_t                        next_look;
    ngx_msec_t                        published;

    unsigned                          replaying:1;
    unsigned                          rdone:1;
    unsigned                          rfailed:1;
    unsigned                          garbage:1;
} ngx_http_aai_kafka_spool_worker_t;


static void ngx_http_aai_kafka_spool_next(void);
static void ngx_http_aai_kafka_spool_post(ngx_uint_t op, ngx_uint_t flag);
static void ngx_http_aai_kafka_spool_done(ngx_event_t *ev);
static void ngx_http_aai_kafka_spool_complete(void);
static void ngx_http_aai_kafka_spool_chunk(void);
static void ngx_http_aai_kafka_spool_corrupt(void);
static void ngx_http_aai_kafka_spool_resync(ngx_uint_t eof);
static void ngx_http_aai_kafka_spool_release(off_t n);
static void ngx_http_aai_kafka_spool_thread(void *data, ngx_log_t *log);
static void ngx_http_aai_kafka_spool_write(ngx_http_aai_kafka_spool_io_t *io);
static void ngx_http_aai_kafka_spool_scan(ngx_http_aai_kafka_spool_io_t *io);
static ngx_fd_t ngx_http_aai_kafka_spool_take(
    ngx_http_aai_kafka_spool_io_t *io, char *file, off_t *size);
static int ngx_http_aai_kafka_spool_cmp(const void *a, const void *b);
static u_char *ngx_http_aai_kafka_spool_put(u_char *p, ngx_str_t *s);
static uint64_t ngx_http_aai_kafka_spool_now(void);


static ngx_http_aai_kafka_spool_worker_t  ngx_http_aai_kafka_spool_worker;


/* aai_kafka_spool path [max_size=size] [rate=number] [thread_pool=name] */

char *
ngx_http_aai_kafka_spool_conf(ngx_conf_t *cf,
    ngx_http_aai_kafka_spool_t **spoolp)
{
    off_t                        size;
    ngx_int_t                    n;
    ngx_str_t                   *value, s, pool;
    ngx_uint_t                   i;
    ngx_http_aai_kafka_spool_t  *spool;

    if (*spoolp) {
        return "is duplicate";
    }

    value = cf->args->elts;

    spool = ngx_pcalloc(cf->pool, sizeof(ngx_http_aai_kafka_spool_t));
    if (spool == NULL) {
        return NGX_CONF_ERROR;
    }

    spool->path = value[1];

    if (spool->path.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty path in \"%V\"", &value[0]);
        return NGX_CONF_ERROR;
    }

    if (ngx_conf_full_name(cf->cycle, &spool->path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* ngx_conf_full_name() may have built a new string: null-terminate */

    s.data = ngx_pnalloc(cf->pool, spool->path.len + 1);
    if (s.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(s.data, spool->path.data, spool->path.len);
    s.data[spool->path.len] = '\0';
    spool->path.data = s.data;

    spool->max_size = 1024 * 1024 * 1024;
    spool->rate = 1000;
    ngx_str_set(&pool, "default");

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "max_size=", 9) == 0) {
            s.data = value[i].data + 9;
            s.len = value[i].len - 9;

            size = ngx_parse_offset(&s);

            if (size == NGX_ERROR || size < 4096) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid max_size \"%V\" in \"%V\", "
                                   "it must be a size of at least 4k",
                                   &value[i], &value[0]);
                return NGX_CONF_ERROR;
            }

            spool->max_size = size;
            continue;
        }

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {
            n = ngx_atoi(value[i].data + 5, value[i].len - 5);

            if (n == NGX_ERROR || n == 0 || n > 1000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid rate \"%V\" in \"%V\", it must "
                                   "be 1 to 1000000 events per second",
                                   &value[i], &value[0]);
                return NGX_CONF_ERROR;
            }

            spool->rate = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "thread_pool=", 12) == 0
            && value[i].len > 12)
        {
            pool.data = value[i].data + 12;
            pool.len = value[i].len - 12;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\"",
                           &value[i], &value[0]);
        return NGX_CONF_ERROR;
    }

    /* "default" exists unless declared: 32 threads, nginx's own default */

    spool->pool = ngx_thread_pool_add(cf, &pool);
    if (spool->pool == NULL) {
        return NGX_CONF_ERROR;
    }

    *spoolp = spool;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_aai_kafka_spool_init_process(ngx_http_aai_kafka_spool_t *spool,
    ngx_cycle_t *cycle)
{
    struct timeval                      tv;
    ngx_thread_task_t                  *task;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    sw->wfd = NGX_INVALID_FILE;
    sw->rfd = NGX_INVALID_FILE;
    sw->next_look = ngx_current_msec + NGX_HTTP_AAI_KAFKA_SPOOL_LOOK;

    if (spool->shm == NULL) {
        return NGX_ERROR;
    }

    task = ngx_thread_task_alloc(cycle->pool,
                                 sizeof(ngx_http_aai_kafka_spool_io_t));
    if (task == NULL) {
        return NGX_ERROR;
    }

    sw->name_size = spool->path.len + sizeof("/-.spool")
                    + NGX_INT64_LEN * 3;

    sw->wname = ngx_pcalloc(cycle->pool, sw->name_size);
    sw->rname = ngx_pcalloc(cycle->pool, sw->name_size);

    if (sw->wname == NULL || sw->rname == NULL) {
        return NGX_ERROR;
    }

    task->handler = ngx_http_aai_kafka_spool_thread;
    task->event.handler = ngx_http_aai_kafka_spool_done;
    task->event.data = sw;
    task->event.log = cycle->log;

    sw->task = task;
    sw->io = task->ctx;
    sw->spool = spool;

    /* the first worker after a start counts the files left there */

    sw->count = ngx_atomic_cmp_set(&spool->shm->counted, 0, 1);

    /*
     * Only the files of earlier instances: what the workers of this one
     * write is reserved as it is spooled, and their files' names begin
     * with a later time.
     */

    if (sw->count) {
        ngx_gettimeofday(&tv);
        sw->started = (uint64_t) tv.tv_sec * 1000 + tv.tv_usec / 1000;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_aai_kafka_spool_append(ngx_str_t *topic, ngx_str_t *key,
    ngx_str_t *value, ngx_str_t *headers)
{
    u_char                             *p, *q, *body;
    size_t                              size, n;
    uint16_t                            u16;
    uint32_t                            u32;
    ngx_atomic_uint_t                   bytes;
    ngx_http_aai_kafka_spool_t         *spool;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;
    spool = sw->spool;

    if (spool == NULL) {
        return NGX_DECLINED;
    }

    n = NGX_HTTP_AAI_KAFKA_SPOOL_BODY + topic->len + key->len + headers->len
        + value->len;
    size = NGX_HTTP_AAI_KAFKA_SPOOL_HDR + n;

    if (topic->len > 0xffff || n > NGX_HTTP_AAI_KAFKA_SPOOL_RECORD
        || sw->plen + size > NGX_HTTP_AAI_KAFKA_SPOOL_PENDING)
    {
        goto full;
    }

    /* the bound holds for all workers: a share of the zone, reserved */

    do {
        bytes = spool->shm->bytes;

        if ((off_t) (bytes + size) > spool->max_size) {
            goto full;
        }

    } while (!ngx_atomic_cmp_set(&spool->shm->bytes, bytes, bytes + size));

    if (sw->plen + size > sw->psize) {
        n = ngx_max(sw->psize * 2, sw->plen + size);
        n = ngx_max(n, 65536);

        p = ngx_alloc(n, ngx_cycle->log);
        if (p == NULL) {
            ngx_http_aai_kafka_spool_release(size);
            ngx_aai_metrics_inc(spool->metrics, spool->dropped, 1);
            ngx_aai_metrics_inc(spool->metrics, spool->error, 1);
            return NGX_DECLINED;
        }

        if (sw->pending) {
            ngx_memcpy(p, sw->pending, sw->plen);
            ngx_free(sw->pending);
        }

        sw->pending = p;
        sw->psize = n;
    }

    p = sw->pending + sw->plen;
    body = p + NGX_HTTP_AAI_KAFKA_SPOOL_HDR;

    u16 = (uint16_t) topic->len;
    ngx_memcpy(body, &u16, 2);
    u16 = 0;
    ngx_memcpy(body + 2, &u16, 2);
    u32 = key->data ? (uint32_t) key->len : NGX_HTTP_AAI_KAFKA_SPOOL_NO_KEY;
    ngx_memcpy(body + 4, &u32, 4);
    u32 = (uint32_t) headers->len;
    ngx_memcpy(body + 8, &u32, 4);

    /* no key and no headers are NULL: nothing is copied from them */

    q = body + NGX_HTTP_AAI_KAFKA_SPOOL_BODY;
    q = ngx_http_aai_kafka_spool_put(q, topic);
    q = ngx_http_aai_kafka_spool_put(q, key);
    q = ngx_http_aai_kafka_spool_put(q, headers);
    q = ngx_http_aai_kafka_spool_put(q, value);
    n = q - body;

    ngx_memcpy(p, ngx_http_aai_kafka_spool_magic, 4);
    u32 = (uint32_t) n;
    ngx_memcpy(p + 4, &u32, 4);
    u32 = ngx_crc32_long(body, n);
    ngx_memcpy(p + 8, &u32, 4);

    sw->plen += size;
    sw->pcount++;
    sw->wlast = ngx_current_msec;

    (void) ngx_atomic_cmp_set(&spool->shm->oldest, 0,
                              (ngx_atomic_uint_t)
                              ngx_http_aai_kafka_spool_now());

    ngx_aai_metrics_inc(spool->metrics, spool->spooled, 1);

    ngx_http_aai_kafka_spool_next();

    return NGX_OK;

full:

    ngx_aai_metrics_inc(spool->metrics, spool->dropped, 1);
    ngx_aai_metrics_inc(spool->metrics, spool->full, 1);

    return NGX_DECLINED;
}


void
ngx_http_aai_kafka_spool_tick(ngx_uint_t ready)
{
    uint64_t                            oldest, now;
    ngx_http_aai_kafka_spool_t         *spool;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;
    spool = sw->spool;

    if (spool == NULL) {
        return;
    }

    sw->ready = ready;

    if (ngx_current_msec - sw->published >= 1000) {
        sw->published = ngx_current_msec;

        now = ngx_http_aai_kafka_spool_now();
        oldest = spool->shm->bytes ? spool->shm->oldest : 0;

        ngx_aai_metrics_set(spool->metrics, spool->bytes, spool->shm->bytes);
        ngx_aai_metrics_set(spool->metrics, spool->age,
                            (oldest && now > oldest)
                            ? (ngx_atomic_uint_t) ((now - oldest) / 1000)
                            : 0);
    }

    ngx_http_aai_kafka_spool_next();
}


void
ngx_http_aai_kafka_spool_report(void *opaque, ngx_uint_t delivered)
{
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    /* a report of a replay given up: the file is still there */

    if (sw->spool == NULL || !sw->replaying || sw->inflight == 0
        || (uintptr_t) opaque != sw->gen)
    {
        return;
    }

    sw->inflight--;

    if (delivered) {
        ngx_aai_metrics_inc(sw->spool->metrics, sw->spool->replayed, 1);

    } else {
        sw->rfailed = 1;
    }

    if (sw->inflight == 0) {
        ngx_http_aai_kafka_spool_next();
    }
}


void
ngx_http_aai_kafka_spool_abort(void)
{
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    if (sw->replaying && sw->inflight) {
        sw->inflight = 0;
        sw->rfailed = 1;
        sw->gen++;
    }
}


/*
 * At exit the thread pools are gone (nginx's thread pool module exits
 * before any module loaded later), their last tasks done: what is left is
 * written here, a bounded write to a local file by a worker that no longer
 * serves requests.
 */

void
ngx_http_aai_kafka_spool_exit_process(void)
{
    ngx_http_aai_kafka_spool_io_t      *io;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    if (sw->spool == NULL) {
        return;
    }

    io = sw->io;

    if (sw->busy) {
        sw->busy = 0;
        ngx_http_aai_kafka_spool_complete();
    }

    if (sw->replaying) {
        (void) ngx_close_file(sw->rfd);
        sw->rfd = NGX_INVALID_FILE;
        sw->replaying = 0;
    }

    if (sw->plen) {
        ngx_http_aai_kafka_spool_post(NGX_HTTP_AAI_KAFKA_SPOOL_NONE, 1);
        ngx_http_aai_kafka_spool_write(io);
        sw->busy = 0;
        ngx_http_aai_kafka_spool_complete();

    } else if (sw->wfd != NGX_INVALID_FILE) {
        (void) ngx_close_file(sw->wfd);
    }

    sw->wfd = NGX_INVALID_FILE;

    if (sw->pending) {
        ngx_free(sw->pending);
    }

    if (sw->writing) {
        ngx_free(sw->writing);
    }

    if (sw->rbuf) {
        ngx_free(sw->rbuf);
    }

    ngx_memzero(sw, sizeof(ngx_http_aai_kafka_spool_worker_t));
}


/* the next disk operation, if none is under way */

static void
ngx_http_aai_kafka_spool_next(void)
{
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    if (sw->busy || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (sw->plen) {
        ngx_http_aai_kafka_spool_post(NGX_HTTP_AAI_KAFKA_SPOOL_WRITE, 0);
        return;
    }

    if (sw->wfd != NGX_INVALID_FILE
        && (ngx_current_msec - sw->wlast >= NGX_HTTP_AAI_KAFKA_SPOOL_IDLE
            || sw->wsize >= NGX_HTTP_AAI_KAFKA_SPOOL_ROTATE))
    {
        /* closed: the file may be replayed */
        ngx_http_aai_kafka_spool_post(NGX_HTTP_AAI_KAFKA_SPOOL_WRITE, 1);
        return;
    }

    if (sw->replaying) {

        if (sw->inflight) {
            return;
        }

        if (sw->rfailed || sw->rdone) {
            if (sw->rfailed) {
                sw->next_scan = ngx_current_msec
                                + NGX_HTTP_AAI_KAFKA_SPOOL_RETRY;
            }

            ngx_http_aai_kafka_spool_post(NGX_HTTP_AAI_KAFKA_SPOOL_FINISH,
                                          !sw->rfailed);
            return;
        }

        if (ngx_current_msec - sw->rstep >= NGX_HTTP_AAI_KAFKA_SPOOL_STEP) {
            sw->rstep = ngx_current_msec;
            sw->rbudget = ngx_max(sw->spool->rate
                                  * NGX_HTTP_AAI_KAFKA_SPOOL_STEP / 1000, 1);
        }

        if (sw->rbudget) {
            ngx_http_aai_kafka_spool_chunk();
        }

        return;
    }

    if ((sw->ready
         && (ngx_msec_int_t) (ngx_current_msec - sw->next_scan) >= 0
         && (sw->spool->shm->bytes
             || (ngx_msec_int_t) (ngx_current_msec - sw->next_look) >= 0))
        || sw->count)
    {
        sw->next_scan = ngx_current_msec + NGX_HTTP_AAI_KAFKA_SPOOL_RETRY;
        sw->next_look = ngx_current_msec + NGX_HTTP_AAI_KAFKA_SPOOL_LOOK;

        ngx_http_aai_kafka_spool_post(NGX_HTTP_AAI_KAFKA_SPOOL_SCAN,
                                      sw->count);
        sw->count = 0;
    }
}


static void
ngx_http_aai_kafka_spool_post(ngx_uint_t op, ngx_uint_t flag)
{
    u_char                             *p;
    size_t                              size;
    ngx_http_aai_kafka_spool_io_t      *io;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;
    io = sw->io;

    ngx_memzero(io, sizeof(ngx_http_aai_kafka_spool_io_t));

    io->op = op;
    io->dir = (char *) sw->spool->path.data;
    io->fd = NGX_INVALID_FILE;

    switch (op) {

    case NGX_HTTP_AAI_KAFKA_SPOOL_NONE:
    case NGX_HTTP_AAI_KAFKA_SPOOL_WRITE:

        io->op = NGX_HTTP_AAI_KAFKA_SPOOL_WRITE;

        /* the pending records become the task's */

        p = sw->writing;
        sw->writing = sw->pending;
        sw->wlen = sw->plen;
        sw->wcount = sw->pcount;
        sw->pending = p;
        size = sw->wbuf_size;
        sw->wbuf_size = sw->psize;
        sw->psize = size;
        sw->plen = 0;
        sw->pcount = 0;

        if (sw->wfd == NGX_INVALID_FILE && sw->wlen) {
            (void) ngx_sprintf((u_char *) sw->wname,
                               "%V/%013uL-%P-%ui.spool%Z", &sw->spool->path,
                               ngx_http_aai_kafka_spool_now(), ngx_pid,
                               sw->seq++);
            sw->wsize = 0;
        }

        io->fd = sw->wfd;
        io->name = sw->wname;
        io->buf = sw->writing;
        io->len = sw->wlen;
        io->close = flag;
        break;

    case NGX_HTTP_AAI_KAFKA_SPOOL_SCAN:
        io->name = sw->rname;
        io->len = sw->name_size;
        io->skip = (sw->wfd != NGX_INVALID_FILE) ? sw->wname : NULL;
        io->count = flag;
        io->started = sw->started;
        break;

    case NGX_HTTP_AAI_KAFKA_SPOOL_READ_OP:
        io->fd = sw->rfd;
        io->buf = sw->rbuf;
        io->len = sw->rcap;
        io->offset = sw->roff;
        break;

    default: /* NGX_HTTP_AAI_KAFKA_SPOOL_FINISH */
        io->fd = sw->rfd;
        io->name = sw->rname;
        io->unlink = flag;
        break;
    }

    sw->busy = 1;

    if (op == NGX_HTTP_AAI_KAFKA_SPOOL_NONE) {
        /* run by the caller */
        return;
    }

    if (ngx_thread_task_post(sw->spool->pool, sw->task) != NGX_OK) {
        sw->busy = 0;
        io->err = NGX_EAGAIN;
        io->what = "ngx_thread_task_post()";
        ngx_http_aai_kafka_spool_complete();
    }
}


static void
ngx_http_aai_kafka_spool_done(ngx_event_t *ev)
{
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    if (!sw->busy) {
        return;
    }

    sw->busy = 0;

    ngx_http_aai_kafka_spool_complete();
    ngx_http_aai_kafka_spool_next();
}


static void
ngx_http_aai_kafka_spool_complete(void)
{
    ngx_http_aai_kafka_spool_io_t      *io;
    ngx_http_aai_kafka_spool_t         *spool;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;
    spool = sw->spool;
    io = sw->io;

    switch (io->op) {

    case NGX_HTTP_AAI_KAFKA_SPOOL_WRITE:

        sw->wfd = io->fd;

        if (io->err) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, io->err,
                          "aai_kafka: spool %s \"%s\" failed, "
                          "%ui events dropped", io->what, io->name,
                          sw->wcount);

            ngx_http_aai_kafka_spool_release(sw->wlen);
            ngx_aai_metrics_inc(spool->metrics, spool->dropped, sw->wcount);
            ngx_aai_metrics_inc(spool->metrics, spool->error, sw->wcount);

        } else {
            sw->wsize += sw->wlen;

            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "aai_kafka: %ui events written to \"%s\"%s",
                           sw->wcount, io->name,
                           io->close ? ", closed" : "");
        }

        if (sw->wfd == NGX_INVALID_FILE) {
            sw->wsize = 0;
        }

        sw->wlen = 0;
        sw->wcount = 0;
        break;

    case NGX_HTTP_AAI_KAFKA_SPOOL_SCAN:

        if (io->err) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, io->err,
                          "aai_kafka: spool %s \"%s\" failed",
                          io->what, io->dir);
            break;
        }

        if (io->count && io->total) {
            (void) ngx_atomic_fetch_add(&spool->shm->bytes, io->total);
        }

        spool->shm->oldest = (ngx_atomic_uint_t) io->oldest;

        if (io->fd == NGX_INVALID_FILE) {
            break;
        }

        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "aai_kafka: replaying \"%s\", %O bytes",
                      sw->rname, io->size);

        sw->replaying = 1;
        sw->rfd = io->fd;
        sw->rsize = io->size;
        sw->roff = 0;
        sw->rlen = 0;
        sw->rpos = 0;
        sw->inflight = 0;
        sw->rdone = 0;
        sw->rfailed = 0;
        sw->garbage = 0;
        sw->gen++;
        break;

    case NGX_HTTP_AAI_KAFKA_SPOOL_READ_OP:

        if (io->err) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, io->err,
                          "aai_kafka: spool pread() \"%s\" failed",
                          sw->rname);
            sw->rfailed = 1;
            break;
        }

        sw->rlen = io->n;
        sw->rpos = 0;

        if (io->n == 0) {
            /* shorter than it was: the end is here */
            sw->rsize = sw->roff;
        }

        break;

    default: /* NGX_HTTP_AAI_KAFKA_SPOOL_FINISH */

        if (io->unlink && io->err == 0) {
            ngx_http_aai_kafka_spool_release(sw->rsize);

            ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                          "aai_kafka: replayed and removed \"%s\"",
                          sw->rname);

        } else if (io->err) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, io->err,
                          "aai_kafka: spool unlink() \"%s\" failed",
                          sw->rname);

        } else {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "aai_kafka: replay of \"%s\" stopped, the file "
                           "is kept", sw->rname);
        }

        sw->replaying = 0;
        sw->rfd = NGX_INVALID_FILE;
        break;
    }

    io->op = NGX_HTTP_AAI_KAFKA_SPOOL_NONE;
}


/* the records of one step of the replay, from what was read */

static void
ngx_http_aai_kafka_spool_chunk(void)
{
    u_char                             *p, *body, *buf;
    size_t                              avail, need;
    uint16_t                            tlen;
    uint32_t                            n, crc, klen, hlen;
    ngx_int_t                           eof, rc;
    ngx_str_t                           topic, key, value, headers;
    ngx_http_aai_kafka_spool_t         *spool;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;
    spool = sw->spool;

    while (sw->rbudget) {

        avail = sw->rlen - sw->rpos;
        p = sw->rbuf + sw->rpos;
        eof = (sw->roff + (off_t) sw->rlen >= sw->rsize);
        need = NGX_HTTP_AAI_KAFKA_SPOOL_HDR;

        if (avail < need) {
            goto more;
        }

        ngx_memcpy(&n, p + 4, 4);

        if (ngx_memcmp(p, ngx_http_aai_kafka_spool_magic, 4) != 0
            || n < NGX_HTTP_AAI_KAFKA_SPOOL_BODY
            || n > NGX_HTTP_AAI_KAFKA_SPOOL_RECORD)
        {
            ngx_http_aai_kafka_spool_resync(eof);
            continue;
        }

        need += n;

        if (avail < need) {
            goto more;
        }

        body = p + NGX_HTTP_AAI_KAFKA_SPOOL_HDR;

        ngx_memcpy(&crc, p + 8, 4);
        ngx_memcpy(&tlen, body, 2);
        ngx_memcpy(&klen, body + 4, 4);
        ngx_memcpy(&hlen, body + 8, 4);

        if (crc != ngx_crc32_long(body, n) || tlen == 0
            || (uint64_t) tlen + hlen
               + (klen == NGX_HTTP_AAI_KAFKA_SPOOL_NO_KEY ? 0 : klen)
               > n - NGX_HTTP_AAI_KAFKA_SPOOL_BODY)
        {
            ngx_http_aai_kafka_spool_resync(eof);
            continue;
        }

        topic.data = body + NGX_HTTP_AAI_KAFKA_SPOOL_BODY;
        topic.len = tlen;

        if (klen == NGX_HTTP_AAI_KAFKA_SPOOL_NO_KEY) {
            key.data = NULL;
            key.len = 0;

        } else {
            key.data = topic.data + tlen;
            key.len = klen;
        }

        headers.data = topic.data + tlen + key.len;
        headers.len = hlen;

        value.data = headers.data + hlen;
        value.len = n - NGX_HTTP_AAI_KAFKA_SPOOL_BODY - tlen - key.len - hlen;

        rc = spool->produce(&topic, &key, &value, &headers,
                            (void *) sw->gen);

        if (rc == NGX_AGAIN) {
            /* the queue is full: the rest of the step after the reports */
            return;
        }

        if (rc != NGX_OK) {
            /* not taken: the file is kept, tried again later */
            sw->rfailed = 1;
            ngx_http_aai_kafka_spool_next();
            return;
        }

        sw->garbage = 0;
        sw->inflight++;
        sw->rbudget--;
        sw->rpos += need;
    }

    return;

more:

    if (eof) {
        if (avail) {
            /* a record cut short: the writer died in the middle */
            ngx_http_aai_kafka_spool_corrupt();
        }

        sw->rpos = sw->rlen;
        sw->rdone = 1;

        if (sw->inflight == 0) {
            ngx_http_aai_kafka_spool_next();
        }

        return;
    }

    if (sw->inflight) {
        /* the reports first: the buffer holds the events in flight */
        return;
    }

    sw->roff += sw->rpos;
    sw->rlen = 0;
    sw->rpos = 0;

    need = ngx_max(need, NGX_HTTP_AAI_KAFKA_SPOOL_READ);

    if (sw->rcap < need) {
        buf = ngx_alloc(need, ngx_cycle->log);
        if (buf == NULL) {
            sw->rfailed = 1;
            return;
        }

        if (sw->rbuf) {
            ngx_free(sw->rbuf);
        }

        sw->rbuf = buf;
        sw->rcap = need;
    }

    ngx_http_aai_kafka_spool_post(NGX_HTTP_AAI_KAFKA_SPOOL_READ_OP, 0);
}


static void
ngx_http_aai_kafka_spool_corrupt(void)
{
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    if (sw->garbage) {
        return;
    }

    sw->garbage = 1;

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "aai_kafka: corrupt record in \"%s\" at %O skipped",
                  sw->rname, sw->roff + (off_t) sw->rpos);

    ngx_aai_metrics_inc(sw->spool->metrics, sw->spool->dropped, 1);
    ngx_aai_metrics_inc(sw->spool->metrics, sw->spool->corrupt, 1);
}


/* skips to the next magic: one corrupt record counted per stretch */

static void
ngx_http_aai_kafka_spool_resync(ngx_uint_t eof)
{
    u_char                             *p, *end;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    ngx_http_aai_kafka_spool_corrupt();

    p = sw->rbuf + sw->rpos + 1;
    end = sw->rbuf + sw->rlen;

    for ( ;; ) {
        p = ngx_strlchr(p, end, ngx_http_aai_kafka_spool_magic[0]);

        if (p == NULL) {
            break;
        }

        if (end - p < 4
            || ngx_memcmp(p, ngx_http_aai_kafka_spool_magic, 4) == 0)
        {
            sw->rpos = p - sw->rbuf;
            return;
        }

        p++;
    }

    sw->rpos = sw->rlen;
}


static void
ngx_http_aai_kafka_spool_release(off_t n)
{
    ngx_atomic_uint_t                   bytes;
    ngx_http_aai_kafka_spool_worker_t  *sw;

    sw = &ngx_http_aai_kafka_spool_worker;

    do {
        bytes = sw->spool->shm->bytes;

    } while (!ngx_atomic_cmp_set(&sw->spool->shm->bytes, bytes,
                                 (off_t) bytes > n ? bytes - n : 0));
}


/* in a thread of the pool: nothing here touches the worker's state */

static void
ngx_http_aai_kafka_spool_thread(void *data, ngx_log_t *log)
{
    ngx_http_aai_kafka_spool_io_t  *io = data;

    switch (io->op) {

    case NGX_HTTP_AAI_KAFKA_SPOOL_WRITE:
        ngx_http_aai_kafka_spool_write(io);
        break;

    case NGX_HTTP_AAI_KAFKA_SPOOL_SCAN:
        ngx_http_aai_kafka_spool_scan(io);
        break;

    case NGX_HTTP_AAI_KAFKA_SPOOL_READ_OP:

        do {
            io->n = pread(io->fd, io->buf, io->len, io->offset);
        } while (io->n == -1 && ngx_errno == NGX_EINTR);

        if (io->n == -1) {
            io->err = ngx_errno;
            io->what = "pread()";
        }

        break;

    default: /* NGX_HTTP_AAI_KAFKA_SPOOL_FINISH */

        if (io->unlink && unlink(io->name) == -1) {
            io->err = ngx_errno;
            io->what = "unlink()";
        }

        (void) close(io->fd);
        break;
    }
}


static void
ngx_http_aai_kafka_spool_write(ngx_http_aai_kafka_spool_io_t *io)
{
    u_char   *p;
    size_t    len;
    ssize_t   n;

    if (io->fd == NGX_INVALID_FILE && io->len) {

        io->fd = open(io->name, O_WRONLY|O_CREAT|O_EXCL|O_APPEND|O_CLOEXEC,
                      0600);

        /* two workers may make the directory at once: either one did */

        if (io->fd == NGX_INVALID_FILE && ngx_errno == NGX_ENOENT
            && (mkdir(io->dir, 0700) == 0 || ngx_errno == NGX_EEXIST))
        {
            io->fd = open(io->name,
                          O_WRONLY|O_CREAT|O_EXCL|O_APPEND|O_CLOEXEC, 0600);
        }

        if (io->fd == NGX_INVALID_FILE) {
            io->err = ngx_errno;
            io->what = "open()";
            return;
        }

        /* a replaying worker may hold it a moment (it is empty) */

        if (flock(io->fd, LOCK_EX) == -1) {
            io->err = ngx_errno;
            io->what = "flock()";
            goto close;
        }
    }

    p = io->buf;
    len = io->len;

    while (len) {
        n = write(io->fd, p, len);

        if (n == -1) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }

            io->err = ngx_errno;
            io->what = "write()";

            /* a partial record is skipped when read: start a new file */
            goto close;
        }

        p += n;
        len -= n;
    }

    if (!io->close) {
        return;
    }

close:

    if (io->fd != NGX_INVALID_FILE) {
        (void) close(io->fd);
        io->fd = NGX_INVALID_FILE;
    }
}


static void
ngx_http_aai_kafka_spool_scan(ngx_http_aai_kafka_spool_io_t *io)
{
    DIR            *dir;
    char          **names, **nn, *file;
    size_t          len, n, nalloc, plen;
    off_t           size;
    ngx_fd_t        fd;
    ngx_uint_t      i, chosen;
    struct stat     st;
    struct dirent  *de;

    dir = opendir(io->dir);

    if (dir == NULL) {
        if (ngx_errno != NGX_ENOENT) {
            io->err = ngx_errno;
            io->what = "opendir()";
        }

        return;
    }

    names = NULL;
    n = 0;
    nalloc = 0;
    plen = ngx_strlen(io->dir);

    while ((de = readdir(dir)) != NULL) {
        len = ngx_strlen(de->d_name);

        if (len < sizeof(".spool") || de->d_name[0] == '.'
            || ngx_strcmp(de->d_name + len - 6, ".spool") != 0
            || plen + 1 + len + 1 > io->len)
        {
            continue;
        }

        if (n == nalloc) {
            nalloc = nalloc ? nalloc * 2 : 64;
            nn = realloc(names, nalloc * sizeof(char *));
            if (nn == NULL) {
                break;
            }

            names = nn;
        }

        names[n] = strdup(de->d_name);
        if (names[n] == NULL) {
            break;
        }

        n++;
    }

    (void) closedir(dir);

    if (n == 0) {
        free(names);
        return;
    }

    qsort(names, n, sizeof(char *), ngx_http_aai_kafka_spool_cmp);

    /* names begin with the time the file was created, in ms */

    io->oldest = strtoull(names[0], NULL, 10);

    file = io->name;
    chosen = 0;

    for (i = 0; i < n; i++) {
        (void) sprintf(file, "%s/%s", io->dir, names[i]);

        if (io->count && strtoull(names[i], NULL, 10) < io->started
            && stat(file, &st) == 0)
        {
            io->total += st.st_size;
        }

        if (io->fd != NGX_INVALID_FILE
            || (io->skip && ngx_strcmp(file, io->skip) == 0))
        {
            continue;
        }

        fd = ngx_http_aai_kafka_spool_take(io, file, &size);

        if (fd != NGX_INVALID_FILE) {
            io->fd = fd;
            io->size = size;
            chosen = i;

            if (!io->count) {
                break;
            }
        }
    }

    if (io->fd != NGX_INVALID_FILE) {
        (void) sprintf(file, "%s/%s", io->dir, names[chosen]);
    }

    for (i = 0; i < n; i++) {
        free(names[i]);
    }

    free(names);
}


/* the file locked, or NGX_INVALID_FILE: in use, removed, or empty */

static ngx_fd_t
ngx_http_aai_kafka_spool_take(ngx_http_aai_kafka_spool_io_t *io, char *file,
    off_t *size)
{
    char         *p;
    ngx_fd_t      fd;
    ngx_pid_t     pid;
    struct stat   st;

    fd = open(file, O_RDONLY|O_CLOEXEC);

    if (fd == NGX_INVALID_FILE) {
        return NGX_INVALID_FILE;
    }

    if (flock(fd, LOCK_EX|LOCK_NB) == -1) {
        goto skip;
    }

    /* removed by the worker that held it before */

    if (fstat(fd, &st) == -1 || st.st_nlink == 0) {
        goto skip;
    }

    if (st.st_size == 0) {
        /* a worker alive that has not taken its lock yet */

        p = strchr(file + ngx_strlen(io->dir) + 1, '-');
        pid = p ? (ngx_pid_t) atoi(p + 1) : 0;

        if (pid && pid != getpid() && kill(pid, 0) == 0) {
            goto skip;
        }

        (void) unlink(file);
        goto skip;
    }

    *size = st.st_size;

    return fd;

skip:

    (void) close(fd);

    return NGX_INVALID_FILE;
}


static u_char *
ngx_http_aai_kafka_spool_put(u_char *p, ngx_str_t *s)
{
    if (s->len == 0) {
        return p;
    }

    return ngx_cpymem(p, s->data, s->len);
}


static int
ngx_http_aai_kafka_spool_cmp(const void *a, const void *b)
{
    return ngx_strcmp(*(char **) a, *(char **) b);
}


static uint64_t
ngx_http_aai_kafka_spool_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}
