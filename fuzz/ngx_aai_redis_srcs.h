
/*
 * Copyright (C) aai-nginx authors
 *
 * The shared Redis client's files (config's aai_redis_srcs), included by
 * the fuzz targets for their static functions and structs (one
 * translation unit: the client's static names are distinct across its
 * files).  A new file of the client is added here and in config.
 */


#include "../ngx_aai_redis.c"
#include "../ngx_aai_redis_conf.c"
#include "../ngx_aai_redis_conn.c"
#include "../ngx_aai_redis_circuit.c"
#include "../ngx_aai_redis_tls.c"
#include "../ngx_aai_redis_sentinel.c"
#include "../ngx_aai_redis_resolve.c"
#include "../ngx_aai_redis_cluster.c"
#include "../ngx_aai_redis_cluster_slots.c"
#include "../ngx_aai_redis_cluster_route.c"
#include "../ngx_aai_redis_cluster_split.c"
