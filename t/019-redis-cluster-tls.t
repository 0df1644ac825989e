# The Redis client on a Redis Cluster over TLS (cluster= with tls=on,
# tls_ca=, tls_name=, password=): three primaries that listen only on TLS
# (--port 0 --tls-port P --tls-cluster yes, AUTH), certificates made here.
# nginx learns the slot map from two seeds and speaks TLS to every node of
# it, the seeds and the nodes it learnt alike: the limiter stays exact and
# the cache stores and hits with keys on all three primaries.  A seed with
# a certificate for another name is refused and logged, nothing crashes.
# The test reads Redis back with redis-cli --tls (no plain-text port here).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );
use File::Temp qw( tempdir );
use IO::Socket::INET;
use POSIX qw( :sys_wait_h );

my $PW = 'tls-cluster-019';
my $D = tempdir('aai019-XXXXXX', TMPDIR => 1, CLEANUP => 1);

tls_ca($D, 'ca');
tls_cert($D, 'server', 'ca', 2,
         'subjectAltName=DNS:localhost,IP:127.0.0.1');

# redis-cli over TLS, with AUTH; returns its output, one reply per line
sub cli {
    my ($port, @cmd) = @_;
    open my $err, '>&', \*STDERR or die;
    open STDERR, '>', '/dev/null';
    open my $fh, '-|', 'redis-cli', '--tls', '--cacert', "$D/ca.crt",
         '-h', '127.0.0.1', '-p', $port, '-a', $PW, '--no-auth-warning',
         @cmd or die "redis-cli: $!\n";
    open STDERR, '>&', $err;
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return $out;
}

# three nodes, TLS only; the bus port is port + 10000, so both are picked
# below 55536 and free
sub tls_ports {
    my $n = shift;
    my (@ports, %seen);
    while (@ports < $n) {
        my $p = free_port();
        next if $p >= 55536 || $seen{$p}++;
        my $bus = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                        LocalPort => $p + 10000,
                                        Proto => 'tcp', Listen => 1)
            or next;
        close $bus;
        push @ports, $p;
    }
    return @ports;
}

my @P = tls_ports(3);
my %Pid;
for my $port (@P) {
    my $dir = "$D/redis-$port";
    mkdir $dir;
    $Pid{$port} = spawn(['redis-server', '--port', 0, '--bind', '127.0.0.1',
        '--tls-port', $port, '--tls-cluster', 'yes',
        '--tls-cert-file', "$D/server.crt", '--tls-key-file',
        "$D/server.key", '--tls-ca-cert-file', "$D/ca.crt",
        '--tls-auth-clients', 'no', '--requirepass', $PW,
        '--masterauth', $PW, '--cluster-enabled', 'yes',
        '--cluster-config-file', "$dir/nodes.conf",
        '--cluster-node-timeout', 1000, '--save', '', '--appendonly', 'no',
        '--dir', $dir, '--daemonize', 'no', '--logfile', ''],
        log => "$dir/redis.log");
}
for my $port (@P) {
    ok(wait_until(5, sub { cli($port, 'PING') =~ /^PONG/ }),
       "node $port answers over TLS")
        or BAIL_OUT("redis-server on $port: "
                    . join('', file_lines("$D/redis-$port/redis.log")));
}
{
    my $nodes = join ' ', map { "127.0.0.1:$_" } @P;
    my $out = `redis-cli --tls --cacert $D/ca.crt -a $PW --no-auth-warning --cluster create $nodes --cluster-yes 2>&1`;
    is($?, 0, 'redis-cli --tls --cluster create') or diag($out);
}
ok(wait_until(20, sub {
       3 == grep { cli($_, 'CLUSTER', 'INFO') =~ /cluster_state:ok/ } @P
   }), 'the TLS cluster is ok');

# the primaries and the keys on one of them
sub keys_on {
    my ($port, $pattern) = @_;
    return grep { length } split /\n/, cli($port, '--scan', '--pattern',
                                             $pattern);
}

# the port of the primary that serves a slot, asked of one node
sub owns {
    my ($port, $slot) = @_;
    my @l = split /\n/, cli($port, 'CLUSTER', 'SLOTS');
    # redis-cli prints each range as: from, to, host, port, id (flattened)
    for (my $i = 0; $i + 3 < @l; $i++) {
        next unless $l[$i] =~ /^\d+$/ && $l[$i + 1] =~ /^\d+$/
                    && $l[$i + 2] eq '127.0.0.1';
        return $l[$i + 3] + 0 if $slot >= $l[$i] && $slot <= $l[$i + 1];
    }
    return 0;
}

my $app = free_port();
my $seeds = join ',', map { "127.0.0.1:$_" } @P[0, 1];

sub front {
    my ($name, $params, %o) = @_;
    my $redis = "cluster=$seeds tls=on tls_ca=$D/ca.crt password=$PW "
                . "$params timeout=3s connect_timeout=3s";
    my $origin = $o{origin} ? <<_EOS_ : '';
    server {
        listen 127.0.0.1:$app;
        location / {
            add_header Cache-Control "max-age=60";
            return 200 "app \$uri\\n";
        }
    }
_EOS_
    return start_nginx_instance($name, <<_EOC_, workers => $o{workers} // 1);
    aai_ratelimit_redis $redis;
    aai_cache_redis $redis;
    aai_ratelimit_zone user key=\$arg_u rate=3r/m;
    aai_ratelimit_fallback $o{fallback};
    aai_ratelimit_status 429;
$origin
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        add_header X-Cache \$aai_cache_status always;

        location /metrics {
            aai_metrics;
        }
        location /rl/ {
            aai_ratelimit user;
            proxy_pass http://127.0.0.1:$app;
        }
        location /cache/ {
            aai_cache on;
            aai_cache_key \$uri;
            proxy_pass http://127.0.0.1:$app;
        }
    }
_EOC_
}

sub get {
    my ($port, $path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0) . ' ' . ($h->{'x-rl'} // $h->{'x-cache'} // '');
}


# --- the limiter: exact, its keys on every primary ---------------------------

my ($port, $stop, $prefix) = front('r019ok', 'tls_name=localhost',
                                   origin => 1, fallback => 'deny',
                                   workers => 2);

ok(wait_until(10, sub { get($port, '/rl/?u=probe') eq '200 PASSED' }),
   'Redis decides through the TLS cluster');

my $users = 30;
my (%pass, %rej, %other);
for my $round (1 .. 5) {
    for my $u (1 .. $users) {
        my $r = get($port, "/rl/?u=user$u");
        if ($r eq '200 PASSED') { $pass{$u}++ }
        elsif ($r eq '429 REJECTED') { $rej{$u}++ }
        else { $other{$u} = $r }
    }
}
is(scalar(grep { ($pass{$_} // 0) == 3 && ($rej{$_} // 0) == 2 } 1 .. $users),
   $users, 'every user gets exactly 3 of 5')
    or diag(explain(\%pass, \%other));

my %on;
for my $p (@P) {
    $on{$p} = scalar grep { /user\d+/ } keys_on($p, '*user*');
}
is(scalar(grep { $on{$_} > 0 } @P), 3,
   'the users\' keys are on every primary, read back over TLS')
    or diag(explain(\%on));
my $total = 0;
$total += $_ for values %on;
is($total, $users, 'one key per user');


# --- the cache: stores and hits, entries on every primary --------------------

my (@miss, @hit);
for my $i (1 .. 20) {
    my $first = get($port, "/cache/p$i");
    my $then = '';
    wait_until(5, sub { ($then = get($port, "/cache/p$i")) eq '200 HIT' });
    push @miss, $i unless $first eq '200 MISS';
    push @hit, $i unless $then eq '200 HIT';
}
is("@miss", '', 'cache: every first lookup misses');
is("@hit", '', 'cache: then hits, from the cluster over TLS');

my %entries;
for my $p (@P) {
    $entries{$p} = scalar grep { !/:l$/ } keys_on($p, 'aai:c:*');
}
is(scalar(grep { $entries{$_} > 0 } @P), 3,
   'cache: entries on every primary') or diag(explain(\%entries));


# --- metrics: a connection to every node --------------------------------------

my $m = metrics_wait($port, '/metrics', sub {
    my $m = shift;
    my %n;
    for my $k (keys %$m) {
        next unless $k =~ /^aai_redis_connections\{.*client="ratelimit"/
                    && $m->{$k} > 0;
        $n{$1} = 1 if $k =~ /node="(\d+)"/;
    }
    keys %n >= 3;
});
my %nodes;
for my $k (keys %$m) {
    next unless $k =~ /^aai_redis_connections\{.*client="(\w+)"/;
    my $c = $1;
    $nodes{$c}{$1} = $m->{$k} if $k =~ /node="(\d+)"/ && $m->{$k} > 0;
}
is(scalar keys %{ $nodes{ratelimit} // {} }, 3,
   'metrics: the limiter has connections open to three nodes')
    or diag(explain(\%nodes));
is(scalar keys %{ $nodes{cache} // {} }, 3,
   'metrics: the cache has connections open to three nodes')
    or diag(explain(\%nodes));

my @err = grep { /\[error\].*aai redis/ } file_lines("$prefix/logs/error.log");
is(scalar @err, 0, 'no Redis error logged') or diag(@err);
no_log_problems("$prefix/logs/error.log", 'no alert, no crash');


# --- a slot moved to another primary: the MOVED is followed over TLS ---------

{
    # the key the limiter would use for a new user, and its empty slot
    my ($k1) = map { keys_on($_, '*user1') } @P;
    (my $key = $k1 // '') =~ s/user1$/mover/;
    my ($slot) = cli($P[0], 'CLUSTER', 'KEYSLOT', $key) =~ /(\d+)/;
    my %id = map { $_ => (cli($_, 'CLUSTER', 'MYID') =~ /(\w+)/)[0] } @P;
    my $src = defined $slot ? owns($P[0], $slot) : 0;
    my ($dst) = grep { $_ != ($src // 0) } @P;
    ok($key && defined $slot && $src, "the slot of $key and its primary")
        or diag("key $key slot $slot");
    cli($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $id{$src});
    cli($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $id{$dst});
    cli($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $id{$dst})
        for $dst, $src, grep { $_ != $src && $_ != $dst } @P;
    ok(wait_until(10, sub {
           3 == grep { owns($_, $slot) == $dst } @P
       }), "slot $slot moved from $src to $dst");

    my @r = map { get($port, '/rl/?u=mover') } 1 .. 5;
    is(join(',', @r), join(',', ('200 PASSED') x 3, ('429 REJECTED') x 2),
       'moved slot: the limit is still exact');
    is(join(',', map { scalar keys_on($_, $key) } $src, $dst), '0,1',
       'moved slot: the key is on its new primary');
    my $moved = 0;
    my $mm = metrics_get($port);
    for my $k (keys %$mm) {
        $moved += $mm->{$k}
            if $k =~ /^aai_redis_cluster_errors_total\{.*client="ratelimit"/
               && $k =~ /reason="moved"/;
    }
    ok($moved > 0, 'moved slot: a MOVED was followed') or diag($moved);
}


# --- a seed with a certificate for another name: refused ---------------------

{
    my ($p2, $stop2, $prefix2) = front('r019name', 'tls_name=wrong.example',
                                       fallback => 'deny');
    is(get($p2, '/rl/?u=refused'), '429 ERROR',
       'wrong tls_name: the limiter falls back (deny)');
    log_like("$prefix2/logs/error.log",
             qr/\[error\].*aai redis.*TLS: server certificate does not match tls_name "wrong\.example"/,
             'wrong tls_name: the verification failure is logged');
    is(scalar(keys_on($P[0], '*refused*')) + scalar(keys_on($P[1], '*refused*'))
       + scalar(keys_on($P[2], '*refused*')), 0,
       'wrong tls_name: nothing written');
    no_log_problems("$prefix2/logs/error.log",
                    'wrong tls_name: no alert, no crash');
    $stop2->();
}

is(get($port, '/rl/?u=after'), '200 PASSED',
   'the first nginx still decides by Redis');
$stop->();

stop_pid($Pid{$_}) for @P;
logs_once_more();

done_testing();
