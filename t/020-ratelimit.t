# ngx_http_aai_ratelimit_module: limits, algorithms, windows, burst and
# delay, several zones, headers, dry run, empty keys, $aai_ratelimit_status,
# the local blocklist and metrics, against the real redis of t/run-tests.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# Every block starts from an empty Redis and talks to the harness redis.

add_block_preprocessor(sub {
    my $block = shift;
    my $http = $block->http_config // '';

    redis_flushdb();

    if ($http !~ /aai_ratelimit_redis/) {
        $block->set_value('http_config',
            "    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT"
            . " connect_timeout=2s timeout=2s;\n"
            . $http);
    }
});


# --- timing: delays, window expiry, GCRA spacing (one nginx instance) ------

my ($port, $stop) = start_nginx_instance('rl020', <<'_EOC_');
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;

    aai_ratelimit_zone delay1  key=$arg_u rate=2r/1s burst=2;
    aai_ratelimit_zone nodel1  key=$arg_u rate=2r/1s burst=1 nodelay;
    aai_ratelimit_zone win1    key=$arg_u rate=2r/1s;
    aai_ratelimit_zone gcra1   key=$arg_u rate=2r/s algorithm=gcra;
    aai_ratelimit_zone gcrad   key=$arg_u rate=10r/s burst=5 algorithm=gcra;
    aai_ratelimit_zone delayn  key=$arg_u rate=2r/1s burst=2 delay=1;
    aai_ratelimit_zone gcradn  key=$arg_u rate=2r/s burst=3 delay=1
                               algorithm=gcra;
    aai_ratelimit_zone dcap    key=$arg_u rate=1r/m burst=2 delay=5;

    server {
        listen $TEST_NGINX_INSTANCE_PORT;
        add_header X-RL $aai_ratelimit_status always;

        location /delay1 { aai_ratelimit delay1; empty_gif; }
        location /nodel1 { aai_ratelimit nodel1; empty_gif; }
        location /win1   { aai_ratelimit win1;   empty_gif; }
        location /gcra1  { aai_ratelimit gcra1;  empty_gif; }
        location /gcrad  { aai_ratelimit gcrad;  empty_gif; }
        location /delayn { aai_ratelimit delayn; empty_gif; }
        location /gcradn { aai_ratelimit gcradn; empty_gif; }
        location /dcap   { aai_ratelimit dcap;   empty_gif; }
    }
_EOC_

# puts $n admissions of the last second into a sliding window key
sub seed {
    my ($key, $n) = @_;
    my $now = AaiTest::redis_time_us();
    redis_cmd('RPUSH', $key, $now - $_ * 1000) for reverse 1 .. $n;
    redis_cmd('PEXPIRE', $key, 60000);
}

sub timed_get {
    my ($st, $h, undef, $dt) = AaiTest::timed_get($port, $_[0], {});
    return ($st, $h->{'x-rl'} // '', $dt, $h);
}

redis_flushdb();

{
    # sliding window, burst=2 with delay: the third request of a 2r/1s
    # window waits until the oldest admission leaves the window

    my $t0 = time;
    my @r = map { [timed_get("/delay1?u=a")] } 1 .. 3;
    my $all = time - $t0;
    is(join(',', map { "$_->[0] $_->[1]" } @r),
       '200 PASSED,200 PASSED,200 DELAYED', 'sliding burst: third delayed');
    cmp_ok($all, '>=', 0.95,
           'sliding burst: the third waits until the first leaves the window');
    cmp_ok($all, '<', 2, 'sliding burst: and not longer');
    cmp_ok($r[0][2], '<', 0.5, 'sliding burst: first not delayed');
}

{
    # nodelay: burst served at once, then rejected

    my @r = map { [timed_get("/nodel1?u=a")] } 1 .. 4;
    is(join(',', map { "$_->[0] $_->[1]" } @r),
       '200 PASSED,200 PASSED,200 PASSED,429 REJECTED',
       'sliding nodelay: burst passes at once');
    cmp_ok($r[2][2], '<', 0.5, 'sliding nodelay: no delay');
    is(redis_cmd('LLEN', 'aai:rl:nodel1:a'), 3,
       'sliding nodelay: the burst request occupies a slot');
}

{
    # the window slides: after Retry-After the key is admitted again

    my @r = map { [timed_get("/win1?u=a")] } 1 .. 3;
    is(join(',', map { $_->[0] } @r), '200,200,429', '2r/1s: third rejected');
    is($r[2][3]{'retry-after'}, '1', '2r/1s: Retry-After 1');
    sleep 1.05;
    my ($st) = timed_get("/win1?u=a");
    is($st, 200, '2r/1s: admitted again after the window');
}

{
    # GCRA without burst spaces requests by window/limit (500 ms)

    my ($s1) = timed_get("/gcra1?u=a");
    my ($s2) = timed_get("/gcra1?u=a");
    sleep 0.55;
    my ($s3) = timed_get("/gcra1?u=a");
    is("$s1,$s2,$s3", '200,429,200', 'gcra 2r/s: spaced by 500 ms');
}

{
    # GCRA with burst and delay: the second request waits one period

    my $t0 = time;
    my @r = map { [timed_get("/gcrad?u=a")] } 1 .. 2;
    my $all = time - $t0;
    is(join(',', map { "$_->[0] $_->[1]" } @r), '200 PASSED,200 DELAYED',
       'gcra burst: second delayed');
    cmp_ok($all, '>=', 0.095, 'gcra burst: spaced by one period (100 ms)');
    cmp_ok($all, '<', 0.8, 'gcra burst: not longer');
}

{
    # sliding window, burst=2 delay=1: the first request over the rate
    # passes at once, the second waits until the first leaves the window

    my $t0 = time;
    my @r = map { [timed_get("/delayn?u=a")] } 1 .. 4;
    my $all = time - $t0;
    is(join(',', map { "$_->[0] $_->[1]" } @r),
       '200 PASSED,200 PASSED,200 PASSED,200 DELAYED',
       'sliding delay=1: one excess passes, the next is delayed');
    cmp_ok($r[2][2], '<', 0.5, 'sliding delay=1: the first excess at once');
    # from the first request on (the time the first three took is part of
    # the wait, whatever the load)
    cmp_ok($all, '>=', 0.95,
           "sliding delay=1: the second excess waits for the window ($all s)");
}

{
    # GCRA 2r/s burst=3 delay=1: the second request passes at once, the
    # third waits about one period (500 ms, less the time the first two
    # took: a period long enough to tell the two apart on a loaded machine)

    my $t0 = time;
    my @r = map { [timed_get("/gcradn?u=a")] } 1 .. 3;
    my $all = time - $t0;
    is(join(',', map { "$_->[0] $_->[1]" } @r),
       '200 PASSED,200 PASSED,200 DELAYED',
       'gcra delay=1: one excess passes, the next is delayed');
    cmp_ok($r[1][2], '<', 0.25, 'gcra delay=1: the first excess at once');
    cmp_ok($all, '>=', 0.45,
           "gcra delay=1: the second excess waits a period ($all s)");
}

{
    # delay= above burst is capped at burst: the burst passes at once

    my @r = map { [timed_get("/dcap?u=a")] } 1 .. 4;
    is(join(',', map { "$_->[0] $_->[1]" } @r),
       '200 PASSED,200 PASSED,200 PASSED,429 REJECTED',
       'delay=5 with burst=2: the burst passes at once, then rejected');
}

$stop->();

no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: per-user limit (key from a header), sliding window
--- http_config
    aai_ratelimit_zone user key=$http_x_user_id rate=3r/m;
--- config
    location /t {
        aai_ratelimit user;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- more_headers
X-User-Id: alice
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
["X-RL: PASSED", "X-RL: PASSED", "X-RL: PASSED", "X-RL: REJECTED"]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:user:alice'), 3, 'three admissions logged');
my $ttl = redis_cmd('PTTL', 'aai:rl:user:alice');
ok($ttl > 85000 && $ttl <= 90001, "key expires 1.5 windows after ($ttl)");



=== TEST 2: users are limited independently
--- http_config
    aai_ratelimit_zone peruser key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit peruser;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=b", "GET /t?u=a", "GET /t?u=b", "GET /t?u=c"]
--- error_code eval
[200, 200, 429, 429, 200]



=== TEST 3: per-IP limit with the binary address as key
--- http_config
    aai_ratelimit_zone ip key=$binary_remote_addr rate=2r/m;
--- config
    location /t {
        aai_ratelimit ip;
        empty_gif;
    }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]
--- aai_after
is(redis_cmd('LLEN', "aai:rl:ip:\x7f\x00\x00\x01"), 2,
   'binary address key in redis');



=== TEST 4: window sizes: seconds, minutes, hours, multiples
--- http_config
    aai_ratelimit_zone w1  key=$arg_u rate=5r/s;
    aai_ratelimit_zone w10 key=$arg_u rate=100r/10s;
    aai_ratelimit_zone w5m key=$arg_u rate=10r/5m;
    aai_ratelimit_zone wh  key=$arg_u rate=1000r/h;
    aai_ratelimit_zone wm  key=$arg_u rate=10r/m algorithm=gcra;
--- config
    location /w1  { aai_ratelimit w1;  empty_gif; }
    location /w10 { aai_ratelimit w10; empty_gif; }
    location /w5m { aai_ratelimit w5m; empty_gif; }
    location /wh  { aai_ratelimit wh;  empty_gif; }
    location /wm  { aai_ratelimit wm;  empty_gif; }
--- request eval
["GET /w1?u=k", "GET /w10?u=k", "GET /w5m?u=k", "GET /wh?u=k", "GET /wm?u=k"]
--- response_headers eval
[
'RateLimit-Policy: "w1";q=5;w=1
RateLimit: "w1";r=4;t=1',
'RateLimit-Policy: "w10";q=100;w=10
RateLimit: "w10";r=99;t=10',
'RateLimit-Policy: "w5m";q=10;w=300
RateLimit: "w5m";r=9;t=300',
'RateLimit-Policy: "wh";q=1000;w=3600
RateLimit: "wh";r=999;t=3600',
'RateLimit-Policy: "wm";q=10;w=60
RateLimit: "wm";r=0;t=6',
]
--- aai_after
for (['w1', 1000], ['w10', 10000], ['w5m', 300000], ['wh', 3600000]) {
    my ($z, $w) = @$_;
    my $ttl = redis_cmd('PTTL', "aai:rl:$z:k");
    ok($ttl > 1.5 * $w - 5000 && $ttl <= 1.5 * $w + 1,
       "$z: key TTL $ttl: 1.5 windows");
}
my $ttl = redis_cmd('PTTL', 'aai:rl:wm:k');
ok($ttl > 0 && $ttl <= 6001, "gcra key TTL $ttl: one period");



=== TEST 5: GCRA with burst and nodelay: 1 + burst at once, then rejected
--- http_config
    aai_ratelimit_zone g key=$arg_u rate=1r/m burst=2 nodelay algorithm=gcra;
--- config
    location /t {
        aai_ratelimit g;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a", "GET /t?u=a"]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
['RateLimit: "g";r=2;t=60
X-RL: PASSED',
'RateLimit: "g";r=1;t=120
X-RL: PASSED',
'RateLimit: "g";r=0;t=180
X-RL: PASSED',
'RateLimit: "g";r=0;t=60
Retry-After: 60
X-RL: REJECTED']
--- aai_after
my $tat = redis_cmd('GET', 'aai:rl:g:a');
like($tat, qr/^\d{16}$/, 'gcra state is a time in microseconds');



=== TEST 6: sliding window with delay=N: excess up to N is not delayed
--- http_config
    aai_ratelimit_zone d key=$arg_u rate=1r/m burst=3 delay=1;
--- config
    location /t {
        aai_ratelimit d;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a"]
--- response_headers eval
["X-RL: PASSED", "X-RL: PASSED"]
--- error_code eval
[200, 200]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:d:a'), 2, 'burst request recorded');
my $s = redis_cmd('LRANGE', 'aai:rl:d:a', 0, -1);
ok($s->[1] - $s->[0] > 59_000_000,
   'the burst request holds the slot after the first leaves the window');



=== TEST 7: several zones: all must pass, a rejection spends no quota
--- http_config
    aai_ratelimit_zone small key=$arg_u   rate=1r/m;
    aai_ratelimit_zone big   key=global   rate=3r/m;
--- config
    location /t {
        aai_ratelimit small;
        aai_ratelimit big;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a", "GET /t?u=b", "GET /t?u=c",
 "GET /t?u=d"]
--- error_code eval
[200, 429, 429, 200, 200, 429]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:big:global'), 3,
   'big zone counted only admitted requests');
is(redis_cmd('LLEN', 'aai:rl:small:a'), 1, 'small zone: one admission');
is(redis_cmd('EXISTS', 'aai:rl:small:d'), 0,
   'request rejected by big zone spent nothing in small zone');



=== TEST 8: headers and Retry-After for the most restrictive zone
--- http_config
    aai_ratelimit_zone loose key=$arg_u rate=10r/m;
    aai_ratelimit_zone tight key=$arg_u rate=2r/m;
--- config
    location /t {
        aai_ratelimit loose;
        aai_ratelimit tight;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a"]
--- error_code eval
[200, 200, 429]
--- response_headers eval
['RateLimit-Policy: "tight";q=2;w=60
RateLimit: "tight";r=1;t=60
!Retry-After',
'RateLimit-Policy: "tight";q=2;w=60
RateLimit: "tight";r=0;t=60',
'RateLimit-Policy: "tight";q=2;w=60
RateLimit: "tight";r=0;t=60
Retry-After: 60']



=== TEST 9: aai_ratelimit_headers off keeps Retry-After only
--- http_config
    aai_ratelimit_zone nh key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit nh;
        aai_ratelimit_headers off;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a"]
--- error_code eval
[200, 429]
--- response_headers eval
["!RateLimit\n!RateLimit-Policy\n!Retry-After",
 "!RateLimit\n!RateLimit-Policy\nRetry-After: 60"]



=== TEST 10: dry run: nothing rejected, the would-be rejection is logged
--- http_config
    aai_ratelimit_zone dry key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit dry;
        aai_ratelimit_dry_run on;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
seed('aai:rl:dry:a', 1);
--- request
GET /t?u=a
--- error_code: 200
--- response_headers
X-RL: REJECTED_DRY_RUN
!Retry-After
!RateLimit
--- error_log
limiting requests, dry run, by aai_ratelimit zone "dry"
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:dry:a'), 1, 'dry run rejection spent nothing');



=== TEST 11: dry run: passes are marked
--- http_config
    aai_ratelimit_zone dry2 key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit dry2;
        aai_ratelimit_dry_run on;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a"]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["X-RL: PASSED_DRY_RUN", "X-RL: REJECTED_DRY_RUN", "X-RL: REJECTED_DRY_RUN"]



=== TEST 12: an empty key is not counted; a per-IP zone beside it applies
--- http_config
    aai_ratelimit_zone anon_user key=$http_x_user_id    rate=1r/m;
    aai_ratelimit_zone anon_ip   key=$binary_remote_addr rate=2r/m;
--- config
    location /user {
        aai_ratelimit anon_user;
        add_header X-RL "[$aai_ratelimit_status]" always;
        empty_gif;
    }
    location /both {
        aai_ratelimit anon_user;
        aai_ratelimit anon_ip;
        empty_gif;
    }
--- request eval
["GET /user", "GET /user", "GET /user", "GET /both", "GET /both",
 "GET /both"]
--- error_code eval
[200, 200, 200, 200, 200, 429]
--- response_headers eval
["X-RL: []", "X-RL: []", "X-RL: []", "", "", ""]
--- aai_after
my $keys = redis_cmd('KEYS', 'aai:rl:anon_user:*');
is(scalar @$keys, 0, 'no key for the empty user');



=== TEST 13: status code, log level and key prefix
--- http_config
    aai_ratelimit_key_prefix "test:{rl}:";
    aai_ratelimit_zone st key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit st;
        aai_ratelimit_status 503;
        aai_ratelimit_log_level warn;
        empty_gif;
    }
--- aai_before
seed('test:{rl}:st:a', 1);
--- request
GET /t?u=a
--- error_code: 503
--- error_log eval
qr/\[warn\] .*limiting requests by aai_ratelimit zone "st", retry after \d+ ms/
--- aai_after
is(redis_cmd('LLEN', 'test:{rl}:st:a'), 1, 'key prefix used');



=== TEST 14: inheritance: server level list, location override and off
--- http_config
    aai_ratelimit_zone srv key=$arg_u rate=1r/m;
    aai_ratelimit_zone loc key=$arg_u rate=2r/m;
--- config
    aai_ratelimit srv;
    location /inherit { empty_gif; }
    location /own     { aai_ratelimit loc; empty_gif; }
    location /off     { aai_ratelimit off; empty_gif; }
--- request eval
["GET /inherit?u=a", "GET /inherit?u=a", "GET /own?u=a", "GET /own?u=a",
 "GET /own?u=a", "GET /off?u=a", "GET /off?u=a"]
--- error_code eval
[200, 429, 200, 200, 429, 200, 200]



=== TEST 15: the blocklist rejects a key known over its limit without Redis
--- http_config
    aai_ratelimit_zone bl key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit bl;
        empty_gif;
    }
    location /metrics {
        aai_metrics;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a", "GET /metrics"]
--- error_code eval
[200, 429, 429, 200]
--- response_body_like eval
["", "", "",
qr/aai_ratelimit_local_rejects_total\{zone="bl"\} 1\n/]



=== TEST 16: metrics count what happened
--- http_config
    aai_ratelimit_zone m1 key=$arg_u rate=2r/m;
    aai_ratelimit_zone m2 key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit m1;
        empty_gif;
    }
    location /dry {
        aai_ratelimit m2;
        aai_ratelimit_dry_run on;
        empty_gif;
    }
    location /metrics {
        aai_metrics;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a", "GET /dry?u=a", "GET /dry?u=a",
 "GET /metrics"]
--- error_code eval
[200, 200, 429, 200, 200, 200]
--- response_body_like eval
["", "", "", "", "",
qr/(?s)^(?=.*zone="m1",outcome="passed"\}\ 2\n)
(?=.*zone="m1",outcome="rejected"\}\ 1\n)
(?=.*zone="m1",outcome="dry_run_rejected"\}\ 0\n)
(?=.*zone="m2",outcome="passed"\}\ 1\n)
(?=.*zone="m2",outcome="rejected"\}\ 0\n)
(?=.*zone="m2",outcome="dry_run_rejected"\}\ 1\n)
(?=.*aai_ratelimit_redis_latency_seconds_count\ [1-9])/x]



=== TEST 17: error_page after a rejection is not limited again
--- http_config
    aai_ratelimit_zone ep key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit ep;
        error_page 429 /busy;
        empty_gif;
    }
    location /busy {
        aai_ratelimit ep;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a"]
--- error_code eval
[200, 429]
--- response_headers eval
["", "X-RL: REJECTED\nRetry-After: 60"]
