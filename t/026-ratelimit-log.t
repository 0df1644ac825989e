# ngx_http_aai_ratelimit_module: a sliding window key is a list of
# admission times, oldest first.  Expired entries are counted out and
# dropped; the list holds the window, and the count stays exact.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Time::HiRes qw( sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $conf = <<'_EOC_';
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone l_one  key=$arg_u rate=10r/s;
    aai_ratelimit_zone l_two  key=$arg_u rate=10r/s;
    aai_ratelimit_zone l_ip   key=$binary_remote_addr rate=1000r/s;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /one { aai_ratelimit l_one; empty_gif; }
        location /two { aai_ratelimit l_two; aai_ratelimit l_ip; empty_gif; }
    }
_EOC_

my ($port, $stop, $prefix) = start_nginx_instance('rl026', $conf);

sub left {
    my ($path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    my ($r) = ($h->{ratelimit} // '') =~ /;r=(\d+);/;
    return "$st r=" . ($r // '?');
}

redis_flushdb();

for my $loc ('one', 'two') {
    my $key = "aai:rl:l_$loc:a";

    is(join(',', map { left("/$loc?u=a") } 1 .. 3),
       '200 r=9,200 r=8,200 r=7', "$loc: three admissions counted");
    is(redis_cmd('TYPE', $key), 'list', "$loc: the key is a list");
    is(redis_cmd('LLEN', $key), 3, "$loc: of three entries");

    my $l = redis_cmd('LRANGE', $key, 0, -1);
    ok($l->[0] <= $l->[1] && $l->[1] <= $l->[2], "$loc: oldest first");

    # 7 more fill the window; once they all left it, the next request
    # counts them out (more than the first few read) and drops them

    left("/$loc?u=a") for 1 .. 7;
    is(left("/$loc?u=a"), '429 r=0', "$loc: the 11th is rejected");
    is(redis_cmd('LLEN', $key), 10, "$loc: the rejection is not recorded");

    sleep 1.1;

    is(left("/$loc?u=a"), '200 r=9', "$loc: a new window");
    is(redis_cmd('LLEN', $key), 1, "$loc: the expired entries dropped");
}

# a long expired head (2000 entries) before 3 live ones: found by a binary
# search, counted out and dropped

{
    my $key = 'aai:rl:l_one:long';
    my $now = AaiTest::redis_time_us();
    my @old = map { $now - 5000000 + $_ } 1 .. 2000;
    redis_cmd('RPUSH', $key, @old[$_ * 500 .. $_ * 500 + 499]) for 0 .. 3;
    redis_cmd('RPUSH', $key, map { $now - 1000 + $_ } 1 .. 3);
    redis_cmd('PEXPIRE', $key, 10000);

    is(left('/one?u=long'), '200 r=6', 'long head: 3 live ones counted');
    is(redis_cmd('LLEN', $key), 4, 'long head: the 2000 expired dropped');
}

# the per-IP key of /two: 11 admissions (the rejection spent nothing),
# the 10 of the first second dropped

is(redis_cmd('LLEN', "aai:rl:l_ip:\x7f\x00\x00\x01"), 1,
   'ip: the last admission only');

my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
          file_lines("$prefix/logs/error.log");
is(scalar @bad, 0, 'no alert, no crash') or diag(@bad);

$stop->();

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: the runner's own nginx still answers
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
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
