# ngx_http_aai_ratelimit_module as a hostile client or a careless operator
# would try it: a key longer than 64 KB is limited under its SHA-256 (not
# skipped, nothing logged per request), short keys keep their Redis name;
# a GCRA rate finer than one microsecond per request, and a burst that
# would let a key run more than 100 years ahead, fail nginx -t.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Digest::SHA qw( sha256_hex );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_DEAD_PORT} = free_port();

our $LongKey = 'k' x 70000;

add_block_preprocessor(sub {
    my $block = shift;
    my $http = $block->http_config // '';

    redis_flushdb();

    if ($http !~ /aai_ratelimit_redis/) {
        $block->set_value('http_config',
            "    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT;\n"
            . $http);
    }
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a key longer than 64 KB is limited like any other
--- http_config
    large_client_header_buffers 4 128k;
    aai_ratelimit_zone long key=$http_x_key$arg_v rate=1r/m;
--- config
    location /t {
        aai_ratelimit long;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- more_headers eval
"X-Key: $main::LongKey"
--- request eval
["GET /t?v=1", "GET /t?v=1", "GET /t?v=2"]
--- error_code eval
[200, 429, 200]
--- response_headers eval
["X-RL: PASSED", "X-RL: REJECTED", "X-RL: PASSED"]
--- no_error_log
more than 65535 bytes
[emerg]
--- aai_after
for my $v (1, 2) {
    my $name = 'aai:rl:long#' . sha256_hex($main::LongKey . $v);
    is(redis_cmd('LLEN', $name), 1, "long key $v: counted under its SHA-256");
}
is(scalar @{ redis_cmd('KEYS', 'aai:rl:long:*') }, 0,
   'no long key stored as is');



=== TEST 2: a long key in the local fallback is limited too
--- http_config
    large_client_header_buffers 4 128k;
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_fallback local;
    aai_ratelimit_zone longl key=$http_x_key rate=1r/m algorithm=gcra;
--- config
    location /t {
        aai_ratelimit longl;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- more_headers eval
"X-Key: $main::LongKey"
--- request eval
["GET /t", "GET /t"]
--- error_code eval
[200, 429]



=== TEST 3: a short key keeps its Redis name
--- http_config
    aai_ratelimit_zone short key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit short;
        empty_gif;
    }
--- request eval
["GET /t?u=abc", "GET /t?u=abc"]
--- error_code eval
[200, 429]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:short:abc'), 1, 'short key as it is');



=== TEST 4: GCRA above 10^6 requests per second fails nginx -t
--- http_config
    aai_ratelimit_zone g key=$arg_u rate=2000000r/s algorithm=gcra;
--- config
--- must_die
--- error_log
[emerg]
rate "2000000r/s" of zone "g" in "aai_ratelimit_zone" is more than 1000000 requests per second, the most "algorithm=gcra" can count



=== TEST 5: GCRA above 10^6 requests per second with a window multiple
--- http_config
    aai_ratelimit_zone g key=$arg_u rate=1000000000r/10m algorithm=gcra;
--- config
--- must_die
--- error_log
[emerg]
rate "1000000000r/10m" of zone "g" in "aai_ratelimit_zone" is more than 1000000 requests per second



=== TEST 6: GCRA at exactly 10^6 requests per second limits
--- http_config
    aai_ratelimit_zone g key=$arg_u rate=1000000r/s algorithm=gcra;
    aai_ratelimit_zone s key=$arg_u rate=2000000r/s;
--- config
    location /t {
        aai_ratelimit g;
        aai_ratelimit s;
        empty_gif;
    }
--- request
GET /t?u=a
--- error_code: 200
--- no_error_log
[emerg]
[error]



=== TEST 7: a GCRA burst more than 100 years ahead fails nginx -t
--- http_config
    aai_ratelimit_zone g key=$arg_u rate=1r/8784h burst=1000000000 nodelay
                       algorithm=gcra;
--- config
--- must_die
--- error_log
[emerg]
burst=1000000000 with rate "1r/8784h" of zone "g" in "aai_ratelimit_zone" lets a key run more than 100 years ahead



=== TEST 8: a sliding window burst more than 100 years ahead fails nginx -t
--- http_config
    aai_ratelimit_zone s key=$arg_u rate=2r/8784h burst=300;
--- config
--- must_die
--- error_log
[emerg]
burst=300 with rate "2r/8784h" of zone "s" in "aai_ratelimit_zone" lets a key run more than 100 years ahead



=== TEST 9: the local fallback at the largest burst and period allowed
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_fallback local;
    aai_ratelimit_zone g key=$arg_u rate=1r/8784h burst=99 nodelay
                       algorithm=gcra;
--- config
    location /t {
        aai_ratelimit g;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a"]
--- error_code eval
[200, 200, 200]
--- response_headers_like eval
['RateLimit: "g";r=99;t=31622400', 'RateLimit: "g";r=98;t=63244800',
 'RateLimit: "g";r=97;t=94867200']
