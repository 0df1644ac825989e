# ngx_http_aai_cache_module: how long a response is kept as aai_cache_valid
# says (ngx_http_aai_cache_valid_time(), ngx_http_aai_cache_freshness.c),
# and the path of a cache request as its debug log shows it (a line at
# each state change: lookup, hit or miss, lock, wake-up, store, purge).
#
# Needs an nginx built --with-debug (Debian's is): the debug lines are
# asserted.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Digest::SHA qw( sha256_hex );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_APP_PORT} = free_port();

our $HttpConfig = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT connect_timeout=2s
                    timeout=2s;

    server {
        listen 127.0.0.1:$TEST_NGINX_APP_PORT;
        default_type text/plain;

        location /app/ok {
            return 200 "ok\n";
        }

        location /app/gone {
            return 404 "gone\n";
        }

        location /app/teapot {
            return 418 "teapot\n";
        }

        location /app/cc/gone {
            add_header Cache-Control "max-age=30" always;
            return 404 "gone\n";
        }

        location /app/cc/teapot {
            add_header Cache-Control "max-age=30" always;
            return 418 "teapot\n";
        }
    }
_EOC_

no_shuffle();
run_tests();

__DATA__

=== TEST 1: aai_cache_valid: a status's own time before "any", whatever the order
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid any 1m;
        aai_cache_valid 404 10s;
        add_header X-Status $aai_cache_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/app/;
    }
--- aai_before
redis_flushdb();
--- request eval
["GET /c/gone", "GET /c/gone", "GET /c/ok", "GET /c/ok", "GET /c/teapot",
 "GET /c/teapot"]
--- error_code eval
[404, 404, 200, 200, 418, 418]
--- response_headers_like eval
["X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=404; stored",
 "X-Status: HIT\nCache-Status: aai; hit; ttl=(9|10)",
 "X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=200; stored",
 "X-Status: HIT\nCache-Status: aai; hit; ttl=(59|60)",
 "X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=418; stored",
 "X-Status: HIT\nCache-Status: aai; hit; ttl=(59|60)"]
--- aai_after
my $ttl = redis_cmd('PTTL', 'aai:c:' . sha256_hex('httpGETlocalhost/c/gone'));
ok($ttl > 8000 && $ttl <= 10000, "the 404 is kept for 10 s: PTTL $ttl");
--- no_error_log
[error]
[alert]



=== TEST 2: no aai_cache_valid: the statuses cacheable by default only, for the time the response gives
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        add_header X-Status $aai_cache_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/app/cc/;
    }
--- aai_before
redis_flushdb();
--- request eval
["GET /c/gone", "GET /c/gone", "GET /c/teapot", "GET /c/teapot"]
--- error_code eval
[404, 404, 418, 418]
--- response_headers_like eval
["X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=404; stored",
 "X-Status: HIT\nCache-Status: aai; hit; ttl=(29|30)",
 "X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=418; detail=status",
 "X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=418; detail=status"]
--- no_error_log
[error]
[alert]
