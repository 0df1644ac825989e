# ngx_http_aai_ratelimit_module when Redis fails: refused, hung, restarted,
# scripts flushed, error replies; fallback allow / deny / local; the circuit
# breaker answers at once while Redis is known to be down.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );
use IO::Socket::INET ();

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# nothing listens there: connections are refused
$ENV{TEST_NGINX_DEAD_PORT} = free_port();

# accepts connections, never answers
$ENV{TEST_NGINX_HUNG_PORT} = hung_listener();

add_block_preprocessor(sub {
    my $block = shift;
    redis_flushdb();
});

sub get_status {
    my ($st, $h, $body, $dt) = timed_get(@_, {});
    return ($st // 0, $h->{'x-rl'} // '', $dt, $body);
}


# --- a Redis that accepts connections and never answers --------------------

{
    my $hung = hung_listener();
    my ($port, $stop) = start_nginx_instance('rl021h', <<_EOC_);
    aai_ratelimit_redis 127.0.0.1:$hung connect_timeout=300ms timeout=300ms;
    aai_ratelimit_zone hung key=\$arg_u rate=10r/m;

    server {
        listen \$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        location /t { aai_ratelimit hung; empty_gif; }
        location /metrics { aai_metrics; }
    }
_EOC_

    my ($st, $rl, $took) = get_status($port, '/t?u=a');
    is("$st $rl", '200 ERROR', 'hung redis: fallback allow decides');
    # (the handshake began when the worker started: sooner is possible;
    # 0.5 s for the request itself on a loaded machine)
    cmp_ok($took, '<', 0.3 + 0.5, "hung redis: answered within the timeout "
           . "($took s)");

    # the circuit is open now: no request waits for the timeout again

    my $t0 = time;
    my @r = map { [get_status($port, '/t?u=a')] } 1 .. 10;
    my $all = time - $t0;
    is(join(',', map { "$_->[0] $_->[1]" } @r), join(',', ('200 ERROR') x 10),
       'hung redis: later requests decided by the fallback');
    # none waits for the 300 ms timeout (the total is not bounded: on a
    # loaded machine 10 requests may take longer than one timeout)
    my ($slowest) = sort { $b <=> $a } map { $_->[2] } @r;
    cmp_ok($slowest, '<', 0.3,
           "hung redis: 10 requests decided fast ($all s, slowest $slowest s)");

    my (undef, undef, undef, $m) = get_status($port, '/metrics');
    like($m, qr/aai_ratelimit_requests_total\{zone="hung",outcome="error"\} 11\n/,
         'hung redis: errors counted per zone');
    like($m, qr/aai_ratelimit_redis_errors_total\{reason="(?:timeout|unavailable)"\} [1-9]/,
         'hung redis: redis errors counted');

    $stop->();
}


# --- a client that goes away while Redis does not answer ------------------

{
    my $hung = hung_listener();
    my ($port, $stop, $prefix) = start_nginx_instance('rl021c', <<_EOC_);
    aai_ratelimit_redis 127.0.0.1:$hung timeout=500ms;
    aai_ratelimit_zone gone key=\$arg_u rate=10r/m;

    server {
        listen \$TEST_NGINX_INSTANCE_PORT;
        location /t { aai_ratelimit gone; empty_gif; }
    }
_EOC_

    # the request ends at once; the command's reply no longer concerns it

    ok(client_gone_get($port, '/t?u=a', "$prefix/logs/error.log", 2),
       'client gone: request finalized while Redis is waited for');

    # the command times out: its handler must not run
    ok(wait_until(3, sub {
           grep { /aai redis .*timed out, 1 command failed/ }
           file_lines("$prefix/logs/error.log") }),
       'client gone: then the command timed out');

    my ($st) = http_get($port, '/t?u=b', {});
    is($st, 200, 'client gone: nginx still serves');

    my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
              file_lines("$prefix/logs/error.log");
    is(scalar @bad, 0, 'client gone: no alert, no crash') or diag(@bad);

    $stop->();
}


# --- Redis restarted: the circuit closes again, the library is loaded again -

{
    my $rp = start_redis();
    my ($port, $stop, $prefix) = start_nginx_instance('rl021r', <<_EOC_);
    aai_ratelimit_redis 127.0.0.1:$rp timeout=1s backoff=200ms;
    aai_ratelimit_zone rs key=\$arg_u rate=100r/m;

    server {
        listen \$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        location /t { aai_ratelimit rs; empty_gif; }
    }
_EOC_

    my ($st, $rl) = get_status($port, '/t?u=a');
    is("$st $rl", '200 PASSED', 'restart: first request checked in redis');

    restart_redis($rp, sub {
        my @r = map { [get_status($port, '/t?u=a')] } 1 .. 5;
        my ($took) = sort { $b <=> $a } map { $_->[2] } @r;
        is(join(',', map { $_->[1] } @r), 'ERROR,ERROR,ERROR,ERROR,ERROR',
           'restart: redis down, fallback decides');
        cmp_ok($took, '<', 0.5, 'restart: redis down costs no waiting, '
               . "none waits the 1 s timeout (slowest $took s)");
    });

    # a new redis has no function library: FCALL finds no function, the
    # library is loaded (FUNCTION LOAD REPLACE), the batch sent again

    my $deadline = time + 5;
    while (time < $deadline) {
        ($st, $rl) = get_status($port, '/t?u=a');
        last if $rl eq 'PASSED';
        sleep 0.05;
    }
    is("$st $rl", '200 PASSED', 'restart: redis is used again');
    is(redis_cmd_port($rp, 'LLEN', 'aai:rl:rs:a'), 1,
       'restart: the script ran in the new redis');

    my @log = grep { /\[(?:alert|crit|emerg)\]/ }
              file_lines("$prefix/logs/error.log");
    is(scalar @log, 0, 'restart: no alert') or diag(@log);

    $stop->();
    stop_redis($rp);
}

no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: Redis refused, fallback allow (default)
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_zone refused key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit refused;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request
GET /t?u=a
--- error_code: 200
--- response_headers
X-RL: ERROR
!RateLimit
--- error_log eval
qr/\[error\] .*aai_ratelimit: Redis \S+.*, fallback "allow"/



=== TEST 2: Redis refused, fallback allow lets every request through
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_zone refused key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit refused;
        aai_ratelimit_fallback allow;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
    location /metrics {
        aai_metrics;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a", "GET /metrics"]
--- error_code eval
[200, 200, 200, 200]
--- response_headers eval
["X-RL: ERROR", "X-RL: ERROR", "X-RL: ERROR", ""]
--- response_body_like eval
["", "", "",
qr/(?s)^(?=.*aai_ratelimit_requests_total\{zone="refused",outcome="error"\} 3\n)(?=.*aai_ratelimit_redis_errors_total\{reason="unavailable"\} 3\n)/]



=== TEST 3: Redis refused, fallback deny rejects with the status
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_zone refused key=$arg_u rate=100r/m;
--- config
    location /t {
        aai_ratelimit refused;
        aai_ratelimit_fallback deny;
        aai_ratelimit_status 503;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=b"]
--- error_code eval
[503, 503]
--- response_headers eval
["X-RL: ERROR", "X-RL: ERROR"]



=== TEST 4: Redis refused, fallback deny in dry run lets requests through
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_zone refused key=$arg_u rate=100r/m;
--- config
    location /t {
        aai_ratelimit refused;
        aai_ratelimit_fallback deny;
        aai_ratelimit_dry_run on;
        empty_gif;
    }
--- request
GET /t?u=a
--- error_code: 200



=== TEST 5: Redis refused, fallback local enforces the limit per instance
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
    aai_ratelimit_zone loc1 key=$arg_u rate=2r/m;
    aai_ratelimit_zone loc2 key=global rate=3r/m;
--- config
    location /t {
        aai_ratelimit loc1;
        aai_ratelimit loc2;
        aai_ratelimit_fallback local;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a", "GET /t?u=b", "GET /t?u=c"]
--- error_code eval
[200, 200, 429, 200, 429]
--- response_headers eval
["X-RL: ERROR", "X-RL: ERROR", "X-RL: ERROR\nRetry-After: 30",
 "X-RL: ERROR", "X-RL: ERROR"]



=== TEST 6: Redis hung: the request completes within the timeout
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_HUNG_PORT timeout=200ms
                        connect_timeout=200ms;
    aai_ratelimit_zone hung key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit hung;
        aai_ratelimit_fallback deny;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- init
# the first request waits at most for the timeout (the handshake began
# when the worker started, so it may end sooner); then the circuit is open
my ($st, $h, undef, $took) =
    AaiTest::timed_get($ENV{TEST_NGINX_SERVER_PORT}, '/t?u=a');
Test::More::is(($st // 0) . ' ' . ($h->{'x-rl'} // ''), '429 ERROR',
               'hung: fallback deny decides');
Test::More::cmp_ok($took, '<', 0.2 + 0.5, "hung: within it ($took s)");
--- request
GET /t?u=a
--- timeout: 2
--- error_code: 429
--- response_headers
X-RL: ERROR



=== TEST 7: FUNCTION FLUSH: the library is loaded once, then FCALL again
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone flush key=$arg_u rate=10r/m;
--- config
    location /t {
        aai_ratelimit flush;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
redis_cmd('FUNCTION', 'FLUSH');
redis_cmd('CONFIG', 'RESETSTAT');
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a"]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["X-RL: PASSED", "X-RL: PASSED", "X-RL: PASSED"]
--- no_error_log
[error]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:flush:a'), 3, 'three admissions recorded');
my $info = redis_cmd('INFO', 'commandstats');
like($info, qr/cmdstat_fcall:calls=4,/,
     'FCALL for every request, and the one not found');
like($info, qr/cmdstat_function\|load:calls=1,/,
     'FUNCTION LOAD once, after "not found"');



=== TEST 8: an error reply: fallback, reason "reply"
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s
                        user=aai_noscript password=pw;
    aai_ratelimit_zone er key=$arg_u rate=10r/m;
--- config
    location /t {
        aai_ratelimit er;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
redis_cmd('ACL', 'SETUSER', 'aai_noscript', 'reset', 'on', '>pw', '~*',
          '+@all', '-evalsha', '-eval', '-fcall', '-function');
--- request
GET /t?u=a
--- error_code: 200
--- response_headers
X-RL: ERROR
--- error_log eval
qr/\[error\] .*aai_ratelimit: Redis unexpected reply: NOPERM.*fallback "allow"/
--- aai_after
redis_cmd('ACL', 'DELUSER', 'aai_noscript');



=== TEST 9: error replies are counted
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s
                        user=aai_noscript password=pw;
    aai_ratelimit_zone er key=$arg_u rate=10r/m;
--- config
    location /t {
        aai_ratelimit er;
        aai_ratelimit_fallback deny;
        empty_gif;
    }
    location /metrics {
        aai_metrics;
    }
--- aai_before
redis_cmd('ACL', 'SETUSER', 'aai_noscript', 'reset', 'on', '>pw', '~*',
          '+@all', '-evalsha', '-eval', '-fcall', '-function');
--- request eval
["GET /t?u=a", "GET /t?u=b", "GET /metrics"]
--- error_code eval
[429, 429, 200]
--- response_body_like eval
["", "",
qr/(?s)^(?=.*aai_ratelimit_redis_errors_total\{reason="reply"\} 2\n)(?=.*zone="er",outcome="error"\} 2\n)(?=.*zone="er",outcome="passed"\} 0\n)/]
--- aai_after
redis_cmd('ACL', 'DELUSER', 'aai_noscript');



=== TEST 10: a key of the other algorithm's type is replaced, not an error
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone wt  key=$arg_u rate=10r/m;
    aai_ratelimit_zone wtg key=$arg_u rate=10r/m algorithm=gcra;
--- config
    location /t {
        aai_ratelimit wt;
        aai_ratelimit wtg;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
redis_cmd('SET', 'aai:rl:wt:a', 'a string, as gcra keeps');
redis_cmd('RPUSH', 'aai:rl:wtg:a', 1);    # a list, as sliding keeps
--- request
GET /t?u=a
--- error_code: 200
--- response_headers
X-RL: PASSED
--- no_error_log
[error]
--- aai_after
is(redis_cmd('TYPE', 'aai:rl:wt:a'), 'list', 'sliding key replaced');
is(redis_cmd('TYPE', 'aai:rl:wtg:a'), 'string', 'gcra key replaced');



=== TEST 11: a sorted set left by the former sliding format counts from zero
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone zs  key=$arg_u rate=2r/m;
    aai_ratelimit_zone zsb key=$arg_u rate=2r/m burst=1 nodelay;
--- config
    location /t {
        aai_ratelimit zs;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
    location /b {
        aai_ratelimit zsb;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
my $now = AaiTest::redis_time_us();
for my $k ('aai:rl:zs:a', 'aai:rl:zsb:a') {
    redis_cmd('ZADD', $k, $now - $_ * 1000, "old$_") for 1 .. 5;
}
--- request eval
["GET /t?u=a", "GET /t?u=a", "GET /t?u=a", "GET /b?u=a", "GET /b?u=a",
 "GET /b?u=a", "GET /b?u=a"]
--- error_code eval
[200, 200, 429, 200, 200, 200, 429]
--- aai_after
is(redis_cmd('TYPE', 'aai:rl:zs:a'), 'list', 'sliding: now a list');
is(redis_cmd('LLEN', 'aai:rl:zs:a'), 2, 'sliding: the 2 admissions');
is(redis_cmd('LLEN', 'aai:rl:zsb:a'), 3, 'burst: the 3 admissions');
