# ngx_http_aai_cache_module configuration: invalid values fail to start
# (nginx -t) with a message naming the directive and the value; a complete
# valid configuration starts.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

our $Redis = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
_EOC_

no_shuffle();
run_tests();

__DATA__

=== TEST 1: every directive, valid values: nginx starts
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=50ms
                    connect_timeout=100ms db=1;
    aai_cache_key_prefix "app:cache:";
    aai_cache_max_size 2m;
--- config
    location /c/ {
        aai_cache on;
        aai_cache_key $scheme$request_method$host$request_uri;
        aai_cache_valid 200 301 5m;
        aai_cache_valid 404 30s;
        aai_cache_valid any 1s;
        aai_cache_methods GET HEAD POST;
        aai_cache_bypass $http_x_no_cache $arg_nocache;
        aai_cache_no_store $cookie_preview;
        aai_cache_lock on;
        aai_cache_lock_timeout 3s;
        aai_cache_use_stale error timeout updating http_500 http_502
                            http_503 http_504;
        aai_cache_background_update on;
        aai_cache_stale_ttl 1h;
        return 200 "ok\n";
    }
    location /c/off/ {
        aai_cache off;
        aai_cache_use_stale off;
        return 200 "off\n";
    }
    location /purge/ {
        aai_cache_purge $uri;
    }
    location /metrics {
        aai_metrics;
    }
--- request
GET /c/off/
--- response_body
off
--- no_error_log
[emerg]
[alert]



=== TEST 2: aai_cache without aai_cache_redis
--- config
    location /c/ {
        aai_cache on;
    }
--- must_die
--- error_log
"aai_cache" and "aai_cache_purge" need "aai_cache_redis" in the http block



=== TEST 3: aai_cache_purge without aai_cache_redis
--- config
    location /purge/ {
        aai_cache_purge;
    }
--- must_die
--- error_log
need "aai_cache_redis"



=== TEST 4: aai_cache_redis: bad address
--- http_config
    aai_cache_redis "127.0.0.1:notaport";
--- config
--- must_die
--- error_log
invalid address "127.0.0.1:notaport" in "aai_cache_redis"



=== TEST 5: aai_cache_redis: bad parameter
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=soon;
--- config
--- must_die
--- error_log
"aai_cache_redis"



=== TEST 6: aai_cache_redis twice
--- http_config eval
$::Redis . $::Redis
--- config
--- must_die
--- error_log
"aai_cache_redis" directive is duplicate



=== TEST 7: aai_cache_redis is http-level only
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_redis 127.0.0.1:6379;
    }
--- must_die
--- error_log
"aai_cache_redis" directive is not allowed here



=== TEST 8: aai_cache: not a flag
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache maybe;
    }
--- must_die
--- error_log
invalid value "maybe" in "aai_cache" directive, it must be "on" or "off"



=== TEST 9: aai_cache_valid: bad status
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_valid 2OO 5m;
    }
--- must_die
--- error_log
invalid status "2OO" in "aai_cache_valid"



=== TEST 10: aai_cache_valid: 206 is never stored
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_valid 200 206 5m;
    }
--- must_die
--- error_log
invalid status "206" in "aai_cache_valid"



=== TEST 11: aai_cache_valid: bad time
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_valid 200 five;
    }
--- must_die
--- error_log
invalid time "five" in "aai_cache_valid"



=== TEST 12: aai_cache_methods: a method that is not cacheable
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_methods GET PUT;
    }
--- must_die
--- error_log
invalid method "PUT" in "aai_cache_methods"



=== TEST 13: aai_cache_max_size: bad size
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_max_size 1q;
    }
--- must_die
--- error_log
invalid size "1q" in "aai_cache_max_size"



=== TEST 14: aai_cache_max_size: over Redis' 512 MB
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_max_size 600m;
    }
--- must_die
--- error_log
size "600m" in "aai_cache_max_size" is over 512m



=== TEST 15: aai_cache_lock_timeout: zero
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_lock_timeout 0;
    }
--- must_die
--- error_log
invalid time "0" in "aai_cache_lock_timeout"



=== TEST 16: aai_cache_lock_timeout: not a time
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_lock_timeout 5 seconds;
    }
--- must_die
--- error_log
invalid number of arguments in "aai_cache_lock_timeout" directive



=== TEST 17: aai_cache_use_stale: unknown condition
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_use_stale error http_404;
    }
--- must_die
--- error_log
invalid value "http_404" in "aai_cache_use_stale"



=== TEST 18: aai_cache_use_stale: off with others
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_use_stale off error;
    }
--- must_die
--- error_log
"off" cannot be combined with other values in "aai_cache_use_stale"



=== TEST 19: aai_cache_key_prefix: spaces
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_key_prefix "a b:";
    }
--- must_die
--- error_log
invalid prefix "a b:" in "aai_cache_key_prefix"



=== TEST 20: aai_cache_stale_ttl: bad time
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_stale_ttl forever;
    }
--- must_die
--- error_log
invalid time "forever" in "aai_cache_stale_ttl"



=== TEST 21: aai_cache_key: unknown variable
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_key $no_such_variable;
    }
--- must_die
--- error_log
unknown "no_such_variable" variable



=== TEST 22: aai_cache_purge: location only
--- http_config eval: $::Redis
--- config
    aai_cache_purge;
--- must_die
--- error_log
"aai_cache_purge" directive is not allowed here



=== TEST 23: aai_cache_lock twice in one location
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_lock on;
        aai_cache_lock off;
    }
--- must_die
--- error_log
"aai_cache_lock" directive is duplicate



=== TEST 24: aai_cache_methods twice in one location
--- http_config eval: $::Redis
--- config
    location /x/ {
        aai_cache_methods GET;
        aai_cache_methods HEAD;
    }
--- must_die
--- error_log
"aai_cache_methods" directive is duplicate
