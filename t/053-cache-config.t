# ngx_http_aai_cache_module configuration: invalid values fail to start
# (nginx -t) with a message naming the directive and the value; a complete
# valid configuration starts.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# the application TEST 1 caches
$ENV{TEST_NGINX_APP053} = free_port();

our $Redis = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
_EOC_

no_shuffle();
run_tests();

__DATA__

=== TEST 1: every directive, valid values: nginx starts and they apply
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=1s
                    connect_timeout=1s db=1;
    aai_cache_key_prefix "app:cache:";
    aai_cache_max_size 2m;
    server {
        listen 127.0.0.1:$TEST_NGINX_APP053;
        location / {
            return 200 "app $request_method $uri\n";
        }
    }
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
        add_header X-Status $aai_cache_status always;
        add_header X-Key $aai_cache_key always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP053;
    }
    location /c/off/ {
        aai_cache off;
        aai_cache_use_stale off;
        add_header X-Status "[$aai_cache_status]" always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP053;
    }
    location /purge/ {
        aai_cache_purge $uri;
    }
    location /metrics {
        aai_metrics;
    }
--- init
# runs in the runner's package: qualify names.  Stored under the prefix,
# in db 1, for aai_cache_valid's 5 minutes (the app gives no freshness)
my $port = $ENV{TEST_NGINX_SERVER_PORT};
my ($st, $h) = AaiTest::http_get($port, '/c/a');
Test::More::is("$st $h->{'x-status'}", '200 MISS', 'first request: a miss');
my $key = $h->{'x-key'} // '';
Test::More::like($key, qr/^app:cache:/, 'the key has the prefix');
AaiTest::redis_cmd('SELECT', 1);
my $ttl = AaiTest::wait_until(5, sub { AaiTest::redis_cmd('TTL', $key) > 0
                                       && AaiTest::redis_cmd('TTL', $key) });
my $in0 = AaiTest::redis_cmd('SELECT', 0)
          && AaiTest::redis_cmd('EXISTS', $key);
Test::More::ok($ttl > 200 && $ttl <= 300 + 3600,
               "stored in db 1 for 5 min (+ stale_ttl): TTL $ttl");
Test::More::is($in0, 0, 'not in db 0');
# aai_cache_methods POST: a POST is stored, then hit
($st, $h) = AaiTest::http_get($port, '/c/p', {}, 'POST', 'x');
Test::More::is("$st $h->{'x-status'}", '200 MISS', 'POST: a miss');
Test::More::ok(AaiTest::wait_until(5, sub {
    (AaiTest::http_get($port, '/c/p', {}, 'POST', 'y'))[1]{'x-status'}
    eq 'HIT' }), 'POST: then a hit');
--- request eval
["GET /c/a", "GET /c/a?nocache=1", "GET /c/off/"]
--- response_body eval
["app GET /c/a\n", "app GET /c/a\n", "app GET /c/off/\n"]
--- response_headers eval
["X-Status: HIT", "X-Status: BYPASS", "X-Status: []"]
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
