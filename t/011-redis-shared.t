# One Redis endpoint used by the rate limiter and the cache: once one
# module has seen it time out, the other fails at once (the circuit state
# is shared per endpoint through the "aai_redis_circuit" zone), so a
# request pays about one timeout, not two.  Against a listener that never
# answers, and against a Redis that stops answering (CLIENT PAUSE) while
# both modules' connections are ready, in both directions.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $T = 1;      # timeout= of both modules, seconds

sub front {
    my ($name, $redis) = @_;
    my $app = free_port();
    my ($port, $stop, $prefix) = start_nginx_instance($name, <<_EOC_);
    aai_ratelimit_redis $redis timeout=1s connect_timeout=5s;
    aai_cache_redis $redis timeout=1s connect_timeout=5s;
    aai_ratelimit_zone z key=\$arg_u rate=1000r/m;

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

        location /both/ {
            aai_ratelimit z;
            aai_cache on;
            proxy_pass http://127.0.0.1:$app;
        }
        location /cache/ {
            aai_cache on;
            proxy_pass http://127.0.0.1:$app;
        }
        location /rl/ {
            aai_ratelimit z;
            proxy_pass http://127.0.0.1:$app;
        }
    }
_EOC_
    return ($port, $stop, $prefix);
}

sub get_timed {
    my ($st, $h, $body, $dt) = timed_get(@_, {});
    return ($st // 0, $h->{'x-rl'} // '', $h->{'x-cache'} // '', $dt);
}

sub no_alert {
    my ($prefix, $what) = @_;
    no_log_problems("$prefix/logs/error.log", "$what: no alert, no crash");
}

# --- a listener that never answers, both modules on it --------------------

{
    my $hung = hung_listener();
    my ($port, $stop, $prefix) = front('r011h', "127.0.0.1:$hung");

    # the handshakes wait for connect_timeout (5 s): this request's commands
    # wait for their own timeout, the limiter's first

    my @r = get_timed($port, '/both/a?u=1');
    is("$r[0] $r[1]", '200 ERROR', 'hung: the limiter fell back');
    cmp_ok($r[3], '>=', $T - 0.05, "hung: one timeout waited ($r[3] s)");
    cmp_ok($r[3], '<', 2 * $T - 0.1,
           "hung: one timeout, not the limiter's and the cache's ($r[3] s)");

    my @c = get_timed($port, '/cache/b');
    is($c[0], 200, 'hung: the cache answers from the upstream');
    cmp_ok($c[3], '<', $T - 0.1, "hung: the cache fails fast ($c[3] s)");

    no_alert($prefix, 'hung');
    $stop->();
}

# --- a Redis that stops answering while both modules are connected --------

sub paused {
    my ($rport, $port, $first, $second, $what) = @_;

    # both modules ready: a limited and cached request goes through Redis

    my $deadline = time + 5;
    my @w;
    while (time < $deadline) {
        @w = get_timed($port, "/both/warm?u=w");
        last if $w[1] eq 'PASSED' && $w[2] eq 'HIT';
        sleep 0.05;
    }
    is("$w[1] $w[2]", 'PASSED HIT', "$what: both modules use Redis");

    # every client waits, this one too: the pause ends by itself

    with_paused_redis($rport, 2500, sub {
        my @r = get_timed($port, $first);
        is($r[0], 200, "$what: $first answered");
        cmp_ok($r[3], '>=', $T - 0.05, "$what: $first waited one timeout "
               . "($r[3] s)");
        cmp_ok($r[3], '<', 2 * $T - 0.1, "$what: $first waited no more "
               . "than one timeout ($r[3] s)");

        my @s = get_timed($port, $second);
        is($s[0], 200, "$what: $second answered");
        cmp_ok($s[3], '<', $T - 0.1, "$what: $second fails fast, the "
               . "other module saw the timeout ($s[3] s)");
    });
}

{
    my $rport = start_redis();
    my ($port, $stop, $prefix) = front('r011p', "127.0.0.1:$rport");

    # the limiter times out first, then the cache of the same request

    paused($rport, $port, '/both/p1?u=1', '/cache/p2', 'limiter first');

    no_alert($prefix, 'paused');
    $stop->();
    stop_redis($rport);
}

{
    my $rport = start_redis();
    my ($port, $stop, $prefix) = front('r011q', "127.0.0.1:$rport");

    # the cache times out first, then the limiter fails fast

    paused($rport, $port, '/cache/q1', '/rl/q2?u=1', 'cache first');

    # Redis back: both modules use it again

    my $deadline = time + 5;
    my @w;
    while (time < $deadline) {
        @w = get_timed($port, "/both/q3?u=2");
        last if $w[1] eq 'PASSED' && $w[2] =~ /^(?:MISS|HIT)$/;
        sleep 0.05;
    }
    # a HIT too: under load an earlier try can find the limiter still
    # falling back while the cache's MISS was already stored
    like("$w[1] $w[2]", qr/^PASSED (?:MISS|HIT)$/,
         'recovered: both modules use Redis');

    no_alert($prefix, 'cache first');
    $stop->();
    stop_redis($rport);
}

logs_once_more();

done_testing();
