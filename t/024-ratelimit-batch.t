# ngx_http_aai_ratelimit_module: the requests of one event loop iteration
# share one EVALSHA.  Concurrent requests on one key admit exactly the
# limit and record exactly what was admitted; a rejection by one zone
# spends nothing in the others; a request that goes away while its batch
# is in Redis does not disturb the others.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $conf = <<'_EOC_';
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone b_sliding key=$arg_u rate=10r/m;
    aai_ratelimit_zone b_gcra    key=$arg_u rate=10r/m burst=9 nodelay
                                 algorithm=gcra;
    aai_ratelimit_zone b_big     key=$arg_u rate=200r/m;
    aai_ratelimit_zone b_user    key=$arg_u rate=2r/m;
    aai_ratelimit_zone b_ip      key=$binary_remote_addr rate=15r/m;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /s { aai_ratelimit b_sliding; empty_gif; }
        location /g { aai_ratelimit b_gcra; empty_gif; }
        location /big { aai_ratelimit b_big; empty_gif; }
        location /two { aai_ratelimit b_user; aai_ratelimit b_ip; empty_gif; }
    }
_EOC_

my ($port, $stop, $prefix) = start_nginx_instance('rl024', $conf);

sub evalsha_calls {
    my $info = redis_cmd('INFO', 'commandstats');
    my ($n) = $info =~ /^cmdstat_evalsha:calls=(\d+)/m;
    return $n // 0;
}

sub statuses {
    my %n;
    $n{ $_->[0] // 'none' }++ for @_;
    return join ' ', map { "$_=$n{$_}" } sort keys %n;
}

sub at_once {
    my ($path, $n, %o) = @_;
    return http_concurrent([ map { [$port, ref $path ? $path->($_) : $path] }
                             0 .. $n - 1 ], %o);
}

redis_flushdb();
http_get($port, '/s?u=warm', {});    # the script is loaded

# one key, 40 at once: exactly the limit, at most a command per request

{
    my $before = evalsha_calls();
    my @r = at_once('/s?u=one', 40);
    my $calls = evalsha_calls() - $before;

    is(statuses(@r), '200=10 429=30', 'sliding: 40 at once, 10 admitted');
    is(redis_cmd('LLEN', 'aai:rl:b_sliding:one'), 10,
       'sliding: Redis holds the 10 admissions, no more');

    # how many share a command depends on how the requests arrive
    cmp_ok($calls, '<=', 40, "sliding: 40 checks in $calls EVALSHA");
    is((http_get($port, '/s?u=one', {}))[0], 429,
       'sliding: then still limited');
}

# GCRA: 1 + burst at once

{
    my @r = at_once('/g?u=one', 30);
    is(statuses(@r), '200=10 429=20', 'gcra: 30 at once, 1 + burst 9');
}

# a limit above Redis's compact sorted set size (the former format)

{
    my @r = at_once('/big?u=one', 60);
    is(statuses(@r), '200=60', 'big: 60 at once, all under 200');
    is(redis_cmd('LLEN', 'aai:rl:b_big:one'), 60, 'big: 60 recorded');
}

# two zones, the IP key shared by all, 3 requests per user: the user zone
# rejects the 3rd of each user, which spends nothing of the IP zone

{
    my @r = at_once(sub { '/two?u=u' . ($_[0] % 10) }, 30);
    is(statuses(@r), '200=15 429=15', 'two zones: 15 admitted by the IP');

    my $users = 0;
    for my $u (0 .. 9) {
        my $c = redis_cmd('LLEN', "aai:rl:b_user:u$u");
        $users += $c;
        ok($c <= 2, "two zones: user u$u recorded $c of at most 2");
    }
    is($users, 15, 'two zones: the users recorded the 15 admissions');

    my @ip = grep { /^aai:rl:b_ip:/ } @{ redis_cmd('KEYS', 'aai:rl:b_ip:*') };
    is(scalar @ip, 1, 'two zones: one IP key');
    is(redis_cmd('LLEN', $ip[0]), 15, 'two zones: the IP recorded 15');
}

# clients that go away while their batch waits in Redis (writes paused)

{
    redis_flushdb();
    http_get($port, '/s?u=warm2', {});

    redis_cmd('CLIENT', 'PAUSE', 700, 'WRITE');
    my $t0 = time;
    my @r = at_once(sub { '/s?u=gone' . ($_[0] % 2) }, 8,
                    abandon => [0, 2, 4]);
    my $took = time - $t0;

    is(statuses(@r[1, 3, 5, 6, 7]), '200=5',
       'gone: the others are answered');
    cmp_ok($took, '>=', 0.5, 'gone: they were answered after the pause');
    is((http_get($port, '/s?u=after', {}))[0], 200,
       'gone: the worker goes on');

    my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
              file_lines("$prefix/logs/error.log");
    is(scalar @bad, 0, 'no alert, no crash') or diag(@bad);
}

$stop->();

run_tests();

__DATA__

=== TEST 1: on the runner's own nginx, a batch of one
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone one key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit one;
        empty_gif;
    }
--- request eval
["GET /t?u=single", "GET /t?u=single"]
--- error_code eval
[200, 429]
--- aai_before
redis_flushdb();
