
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_cache_entry: the format of the entries ngx_http_aai_cache_module
 * keeps in Redis (the freshness of a response is decided in
 * ngx_http_aai_cache_freshness.c).
 *
 * Entry format, version 1, integers big-endian:
 *
 *      0  4  magic "AAIC"
 *      4  1  version
 *      5  1  type: 'E' entry, 'V' vary record
 *      6  2  flags (1: header only, the response to a HEAD)
 *      8  8  time stored less the age on arrival, ms since the epoch
 *     16  8  fresh until, ms since the epoch
 *     24  4  stale-while-revalidate, s
 *     28  4  stale-if-error, s
 *     32  2  status
 *     34  2  number of headers
 *     36  4  length of the header block
 *     40  8  length of the body
 *     48  8  Content-Length of a header-only entry, -1 if none
 *     56  8  first 8 bytes of SHA-256(cache key)
 *     64     header block: per header, a 2-byte name length, the name, a
 *            NUL, a 4-byte value length, the value, a NUL; a vary record
 *            has the names, lowercase, sorted, comma-separated, instead
 *            body
 *    end-4 4 CRC-32 (IEEE 802.3, as zlib's crc32()) of all that precedes
 *
 * An entry that does not check out is a miss, never served.
 */


#ifndef _NGX_AAI_CACHE_ENTRY_H_INCLUDED_
#define _NGX_AAI_CACHE_ENTRY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_AAI_CACHE_MAGIC          "AAIC"
#define NGX_AAI_CACHE_VERSION        1
#define NGX_AAI_CACHE_HDR            64
#define NGX_AAI_CACHE_CRC            4

#define NGX_AAI_CACHE_TYPE_ENTRY     'E'
#define NGX_AAI_CACHE_TYPE_VARY      'V'

#define NGX_AAI_CACHE_HEADER_ONLY    0x0001

#define NGX_AAI_CACHE_MAX_VARY       16


typedef struct {
    ngx_uint_t                    type;
    ngx_uint_t                    flags;
    uint64_t                      stored;
    uint64_t                      fresh_until;
    uint32_t                      swr;
    uint32_t                      sie;
    ngx_uint_t                    status;
    ngx_uint_t                    nheaders;
    u_char                       *headers;
    size_t                        headers_len;
    u_char                       *body;
    size_t                        body_len;
    off_t                         content_length;
    u_char                       *check;
} ngx_aai_cache_entry_t;


#define ngx_aai_cache_get16(p)                                                \
    (((uint32_t) (p)[0] << 8) | (p)[1])

#define ngx_aai_cache_get32(p)                                                \
    (((uint32_t) (p)[0] << 24) | ((uint32_t) (p)[1] << 16)                    \
     | ((uint32_t) (p)[2] << 8) | (p)[3])

#define ngx_aai_cache_get64(p)                                                \
    (((uint64_t) ngx_aai_cache_get32(p) << 32)                                \
     | ngx_aai_cache_get32((p) + 4))


/*
 * Checks an entry of len bytes at p (magic, version, lengths, checksum,
 * structure) and points e into it.  NGX_ERROR with *err: "truncated",
 * "foreign", "other version", "corrupted", "malformed", ...
 */
ngx_int_t ngx_aai_cache_entry_decode(u_char *p, size_t len,
    ngx_aai_cache_entry_t *e, const char **err);

/* the fixed part, with a zero body length; returns where the headers go */
u_char *ngx_aai_cache_entry_write(u_char *p, ngx_uint_t type,
    ngx_uint_t flags, uint64_t stored, uint64_t fresh_until, uint32_t swr,
    uint32_t sie, ngx_uint_t status, ngx_uint_t nheaders, size_t hlen,
    off_t clen, u_char *digest);

/* the body length, then the checksum after the len bytes at buf */
void ngx_aai_cache_entry_seal(u_char *buf, size_t len, size_t body);

void ngx_aai_cache_crc32_init(void);
uint32_t ngx_aai_cache_crc32(u_char *p, size_t len);

/*
 * The names of the Vary headers in headers: lowercase, unique, sorted,
 * comma-separated in out (empty if none).  NGX_DECLINED for "*" or more
 * than NGX_AAI_CACHE_MAX_VARY names.
 */
ngx_int_t ngx_aai_cache_vary_names(ngx_pool_t *pool, ngx_list_t *headers,
    ngx_str_t *out);

/* the next header of that name after "from" (NULL: the first one) */
ngx_table_elt_t *ngx_aai_cache_find_header(ngx_list_t *headers,
    const char *name, size_t len, ngx_table_elt_t *from);


#endif /* _NGX_AAI_CACHE_ENTRY_H_INCLUDED_ */
