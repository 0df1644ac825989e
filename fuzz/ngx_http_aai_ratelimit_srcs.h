
/*
 * Copyright (C) aai-nginx authors
 *
 * The rate limiting module's files, included by the fuzz targets for their
 * static functions and tables (one translation unit: the module's static
 * names are distinct across its files).
 */


#include "../ngx_http_aai_ratelimit_module.c"
#include "../ngx_http_aai_ratelimit_zone.c"
#include "../ngx_http_aai_ratelimit_batch.c"
#include "../ngx_http_aai_ratelimit_cluster.c"
#include "../ngx_http_aai_ratelimit_script.c"
#include "../ngx_http_aai_ratelimit_decide.c"
#include "../ngx_http_aai_ratelimit_headers.c"
#include "../ngx_http_aai_ratelimit_local.c"
