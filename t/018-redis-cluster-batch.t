# The limiter's batches on a Redis Cluster, per node: the requests of one
# event loop iteration whose keys a node serves are checked by one script
# call on it (allow-cross-slot-keys), whatever their slots; a request whose
# keys are in two slots of one node is checked in one part, without a
# refund; a batch that names a key whose slot has moved is checked again
# per slot.  Six redis-server on loopback (three primaries); INFO
# commandstats counts the script calls per primary.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest;
use AaiTest qw( wait_until master_pid worker_pids );
use Time::HiRes qw( time sleep );

my @P = start_redis_cluster();

# the primaries, their ids, and the primary of a slot, as the cluster says
sub slots_map {
    return @{ redis_cmd_port($P[0], 'CLUSTER', 'SLOTS') };
}

sub primaries {
    my %p = map { $_->[2][1] => 1 } slots_map();
    return sort keys %p;
}

sub slot_of {
    return redis_cmd_port($P[0], 'CLUSTER', 'KEYSLOT', shift);
}

sub node_of_slot {
    my $slot = shift;
    for my $r (slots_map()) {
        return $r->[2][1] if $slot >= $r->[0] && $slot <= $r->[1];
    }
    return 0;
}

sub node_ids {
    my %ids;
    for my $line (split /\n/, redis_cmd_port($P[0], 'CLUSTER', 'NODES')) {
        my ($id, $addr, $flags) = split / /, $line;
        my ($port) = $addr =~ /:(\d+)@/;
        $ids{$port} = $id if $port && $flags =~ /master/;
    }
    return %ids;
}

# the script calls (FCALL, EVALSHA and EVAL) of each primary since its
# RESETSTAT
sub script_calls {
    my %n;
    for my $p (primaries()) {
        my $info = redis_cmd_port($p, 'INFO', 'commandstats');
        for my $cmd (qw(fcall evalsha eval)) {
            my ($c) = $info =~ /cmdstat_$cmd:calls=(\d+)/;
            $n{$p}{$cmd} = $c // 0;
        }
    }
    return %n;
}

sub reset_stats {
    redis_cmd_port($_, 'CONFIG', 'RESETSTAT') for primaries();
}

my @PRIMARIES = primaries();
is(scalar @PRIMARIES, 3, 'three primaries');

my $seeds = join ',', map { "127.0.0.1:$_" } @P[0, 1];
my $redis = "cluster=$seeds timeout=1s connect_timeout=1s";

my $conf = <<_EOC_;
    aai_ratelimit_redis $redis;
    aai_ratelimit_zone user key=\$arg_u rate=3r/m;
    aai_ratelimit_zone ip key=\$arg_ip rate=5r/m;
    aai_ratelimit_fallback deny;
    aai_ratelimit_status 429;

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;

        location /rl/ {
            aai_ratelimit user;
            empty_gif;
        }
        location /both/ {
            aai_ratelimit user;
            aai_ratelimit ip;
            empty_gif;
        }
    }
_EOC_

# one worker, multi_accept: the connections written while it is stopped
# are read in one event loop iteration
my ($port, $stop, $prefix) = start_nginx_instance('r018', $conf,
                                                  events => 'multi_accept on;');

sub rl {
    my $path = shift;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0) . ' ' . ($h->{'x-rl'} // '');
}

sub in_one_iteration {
    my @paths = @_;
    my @w = worker_pids(master_pid($prefix));
    die "no worker\n" unless @w == 1;
    kill 'STOP', @w;
    my @r = eval {
        http_concurrent([ map { [$port, $_] } @paths ],
                        after_write => sub { kill 'CONT', @w });
    };
    kill 'CONT', @w;
    return @r;
}

# the worker knows the map, and each primary has the scripts
ok(wait_until(10, sub {
       my $ok = 1;
       for my $i (1 .. 12) {
           $ok = 0 if rl("/rl/?u=warm$i") ne '200 PASSED';
       }
       $ok;
   }), 'Redis decides through the cluster');

# --- many users at once: one script call per node ---------------------------

my $n = 45;
my @users = map { "many$_" } 1 .. $n;
my %per;
$per{ node_of_slot(slot_of("aai:rl:user:$_")) }++ for @users;
is(scalar(keys %per), 3, 'the users\' keys are on every primary')
    or diag(explain(\%per));

reset_stats();
my @res = in_one_iteration(map { "/rl/?u=$_" } @users);
my $bad = join ' ', map { ($res[$_][0] // 0) . ':' . ($res[$_][1]{'x-rl'}
                                                     // '') }
                    grep { ($res[$_][0] // 0) != 200
                           || ($res[$_][1]{'x-rl'} // '') ne 'PASSED' }
                    0 .. $#res;
ok(!$bad, "$n users at once: each passes") or diag($bad);

my %calls = script_calls();
my $total = 0;
$total += $calls{$_}{fcall} + $calls{$_}{evalsha} + $calls{$_}{eval}
    for keys %calls;
ok($total <= 3, "$n users of $n slots at once: at most one script call "
                . "per node ($total)") or diag(explain(\%calls));
ok((grep { $calls{$_}{fcall} >= 1 } keys %calls) == 3,
   'each node checked its users') or diag(explain(\%calls));
# each primary loaded the library when it first said "not found"
is(scalar(grep { @{ redis_cmd_port($_, 'FUNCTION', 'LIST', 'LIBRARYNAME',
                                   'aai_ratelimit_*') } == 1 } primaries()),
   3, 'each primary holds the function library');

# each user's key holds its one admission, on its slot's primary
my $wrong = 0;
for my $u (@users) {
    my $k = "aai:rl:user:$u";
    $wrong++ if redis_cmd_port(node_of_slot(slot_of($k)), 'LLEN', $k) != 1;
}
is($wrong, 0, 'each user\'s key counts its request');

# the limits stay exact in one iteration: 5 requests of each of 6 users
my @five = map { my $u = "five$_"; map { "/rl/?u=$u" } 1 .. 5 } 1 .. 6;
@res = in_one_iteration(@five);
my %pass;
for my $i (0 .. $#five) {
    my ($u) = $five[$i] =~ /u=(\w+)/;
    $pass{$u}++ if ($res[$i][0] // 0) == 200;
}
is(scalar(grep { ($pass{"five$_"} // 0) == 3 } 1 .. 6), 6,
   '5 requests of a user at once: exactly 3 pass') or diag(explain(\%pass));

# --- a user and an IP in two slots of one node: one part, no refund ---------

# a user and an IP whose keys are in different slots of one primary
my ($user, $ip, $node);
for my $i (1 .. 2000) {
    my $s1 = slot_of("aai:rl:user:xu$i");
    my $s2 = slot_of("aai:rl:ip:xi$i");
    next if $s1 == $s2;
    next if node_of_slot($s1) != node_of_slot($s2);
    ($user, $ip, $node) = ("xu$i", "xi$i", node_of_slot($s1));
    last;
}
ok($user, 'a user and an IP in two slots of one primary');

reset_stats();
is(join(',', map { rl("/both/?u=$user&ip=$ip") } 1 .. 5),
   '200 PASSED,200 PASSED,200 PASSED,429 REJECTED,429 REJECTED',
   'the user zone rejects after 3');
is(redis_cmd_port($node, 'LLEN', "aai:rl:ip:$ip"), 3,
   'the requests the user zone rejected spent nothing of the IP zone');
%calls = script_calls();
# (the fifth is rejected by the shared memory's blocklist, without Redis)
ok($calls{$node}{fcall} >= 3 && $calls{$node}{fcall} <= 5,
   'at most one script call per request, on that node')
    or diag(explain(\%calls));
is($calls{$node}{eval}, 0, 'no refund: each request was checked in one part')
    or diag(explain(\%calls));

# --- a slot moved: the batch of the node is checked again per slot ----------

{
    # a user and an IP in two slots of one primary, the IP's slot empty
    my ($u2, $ip2, $from);
    for my $i (1 .. 2000) {
        my $s1 = slot_of("aai:rl:user:mu$i");
        my $s2 = slot_of("aai:rl:ip:mi$i");
        next if $s1 == $s2 || node_of_slot($s1) != node_of_slot($s2);
        next if redis_cmd_port(node_of_slot($s2), 'CLUSTER',
                               'COUNTKEYSINSLOT', $s2) != 0;
        ($u2, $ip2, $from) = ("mu$i", "mi$i", node_of_slot($s1));
        last;
    }
    ok($u2, 'a user and an IP in two slots of one primary, to move');
    my $slot = slot_of("aai:rl:ip:$ip2");
    my ($to) = grep { $_ != $from } primaries();
    my %ids = node_ids();

    # the IP's slot moves, the worker's map does not know it yet
    redis_cmd_port($to, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $ids{$from});
    redis_cmd_port($from, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $ids{$to});
    redis_cmd_port($_, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $ids{$to})
        for $to, $from;
    ok(wait_until(5, sub { node_of_slot($slot) == $to }),
       'the cluster says the slot moved');

    is(join(',', map { rl("/both/?u=$u2&ip=$ip2") } 1 .. 4),
       '200 PASSED,200 PASSED,200 PASSED,429 REJECTED',
       'a slot moved: the limits stay exact');
    # (the refund of the IP zone follows the decision by one round trip)
    ok(wait_until(2, sub {
           redis_cmd_port($to, 'LLEN', "aai:rl:ip:$ip2") == 3 }),
       'a slot moved: the IP\'s key is on its new primary')
        or diag(redis_cmd_port($to, 'LLEN', "aai:rl:ip:$ip2"));
    is(redis_cmd_port($from, 'LLEN', "aai:rl:user:$u2"), 3,
       'a slot moved: the user\'s key on its primary');
    AaiTest::log_like("$prefix/logs/error.log",
                      qr/of a node, per slot: AAIXSLOT .*non local key/,
                      'a slot moved: the batch of the node went per slot');
}

# no error, no crash in the log
my @crit = grep { /\[(?:alert|emerg|crit)\]/ }
           AaiTest::file_lines("$prefix/logs/error.log");
ok(!@crit, 'no alert in the log') or diag(join "\n", @crit);

$stop->();
done_testing();
