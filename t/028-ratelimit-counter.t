# ngx_http_aai_ratelimit_module, algorithm=counter: the sliding window
# counter (the current fixed window's count plus the previous one's,
# weighted by its part still inside the sliding window).  Exact inside one
# window; the previous window carries over, weighted, across an edge; two
# instances share it; concurrent requests of one batch admit exactly the
# limit; headers, dry run, the local fallback, keys of the other formats,
# and burst refused by nginx -t.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# nothing listens there: connections are refused
$ENV{TEST_NGINX_DEAD_PORT} = free_port();

my $conf = <<'_EOC_';
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone c_one  key=$arg_u rate=5r/m algorithm=counter;
    aai_ratelimit_zone c_edge key=$arg_u rate=4r/2s algorithm=counter;
    aai_ratelimit_zone c_ten  key=$arg_u rate=10r/m algorithm=counter;
    aai_ratelimit_zone c_user key=$arg_u rate=2r/m algorithm=counter;
    aai_ratelimit_zone c_ip   key=$binary_remote_addr rate=15r/m
                              algorithm=counter;
    aai_ratelimit_zone s_ip   key=$binary_remote_addr rate=15r/m;
    aai_ratelimit_zone s_two  key=$arg_u rate=10r/2s;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /one  { aai_ratelimit c_one; empty_gif; }
        location /edge { aai_ratelimit c_edge; empty_gif; }
        location /ten  { aai_ratelimit c_ten; empty_gif; }
        location /two  { aai_ratelimit c_user; aai_ratelimit c_ip;
                         empty_gif; }
        location /mix  { aai_ratelimit c_user; aai_ratelimit s_ip;
                         empty_gif; }
        location /s2   { aai_ratelimit s_two; empty_gif; }
    }
_EOC_

redis_flushdb();

my ($pa, $stopa, $prefa) = start_nginx_instance('rl028a', $conf,
                                                 workers => 2);
my ($pb, $stopb) = start_nginx_instance('rl028b', $conf);

sub status_of {
    my ($port, $path) = @_;
    my ($st) = http_get($port, $path, {});
    return $st // 0;
}

sub statuses {
    my %n;
    $n{ $_->[0] // 'none' }++ for @_;
    return join ' ', map { "$_=$n{$_}" } sort keys %n;
}

sub at_once {
    my ($path, $n) = @_;
    return http_concurrent([ map { [$pa, ref $path ? $path->($_) : $path] }
                             0 .. $n - 1 ]);
}

# Redis's clock (the script's), in seconds
sub redis_now {
    return AaiTest::redis_time_us() / 1e6;
}

# polls Redis TIME until it is between $from and $to seconds into a
# window of $w seconds (windows start at multiples of $w since the epoch)
sub wait_in_window {
    my ($w, $from, $to) = @_;
    my $deadline = time + 3 * $w;
    while (time < $deadline) {
        my $now = redis_now();
        my $at = $now - int($now / $w) * $w;
        return $now if $at >= $from && $at <= $to;
        sleep(0.01);
    }
    die "Redis TIME never reached $from..$to s into a ${w}s window";
}

http_get($pa, '/one?u=warm', {});    # the script is loaded

# exact inside one window: the limit, then 429 (not near the minute's end,
# where the next window would begin)

{
    wait_in_window(60, 0, 50);
    my @st = map { status_of($pa, '/one?u=exact') } 1 .. 7;
    is(join(',', @st), '200,200,200,200,200,429,429',
       'one window: 5 admitted, then 429');
    like(rl_counter('aai:rl:c_one:exact'), qr/^c\d+:5:\d+$/,
         'one window: the key counts the 5 admissions, not the rejections');
    my $ttl = redis_cmd('PTTL', 'aai:rl:c_one:exact');
    ok($ttl > 60000 && $ttl <= 120001,
       "one window: the key lives to the end of the next window ($ttl ms)");
}

# two instances share the limit: requests alternate between them

{
    wait_in_window(60, 0, 50);
    my @st = map { status_of($_ % 2 ? $pb : $pa, '/one?u=alt') } 0 .. 11;
    is(join(',', @st), join(',', (200) x 5, (429) x 7),
       'two instances: the first 5 of 12 admitted, the rest rejected');
}

# the previous window carries over, weighted: 4r/2s; 4 admitted early in
# a window; 0.6 to 0.9 s into the next one the previous window still
# weighs 4 * (0.55 to 0.7) = 2.2 to 2.8, so exactly one more is admitted
# (a fixed window would admit 4, the exact sliding window none)

{
    my $a = int(wait_in_window(2, 0.05, 0.5) / 2);
    my @st = map { status_of($pa, '/edge?u=edge') } 1 .. 5;
    is(join(',', @st), '200,200,200,200,429', 'edge: 4 admitted, then 429');

    my $b;
    1 while ($b = int(wait_in_window(2, 0.6, 0.9) / 2)) < $a + 1;
    @st = map { status_of($pb, '/edge?u=edge') } 1 .. 3;
    is(join(',', @st), '200,429,429',
       'edge: next window, the previous 4 weighted leave room for 1');
    like(rl_counter('aai:rl:c_edge:edge'), qr/^c\d+:1:4$/,
         'edge: the key holds the current count and the previous one');

    # two windows later nothing is left of them: the full limit again
    1 while int(wait_in_window(2, 0.05, 0.5) / 2) < $b + 2;
    @st = map { status_of($pa, '/edge?u=edge') } 1 .. 5;
    is(join(',', @st), '200,200,200,200,429',
       'edge: two windows later, the full limit');
}

# batching: 40 at once on one key admit exactly the limit

{
    wait_in_window(60, 0, 50);
    my @r = at_once('/ten?u=batch', 40);
    is(statuses(@r), '200=10 429=30', 'batch: 40 at once, 10 admitted');
    like(rl_counter('aai:rl:c_ten:batch'), qr/^c\d+:10:0$/,
         'batch: Redis counts the 10 admissions, no more');
    is(status_of($pa, '/ten?u=batch'), 429, 'batch: then still limited');
}

# two counter zones, the IP key shared by all, 3 requests per user: the
# user zone rejects the 3rd of each user, which spends nothing of the IP's

{
    wait_in_window(60, 0, 50);
    my @r = at_once(sub { '/two?u=u' . ($_[0] % 10) }, 30);
    is(statuses(@r), '200=15 429=15', 'two zones: 15 admitted by the IP');

    my $users = 0;
    for my $u (0 .. 9) {
        my ($c) = (rl_counter("aai:rl:c_user:u$u") // 'c0:0:0')
                  =~ /^c\d+:(\d+):/;
        $users += $c;
    }
    is($users, 15, 'two zones: the users counted the 15 admissions');

    my @ip = @{ redis_cmd('KEYS', 'aai:rl:c_ip:*') };
    is(scalar @ip, 1, 'two zones: one IP key');
    like(rl_counter($ip[0]), qr/^c\d+:15:0$/,
         'two zones: the IP counted 15');
}

# a counter zone beside an exact sliding window zone in one request

{
    wait_in_window(60, 0, 50);
    my @r = at_once(sub { '/mix?u=m' . ($_[0] % 10) }, 30);
    is(statuses(@r), '200=15 429=15', 'mixed: 15 admitted by the IP');
    my @ip = @{ redis_cmd('KEYS', 'aai:rl:s_ip:*') };
    is(redis_cmd('LLEN', $ip[0]), 15, 'mixed: the sliding zone recorded 15');
}

# the exact sliding window skips the PEXPIRE of an admission while its
# oldest entry is less than half a window old and none was dropped; the
# key then still outlives its newest entry by a window (1.5 windows from
# the last PEXPIRE)

sub pexpires {
    my ($n) = redis_cmd('INFO', 'commandstats')
              =~ /^cmdstat_pexpire:calls=(\d+)/m;
    return $n // 0;
}

{
    my $p0 = pexpires();
    my $t0 = redis_now();
    my @st = map { status_of($pa, '/s2?u=ttl') } 1 .. 3;
    is(join(',', @st), '200,200,200', 'ttl: 3 admitted');
    my $ttl = redis_cmd('PTTL', 'aai:rl:s_two:ttl');
    ok($ttl > 2000 && $ttl <= 3001, "ttl: 1.5 windows from the first ($ttl)");
    is(pexpires() - $p0, 1, 'ttl: the 2nd and 3rd set no TTL')
        if redis_now() - $t0 < 0.9;

    # the oldest entry more than half a window old: the TTL is set again
    sleep(0.02) while redis_now() < $t0 + 1.1;
    my $p1 = pexpires();
    is(status_of($pa, '/s2?u=ttl'), 200, 'ttl: 4th admitted');
    is(pexpires() - $p1, 1, 'ttl: the 4th sets the TTL');
    $ttl = redis_cmd('PTTL', 'aai:rl:s_two:ttl');
    ok($ttl > 2500 && $ttl <= 3001, "ttl: 1.5 windows from the 4th ($ttl)");

    # the first three expired: the 5th drops them and sets the TTL
    sleep(0.02) while redis_now() < $t0 + 2.3;
    $p1 = pexpires();
    is(status_of($pa, '/s2?u=ttl'), 200, 'ttl: 5th admitted');
    is(pexpires() - $p1, 1, 'ttl: the 5th, dropping entries, sets the TTL');
    is(redis_cmd('LLEN', 'aai:rl:s_two:ttl'), 2, 'ttl: the 4th and 5th left');
}

my @bad = grep { /\[(?:alert|crit|emerg|error)\]|exited on signal/
                 && !/limiting requests by aai_ratelimit zone/ }
          file_lines("$prefa/logs/error.log");
is(scalar @bad, 0, 'no error but the rejections, no crash') or diag(@bad);

$stopa->();
$stopb->();

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: headers: the policy, the requests left, the reset
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone hdr key=$arg_u rate=3r/m algorithm=counter;
--- config
    location /t {
        aai_ratelimit hdr;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
wait_in_window(60, 0, 45);
--- request eval
["GET /t?u=h", "GET /t?u=h", "GET /t?u=h", "GET /t?u=h"]
--- error_code eval
[200, 200, 200, 429]
--- response_headers_like eval
[
"RateLimit-Policy: \"hdr\";q=3;w=60
RateLimit: \"hdr\";r=2;t=(?:[6-9]\\d|1[01]\\d|120)
X-RL: PASSED",
"RateLimit: \"hdr\";r=1;t=(?:[6-9]\\d|1[01]\\d|120)",
"RateLimit: \"hdr\";r=0;t=(?:[6-9]\\d|1[01]\\d|120)",
"RateLimit-Policy: \"hdr\";q=3;w=60
RateLimit: \"hdr\";r=0;t=(?:[2-7]\\d|80)
Retry-After: (?:[2-7]\\d|80)
X-RL: REJECTED",
]



=== TEST 2: a rejection is blocklisted until its Retry-After
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone blk key=$arg_u rate=1r/m algorithm=counter;
--- config
    location /t {
        aai_ratelimit blk;
        empty_gif;
    }
    location /metrics {
        aai_metrics;
    }
--- aai_before
wait_in_window(60, 0, 45);
--- request eval
["GET /t?u=b", "GET /t?u=b", "GET /t?u=b", "GET /metrics"]
--- error_code eval
[200, 429, 429, 200]
--- response_body_like eval
["", "", "",
qr/aai_ratelimit_local_rejects_total\{zone="blk"\} [1-9]/]



=== TEST 3: dry run: counted, marked, never rejected
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone dry key=$arg_u rate=1r/m algorithm=counter;
--- config
    location /t {
        aai_ratelimit dry;
        aai_ratelimit_dry_run on;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
wait_in_window(60, 0, 45);
--- request eval
["GET /t?u=d", "GET /t?u=d", "GET /t?u=d"]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["X-RL: PASSED_DRY_RUN\n!RateLimit", "X-RL: REJECTED_DRY_RUN\n!Retry-After",
 "X-RL: REJECTED_DRY_RUN"]
--- aai_after
like(rl_counter('aai:rl:dry:d'), qr/^c\d+:1:0$/,
     'dry run: the rejections spent nothing');



=== TEST 4: Redis refused, fallback local: the limit at once, per instance
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_zone loc key=$arg_u rate=3r/m algorithm=counter;
--- config
    location /t {
        aai_ratelimit loc;
        aai_ratelimit_fallback local;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=l", "GET /t?u=l", "GET /t?u=l", "GET /t?u=l"]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
["X-RL: ERROR", "X-RL: ERROR", "X-RL: ERROR", "X-RL: ERROR"]



=== TEST 5: keys of the other formats count from zero and are replaced
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone fmt key=$arg_u rate=2r/m algorithm=counter;
--- config
    location /t {
        aai_ratelimit fmt;
        empty_gif;
    }
--- aai_before
wait_in_window(60, 0, 45);
my $t = redis_cmd('TIME');
redis_cmd('RPUSH', 'aai:rl:fmt:list', ($t->[0] * 1000000) x 5);
redis_cmd('SET', 'aai:rl:fmt:gcra', $t->[0] * 1000000 + 3600000000);
redis_cmd('SET', 'aai:rl:fmt:junk', 'c12:x:1');
--- request eval
["GET /t?u=list", "GET /t?u=list", "GET /t?u=list",
 "GET /t?u=gcra", "GET /t?u=gcra", "GET /t?u=gcra",
 "GET /t?u=junk", "GET /t?u=junk", "GET /t?u=junk"]
--- error_code eval
[200, 200, 429, 200, 200, 429, 200, 200, 429]
--- aai_after
like(rl_counter("aai:rl:fmt:$_"), qr/^c\d+:2:0$/,
     "the $_ key holds the counter now") for qw(list gcra junk);
--- no_error_log
aai_ratelimit: Redis
[alert]



=== TEST 6: the other algorithms replace a counter key
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone oth_s key=$arg_u rate=2r/m;
    aai_ratelimit_zone oth_g key=$arg_u rate=2r/m algorithm=gcra burst=1
                             nodelay;
--- config
    location /s {
        aai_ratelimit oth_s;
        empty_gif;
    }
    location /g {
        aai_ratelimit oth_g;
        empty_gif;
    }
--- aai_before
my $t = redis_cmd('TIME');
my $s = int($t->[0] / 60) * 60 * 1000000;
redis_cmd('SET', 'aai:rl:oth_s:x', "c$s:9:9");
redis_cmd('SET', 'aai:rl:oth_g:x', "c$s:9:9");
--- request eval
["GET /s?u=x", "GET /s?u=x", "GET /s?u=x",
 "GET /g?u=x", "GET /g?u=x", "GET /g?u=x"]
--- error_code eval
[200, 200, 429, 200, 200, 429]
--- no_error_log
aai_ratelimit: Redis
[alert]



=== TEST 7: burst is refused by nginx -t
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone cb key=$arg_u rate=10r/s burst=5 nodelay
                          algorithm=counter;
--- config
    location /t { aai_ratelimit cb; empty_gif; }
--- must_die
--- error_log
burst=5 of zone "cb" in "aai_ratelimit_zone": "algorithm=counter" has no burst



=== TEST 8: an unknown algorithm is refused
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone cu key=$arg_u rate=10r/s algorithm=counters;
--- config
    location /t { aai_ratelimit cu; empty_gif; }
--- must_die
--- error_log
invalid algorithm "counters" in "aai_ratelimit_zone"
