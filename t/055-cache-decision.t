# ngx_http_aai_cache_module: how long a response is kept as aai_cache_valid
# says (ngx_http_aai_cache_valid_time(), ngx_http_aai_cache_freshness.c),
# and the path of a cache request as its debug log shows it (a line at
# each state change: lookup, hit or miss, lock, wake-up, store, purge).
#
# Needs an nginx built --with-debug (Debian's is): the debug lines are
# asserted.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT wait_until );
use Digest::SHA qw( sha256_hex );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_APP_PORT} = free_port();
$ENV{TEST_NGINX_HUNG_PORT} = hung_listener();

our $Key = 'aai:c:' . sha256_hex('httpGETlocalhost/c/gone');
our $ErrLog = server_root() . '/logs/error.log';

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

        # answers after 300 ms
        location /app/slow/ {
            proxy_read_timeout 300ms;
            proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
            error_page 504 =200 @slow;
        }

        location @slow {
            add_header Cache-Control "max-age=60";
            return 200 "slow\n";
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



=== TEST 3: debug log: the path of a miss that takes the lock and is stored
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_lock on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/app/cc/;
    }
--- aai_before
redis_flushdb();
--- request
GET /c/gone
--- error_code: 404
--- grep_error_log eval
qr/aai cache (?:lookup "[^"]*" sent|no entry|lock "[^"]*" (?:requested|taken)|[A-Z]+: (?:forwarded|served from the cache)|capture for "[^"]*" started|store "[^"]*")/
--- grep_error_log_out eval
"aai cache lookup \"$::Key\" sent
aai cache no entry
aai cache lock \"$::Key:l\" requested
aai cache lock \"$::Key:l\" taken
aai cache MISS: forwarded
aai cache capture for \"$::Key\" started
aai cache store \"$::Key\"
"
--- no_error_log
[error]
[alert]



=== TEST 4: debug log: the path of a hit (the entry TEST 3 stored)
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_lock on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/app/cc/;
    }
--- aai_before
wait_until(5, sub { redis_cmd('EXISTS', $::Key) });
--- request
GET /c/gone
--- error_code: 404
--- grep_error_log eval
qr/aai cache (?:lookup "[^"]*" sent|no entry|lock "[^"]*" (?:requested|taken)|[A-Z]+: (?:forwarded|served from the cache)|capture for "[^"]*" started|store "[^"]*")/
--- grep_error_log_out eval
"aai cache lookup \"$::Key\" sent
aai cache HIT: served from the cache
"
--- no_error_log
[error]
[alert]



=== TEST 5: debug log: concurrent misses wait for the lock and are woken when the entry is stored
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_lock on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/app/;
    }
--- aai_before
redis_flushdb();
--- init
# runs in the runner's package: qualify names
my $port = $ENV{TEST_NGINX_SERVER_PORT};
my @r = AaiTest::http_concurrent([ map { [$port, '/c/slow/w'] } 1 .. 3 ]);
Test::More::is(join(' ', map { $_->[0] // 0 } @r), '200 200 200',
               'three answered');
my $lock = qr/"aai:c:[0-9a-f]{64}:l"/;
for my $re (qr/aai cache lock $lock held by another request/,
            qr/aai cache wait for lock $lock, \d+ ms left/,
            qr/aai cache lock $lock let go, stored/,
            qr/aai cache woken: stored, lock $lock/,
            qr/aai cache HIT: served from the cache/)
{
    Test::More::ok(AaiTest::wait_until(5, sub {
        grep { $_ =~ $re } AaiTest::file_lines($main::ErrLog) }),
        "debug: a line like $re");
}
--- request
GET /c/ok
--- response_body
ok
--- no_error_log
[alert]
aai_cache:



=== TEST 6: debug log: purge
--- http_config eval: $::HttpConfig
--- config
    location /purge/ {
        aai_cache_purge;
    }
--- aai_before
redis_flushdb();
--- request
GET /purge/x
--- error_code: 404
--- response_body
{"purged":0}
--- error_log eval
[qr/aai cache purge "aai:c:[0-9a-f]{64}"/,
 qr/aai cache purged 0 entries/]
--- no_error_log
[error]
[alert]



=== TEST 7: "off | list" directives: aai_cache_credentials twice in one location
--- config
    location /c/ {
        aai_cache_credentials Authorization;
        aai_cache_credentials off;
    }
--- must_die
--- error_log
"aai_cache_credentials" directive is duplicate



=== TEST 8: "off | list" directives: aai_cache_control_field twice in one location
--- config
    location /c/ {
        aai_cache_control_field off;
        aai_cache_control_field CDN-Cache-Control;
    }
--- must_die
--- error_log
"aai_cache_control_field" directive is duplicate



=== TEST 9: "off | list" directives: an empty field name
--- config
    location /c/ {
        aai_cache_control_field CDN-Cache-Control "";
    }
--- must_die
--- error_log
invalid field "" in "aai_cache_control_field": a response header name
