# The shared non-blocking Redis client (ngx_aai_redis.c), driven through the
# test-only module t/redis-testmod (aai_redis_test_server, aai_redis_test,
# aai_redis_test_subscribe, aai_redis_test_messages): replies, pipelining,
# one connection per worker, large values, AUTH/ACL user/SELECT, unix
# sockets, pub/sub, and what requests see while Redis is refused, hung,
# paused, restarted or closes idle connections (the circuit breaker).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT wait_until with_paused_redis restart_redis );
use Time::HiRes qw( time sleep );
use IO::Socket::INET ();
use IO::Select ();
use POSIX ();
use File::Spec ();

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# 5 MiB, recognisable at every offset
our $Big = join '', map { sprintf "%07d,", $_ } 0 .. 655359;

my $Location = <<'_EOC_';
    server {
        listen $TEST_NGINX_INSTANCE_PORT;
        location /redis { aai_redis_test; }
        location /messages { aai_redis_test_messages; }
    }
_EOC_

sub timed_get {
    my ($st, $h, $body, $dt) = AaiTest::timed_get(@_, {});
    return ($st // 0, $body // '', $dt);
}

sub log_lines {
    my ($prefix, $re) = @_;
    return grep { /$re/ } file_lines("$prefix/logs/error.log");
}


# $n requests at once, each on its own connection; returns the statuses
sub concurrent_get {
    my ($port, $path, $n) = @_;
    my (@socks, %buf);
    for (1 .. $n) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Timeout => 5)
            or die "connect: $!";
        push @socks, $s;
    }
    for my $s (@socks) {
        syswrite $s, "GET $path HTTP/1.1\r\nHost: x\r\n"
                     . "Connection: close\r\n\r\n";
    }
    my $sel = IO::Select->new(@socks);
    my $deadline = time + 10;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(0.5)) {
            my $n = sysread $s, my $chunk, 65536;
            if (!$n) {
                $sel->remove($s);
                next;
            }
            $buf{$s} .= $chunk;
        }
    }
    return map { ($buf{$_} // '') =~ m{^HTTP/1\.1 (\d+)} ? $1 : 0 } @socks;
}

sub nginx_clients {
    my ($port) = @_;
    my $list = redis_cmd_port($port, 'CLIENT', 'LIST');
    return grep { !/ cmd=client\|list / && !/ cmd=client / }
           split /\n/, $list;
}


# --- concurrent requests share one pipelined connection per worker ---------

# where the timeouts are not what a test is about: a loaded machine may take
# longer than the defaults (200 ms to connect, 100 ms a command)
our $Slack = 'connect_timeout=2s timeout=2s';

{
    my $rp = start_redis();
    my ($port, $stop, $prefix) = start_nginx_instance('rc010a',
        "aai_redis_test_server 127.0.0.1:$rp $Slack;\n$Location",
        workers => 2);

    ok(wait_until(3, sub { nginx_clients($rp) == 2 }),
       'concurrency: each worker connected at start');
    my $conns0 = (redis_cmd_port($rp, 'INFO', 'stats')
                  =~ /total_connections_received:(\d+)/)[0];

    my @st = concurrent_get($port, '/redis?cmd=INCR&a=c', 200);
    is(scalar(grep { $_ == 200 } @st), 200,
       'concurrency: 200 requests, 200 OK');
    is(redis_cmd_port($rp, 'GET', 'c'), 200, 'concurrency: 200 INCR in Redis');

    my $conns1 = (redis_cmd_port($rp, 'INFO', 'stats')
                  =~ /total_connections_received:(\d+)/)[0];
    is($conns1 - $conns0, 0, 'concurrency: no new connection to Redis');
    is(scalar(nginx_clients($rp)), 2, 'concurrency: one connection per worker');
    $stop->();

    # connections=3: three per worker, kept under load
    ($port, $stop) = start_nginx_instance('rc010n',
        "aai_redis_test_server 127.0.0.1:$rp connections=3 $Slack;\n"
        . $Location, workers => 2);
    ok(wait_until(3, sub { nginx_clients($rp) == 6 }),
       'connections=3: three connections per worker');
    @st = concurrent_get($port, '/redis?cmd=INCR&a=n', 60);
    is(scalar(grep { $_ == 200 } @st), 60, 'connections=3: 60 requests OK');
    is(redis_cmd_port($rp, 'GET', 'n'), 60, 'connections=3: 60 INCR');
    is(scalar(nginx_clients($rp)), 6, 'connections=3: still six');

    $stop->();
    stop_redis($rp);
}


# --- connection refused: fail at once, log once ----------------------------

{
    my $dead = free_port();
    my ($port, $stop, $prefix) = start_nginx_instance('rc010r',
        "aai_redis_test_server 127.0.0.1:$dead backoff=1s;\n$Location");

    ok(wait_until(2, sub { log_lines($prefix, qr/Connection refused/) }),
       'refused: the connect failure is logged');

    my $t0 = time;
    my @r = map { [timed_get($port, '/redis?cmd=PING')] } 1 .. 10;
    my $all = time - $t0;
    is(join(',', map { "$_->[0] $_->[1]" } @r),
       join(',', ("503 unavailable\n") x 10), 'refused: circuit open');
    # none waits for a connect or a probe (with backoff=1s a request
    # queued until the next probe would wait up to 1 s; the total is not
    # bounded: on a loaded machine 10 requests may take longer than that)
    my ($slowest) = sort { $b <=> $a } map { $_->[2] } @r;
    cmp_ok($slowest, '<', 0.2,
           "refused: 10 requests answered at once ($all s, slowest $slowest s)");

    # several probes fail meanwhile (logged at info)
    wait_until(3, sub { log_lines($prefix, qr/\[info\].*aai redis.*refused/)
                        >= 2 });
    my @err = log_lines($prefix, qr/\[error\].*aai redis/);
    is(scalar @err, 1, 'refused: one error line') or diag(@err);
    like($err[0] // '', qr/aai\ redis\ 127\.0\.0\.1:$dead:\ connect\(\)\ failed
                           \ \(111:\ Connection\ refused\)/x,
         'refused: the line names the server');
    cmp_ok(scalar(log_lines($prefix, qr/\[info\].*aai redis.*refused/)), '>=',
           2, 'refused: later failures at info level');

    $stop->();
}


# --- a server that accepts and never answers -------------------------------

{
    my $hung = hung_listener();
    my ($port, $stop, $prefix) = start_nginx_instance('rc010h',
        "aai_redis_test_server 127.0.0.1:$hung timeout=300ms "
        . "connect_timeout=2s;\n$Location");

    # the handshake waits for the connect timeout (2 s), the command for its
    # own (300 ms), whichever ends first: the command's, with 500 ms to spare
    # for a loaded machine
    my ($st, $body, $took) = timed_get($port, '/redis?cmd=PING');
    is("$st $body", "502 error: timeout\n", 'hung: the command times out');
    cmp_ok($took, '>=', 0.29, "hung: after the timeout ($took s)");
    cmp_ok($took, '<', 0.3 + 0.5, "hung: not much later ($took s)");

    my $t0 = time;
    my @r = map { [timed_get($port, '/redis?cmd=PING')] } 1 .. 10;
    my $all = time - $t0;
    is(join(',', map { $_->[0] } @r), join(',', (503) x 10),
       'hung: then the circuit is open');
    # none waits for the 300 ms timeout again
    my ($slowest) = sort { $b <=> $a } map { $_->[2] } @r;
    cmp_ok($slowest, '<', 0.3,
           "hung: 10 requests answered at once ($all s, slowest $slowest s)");

    my @err = log_lines($prefix, qr/\[error\].*aai redis/);
    is(scalar @err, 1, 'hung: one error line') or diag(@err);
    like($err[0] // '', qr/aai\ redis\ 127\.0\.0\.1:$hung:\ handshake\ timed
                           \ out,\ 1\ command\ failed/x,
         'hung: the line says what happened');

    $stop->();
}


# --- Redis paused, then killed and restarted: the circuit closes again -----

{
    my $rp = start_redis();
    my ($port, $stop, $prefix) = start_nginx_instance('rc010s',
        "aai_redis_test_server 127.0.0.1:$rp timeout=500ms;\n$Location");

    my ($st, $body) = timed_get($port, '/redis?cmd=SET&a=k&a=v');
    is("$st $body", "200 +OK\n", 'restart: Redis up');

    # timeout=500ms: "waited its timeout" and "answered at once" stay far
    # apart on a loaded machine

    with_paused_redis($rp, 1500, sub {
        my $took;
        ($st, $body, $took) = timed_get($port, '/redis?cmd=GET&a=k');
        is("$st $body", "502 error: timeout\n",
           'pause: the command times out');
        cmp_ok($took, '>=', 0.45, "pause: after the timeout ($took s)");
        cmp_ok($took, '<', 0.5 + 0.5, "pause: within the timeout ($took s)");

        ($st, $body, $took) = timed_get($port, '/redis?cmd=GET&a=k');
        is($st, 503, 'pause: then the circuit is open');
        cmp_ok($took, '<', 0.25, "pause: answered at once ($took s)");
    });

    ok(wait_until(3, sub { (timed_get($port, '/redis?cmd=GET&a=k'))[0] == 200 }),
       'pause: recovers by itself');

    restart_redis($rp, sub {
        my @r = map { [timed_get($port, '/redis?cmd=GET&a=k')] } 1 .. 5;
        my ($slowest) = sort { $b <=> $a } map { $_->[2] } @r;
        like(join(',', map { $_->[0] } @r), qr/^(502|503)(,503){4}$/,
             'stopped: requests fail');
        cmp_ok($slowest, '<', 0.25,
               "stopped: and fast, none waits the timeout ($slowest s)");
    });
    my $t0 = time;
    ok(wait_until(3, sub {
           (timed_get($port, '/redis?cmd=PING'))[1] eq "+PONG\n" }),
       'restarted: recovers by itself');
    my $rec = time - $t0;
    cmp_ok($rec, '<', 1.5, "restarted: within the backoff ($rec s)");
    ok(scalar(log_lines($prefix, qr/\[warn\].*aai redis 127\.0\.0\.1:$rp: /
                                 . qr/connection restored/)),
       'restarted: the recovery is logged');

    $stop->();
    stop_redis($rp);
}


# --- Redis closes idle clients: not a failure ------------------------------

{
    my $rp = start_redis();
    redis_cmd_port($rp, 'CONFIG', 'SET', 'timeout', 1);
    my ($port, $stop, $prefix) = start_nginx_instance('rc010i',
        "aai_redis_test_server 127.0.0.1:$rp $Slack;\n$Location");

    ok(wait_until(5, sub { log_lines($prefix, qr/closed an idle connection/) }),
       'idle: Redis closed the idle connection');

    my ($st, $body) = timed_get($port, '/redis?cmd=PING');
    is("$st $body", "200 +PONG\n", 'idle: the next command reconnects');
    is(scalar(log_lines($prefix, qr/\[error\].*aai redis/)), 0,
       'idle: no error logged');

    $stop->();
    stop_redis($rp);
}


# --- AUTH with a password, with an ACL user, and a wrong password ----------

{
    my $rp = start_redis();

    # the helper's own connection stays authenticated
    redis_cmd_port($rp, 'ACL', 'SETUSER', 'alice', 'on', '>alicepw', '~*',
                   '&*', '+@all');
    redis_cmd_port($rp, 'CONFIG', 'SET', 'requirepass', 'secret');

    my ($port, $stop) = start_nginx_instance('rc010p',
        "aai_redis_test_server 127.0.0.1:$rp password=secret $Slack;\n"
        . $Location);
    my ($st, $body) = timed_get($port, '/redis?cmd=ACL&a=WHOAMI');
    is("$st $body", "200 default\n", 'auth: password');
    $stop->();

    $ENV{AAI_T010_PW} = 'alicepw';
    ($port, $stop) = start_nginx_instance('rc010u',
        "aai_redis_test_server 127.0.0.1:$rp user=alice "
        . "password=env:AAI_T010_PW $Slack;\n$Location");
    ($st, $body) = timed_get($port, '/redis?cmd=ACL&a=WHOAMI');
    is("$st $body", "200 alice\n", 'auth: ACL user, password from env');
    $stop->();

    my $prefix;
    ($port, $stop, $prefix) = start_nginx_instance('rc010w',
        "aai_redis_test_server 127.0.0.1:$rp password=wrong "
        . "backoff=100ms;\n$Location");
    ok(wait_until(2, sub { log_lines($prefix, qr/WRONGPASS/) }),
       'wrong password: logged');
    ($st, $body) = timed_get($port, '/redis?cmd=PING');
    is("$st $body", "503 unavailable\n", 'wrong password: circuit open');
    # and fails again after its backoff: once more in the log
    wait_until(3, sub { log_lines($prefix, qr/WRONGPASS/) >= 2 });
    my @err = log_lines($prefix, qr/\[error\].*aai redis/);
    is(scalar @err, 1, 'wrong password: one error line') or diag(@err);
    like($err[0] // '', qr/aai redis 127\.0\.0\.1:$rp: AUTH failed: WRONGPASS/,
         'wrong password: the line names the server and the reply');
    $stop->();

    stop_redis($rp);
}


# --- unix socket -----------------------------------------------------------

SKIP: {
    my $dir = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '-rc010x-redis';
    $dir = File::Spec->rel2abs($dir);
    system('rm', '-rf', $dir);
    mkdir $dir;
    my $sock = "$dir/redis.sock";
    my $pid = fork();
    skip 'fork failed', 5 unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        { no warnings 'exec';
          exec 'redis-server', '--port', '0', '--unixsocket', $sock,
               '--unixsocketperm', '777', '--save', '', '--dir', $dir; }
        POSIX::_exit(127);
    }
    if (!wait_until(5, sub { -S $sock })) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
        skip 'redis-server on a unix socket did not start', 5;
    }
    chmod 0755, $dir;

    my ($port, $stop, $prefix) = start_nginx_instance('rc010x',
        "aai_redis_test_server unix:$sock timeout=300ms;\n$Location");
    my ($st, $body) = timed_get($port, '/redis?cmd=SET&a=u&a=unixval');
    is("$st $body", "200 +OK\n", 'unix socket: SET');
    ($st, $body) = timed_get($port, '/redis?cmd=GET&a=u');
    is("$st $body", "200 unixval\n", 'unix socket: GET');

    # Redis stopped: the requests fail at once, the log names the socket
    kill 'TERM', $pid;
    waitpid $pid, 0;
    my $t0 = time;
    my @r = map { [timed_get($port, '/redis?cmd=GET&a=u')] } 1 .. 5;
    my $all = time - $t0;
    like(join(',', map { $_->[0] } @r), qr/^(?:502|503)(?:,503){4}$/,
         'unix socket: redis stopped, the requests fail');
    cmp_ok($all, '<', 0.3 + 0.25,
           "unix socket: at most one waits for the timeout ($all s)");
    ok(wait_until(2, sub { log_lines($prefix,
                                   qr/\[error\].*aai redis unix:\Q$sock\E: /) }),
       'unix socket: the failure is logged with the socket path');
    $stop->();
    system('rm', '-rf', $dir);
}


add_block_preprocessor(sub {
    redis_flushdb();
});

no_shuffle();
run_tests();

# nginx's connect() logs a missing socket file at crit (as for proxy_pass)
AaiTest::logs_once_more(allow => [
    qr/\[crit\] .*connect\(\) to unix:\S+redis\.sock failed \(2: /]);

__DATA__

=== TEST 1: replies of every type
--- http_config
    aai_redis_test_server 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
--- config
    location /redis { aai_redis_test; }
--- request eval
["GET /redis?cmd=SET&a=aai:t1&a=hello%20world",
 "GET /redis?cmd=GET&a=aai:t1",
 "GET /redis?cmd=GET&a=aai:none",
 "GET /redis?cmd=INCRBY&a=aai:n&a=-5",
 "GET /redis?cmd=HSET&a=aai:t1&a=f&a=v",
 "GET /redis?cmd=MGET&a=aai:t1&a=aai:none&a=aai:n"]
--- error_code eval
[200, 200, 200, 200, 200, 200]
--- response_body eval
["+OK\n",
 "hello world\n",
 "(nil)\n",
 ":-5\n",
 "-WRONGTYPE Operation against a key holding the wrong kind of value\n",
 "*3\nhello world\n(nil)\n-5\n"]
--- response_headers eval
["X-Redis-Available: 1", "X-Redis-Available: 1", "X-Redis-Available: 1",
 "X-Redis-Available: 1", "X-Redis-Available: 1", "X-Redis-Available: 1"]
--- no_error_log
[error]
--- aai_after
is(redis_cmd('GET', 'aai:t1'), 'hello world', 'the value is in Redis');



=== TEST 2: 300 commands of one request are pipelined, replies in order
--- http_config
    aai_redis_test_server 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
--- config
    location /redis { aai_redis_test; }
--- request
GET /redis?cmd=INCR&a=aai:pipe&n=300
--- response_body eval
CORE::join '', map { ":$_\n" } 1 .. 300
--- no_error_log
[error]
--- aai_after
is(redis_cmd('GET', 'aai:pipe'), 300, '300 INCR in Redis');



=== TEST 3: a 5 MiB value, written and read back
--- http_config
    aai_redis_test_server 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=2s;
--- config
    client_body_buffer_size 8m;
    location /redis { aai_redis_test; }
--- request eval
["POST /redis?cmd=SET&a=aai:big\n$::Big",
 "GET /redis?cmd=GET&a=aai:big"]
--- response_body eval
["+OK\n", "$::Big\n"]
--- no_error_log
[error]
--- aai_after
ok(redis_cmd('GET', 'aai:big') eq $::Big, 'the 5 MiB value is in Redis');



=== TEST 4: SELECT
--- http_config
    aai_redis_test_server 127.0.0.1:$TEST_NGINX_REDIS_PORT db=5 timeout=3s;
--- config
    location /redis { aai_redis_test; }
--- aai_before
redis_cmd('SET', 'aai:db', 'in db 0');
--- request eval
["GET /redis?cmd=GET&a=aai:db", "GET /redis?cmd=CLIENT&a=INFO"]
--- response_body_like eval
["^\\(nil\\)\n\$", " db=5 "]
--- no_error_log
[error]



=== TEST 5: pub/sub: channel and pattern subscriptions
--- http_config
    aai_redis_test_server 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_redis_test_subscribe aai:chan;
    aai_redis_test_subscribe aai:ev:* pattern;
--- config
    location /messages { aai_redis_test_messages; }
--- init
my $t = Time::HiRes::time() + 3;
while (Time::HiRes::time() < $t) {
    my $n = AaiTest::redis_cmd('PUBSUB', 'NUMSUB', 'aai:chan');
    last if $n->[1] && AaiTest::redis_cmd('PUBSUB', 'NUMPAT') >= 1;
    Time::HiRes::sleep(0.02);
}
AaiTest::redis_cmd('PUBLISH', 'aai:chan', 'one');
AaiTest::redis_cmd('PUBLISH', 'aai:other', 'not for us');
AaiTest::redis_cmd('PUBLISH', 'aai:ev:x', 'two');
# both delivered (the worker lists what it received; not a fixed sleep)
AaiTest::wait_until(3, sub {
    my (undef, undef, $b) = AaiTest::http_get($ENV{TEST_NGINX_SERVER_PORT},
                                              '/messages', {});
    ($b // '') =~ /^aai:ev:x two$/m });
--- request
GET /messages
--- response_body
aai:chan one
aai:ev:x two
--- no_error_log
[error]



=== TEST 6: invalid address
--- http_config
    aai_redis_test_server 127.0.0.1:abc;
--- config
--- must_die
--- error_log
[emerg]
invalid address "127.0.0.1:abc" in "aai_redis_test_server": invalid port



=== TEST 7: invalid timeout
--- http_config
    aai_redis_test_server 127.0.0.1 timeout=soon;
--- config
--- must_die
--- error_log
[emerg]
invalid value "soon" of "timeout" in "aai_redis_test_server"



=== TEST 8: unknown parameter: its value (maybe a password) is not shown
--- http_config
    aai_redis_test_server 127.0.0.1 passwd=hunter2;
--- config
--- must_die
--- error_log
[emerg]
unknown parameter "passwd" in "aai_redis_test_server"
--- no_error_log
hunter2



=== TEST 9: password from an unset environment variable
--- http_config
    aai_redis_test_server 127.0.0.1 password=env:AAI_T010_UNSET_VAR;
--- config
--- must_die
--- error_log
[emerg]
environment variable "AAI_T010_UNSET_VAR" is not set in "aai_redis_test_server"



=== TEST 10: connections out of range
--- http_config
    aai_redis_test_server 127.0.0.1 connections=65;
--- config
--- must_die
--- error_log
[emerg]
invalid value "65" of "connections" in "aai_redis_test_server", must be 1..64



=== TEST 11: user without password
--- http_config
    aai_redis_test_server 127.0.0.1 user=alice;
--- config
--- must_die
--- error_log
[emerg]
"user" needs "password" in "aai_redis_test_server"
