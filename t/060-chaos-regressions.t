# Defects found by the failure scripts under load (bench/chaos, issue 9),
# each with the behaviour that shows it.
#
# A new worker's first Redis connection must not time out because the
# master took long to read its configuration: a worker starts with the time
# the master cached when it began to read it, and a connect timer armed
# with that time in init_process had expired before the worker's first
# event loop iteration (a large configuration, or a busy machine, took
# longer than connect_timeout).  Every worker start then logged "handshake
# timed out", and requests were decided without Redis until the backoff
# ran out (on every reload, under load, about one request in five in the
# chaos reload scenario).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use File::Path qw( make_path );
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# a geo block large enough that reading the configuration takes longer
# than connect_timeout (300,000 ranges: about 0.4 to 1.5 s here)
my $dir = File::Spec->rel2abs((($ENV{TEST_NGINX_SERVROOT} || 't/servroot')
                               . '-060'));
make_path($dir);
my $geo = "$dir/geo.conf";
open my $g, '>', $geo or die "$geo: $!";
for my $i (1 .. 300000) {
    printf $g "10.%d.%d.%d/32 %d;\n", ($i >> 16) & 255, ($i >> 8) & 255,
           $i & 255, $i;
}
close $g;

{
    my $t0 = time;
    my ($port, $stop, $prefix) = start_nginx_instance('rl060', <<_EOC_,
    geo \$aai_chaos_geo { include $geo; }

    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT
                        connect_timeout=200ms timeout=1s;
    aai_ratelimit_zone z060 key=\$arg_u rate=100r/m;

    server {
        listen \$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        location /t { aai_ratelimit z060; empty_gif; }
    }
_EOC_
        workers => 2);
    my $started = time - $t0;

    # the workers' connections are up: a request is decided with Redis
    my ($st, $h);
    my $deadline = time + 5;
    while (time < $deadline) {
        ($st, $h) = http_get($port, '/t?u=a', {});
        last if ($h->{'x-rl'} // '') eq 'PASSED';
        sleep 0.05;
    }
    is(($st // 0) . ' ' . ($h->{'x-rl'} // ''), '200 PASSED',
       'slow configuration: requests decided with Redis');

    my @timeouts = grep { /handshake timed out|connect\(\) timed out/ }
                   file_lines("$prefix/logs/error.log");
    is(scalar @timeouts, 0, "slow configuration (nginx started in "
       . sprintf('%.2f', $started) . " s): no worker's first connection "
       . "timed out") or diag(join '', @timeouts[0 .. ($#timeouts > 3 ? 3
                                                       : $#timeouts)]);
    $stop->();
}

unlink $geo;

run_tests();

AaiTest::logs_once_more();

__DATA__
