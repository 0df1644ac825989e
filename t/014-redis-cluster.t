# The Redis client on a Redis Cluster (cluster=host:port,...): six
# redis-server in cluster mode on loopback, three primaries and three
# replicas (cluster-node-timeout 1000).  The limiter and the cache learn
# the slot map, send each key to its primary, and stay exact with keys
# spread over every node; a killed primary is replaced by its replica and
# the time until Redis decides again is measured.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest;
use AaiTest qw( wait_until conf_error_like logs_once_more );
use Time::HiRes qw( time sleep );
use POSIX ();

my @P = start_redis_cluster();

# the primaries now, and where a key lives
sub primaries {
    my $slots = redis_cmd_port($P[0], 'CLUSTER', 'SLOTS');
    my %p = map { $_->[2][1] => 1 } @$slots;
    return sort keys %p;
}

sub keys_on {
    my ($port, $pattern) = @_;
    my $k = eval { redis_cmd_port($port, 'KEYS', $pattern) } // [];
    return @$k;
}

my @PRIMARIES = primaries();
is(scalar @PRIMARIES, 3, 'three primaries');

my $seeds = join ',', map { "127.0.0.1:$_" } @P[0, 1];
my $redis = "cluster=$seeds timeout=300ms connect_timeout=300ms";
my $app = free_port();
my $hung = hung_listener();

my $conf = <<_EOC_;
    aai_ratelimit_redis $redis;
    aai_cache_redis $redis;
    aai_ratelimit_zone user key=\$arg_u rate=3r/m;
    aai_ratelimit_zone ip key=\$arg_ip rate=5r/m;
    aai_ratelimit_fallback deny;
    aai_ratelimit_status 429;

    server {
        listen 127.0.0.1:$app;
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
        location /cache/vary/ {
            add_header Cache-Control "max-age=60";
            add_header Vary Accept-Language;
            return 200 "app \$uri \$http_accept_language\\n";
        }
    }

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
        location /both/ {
            aai_ratelimit user;
            aai_ratelimit ip;
            proxy_pass http://127.0.0.1:$app;
        }
        location /cache/ {
            aai_cache on;
            aai_cache_key \$scheme\$request_method\$host\$uri;
            aai_cache_lock on;
            proxy_pass http://127.0.0.1:$app;
        }
        location ~ ^/purge(/.*)\$ {
            aai_cache_purge \$scheme\$request_method\$host\$1;
        }
    }
_EOC_

my ($port1, $stop1, $prefix1) = start_nginx_instance('r014a', $conf,
                                                     workers => 2);
# the second instance without the application (the first one serves it)
(my $conf2 = $conf)
    =~ s/server \{\n        listen 127.0.0.1:$app;.*?\n    \}\n//s;
my ($port2, $stop2, $prefix2) = start_nginx_instance('r014b', $conf2,
                                                     workers => 2);

sub rl {
    my ($port, $path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0) . ' ' . ($h->{'x-rl'} // '');
}

ok(wait_until(10, sub {
       rl($port1, '/rl/?u=probe1') eq '200 PASSED'
       && rl($port2, '/rl/?u=probe2') eq '200 PASSED'
   }), 'Redis decides through the cluster');

# the sum over both instances of a cluster metric of a client
sub cluster_metric {
    my ($family, $client, $reason) = @_;
    my $sum = 0;
    for my $port ($port1, $port2) {
        my $m = metrics_get($port);
        for my $k (keys %$m) {
            next unless $k =~ /^aai_redis_cluster_\Q$family\E\{/
                        && $k =~ /client="\Q$client\E"/;
            next if defined $reason && $k !~ /reason="$reason"/;
            $sum += $m->{$k};
        }
    }
    return $sum;
}

# --- exact limits for many users, across two instances ----------------------

my $users = 30;
my (%pass, %rej, %other);
for my $round (1 .. 5) {
    for my $u (1 .. $users) {
        my $port = ($round + $u) % 2 ? $port1 : $port2;
        my $r = rl($port, "/rl/?u=user$u");
        if ($r eq '200 PASSED') { $pass{$u}++ }
        elsif ($r eq '429 REJECTED') { $rej{$u}++ }
        else { $other{$u} = $r }
    }
}
is(scalar(grep { ($pass{$_} // 0) == 3 && ($rej{$_} // 0) == 2 } 1 .. $users),
   $users, 'every user gets exactly 3 of 5, across two instances')
    or diag(explain(\%pass, \%other));

my %on;
for my $p (@PRIMARIES) {
    $on{$p} = scalar grep { /user\d+/ } keys_on($p, '*');
}
is(scalar(grep { $on{$_} > 0 } @PRIMARIES), 3,
   'the users\' keys are on every primary') or diag(explain(\%on));
my $total = 0;
$total += $_ for values %on;
is($total, $users, 'one key per user, on its slot\'s primary');

# many at once: the batches of one event loop iteration are split by slot
my @reqs;
for my $i (1 .. 4) {
    for my $u (1 .. 20) {
        push @reqs, [$i % 2 ? $port1 : $port2, "/rl/?u=burst$u"];
    }
}
my @res = http_concurrent(\@reqs);
my (%bp, $bad);
for my $i (0 .. $#reqs) {
    my ($u) = $reqs[$i][1] =~ /u=burst(\d+)/;
    my $st = $res[$i][0] // 0;
    my $s = $res[$i][1]{'x-rl'} // '';
    if ($st == 200 && $s eq 'PASSED') { $bp{$u}++ }
    elsif (!($st == 429 && $s eq 'REJECTED')) { $bad .= "$u:$st $s " }
}
ok(!$bad, 'concurrent requests: no error, no fallback') or diag($bad);
is(scalar(grep { ($bp{$_} // 0) == 3 } 1 .. 20), 20,
   'concurrent requests: exactly 3 per user') or diag(explain(\%bp));

# --- a user zone beside a per-IP zone, their keys on other nodes ------------

# the node of a key: where KEYS finds it
sub node_of {
    my $key = shift;
    for my $p (@PRIMARIES) {
        return $p if grep { $_ eq $key } keys_on($p, $key);
    }
    return 0;
}

sub llen {
    my $key = shift;
    my $n = node_of($key) or return 0;
    return redis_cmd_port($n, 'LLEN', $key);
}

# alice: 3 pass, 2 rejected by her zone; the IP zone counts only the 3
is(join(',', map { rl($_ % 2 ? $port1 : $port2, '/both/?u=alice&ip=ip1') }
             1 .. 5),
   '200 PASSED,200 PASSED,200 PASSED,429 REJECTED,429 REJECTED',
   'the user zone rejects alice after 3');
isnt(node_of('aai:rl:user:alice'), node_of('aai:rl:ip:ip1'),
     'the user and IP keys are on different primaries');
# (the refund of the IP zone follows the decision by one round trip)
ok(wait_until(2, sub { llen('aai:rl:ip:ip1') == 3 }),
   'the requests the user zone rejected spent nothing of the IP zone')
    or diag(llen('aai:rl:ip:ip1'));

# bob on the same IP: 2 left of its 5; his third is rejected by the IP zone
# and spends nothing of his own zone
is(join(',', map { rl($_ % 2 ? $port1 : $port2, '/both/?u=bob&ip=ip1') }
             1 .. 3),
   '200 PASSED,200 PASSED,429 REJECTED',
   'the IP zone admits exactly 2 more, for bob');
is(llen('aai:rl:ip:ip1'), 5, 'the IP zone is full');
ok(wait_until(2, sub { llen('aai:rl:user:bob') == 2 }),
   'the request the IP zone rejected spent nothing of bob\'s zone')
    or diag(llen('aai:rl:user:bob'));

# --- the cache: entries on every node, hits across instances ---------------

sub cget {
    my ($port, $path, $hdrs, $method) = @_;
    my ($st, $h, $body) = http_get($port, $path, $hdrs // {}, $method);
    return (($st // 0) . ' ' . ($h->{'x-cache'} // ''), $body // '');
}

my $misses = 0;
for my $i (1 .. 15) {
    my ($r) = cget($port1, "/cache/k$i");
    $misses++ if $r eq '200 MISS';
}
is($misses, 15, 'fifteen misses on the first instance');
my $hits = 0;
for my $i (1 .. 15) {
    $hits++ if wait_until(3, sub { (cget($port2, "/cache/k$i"))[0]
                                   eq '200 HIT' });
}
is($hits, 15, 'fifteen hits on the second instance');
my %centries;
for my $p (@PRIMARIES) {
    $centries{$p} = scalar grep { /^aai:c:\{[0-9a-f]{64}\}$/ }
                    keys_on($p, 'aai:c:*');
}
is(scalar(grep { $centries{$_} > 0 } @PRIMARIES), 3,
   'the entries are on every primary') or diag(explain(\%centries));

# a HEAD's header-only entry goes with the store script (its keys and the
# entry it must not replace share a slot)
my ($hd) = cget($port1, '/cache/head1', {}, 'HEAD');
is($hd, '200 MISS', 'HEAD: a miss on the first instance');
ok(wait_until(3, sub { (cget($port2, '/cache/head1', {}, 'HEAD'))[0]
                       eq '200 HIT' }),
   'HEAD: its entry hits on the second instance');

# Vary: the record and the variants of one resource share its slot; a
# lookup that knows the resource varies reads both (MGET) at once
my ($v1, $b1) = cget($port1, '/cache/vary/x', {'Accept-Language' => 'en'});
is($v1, '200 MISS', 'vary: first variant misses');
ok(wait_until(3, sub {
       my ($r, $b) = cget($port2, '/cache/vary/x', {'Accept-Language' => 'en'});
       $r eq '200 HIT' && $b =~ /en$/;
   }), 'vary: the en variant hits on the other instance');
my ($v2) = cget($port2, '/cache/vary/x', {'Accept-Language' => 'fr'});
is($v2, '200 MISS', 'vary: another variant misses');
ok(wait_until(3, sub {
       my ($r, $b) = cget($port1, '/cache/vary/x', {'Accept-Language' => 'fr'});
       $r eq '200 HIT' && $b =~ /fr$/;
   }), 'vary: the fr variant hits');

# purge: every method's entry (GET and HEAD, other slots) and the variants
cget($port1, '/cache/p1');
ok(wait_until(3, sub { (cget($port2, '/cache/p1'))[0] eq '200 HIT' }),
   'purge: the entry is there');
my ($pr, $pb) = cget($port2, '/purge/cache/vary/x', {}, 'PURGE');
like("$pr $pb", qr/^200 .*"purged":[23]/, 'purge: the variants are deleted')
    or diag("$pr $pb");
my ($after) = cget($port1, '/cache/vary/x', {'Accept-Language' => 'en'});
is($after, '200 MISS', 'purge: the en variant is gone');
($pr, $pb) = cget($port1, '/purge/cache/p1', {}, 'PURGE');
like("$pr $pb", qr/^200 .*"purged":1/, 'purge: one entry');
is((cget($port2, '/cache/p1'))[0], '200 MISS', 'purge: the entry is gone');

# the stampede lock: concurrent misses on both instances, one upstream
# request; the waiters of the other instance are woken through pub/sub
{
    my @r = http_concurrent([map { [$_ % 2 ? $port1 : $port2,
                                   '/cache/slow/lk1'] } 1 .. 20]);
    my %c;
    $c{($_->[0] // 0) . ' ' . ($_->[1]{'x-cache'} // '')}++ for @r;
    is(join(',', map { "$_=$c{$_}" } sort keys %c), '200 HIT=19,200 MISS=1',
       'lock: 20 concurrent misses on two instances, 1 miss, 19 hits');
    my %bodies = map { $_->[2] => 1 } @r;
    is(scalar keys %bodies, 1, 'lock: all got the same response');
    my $up = 0;
    for my $i (1 .. 20) {
        $up = grep { m{"GET /cache/slow/lk1 HTTP/1.0"} }
              file_lines("$prefix1/logs/access.log");
        last if $up;
        sleep 0.05;
    }
    is($up, 1, 'lock: the upstream saw 1 request');
}

# --- a slot migration during traffic (redis-cli --cluster reshard) ---------

{
    my @prim = primaries();
    my %ids;
    for my $line (split /\n/, redis_cmd_port($P[0], 'CLUSTER', 'NODES')) {
        my ($id, $addr, $flags) = split / /, $line;
        my ($port) = $addr =~ /:(\d+)@/;
        $ids{$port} = $id if $port && $flags =~ /master/;
    }
    my ($from, $to) = @prim[0, 1];
    my @src = map { [$_->[0], $_->[1]] } grep { $_->[2][1] == $from }
              @{ redis_cmd_port($P[0], 'CLUSTER', 'SLOTS') };
    # users whose keys are in the slots about to move (the source's first)
    my @movers;
    for my $i (1 .. 20000) {
        my $slot = redis_cmd_port($P[0], 'CLUSTER', 'KEYSLOT',
                                  "aai:rl:user:mv$i");
        push @movers, "mv$i" if $slot >= $src[0][0] && $slot < $src[0][0] + 60;
        last if @movers >= 40;
    }
    ok(@movers >= 20, 'users whose keys are in the slots to move');

    my $pid = fork();
    die "fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        { no warnings 'exec';
          exec 'redis-cli', '--cluster', 'reshard', "127.0.0.1:$P[0]",
               '--cluster-from', $ids{$from}, '--cluster-to', $ids{$to},
               '--cluster-slots', 60, '--cluster-yes',
               '--cluster-pipeline', 1; }
        POSIX::_exit(127);
    }

    # four requests per user while the slots move: 3 pass, 1 rejected
    my (%mp, $bad) = ();
    my $round = 0;
    while ($round < 4) {
        for my $u (@movers) {
            my $r = rl($round % 2 ? $port1 : $port2, "/rl/?u=$u");
            if ($r eq '200 PASSED') { $mp{$u}++ }
            elsif ($r ne '429 REJECTED') { $bad .= "$u:$r " }
        }
        $round++;
    }
    waitpid($pid, 0);
    is($?, 0, 'redis-cli --cluster reshard moved the slots');
    ok(!$bad, 'reshard: no error status, no fallback') or diag($bad);
    is(scalar(grep { ($mp{$_} // 0) == 3 } @movers), scalar @movers,
       'reshard: exactly 3 of 4 per user') or diag(explain(\%mp));
    my $on_to = grep { $_ =~ /mv\d+/ } keys_on($to, 'aai:rl:user:mv*');
    ok($on_to > 0, 'reshard: keys on the new owner') or diag($on_to);
    is(cluster_metric('errors_total', 'ratelimit', 'moved') > 0, 1,
       'reshard: the MOVED replies followed are counted');

}

# --- a primary SIGKILLed: its replica takes over ----------------------------

# the primary to kill: not a seed; users whose keys are on it
my ($victim) = grep { $_ != $P[0] && $_ != $P[1] } @PRIMARIES;
my @range = map { [$_->[0], $_->[1]] } grep { $_->[2][1] == $victim }
            @{ redis_cmd_port($P[0], 'CLUSTER', 'SLOTS') };
my @victims;
for my $i (1 .. 2000) {
    my $slot = redis_cmd_port($P[0], 'CLUSTER', 'KEYSLOT',
                              "aai:rl:user:fo$i");
    push @victims, "fo$i" if grep { $slot >= $_->[0] && $slot <= $_->[1] }
                                  @range;
    last if @victims >= 400;
}
ok(@victims >= 100, 'users whose keys are on the primary to kill');

my $t_kill = time;
kill_redis($victim);

# requests meanwhile fall back (deny: 429 ERROR), none waits past the
# timeout; until a request on a key of the lost slots is decided by Redis
my ($n, $slow, $t_back) = (0, 0);
while (time - $t_kill < 20 && $n < @victims) {
    my $t0 = time;
    my $r = rl($n % 2 ? $port1 : $port2, "/rl/?u=$victims[$n++]");
    $slow++ if time - $t0 > 1.0;
    if ($r eq '200 PASSED') {
        $t_back = time;
        last;
    }
    sleep 0.02;
}
ok($t_back, 'the limiter decides again on the replica that took over');
is($slow, 0, 'no request waited past the timeout meanwhile');
$t_back //= time;
diag(sprintf 'cluster failover: primary SIGKILLed -> the limiter decides '
     . 'again %.2f s (cluster-node-timeout 1000)', $t_back - $t_kill);
cmp_ok($t_back - $t_kill, '<', 5, 'Redis decides again within 5 s');

# both instances, both workers: exact again on the new primary
ok(wait_until(10, sub {
       my $ok = 1;
       for (1 .. 4) {
           $ok &&= rl($_ % 2 ? $port1 : $port2, "/rl/?u=$victims[$n++]")
                   eq '200 PASSED';
       }
       $ok;
   }), 'every worker uses the new primary');
# a worker that served none of those may learn the new map a moment later
# (the seed node's view of the failover lags its gossip): a new user each
# try, until one sees exact limits on both instances
my $exact = '200 PASSED,200 PASSED,200 PASSED,429 REJECTED';
my $got;
ok(wait_until(10, sub {
       my $u = $victims[$n++] // return 1;
       $got = join ',', map { rl($_ % 2 ? $port1 : $port2, "/rl/?u=$u") }
                        1 .. 4;
       $got eq $exact;
   }) && $got eq $exact,
   'exact limits again after the failover, without a reload')
    or diag("last: $got");
ok(cluster_metric('errors_total', 'ratelimit', 'down') > 0,
   'the commands the dead node could not take are counted');
ok(cluster_metric('slot_map_refreshes_total', 'ratelimit') > 4,
   'the slot map refreshes are counted');
my $t_cache = time;
ok(wait_until(10, sub {
       my ($r) = cget($port1, "/cache/after$n");
       (cget($port2, "/cache/after$n"))[0] eq '200 HIT'
       || do { $n++; 0 };
   }), 'the cache stores and hits again');

# --- issue 14's features on the cluster -------------------------------------

{
    my ($pa, $stopa) = start_nginx_instance('r014ai', <<_EOC_, workers => 1);
    aai_ratelimit_redis $redis;
    aai_ratelimit_zone cu   key=\$arg_u rate=10r/m;
    aai_ratelimit_zone cuc  key=\$arg_u rate=10r/h algorithm=counter;
    aai_ratelimit_zone cip  key=\$arg_ip rate=3r/m;
    aai_ratelimit_zone tok  key=\$arg_u rate=1000r/m;
    aai_ratelimit_zone lone key=\$arg_u concurrency=1;
    aai_ratelimit_fallback deny;
    aai_ratelimit_status 429;

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location /cost   { aai_ratelimit cu cost=4; aai_ratelimit cip;
                           empty_gif; }
        location /costc  { aai_ratelimit cuc cost=4; aai_ratelimit cip;
                           empty_gif; }
        location /charge { aai_ratelimit tok charge=\$arg_t; empty_gif; }
        location /lease  { aai_ratelimit lone; aai_ratelimit cip;
                           empty_gif; }
    }
_EOC_

    # the primaries since the failover above
    @PRIMARIES = primaries();

    my $slot = sub { redis_cmd_port($P[0], 'CLUSTER', 'KEYSLOT', shift) };
    my $st = sub { (http_get($pa, shift, {}))[0] // 0 };

    # the primary serving a key's slot
    my $owner = sub {
        my $s = $slot->(shift);
        for my $r (@{ redis_cmd_port($P[0], 'CLUSTER', 'SLOTS') }) {
            return $r->[2][1] if $s >= $r->[0] && $s <= $r->[1];
        }
        return 0;
    };

    # an IP key on another primary than the user's key: the request is
    # checked in two parts (keys of two slots of one primary go in one
    # part, which needs no refund)
    my $ip_apart = sub {
        my ($ukey, $base) = @_;
        for my $c ('a' .. 'z') {
            return "$base$c"
                if $owner->("aai:rl:cip:$base$c") != $owner->($ukey);
        }
        return "${base}a";
    };
    my $ipd = $ip_apart->('aai:rl:cu:dave4', 'ipd');
    my $ipe = $ip_apart->('aai:rl:cuc:erin4', 'ipe');

    # cost=4 beside a zone on another primary: a request the IP zone
    # rejects gets its 4 units back
    isnt($owner->('aai:rl:cu:dave4'), $owner->("aai:rl:cip:$ipd"),
         'ai: the cost and IP keys on two primaries');
    is(join(',', map { $st->("/cost?u=dave$_&ip=$ipd") } 1 .. 4),
       '200,200,200,429', 'ai: cost=, the IP zone rejects the 4th');
    is(llen('aai:rl:cu:dave1'), 4, 'ai: an admitted request spent 4 units');
    ok(wait_until(2, sub { llen('aai:rl:cu:dave4') == 0 }),
       'ai: the rejected request\'s 4 units refunded')
        or diag(llen('aai:rl:cu:dave4'));

    # the same with a counter zone: the refund takes 4 off its count
    my $count = sub {
        my $k = shift;
        my $n = node_of($k) or return '';
        return (rl_counter($k, $n) // '') =~ /^c\d+:(\d+):0$/ ? $1 : '';
    };
    isnt($owner->('aai:rl:cuc:erin4'), $owner->("aai:rl:cip:$ipe"),
         'ai: the counter and IP keys on two primaries');
    is(join(',', map { $st->("/costc?u=erin$_&ip=$ipe") } 1 .. 4),
       '200,200,200,429', 'ai: counter cost=, the IP zone rejects the 4th');
    is($count->('aai:rl:cuc:erin1'), 4, 'ai: the counter counts 4 units');
    ok(wait_until(2, sub { $count->('aai:rl:cuc:erin4') eq '0' }),
       'ai: the rejected request\'s 4 units off the counter')
        or diag($count->('aai:rl:cuc:erin4'));

    # charge=: usage of keys in two slots, each charged in its own slot
    isnt($slot->('aai:rl:tok:erin'), $slot->('aai:rl:tok:frank'),
         'ai: two users\' usage keys in two slots');
    is(join(',', $st->('/charge?u=erin&t=300'), $st->('/charge?u=frank&t=200'),
            $st->('/charge?u=erin&t=1')),
       '200,200,200', 'ai: charge=, every request admitted');
    ok(wait_until(3, sub {
           llen('aai:rl:tok:erin') == 301 && llen('aai:rl:tok:frank') == 200
       }), 'ai: the charges in Redis, exact')
        or diag(llen('aai:rl:tok:erin') . ' ' . llen('aai:rl:tok:frank'));

    # concurrency=1 beside a zone in another slot: the lease is released
    # when the request ends, so the next one is admitted
    isnt($slot->('aai:rl:lone:gina'), $slot->('aai:rl:cip:ipg'),
         'ai: the lease and IP keys in two slots');
    is(join(',', map { $st->('/lease?u=gina&ip=ipg') } 1 .. 3),
       '200,200,200', 'ai: concurrency=1, one request after another');
    my $zcard = sub {
        my $n = node_of('aai:rl:lone:gina') or return 0;
        return redis_cmd_port($n, 'ZCARD', 'aai:rl:lone:gina');
    };
    ok(wait_until(2, sub { $zcard->() == 0 }), 'ai: no lease left')
        or diag($zcard->());
    # the IP zone (3 per minute) rejects the 4th: its lease released too
    is($st->('/lease?u=hana&ip=ipg'), 429, 'ai: the IP zone rejects');
    ok(wait_until(2, sub {
           my $n = node_of('aai:rl:lone:hana') or return 1;
           redis_cmd_port($n, 'ZCARD', 'aai:rl:lone:hana') == 0
       }), 'ai: the rejected request holds no lease');

    $stopa->();
}

# --- nginx -t -----------------------------------------------------------------

conf_error_like("aai_ratelimit_redis cluster=127.0.0.1:$P[0],,127.0.0.1:1;",
    qr/invalid cluster address "" in "aai_ratelimit_redis"/,
    'nginx -t: an empty cluster address');
conf_error_like("aai_ratelimit_redis cluster=no.such.host.invalid:7000;",
    qr/cluster address "no\.such\.host\.invalid:7000" in "\w+": host not/,
    'nginx -t: a cluster node that does not resolve');
conf_error_like('aai_ratelimit_redis cluster='
                . join(',', map { "127.0.0.1:$_" } 7001 .. 7017) . ';',
    qr/more than 16 cluster nodes in "aai_ratelimit_redis"/,
    'nginx -t: too many seed nodes');

logs_once_more();

done_testing();
