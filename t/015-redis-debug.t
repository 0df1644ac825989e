# The shared Redis client's debug log: with a --with-debug nginx (Debian's
# is) and "error_log ... debug", each state change of a connection and of
# a command is logged (connect, handshake, ready, queued, reply), so that
# a command's path can be followed.  And the one way its modules parse a
# directive's value (ngx_aai_conf slots): a bad value is named with its
# directive, whichever module's directive it is.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: debug log: init, connected, handshake, ready, queued, reply
--- http_config
    aai_redis_test_server 127.0.0.1:$TEST_NGINX_REDIS_PORT db=0 timeout=3s;
--- config
    location /redis { aai_redis_test; }
--- request
GET /redis?cmd=SET&a=aai:t015&a=v
--- response_body
+OK
--- error_log eval
[qr/\[debug\] .*aai redis 127\.0\.0\.1:\d+: worker init, 1 connections/,
 qr/\[debug\] .*aai redis 127\.0\.0\.1:\d+: connected$/,
 qr/\[debug\] .*aai redis 127\.0\.0\.1:\d+: handshake: SELECT answered/,
 qr/\[debug\] .*aai redis 127\.0\.0\.1:\d+: handshake: PING answered/,
 qr/\[debug\] .*aai redis 127\.0\.0\.1:\d+: ready$/,
 qr/\[debug\] .*aai redis 127\.0\.0\.1:\d+: SET queued, \d+ pending/,
 qr/\[debug\] .*aai redis 127\.0\.0\.1:\d+: reply type:5, 0 pending/]
--- no_error_log
[error]



=== TEST 2: a time of the cache's main level, named with its value
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_cache_store_timeout 5x;
--- config
--- must_die
--- error_log
[emerg]
invalid value "5x" in "aai_cache_store_timeout" directive



=== TEST 3: the limiter's status bound, checked through cmd->post
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    aai_ratelimit_status 600;
--- must_die
--- error_log
[emerg]
invalid value "600" in "aai_ratelimit_status" directive, it must be between 400 and 599
