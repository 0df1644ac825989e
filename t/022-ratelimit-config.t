# ngx_http_aai_ratelimit_module configuration: every invalid directive value
# fails the configuration with a message naming the directive and the value.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: all directives valid
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_key_prefix "cfg:";
    aai_ratelimit_local_zone 1m;
    aai_ratelimit_zone a key=$arg_u rate=10r/s burst=5 nodelay;
    aai_ratelimit_zone b key=$arg_u rate=10r/5m burst=5 delay=2
                       algorithm=sliding;
    aai_ratelimit_zone c key=$binary_remote_addr$arg_u rate=1000r/h
                       algorithm=gcra;
    aai_ratelimit_status 503;
    aai_ratelimit_dry_run off;
    aai_ratelimit_log_level notice;
    aai_ratelimit_headers on;
    aai_ratelimit_fallback local;
--- config
    aai_ratelimit a;
    location /t {
        aai_ratelimit b;
        aai_ratelimit c;
        aai_ratelimit_fallback deny;
        empty_gif;
    }
--- aai_before
# zone b's key of user "full" holds its 10 and its burst of 5
my $now = AaiTest::redis_time_us();
redis_cmd('RPUSH', 'cfg:b:full', $now - $_ * 1000) for reverse 1 .. 15;
redis_cmd('PEXPIRE', 'cfg:b:full', 600000);
--- request eval
["GET /t?u=x", "GET /t?u=full"]
--- error_code eval
[200, 503]
--- response_headers_like eval
['RateLimit-Policy: "\w";q=\d+;w=\d+', 'Retry-After: \d+']
--- aai_after
# the prefix; b and c counted the admitted request (the location's list
# replaces the server's a), b none of the rejected one
is(join(' ', map { redis_cmd('EXISTS', "cfg:$_:x") } qw(a b)), '0 1',
   'keys under the prefix "cfg:", zone a not inherited');
my $log = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '/logs/error.log';
is(scalar(grep { /\[notice\] .*limiting requests by aai_ratelimit zone "b"/ }
          file_lines($log)), 1, 'the rejection is logged at notice');
is(scalar @{ redis_cmd('KEYS', 'cfg:c:*') }, 1, 'zone c counted too');
is(redis_cmd('LLEN', 'cfg:b:full'), 15, 'the rejection recorded nothing');
is(scalar(map { @{ redis_cmd('KEYS', "aai:rl:$_:*") } } qw(a b c)), 0,
   'nothing under the default prefix');
--- no_error_log
[error]
[emerg]



=== TEST 2: a zone may be used before it is defined
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    server {
        listen $TEST_NGINX_SERVER_PORT;
        server_name first.test;
        location / {
            aai_ratelimit late;
            empty_gif;
        }
    }
    aai_ratelimit_zone late key=$arg_u rate=1r/m;
--- config
--- more_headers
Host: first.test
--- request eval
["GET /t?u=cfg2", "GET /t?u=cfg2"]
--- error_code eval
[200, 429]



=== TEST 3: invalid rate
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=abc;
--- config
--- must_die
--- error_log
[emerg]
invalid rate "abc" in "aai_ratelimit_zone"



=== TEST 4: invalid rate unit
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=10r/x;
--- config
--- must_die
--- error_log
[emerg]
invalid rate "10r/x" in "aai_ratelimit_zone"



=== TEST 5: invalid rate: zero requests
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=0r/s;
--- config
--- must_die
--- error_log
[emerg]
invalid rate "0r/s" in "aai_ratelimit_zone"



=== TEST 6: invalid rate: zero window
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=10r/0m;
--- config
--- must_die
--- error_log
[emerg]
invalid rate "10r/0m" in "aai_ratelimit_zone"



=== TEST 7: invalid rate: no "r/"
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=10/s;
--- config
--- must_die
--- error_log
[emerg]
invalid rate "10/s" in "aai_ratelimit_zone"



=== TEST 8: invalid rate: window longer than a year
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/9000h;
--- config
--- must_die
--- error_log
[emerg]
invalid rate "1r/9000h" in "aai_ratelimit_zone"



=== TEST 9: invalid burst
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s burst=abc;
--- config
--- must_die
--- error_log
[emerg]
invalid burst "abc" in "aai_ratelimit_zone"



=== TEST 10: negative burst
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s burst=-1;
--- config
--- must_die
--- error_log
[emerg]
invalid burst "-1" in "aai_ratelimit_zone"



=== TEST 11: invalid delay
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s burst=3 delay=x;
--- config
--- must_die
--- error_log
[emerg]
invalid delay "x" in "aai_ratelimit_zone"



=== TEST 12: invalid algorithm
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s algorithm=leaky;
--- config
--- must_die
--- error_log
[emerg]
invalid algorithm "leaky" in "aai_ratelimit_zone"



=== TEST 13: empty key
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key= rate=1r/s;
--- config
--- must_die
--- error_log
[emerg]
invalid key "" in "aai_ratelimit_zone"



=== TEST 14: unknown parameter
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s foo=bar;
--- config
--- must_die
--- error_log
[emerg]
invalid parameter "foo=bar" in "aai_ratelimit_zone"



=== TEST 15: missing rate
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u burst=1;
--- config
--- must_die
--- error_log
[emerg]
"aai_ratelimit_zone" "z" must have "key=" and "rate=" parameters



=== TEST 16: invalid zone name
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone a/b key=$arg_u rate=1r/s;
--- config
--- must_die
--- error_log
[emerg]
invalid zone name "a/b" in "aai_ratelimit_zone"



=== TEST 17: "off" is not a zone name
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone off key=$arg_u rate=1r/s;
--- config
--- must_die
--- error_log
[emerg]
invalid zone name "off" in "aai_ratelimit_zone"



=== TEST 18: duplicate zone
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s;
    aai_ratelimit_zone z key=$arg_v rate=2r/s;
--- config
--- must_die
--- error_log
[emerg]
duplicate zone "z" in "aai_ratelimit_zone"



=== TEST 19: unknown zone
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s;
--- config
    location /t {
        aai_ratelimit nope;
    }
--- must_die
--- error_log eval
[qr/\[emerg\]/, qr/unknown zone "nope" in "aai_ratelimit" in \S+nginx.conf:\d+/]



=== TEST 20: same zone twice in a location
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s;
--- config
    location /t {
        aai_ratelimit z;
        aai_ratelimit z;
    }
--- must_die
--- error_log
[emerg]
duplicate zone "z" in "aai_ratelimit"



=== TEST 21: "off" after zones
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone z key=$arg_u rate=1r/s;
--- config
    location /t {
        aai_ratelimit z;
        aai_ratelimit off;
    }
--- must_die
--- error_log
[emerg]
"aai_ratelimit" directive is duplicate



=== TEST 22: zones need a Redis server
--- http_config
    aai_ratelimit_zone z key=$arg_u rate=1r/s;
--- config
--- must_die
--- error_log eval
[qr/\[emerg\]/, qr/"aai_ratelimit_zone" "z" requires "aai_ratelimit_redis" in \S+nginx.conf:\d+/]



=== TEST 23: invalid status
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    aai_ratelimit_status 200;
--- must_die
--- error_log
[emerg]
invalid value "200" in "aai_ratelimit_status" directive, it must be between 400 and 599



=== TEST 24: status not a number
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    aai_ratelimit_status abc;
--- must_die
--- error_log
[emerg]
invalid value "abc" in "aai_ratelimit_status" directive



=== TEST 25: invalid log level
--- config
    aai_ratelimit_log_level loud;
--- must_die
--- error_log
[emerg]
invalid value "loud" in "aai_ratelimit_log_level" directive



=== TEST 26: invalid fallback
--- config
    aai_ratelimit_fallback maybe;
--- must_die
--- error_log
[emerg]
invalid value "maybe" in "aai_ratelimit_fallback" directive



=== TEST 27: invalid dry run flag
--- config
    aai_ratelimit_dry_run yes;
--- must_die
--- error_log
[emerg]
invalid value "yes" in "aai_ratelimit_dry_run" directive



=== TEST 28: invalid headers flag
--- config
    aai_ratelimit_headers 1;
--- must_die
--- error_log
[emerg]
invalid value "1" in "aai_ratelimit_headers" directive



=== TEST 29: invalid local zone size
--- http_config
    aai_ratelimit_local_zone abc;
--- config
--- must_die
--- error_log
[emerg]
invalid value "abc" in "aai_ratelimit_local_zone" directive



=== TEST 30: local zone too small
--- http_config
    aai_ratelimit_local_zone 1k;
--- config
--- must_die
--- error_log
[emerg]
value "1k" in "aai_ratelimit_local_zone" directive is too small



=== TEST 31: invalid Redis address
--- http_config
    aai_ratelimit_redis 127.0.0.1:99999;
--- config
--- must_die
--- error_log
[emerg]
invalid address "127.0.0.1:99999" in "aai_ratelimit_redis"



=== TEST 32: invalid Redis parameter value
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=abc;
--- config
--- must_die
--- error_log
[emerg]
invalid value "abc" of "timeout" in "aai_ratelimit_redis"



=== TEST 33: unknown Redis parameter
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT speed=fast;
--- config
--- must_die
--- error_log eval
[qr/\[emerg\]/, qr/unknown parameter "speed" in "aai_ratelimit_redis"/]



=== TEST 34: a second Redis server
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
--- must_die
--- error_log
[emerg]
"aai_ratelimit_redis" directive is duplicate



=== TEST 35: zones only at http level
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    aai_ratelimit_zone z key=$arg_u rate=1r/s;
--- must_die
--- error_log
[emerg]
"aai_ratelimit_zone" directive is not allowed here
