# A Redis address given as a host name, looked up again at run time with
# nginx's "resolver" (issue 11): a small DNS server written here (UDP, on a
# free port) answers A queries for "localhost" with an address the test
# changes; two redis-servers listen on 127.0.0.1:P and 127.0.0.2:P.  With
# "resolver 127.0.0.1:<dns> valid=1s" the limiter and the cache, pointed
# at localhost:P, follow the answer when the first Redis stops, with no
# reload and no request waiting past its timeout; a failed lookup fails
# the connection (logged with the name) and the client tries again; without
# a resolver the address read with the configuration is kept (no query).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest;
use AaiTest qw( :util );
use Time::HiRes qw( time sleep );
use File::Temp qw( tempdir );
use IO::Socket::INET ();
use IO::Select ();

my $D = tempdir('aai016-XXXXXX', TMPDIR => 1, CLEANUP => 1);

my %Procs;           # name => pid of spawn (SIGKILLed at END if running)

# --- the DNS server -----------------------------------------------------------

# What it answers for "localhost" (type A), read from $D/answer at each
# query: an IPv4 address (TTL 1), "servfail", or "drop" (no answer).  Every
# other name gets NXDOMAIN, every other type an empty answer.  Each query
# is appended to $D/queries as "name type".

sub answer { my $a = shift; open my $f, '>', "$D/answer.tmp" or die;
             print $f $a; close $f; rename "$D/answer.tmp", "$D/answer"; }

sub queries {
    open my $f, '<', "$D/queries" or return 0;
    my @l = <$f>;
    return scalar @l;
}

sub dns_server {
    my ($sock) = @_;
    my $sel = IO::Select->new($sock);
    my $end = time + 300;
    while (time < $end) {
        next unless $sel->can_read(0.5);
        my $peer = recv($sock, my $q, 512, 0);
        next unless defined $peer && length($q) > 12;
        my ($id, $flags) = unpack('n n', $q);
        my ($pos, @labels) = (12);
        while ($pos < length $q) {
            my $n = ord substr($q, $pos, 1);
            $pos++;
            last if $n == 0;
            push @labels, substr($q, $pos, $n);
            $pos += $n;
        }
        next if $pos + 4 > length $q;
        my ($type) = unpack('n', substr($q, $pos, 2));
        my $question = substr($q, 12, $pos + 4 - 12);
        my $name = lc join '.', @labels;
        if (open my $l, '>>', "$D/queries") {
            print $l "$name $type\n";
            close $l;
        }
        my $a = '';
        if (open my $f, '<', "$D/answer") { $a = <$f> // ''; close $f; }
        my ($rcode, @rr) = (0);
        if ($name ne 'localhost') {
            $rcode = 3;
        } elsif ($a eq 'drop') {
            next;
        } elsif ($a eq 'servfail') {
            $rcode = 2;
        } elsif ($type == 1 && $a =~ /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/) {
            push @rr, pack('n n n N n C4', 0xc00c, 1, 1, 1, 4,
                           $1, $2, $3, $4);
        }
        my $r = pack('n n n n n n', $id, 0x8180 | ($flags & 0x0100) | $rcode,
                     1, scalar @rr, 0, 0) . $question . join('', @rr);
        send($sock, $r, 0, $peer);
    }
}

my $udp = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                Proto => 'udp') or die "udp: $!\n";
my $DNS = $udp->sockport;
answer('127.0.0.1');
$Procs{dns} = spawn(sub { dns_server($udp) });
close $udp;

# --- two Redis on one port, 127.0.0.1 and 127.0.0.2 ---------------------------

my $P;
for (1 .. 20) {
    $P = free_port();
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.2', LocalPort => $P,
                                  Proto => 'tcp', Listen => 1);
    last if $s;
}

sub redis_up {
    my ($name, $ip) = @_;
    mkdir "$D/$name";
    $Procs{$name} = spawn(['redis-server', '--port', $P, '--bind', $ip,
                           '--save', '', '--appendonly', 'no',
                           '--dir', "$D/$name"], log => "$D/$name.log");
    die "redis $name on $ip:$P did not start\n"
        unless wait_until(5, sub { (rcmd($ip, 'PING') // '') eq 'PONG' },
                          0.05);
}

# one command on a fresh connection to $ip:$P: the reply's lines (RESP
# without the type markers), or undef
sub rcmd {
    my ($ip, @args) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => $ip, PeerPort => $P,
                                  Proto => 'tcp', Timeout => 2) or return;
    my $req = '*' . @args . "\r\n"
              . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
    syswrite($s, $req);
    my ($buf, $sel) = ('', IO::Select->new($s));
    my $end = time + 2;
    while (time < $end && $sel->can_read($end - time)) {
        my $n = sysread($s, my $d, 65536);
        last unless $n;
        $buf .= $d;
        last if $buf =~ /\r\n\z/ && complete($buf);
    }
    close $s;
    return undef if $buf eq '' || $buf =~ /^-/;
    return $1 if $buf =~ /^\+(.*)\r\n/;
    return join "\n", grep { !/^[*\$:]/ } split /\r\n/, $buf;
}

# a whole reply: an array's count of bulk strings all there
sub complete {
    my $b = shift;
    return 1 unless $b =~ /^\*(\d+)\r\n/;
    my $n = $1;
    my @lines = split /\r\n/, $b;
    return @lines >= 1 + 2 * $n;
}

redis_up(first => '127.0.0.1');
redis_up(second => '127.0.0.2');

# --- nginx with a resolver ----------------------------------------------------

my $app = free_port();
my $redis = "localhost:$P timeout=300ms connect_timeout=300ms backoff=200ms";

sub conf {
    my ($resolver) = @_;
    return <<_EOC_;
    $resolver
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
}

my ($port, $stop, $prefix) = start_nginx_instance('r016',
    conf("resolver 127.0.0.1:$DNS valid=1s ipv6=off;\n"
         . "    resolver_timeout 1s;"));

my $slow = 0;

sub get {
    my ($path) = @_;
    my $t0 = time;
    my ($st, $h) = http_get($port, $path, {});
    $slow++ if time - $t0 > 1.5;
    return ($st // 0) . ' ' . ($h->{'x-rl'} // $h->{'x-cache'} // '');
}

sub exact {
    my ($user) = @_;
    return join ',', map { get("/rl/?u=$user") } 1 .. 4;
}

my $EXACT = '200 PASSED,200 PASSED,200 PASSED,429 REJECTED';

sub keys_on { return rcmd($_[0], 'KEYS', '*') // ''; }

ok(wait_until(10, sub { get('/rl/?u=probe') eq '200 PASSED' }, 0.05),
   'Redis decides');
is(exact('alice'), $EXACT, 'exact limits on the first Redis');
like(keys_on('127.0.0.1'), qr/alice/, 'the keys are on 127.0.0.1');
unlike(keys_on('127.0.0.2'), qr/alice/, 'none on 127.0.0.2');
ok(wait_until(5, sub { get('/cache/one') eq '200 HIT' }, 0.05),
   'cache hit through the first Redis');

# --- the name moves -----------------------------------------------------------

answer('127.0.0.2');
my $t_stop = time;
stop_pid(delete $Procs{first});

my $n = 0;
my $t_back = wait_until(20, sub {
    get('/rl/?u=probe' . $n++) eq '200 PASSED' ? time : undef;
}, 0.05);
ok($t_back, 'Redis decides again, on the new address, without a reload');
diag(sprintf "first Redis stopped -> the limiter on 127.0.0.2: %.2f s "
     . "(%d requests)", ($t_back // time) - $t_stop, $n);

is(exact('bob'), $EXACT, 'exact limits on the second Redis');
like(keys_on('127.0.0.2'), qr/bob/, 'the keys are on 127.0.0.2');
ok(wait_until(5, sub { get('/cache/two') eq '200 HIT' }, 0.05),
   'cache hit through the second Redis');
like(keys_on('127.0.0.2'), qr/^aai:c:/m, 'the cache entry is on 127.0.0.2');
is($slow, 0, 'no request waited longer than its timeout');

my @lines = file_lines("$prefix/logs/error.log");
my $moved = qr/aai redis localhost:$P: "localhost" now resolves to /;
ok(scalar(grep { /$moved\Q127.0.0.2:$P\E/ } @lines),
   'the new address is logged with the name');

# --- the lookup fails ---------------------------------------------------------

# the resolver keeps the last answer for valid=1s (counted in whole
# seconds: up to 2 s): past it, the next reconnect asks the DNS server
answer('servfail');
sleep 2.1;
stop_pid(delete $Procs{second});

my $fb = wait_until(10, sub { get('/rl/?u=fb') eq '200 ERROR' }, 0.05);
ok($fb, 'the limiter falls back while the name cannot be resolved');
ok(wait_until(5, sub {
       grep { /\[error\].*aai redis .*"localhost" could not be resolved \(2: /
            } file_lines("$prefix/logs/error.log");
   }, 0.05), 'a failed lookup fails the connection, logged with the name');

answer('drop');
my $q = queries();
ok(wait_until(5, sub { get('/rl/?u=fb2'); queries() > $q }, 0.05),
   'the client asks again after its backoff');
ok(wait_until(5, sub {
       grep { /aai redis .*"localhost" could not be resolved \(110: / }
            file_lines("$prefix/logs/error.log");
   }, 0.05), 'an unanswered lookup times out (resolver_timeout)');
is($slow, 0, 'no request waited longer than its timeout meanwhile');

# back on the first address once the name answers again
redis_up(first => '127.0.0.1');
answer('127.0.0.1');
ok(wait_until(10, sub { get('/rl/?u=back') eq '200 PASSED' }, 0.05),
   'Redis decides again once the name resolves');
is(exact('carol'), $EXACT, 'exact limits on the first Redis again');
like(keys_on('127.0.0.1'), qr/carol/, 'carol\'s keys are on 127.0.0.1');

no_log_problems("$prefix/logs/error.log");
$stop->();

# --- no resolver: the address read with the configuration ---------------------

redis_up(second => '127.0.0.2');
answer('127.0.0.2');
$q = queries();

($port, $stop, $prefix) = start_nginx_instance('r016plain', conf(''));

ok(wait_until(10, sub { get('/rl/?u=probe') eq '200 PASSED' }, 0.05),
   'no resolver: Redis decides');

# the first Redis restarts: the client reconnects to the same address
stop_pid(delete $Procs{first});
ok(wait_until(10, sub { get('/rl/?u=down') eq '200 ERROR' }, 0.05),
   'no resolver: fallback while the first Redis is down');
redis_up(first => '127.0.0.1');
ok(wait_until(10, sub { get('/rl/?u=again') eq '200 PASSED' }, 0.05),
   'no resolver: Redis decides again');
is(exact('dave'), $EXACT, 'no resolver: exact limits');
like(keys_on('127.0.0.1'), qr/dave/, 'no resolver: on 127.0.0.1 still');
unlike(keys_on('127.0.0.2'), qr/dave/, 'no resolver: not on 127.0.0.2');
is(queries(), $q, 'no resolver: no DNS query');

no_log_problems("$prefix/logs/error.log");
$stop->();

# --- sentinel= given by name --------------------------------------------------

# a stand-in sentinel on $ip:$S that names the Redis on $ip:$P
my $S;
for (1 .. 20) {
    $S = free_port();
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.2', LocalPort => $S,
                                  Proto => 'tcp', Listen => 1);
    last if $s;
}

sub sentinel_up {
    my ($name, $ip) = @_;
    my $srv = IO::Socket::INET->new(LocalAddr => $ip, LocalPort => $S,
                                    Listen => 16, ReuseAddr => 1)
        or die "sentinel $ip:$S: $!\n";
    $Procs{$name} = spawn(sub { fake_sentinel($srv, $ip) });
    close $srv;
}

sub fake_sentinel {
    my ($srv, $ip) = @_;
    my $sel = IO::Select->new($srv);
    my %buf;
    my $end = time + 120;
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
                        ? "*2\r\n\$" . length($ip) . "\r\n$ip\r\n\$"
                          . length($P) . "\r\n$P\r\n"
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

sentinel_up(sentinel1 => '127.0.0.1');
sentinel_up(sentinel2 => '127.0.0.2');
answer('127.0.0.1');

$redis = "sentinel=localhost:$S master=m016 timeout=300ms "
         . 'connect_timeout=300ms backoff=200ms';
($port, $stop, $prefix) = start_nginx_instance('r016sentinel',
    conf("resolver 127.0.0.1:$DNS valid=1s ipv6=off;\n"
         . "    resolver_timeout 1s;"));

ok(wait_until(10, sub { get('/rl/?u=probe') eq '200 PASSED' }, 0.05),
   'sentinel by name: Redis decides');
is(exact('erin'), $EXACT, 'sentinel by name: exact limits');
like(keys_on('127.0.0.1'), qr/erin/, 'the primary the first sentinel names');

# the name moves to the second sentinel, the first goes away
answer('127.0.0.2');
stop_pid(delete $Procs{sentinel1});
ok(wait_until(10, sub {
       grep { /aai redis master "m016": primary is 127\.0\.0\.2:$P/ }
            file_lines("$prefix/logs/error.log");
   }, 0.05), 'the sentinel\'s name looked up again: the second sentinel asked');
ok(wait_until(10, sub { get('/rl/?u=probe2') eq '200 PASSED' }, 0.05),
   'Redis decides, on the primary the second sentinel names');
is(exact('frank'), $EXACT, 'exact limits on it');
like(keys_on('127.0.0.2'), qr/frank/, 'the keys are on 127.0.0.2');
is($slow, 0, 'no request waited longer than its timeout');

no_log_problems("$prefix/logs/error.log");
$stop->();

done_testing();
