# The Redis client with Sentinel (sentinel=... master=NAME
# sentinel_password=env:VAR): three sentinels, a primary and a replica,
# all with passwords, on free loopback ports.  The limiter and the cache
# find the primary through the sentinels; the primary is SIGKILLed; the
# sentinels fail over to the replica; the workers follow +switch-master
# without a reload, and the limits are exact again on the new primary.
# The time from the sentinels' announcement to the first request decided
# by Redis again is measured (target: under 2 s).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );
use File::Temp qw( tempdir );
use POSIX qw( :sys_wait_h SIGTERM SIGKILL );
use IO::Socket::INET ();
use IO::Select ();

my $PW = 'redis-pw-013';
my $SP = 'sentinel-pw-013';
my $D = tempdir('aai013-XXXXXX', TMPDIR => 1, CLEANUP => 1);

$ENV{AAI_T013_SP} = $SP;

my %Procs;

sub spawn_redis {
    my ($name, @args) = @_;
    return $Procs{$name} = spawn(['redis-server', @args],
                                 log => "$D/$name.log");
}

sub stop {
    my ($name, $sig) = @_;
    stop_pid(delete $Procs{$name}, $sig);
}

# a command on a fresh connection, with AUTH (undef on any failure)
sub cmd {
    my ($port, $pw, @args) = @_;
    local $AaiTest::RedisErrorsDie = 0;
    my $r = eval {
        redis_cmd_port($port, 'AUTH', $pw);
        redis_cmd_port($port, @args);
    };
    return $r;
}

my ($P, $R) = (free_port(), free_port());

for my $n ([primary => $P], [replica => $R]) {
    my ($name, $port) = @$n;
    mkdir "$D/$name";
    spawn_redis($name, '--port', $port, '--bind', '127.0.0.1', '--save', '',
          '--appendonly', 'no', '--dir', "$D/$name", '--requirepass', $PW,
          '--masterauth', $PW,
          $name eq 'replica' ? ('--replicaof', '127.0.0.1', $P) : ());
}

ok(wait_until(10, sub {
       my $info = cmd($R, $PW, 'INFO', 'replication') // '';
       $info =~ /master_link_status:up/;
   }), 'the replica follows the primary');

my @S = map { free_port() } 1 .. 3;

for my $i (0 .. 2) {
    my $conf = "$D/sentinel$i.conf";
    open my $f, '>', $conf or die;
    print $f <<_EOC_;
port $S[$i]
bind 127.0.0.1
dir $D
requirepass $SP
sentinel sentinel-pass $SP
sentinel monitor m013 127.0.0.1 $P 2
sentinel auth-pass m013 $PW
sentinel down-after-milliseconds m013 1000
sentinel failover-timeout m013 3000
sentinel parallel-syncs m013 1
_EOC_
    close $f;
    spawn_redis("sentinel$i", $conf, '--sentinel');
}

ok(wait_until(15, sub {
       my $n = 0;
       for my $s (@S) {
           my $r = cmd($s, $SP, 'SENTINEL', 'replicas', 'm013');
           my $o = cmd($s, $SP, 'SENTINEL', 'sentinels', 'm013');
           $n++ if ref $r && @$r == 1 && ref $o && @$o == 2;
       }
       $n == 3;
   }), 'the sentinels know the replica and each other');

my $app = free_port();
my $sentinels = join ',', map { "127.0.0.1:$_" } @S;
my $redis = "sentinel=$sentinels master=m013 sentinel_password=env:AAI_T013_SP"
            . " password=$PW timeout=300ms connect_timeout=500ms";

my ($port, $stop, $prefix) = start_nginx_instance('r013', <<_EOC_,
    aai_ratelimit_redis $redis;
    aai_cache_redis $redis;
    aai_ratelimit_zone z key=\$arg_u rate=3r/m;
    aai_ratelimit_fallback allow;

    server {
        listen 127.0.0.1:$app;
        location / {
            add_header Cache-Control "max-age=60";
            return 200 "app \$uri\\n";
        }
    }

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        add_header X-Cache \$aai_cache_status always;

        location /rl/ {
            aai_ratelimit z;
            proxy_pass http://127.0.0.1:$app;
        }
        location /cache/ {
            aai_cache on;
            proxy_pass http://127.0.0.1:$app;
        }
    }
_EOC_
    main_config => 'env AAI_T013_SP;', workers => 2);

sub get {
    my ($path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0) . ' ' . ($h->{'x-rl'} // $h->{'x-cache'} // '');
}

sub exact {
    my ($user) = @_;
    return join ',', map { get("/rl/?u=$user") } 1 .. 4;
}

my $EXACT = '200 PASSED,200 PASSED,200 PASSED,429 REJECTED';

# both workers (three clients each: the limiter, the cache's lookups and
# stores) learn the primary from the sentinels
ok(wait_until(10, sub {
       my %w;
       for (file_lines("$prefix/logs/error.log")) {
           $w{$1}++ if /(\d+)#\d+: aai redis master "m013": primary is /;
       }
       2 == grep { $_ >= 3 } values %w;
   }), 'the primary is found through the sentinels');
ok(wait_until(10, sub { get('/rl/?u=probe') eq '200 PASSED' }),
   'Redis decides');

is(exact('alice'), $EXACT, 'exact limits on the primary');
my $keys = cmd($P, $PW, 'KEYS', '*') // [];
ok(scalar(grep { /alice/ || /^aai:rl:/ } @$keys),
   'the limiter\'s keys are on the primary') or diag("@$keys");

my $hit = wait_until(5, sub {
    get('/cache/s') eq '200 HIT';
});
ok($hit, 'cache hit through the primary');

# --- the primary dies --------------------------------------------------------

my $t_kill = time;
stop('primary', SIGKILL);

# the sentinels' announcement: they name the replica
my $t_switch = wait_until(20, sub {
    for my $s (@S) {
        my $a = cmd($s, $SP, 'SENTINEL', 'get-master-addr-by-name', 'm013');
        return time if ref $a && $a->[1] == $R;
    }
    return undef;
});
ok($t_switch, 'the sentinels fail over to the replica');
$t_switch //= time;

# requests meanwhile fall back (allow), and none waits past the timeout
my $n = 0;
my $t_back = wait_until(20, sub {
    my $t0 = time;
    my $r = get('/rl/?u=probe' . $n++);
    return time - $t0 > 1.5 ? die "a request took over 1.5 s\n"
         : $r eq '200 PASSED' ? time : undef;
});
ok($t_back, 'Redis decides again after the failover, no reload');
$t_back //= time;

my $after = $t_back - $t_switch;
diag(sprintf "sentinel failover: primary killed -> sentinels announce "
     . "%.2f s, announce -> Redis decides again %.2f s",
     $t_switch - $t_kill, $after);
cmp_ok($after, '<', 2.0, 'traffic back on Redis within 2 s of the '
       . 'announcement');

# every client of both workers has the new primary before exact counts
# (one worker may hear the announcement a few milliseconds after the other)
ok(wait_until(10, sub {
       my %w;
       my $new = qr/primary is 127\.0\.0\.1:$R\b/;
       for (file_lines("$prefix/logs/error.log")) {
           $w{$1}++ if /(\d+)#\d+: aai redis master "m013": $new/;
       }
       2 == grep { $_ >= 3 } values %w;
   }), 'both workers follow the new primary');

is(exact('bob'), $EXACT, 'exact limits again, on the new primary');
$keys = cmd($R, $PW, 'KEYS', '*') // [];
ok(scalar(grep { /bob/ || /^aai:rl:/ } @$keys),
   'the limiter\'s keys are on the new primary') or diag("@$keys");

ok(wait_until(5, sub {
       get('/cache/after') eq '200 HIT';
   }), 'cache hit through the new primary');

my @lines = file_lines("$prefix/logs/error.log");
ok(scalar(grep { /aai redis master "m013": \+switch-master to 127\.0\.0\.1:$R/ }
          @lines), 'the switch is logged');
no_log_problems("$prefix/logs/error.log", 'no alert, no crash');

$stop->();

# --- ROLE: a sentinel that names a replica ------------------------------------

# a stand-in sentinel that always names a replica of the new primary
{
    mkdir "$D/replica2";
    my $R2 = free_port();
    spawn_redis('replica2', '--port', $R2, '--bind', '127.0.0.1', '--save', '',
          '--appendonly', 'no', '--dir', "$D/replica2", '--masterauth', $PW,
          '--replicaof', '127.0.0.1', $R);
    ok(wait_until(5, sub {
           my $r = eval { redis_cmd_port($R2, 'ROLE') };
           ref $r && $r->[0] eq 'slave';
       }), 'a replica to be named');

    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                    Listen => 16, ReuseAddr => 1) or die;
    my $fake = $srv->sockport;
    $Procs{fake} = spawn(sub { fake_sentinel($srv, $R2) });
    close $srv;

    my ($fport, $fstop, $fprefix) = start_nginx_instance('r013role', <<_EOC_);
    aai_ratelimit_redis sentinel=127.0.0.1:$fake master=fake timeout=300ms;
    aai_ratelimit_zone z key=\$arg_u rate=3r/m;
    aai_ratelimit_fallback deny;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        location /rl/ { aai_ratelimit z; empty_gif; }
    }
_EOC_

    my $role = wait_until(5, sub {
        grep { /aai redis 127\.0\.0\.1:$R2: ROLE: not a primary/ }
             file_lines("$fprefix/logs/error.log");
    });
    ok($role, 'a replica named by a sentinel is refused after ROLE');
    my ($st, $h) = http_get($fport, '/rl/?u=role', {});
    is(($st // 0) . ' ' . ($h->{'x-rl'} // ''), '429 ERROR',
       'the limiter falls back (deny) while the sentinel names a replica');
    $fstop->();
    stop('fake', SIGKILL);
}

sub fake_sentinel {
    my ($srv, $port) = @_;
    my $sel = IO::Select->new($srv);
    my %buf;
    my $end = time + 60;
    while (time < $end) {
        for my $s ($sel->can_read(0.2)) {
            if ($s == $srv) {
                my $c = $srv->accept or next;
                $sel->add($c);
                next;
            }
            my $n = sysread($s, my $d, 4096);
            if (!$n) {
                $sel->remove($s);
                delete $buf{$s};
                close $s;
                next;
            }
            $buf{$s} .= $d;
            while (my @a = take_command(\$buf{$s})) {
                my $cmd = uc $a[0];
                my $out = $cmd eq 'SENTINEL'
                        ? "*2\r\n\$9\r\n127.0.0.1\r\n\$" . length($port)
                          . "\r\n$port\r\n"
                        : $cmd eq 'SUBSCRIBE'
                        ? "*3\r\n\$9\r\nsubscribe\r\n\$14\r\n+switch-master"
                          . "\r\n:1\r\n"
                        : "+OK\r\n";
                syswrite($s, $out);
            }
        }
    }
}

# one RESP command off the front of $$b, or () if it is not all there
sub take_command {
    my $b = shift;
    return () unless $$b =~ /^\*(\d+)\r\n/;
    my ($n, $pos) = ($1, length($&));
    my @a;
    for (1 .. $n) {
        return () unless substr($$b, $pos) =~ /^\$(\d+)\r\n/;
        my $len = $1;
        $pos += length($&);
        return () if length($$b) < $pos + $len + 2;
        push @a, substr($$b, $pos, $len);
        $pos += $len + 2;
    }
    substr($$b, 0, $pos) = '';
    return @a;
}

# --- nginx -t -----------------------------------------------------------------

conf_error_like("aai_ratelimit_redis sentinel=127.0.0.1:$S[0];",
    qr/"sentinel" needs "master" in "aai_ratelimit_redis"/,
    'nginx -t: sentinel without master');
conf_error_like("aai_ratelimit_redis 127.0.0.1:$P master=m013;",
    qr/"master" and "sentinel_password" need "sentinel=" in/,
    'nginx -t: master without sentinel');
conf_error_like("aai_ratelimit_redis sentinel=127.0.0.1:$S[0],,x:1 master=m;",
    qr/invalid sentinel address "" in "aai_ratelimit_redis"/,
    'nginx -t: an empty sentinel address');

logs_once_more();

done_testing();
