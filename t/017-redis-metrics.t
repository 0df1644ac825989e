# The Redis client's metrics per client and node (issue 11):
# aai_redis_connections (open connections, all workers), aai_redis_errors_total
# by reason (refused, timeout, lost, tls, auth, resolve) and
# aai_redis_node_info, which names each node's address.  A single Redis
# with a password: connections open, then a wrong password (auth), a closed
# port (refused), a Redis that stops (lost, and the gauge back to 0); a TLS
# Redis whose certificate is from another CA (tls).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest;
use AaiTest qw( :util );
use Time::HiRes qw( time sleep );
use File::Temp qw( tempdir );

my $PW = 'metrics-pw-017';
my $D = tempdir('aai017-XXXXXX', TMPDIR => 1, CLEANUP => 1);

my %Procs;           # name => pid of spawn (SIGKILLed at END if running)

sub redis_up {
    my ($name, $port, @more) = @_;
    mkdir "$D/$name";
    $Procs{$name} = spawn(['redis-server', '--port', $port, '--bind',
                           '127.0.0.1', '--save', '', '--appendonly', 'no',
                           '--dir', "$D/$name", '--requirepass', $PW, @more],
                          log => "$D/$name.log");
    local $AaiTest::RedisErrorsDie = 0;
    die "redis $name did not start\n" unless wait_until(5, sub {
        my $r = eval { redis_cmd_port($port, 'AUTH', $PW) };
        defined $r && $r eq 'OK';
    }, 0.05);
}

sub front {
    my ($name, $redis) = @_;
    return start_nginx_instance($name, <<_EOC_);
    aai_ratelimit_redis $redis;
    aai_ratelimit_zone z key=\$arg_u rate=100r/m;
    aai_ratelimit_fallback allow;

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;

        location /rl/ {
            aai_ratelimit z;
            empty_gif;
        }
        location /metrics {
            aai_metrics;
        }
    }
_EOC_
}

sub status {
    my ($port, $path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0) . ' ' . ($h->{'x-rl'} // '');
}

my $N = 'client="ratelimit",node="0"';

sub errors {
    my ($m, $reason) = @_;
    return $m->{"aai_redis_errors_total{$N,reason=\"$reason\"}"} // -1;
}

# --- a single Redis -----------------------------------------------------------

my $P = free_port();
redis_up('single', $P);

my ($port, $stop, $prefix) = front('r017', "127.0.0.1:$P password=$PW "
                                   . 'timeout=500ms backoff=200ms');

ok(wait_until(10, sub { status($port, '/rl/?u=a') eq '200 PASSED' }, 0.05),
   'Redis decides');

my $m = metrics_get($port);
is($m->{"aai_redis_node_info{$N,address=\"127.0.0.1:$P\"}"}, 1,
   'aai_redis_node_info names the address');
is($m->{"aai_redis_connections{$N}"}, 1, 'one connection open');
for my $r (qw(refused timeout lost tls auth resolve)) {
    is(errors($m, $r), 0, "aai_redis_errors_total reason=\"$r\" at 0");
}

stop_pid(delete $Procs{single});
ok(wait_until(10, sub { status($port, '/rl/?u=b') eq '200 ERROR' }, 0.05),
   'the limiter falls back when Redis stops');
$m = metrics_wait($port, '/metrics', sub {
    my $m = shift;
    errors($m, 'refused') > 0
        && ($m->{"aai_redis_connections{$N}"} // -1) == 0;
});
cmp_ok(errors($m, 'refused'), '>', 0, 'the reconnects refused are counted');
is($m->{"aai_redis_connections{$N}"}, 0, 'no connection open');

redis_up('single', $P);
ok(wait_until(10, sub { status($port, '/rl/?u=c') eq '200 PASSED' }, 0.05),
   'Redis decides again');
$m = metrics_wait($port, '/metrics', sub {
    (shift->{"aai_redis_connections{$N}"} // 0) == 1;
});
is($m->{"aai_redis_connections{$N}"}, 1, 'the connection counted again');

# a Redis that does not answer: the command times out
my $t0 = time;
stop_continue([$Procs{single}], sub { status($port, '/rl/?u=slow') });
my $waited = time - $t0;
cmp_ok($waited, '<', 1.5, 'the request waited about its timeout');
$m = metrics_wait($port, '/metrics', sub { errors(shift, 'timeout') > 0 });
cmp_ok(errors($m, 'timeout'), '>', 0, 'reason="timeout" counted');
no_log_problems("$prefix/logs/error.log");
$stop->();

# --- a wrong password ---------------------------------------------------------

($port, $stop, $prefix) = front('r017auth', "127.0.0.1:$P password=wrong "
                                . 'timeout=500ms backoff=200ms');
ok(wait_until(10, sub { status($port, '/rl/?u=d') eq '200 ERROR' }, 0.05),
   'a wrong password: the limiter falls back');
$m = metrics_wait($port, '/metrics', sub { errors(shift, 'auth') > 0 });
cmp_ok(errors($m, 'auth'), '>', 0, 'reason="auth" counted');
is(errors($m, 'tls'), 0, 'not counted as tls');
is($m->{"aai_redis_connections{$N}"}, 0, 'no connection open');
$stop->();

# no password for a Redis that needs one: NOAUTH counts as auth too
($port, $stop, $prefix) = front('r017noauth', "127.0.0.1:$P "
                                . 'timeout=500ms backoff=200ms');
$m = metrics_wait($port, '/metrics', sub {
    status($port, '/rl/?u=e');
    errors($_[0], 'auth') > 0;
});
cmp_ok(errors($m, 'auth'), '>', 0, 'NOAUTH counted as reason="auth"');
$stop->();

# --- TLS: a certificate from another CA ---------------------------------------

# the server's certificate signed by ca2, the client trusting ca
tls_ca($D, $_) for qw(ca ca2);
tls_cert($D, 'server', 'ca2', 2, 'subjectAltName=DNS:localhost,IP:127.0.0.1');

my ($plain, $tls) = (free_port(), free_port());
redis_up('tls', $plain, '--tls-port', $tls,
         '--tls-cert-file', "$D/server.crt", '--tls-key-file',
         "$D/server.key", '--tls-ca-cert-file', "$D/ca2.crt",
         '--tls-auth-clients', 'no');

($port, $stop, $prefix) = front('r017tls', "127.0.0.1:$tls password=$PW "
                                . "tls=on tls_ca=$D/ca.crt "
                                . 'connect_timeout=2s timeout=500ms '
                                . 'backoff=200ms');
ok(wait_until(10, sub { status($port, '/rl/?u=f') eq '200 ERROR' }, 0.05),
   'a certificate from another CA: the limiter falls back');
$m = metrics_wait($port, '/metrics', sub { errors(shift, 'tls') > 0 });
cmp_ok(errors($m, 'tls'), '>', 0, 'reason="tls" counted');
is(errors($m, 'auth'), 0, 'not counted as auth');
is($m->{"aai_redis_node_info{$N,address=\"127.0.0.1:$tls\"}"}, 1,
   'the TLS node named');
is($m->{"aai_redis_connections{$N}"}, 0, 'no connection open');
no_log_problems("$prefix/logs/error.log");
$stop->();

# --- a Redis Cluster: a node per label; the pub/sub seed killed ---------------

my @C = start_redis_cluster();
my $hung = hung_listener();
my $capp = free_port();
my $cluster = "cluster=127.0.0.1:$C[0],127.0.0.1:$C[1] timeout=300ms "
              . 'connect_timeout=300ms backoff=200ms';

($port, $stop, $prefix) = start_nginx_instance('r017cluster', <<_EOC_);
    aai_ratelimit_redis $cluster;
    aai_cache_redis $cluster;
    aai_ratelimit_zone z key=\$arg_u rate=100r/m;
    aai_ratelimit_fallback allow;

    server {
        listen 127.0.0.1:$capp;
        location / {
            add_header Cache-Control "max-age=60";
            return 200 "app \$uri\\n";
        }
        location /cache/slow/ {
            proxy_read_timeout 300ms;
            proxy_pass http://127.0.0.1:$hung;
            error_page 504 =200 \@slow;
        }
        location \@slow {
            add_header Cache-Control "max-age=60";
            return 200 "slow \$request_id\\n";
        }
    }

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        add_header X-Cache \$aai_cache_status always;

        location /rl/ {
            aai_ratelimit z;
            empty_gif;
        }
        location /cache/ {
            aai_cache on;
            aai_cache_lock on;
            aai_cache_lock_timeout 5s;
            proxy_pass http://127.0.0.1:$capp;
        }
        location /metrics {
            aai_metrics;
        }
    }
_EOC_

# users whose keys land on every primary
ok(wait_until(10, sub { status($port, '/rl/?u=c0') eq '200 PASSED' }, 0.05),
   'cluster: Redis decides');
for my $u (1 .. 30) {
    status($port, "/rl/?u=c$u");
}

sub sum_of {
    my ($m, $re) = @_;
    my $s = 0;
    $s += $m->{$_} for grep { /$re/ } keys %$m;
    return $s;
}

$m = metrics_get($port);
for my $i (0, 1) {
    is($m->{"aai_redis_node_info{client=\"ratelimit\",node=\"$i\","
            . "address=\"127.0.0.1:$C[$i]\"}"}, 1,
       "cluster: node $i is seed $i");
}
is($m->{'aai_redis_node_info{client="ratelimit",node="2",address=""}'}, 1,
   'cluster: node 2 gets its address from the map');
cmp_ok(sum_of($m, qr/^aai_redis_connections\{client="ratelimit",/), '>=', 3,
       'cluster: connections to the three primaries');
my %nodes = map { /node="(\d+)"/ ? ($1 => 1) : () }
            grep { /^aai_redis_connections\{client="ratelimit",/
                   && $m->{$_} > 0 } keys %$m;
cmp_ok(scalar keys %nodes, '>=', 3, 'cluster: open on three nodes at least');
is(sum_of($m, qr/^aai_redis_errors_total\{client="ratelimit",/), 0,
   'cluster: no error');

# the limiter's and the cache's aai_redis_* samples under one HELP and TYPE
# each (Prometheus refuses a second TYPE line for a family), every family's
# samples together
{
    my (undef, undef, $body) = http_get($port, '/metrics');
    my (%types, %seen, @split);
    my $last = '';
    for my $l (split /\n/, $body // '') {
        $types{$1}++, next if $l =~ /^# TYPE (\S+)/;
        next unless $l =~ /^([a-z_]+)[{ ]/;
        my $f = $1;
        $f =~ s/_(?:bucket|sum|count)$// unless $types{$f};
        push @split, $f if $f ne $last && $seen{$f}++;
        $last = $f;
    }
    ok($types{aai_redis_connections} && $body =~ /client="cache"/,
       'cluster: /metrics has both clients\' aai_redis_* samples');
    is(join(' ', grep { $types{$_} > 1 } sort keys %types), '',
       'cluster: one TYPE line per family');
    is(join(' ', @split), '', 'cluster: each family\'s samples together');
}

# the first seed, which holds the cache's subscription, is killed
kill_redis($C[0]);

ok(wait_until(15, sub {
       grep { /aai redis cluster .*: pub\/sub on \Q127.0.0.1:$C[0]\E is /
               && /is down, subscribing on 127\.0\.0\.1:\d+/ }
            file_lines("$prefix/logs/error.log");
   }, 0.05), 'the subscription moves off the dead seed');

my $down = qr/^aai_redis_errors_total
              \{client="cache",node="0",reason="(?:refused|lost)"/x;
$m = metrics_wait($port, '/metrics', sub { sum_of(shift, $down) > 0 });
cmp_ok(sum_of($m, $down), '>', 0,
       'the dead seed\'s failures counted on node 0');

# once the cluster has replaced it (if it was a primary) and the map no
# longer names it, a stampede on a new key: the waiters are woken by the
# message, not by the 500 ms poll
sub cache_status {
    my ($path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0) . ' ' . ($h->{'x-cache'} // '');
}

my ($n, $lock, @woken) = (0, '');
ok(wait_until(30, sub {
       my $mark = () = file_lines("$prefix/logs/error.log");
       $n++;
       my @r = http_concurrent([map { [$port, "/cache/slow/w$n"] } 1 .. 6]);
       my %c;
       $c{($_->[0] // 0) . ' ' . ($_->[1]{'x-cache'} // '')}++ for @r;
       $lock = join ',', map { "$_=$c{$_}" } sort keys %c;
       my @l = file_lines("$prefix/logs/error.log");
       @woken = map { /aai cache woken: (\w+(?: \w+)?)/ ? $1 : () }
                @l[$mark .. $#l];
       $lock eq '200 HIT=5,200 MISS=1';
   }, 0.05), 'lock: 6 concurrent misses, 1 miss, 5 hits, without the seed')
    or diag("$lock (after $n tries)");
ok(scalar(@woken) >= 1, 'lock: waiters woken') or diag("@woken");
is(scalar(grep { $_ ne 'stored' } @woken), 0,
   'lock: every waiter woken by the message (pub/sub on another node)')
    or diag("@woken");

no_log_problems("$prefix/logs/error.log");
$stop->();
stop_redis($_) for @C[1 .. $#C];

done_testing();
