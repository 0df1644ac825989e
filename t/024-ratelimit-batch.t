# ngx_http_aai_ratelimit_module: the requests of one event loop iteration
# share one FCALL.  Concurrent requests on one key admit exactly the
# limit and record exactly what was admitted; a rejection by one zone
# spends nothing in the others; a request that goes away while its batch
# is in Redis does not disturb the others.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
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

# multi_accept: the connections that wait while the worker is stopped are
# accepted together, and their requests read in one event loop iteration
my ($port, $stop, $prefix) = start_nginx_instance('rl024', $conf,
                                                  events => 'multi_accept on;');

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

# the requests at once, written while the worker is stopped: it reads them
# all in one event loop iteration
sub in_one_iteration {
    my ($p, $pfx, $path, $n) = @_;
    my @w = worker_pids(master_pid($pfx));
    die "no worker\n" unless @w == 1;
    kill 'STOP', @w;
    my @r = eval {
        http_concurrent([ map { [$p, ref $path ? $path->($_) : $path] }
                          0 .. $n - 1 ],
                        after_write => sub { kill 'CONT', @w });
    };
    kill 'CONT', @w;
    return @r;
}

# the commands nginx sent to Redis meanwhile (the script's own are "lua")
sub nginx_commands {
    my $code = shift;
    return grep { $_->{client} ne 'lua' } redis_monitor($code);
}

# the zone checks of an FCALL: per request, its count then 3 bytes a zone
sub checks_of {
    my $args = shift;
    my $layout = $args->[3 + $args->[2]];
    my ($n, $i) = (0, 0);
    while ($i < length $layout) {
        my $z = ord substr($layout, $i, 1);
        $n += $z;
        $i += 1 + 3 * $z;
    }
    return $n;
}

redis_flushdb();
http_get($port, '/s?u=warm', {});    # the library is loaded

# one key, 40 at once: exactly the limit, at most a command per request

{
    my @r;
    my @c = nginx_commands(sub {
        @r = in_one_iteration($port, $prefix, '/s?u=one', 40);
    });

    is(statuses(@r), '200=10 429=30', 'sliding: 40 at once, 10 admitted');
    is(redis_cmd('LLEN', 'aai:rl:b_sliding:one'), 10,
       'sliding: Redis holds the 10 admissions, no more');

    # read in one iteration, the 40 checks share one command and one key
    is(join(' ', map { "$_->{args}[0]:$_->{args}[2]:" . checks_of($_->{args}) }
                 @c),
       'FCALL:1:40', 'sliding: 40 checks of one key in one FCALL');
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

# what is sent, counted in Redis: one command per request whatever its
# number of zones, one per event loop iteration whatever its number of
# requests, and at most 255 zone checks in a command

{
    my $zones = join '', map {
        "    aai_ratelimit_zone m$_ key=\$arg_u rate=1000r/m;\n"
    } 1 .. 255;
    my $use = sub { join ' ', map { "aai_ratelimit m$_;" } @_ };
    my ($mport, $mstop, $mprefix) = start_nginx_instance('rl024m', <<_EOC_,
    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=3s;
$zones
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location /three { @{[ $use->(1 .. 3) ]} empty_gif; }
        location /max { @{[ $use->(1 .. 255) ]} empty_gif; }
    }
_EOC_
        events => 'multi_accept on;');

    redis_flushdb();
    http_get($mport, '/three?u=warm', {});      # the script is loaded

    my $sent = sub {
        join ' ', map { my $a = $_->{args};
                        "$a->[0]:keys=$a->[2]:checks=" . checks_of($a) } @_;
    };

    my @st;
    my @c = nginx_commands(sub { @st = http_get($mport, '/three?u=a', {}) });
    is($st[0], 200, 'three zones: admitted');
    is($sent->(@c), 'FCALL:keys=3:checks=3',
       'three zones: one request, one command');

    my @r;
    @c = nginx_commands(sub {
        @r = in_one_iteration($mport, $mprefix, sub { "/three?u=b$_[0]" }, 10);
    });
    is(statuses(@r), '200=10', 'three zones, 10 at once: admitted');
    is($sent->(@c), 'FCALL:keys=30:checks=30',
       'three zones, 10 at once: one command');

    # 100 requests of 3 zones: 85 fill a command (255 checks), 15 the next
    @c = nginx_commands(sub {
        @r = in_one_iteration($mport, $mprefix, sub { "/three?u=c$_[0]" },
                              100);
    });
    is(statuses(@r), '200=100', 'three zones, 100 at once: admitted');
    is($sent->(@c), 'FCALL:keys=255:checks=255 FCALL:keys=45:checks=45',
       'three zones, 100 at once: split at 255 checks');

    # a request of 255 zones fills a command alone
    @c = nginx_commands(sub {
        @r = in_one_iteration($mport, $mprefix, sub { "/max?u=d$_[0]" }, 3);
    });
    is(statuses(@r), '200=3', '255 zones, 3 at once: admitted');
    is($sent->(@c), join(' ', ('FCALL:keys=255:checks=255') x 3),
       '255 zones, 3 at once: one command each');
    is(redis_cmd('LLEN', 'aai:rl:m255:d2'), 1,
       '255 zones: the last zone recorded');

    no_log_problems("$mprefix/logs/error.log", 'batch counts: no alert');
    $mstop->();

    # a location names at most 255 zones
    my ($rc, $out) = nginx_t(<<_EOC_);
    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT;
$zones    aai_ratelimit_zone m256 key=\$arg_u rate=1000r/m;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location /over { @{[ $use->(1 .. 255) ]} aai_ratelimit m256;
                         empty_gif; }
    }
_EOC_
    isnt($rc, 0, '256 zones in a location: nginx -t fails');
    like($out, qr/too many zones in "aai_ratelimit", at most 255/,
         '256 zones: the message names the directive and the limit');
}

# clients that go away while their batch waits in Redis (writes paused)

{
    redis_flushdb();
    http_get($port, '/s?u=warm2', {});

    my $t0 = time;
    my @r = with_paused_redis($ENV{TEST_NGINX_REDIS_PORT}, 700, sub {
        at_once(sub { '/s?u=gone' . ($_[0] % 2) }, 8, abandon => [0, 2, 4]);
    }, mode => 'WRITE');
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

AaiTest::logs_once_more();

__DATA__

=== TEST 1: on the runner's own nginx, a batch of one
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
