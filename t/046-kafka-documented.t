# What the README promises of the Kafka module that no other file proves:
# the broker round-trip metric (aai_kafka_broker_rtt_seconds) follows the
# brokers' real RTT; the producer defaults (client.id aai-nginx, gzip,
# idempotence) are what the producer uses, and aai_kafka_property
# overrides them; on a fast stop (SIGTERM) a worker waits at most 1 s for
# its queued events whatever aai_kafka_flush_timeout says, counts the rest
# as failed, and is not killed by the master; the first statistics (and so
# the RTT metric) come after the default statistics.interval.ms, 10 s.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );

my $topic = "k046x$$" . int(rand(1e6));

sub kmock_rtt {
    my $ms = shift;
    AaiTest::_kmock_ctl("rtt $_ $ms") for 1 .. 3;
}

sub produce_lines {
    my $prefix = shift;
    return grep { /librdkafka: PRODUCE: .*Produce MessageSet/ }
           file_lines("$prefix/logs/error.log");
}


# --- aai_kafka_broker_rtt_seconds: each broker's RTT per interval ---------

{
    kafka_all_brokers_up();
    kmock_rtt(0);
    my ($port, $stop, $prefix) = start_nginx_instance('k046rtt', <<"_EOC_");
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property statistics.interval.ms 200;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / { aai_kafka_event $topic; return 200 "ok\\n"; }
        location /metrics { aai_metrics; }
    }
_EOC_
    my $fast = '{le="0.1"}';
    my $slow = '{le="0.25"}';
    my $h = 'aai_kafka_broker_rtt_seconds';

    http_get($port, "/r$_") for 1 .. 6;
    my $m = metrics_wait($port, '/metrics',
                         sub { ($_[0]{"${h}_count"} // 0) >= 1 });
    ok($m->{"${h}_count"} >= 1, 'the brokers\' RTT is observed');
    is($m->{"${h}_bucket$slow"} // -1, $m->{"${h}_bucket$fast"} // -2,
       'mock brokers answer at once: nothing between 100 and 250 ms');

    # every broker answers 150 ms late: observed between 100 and 250 ms
    kmock_rtt(150);
    my $before = $m->{"${h}_bucket$slow"} - $m->{"${h}_bucket$fast"};
    $m = metrics_wait($port, '/metrics', sub {
        http_get($port, '/again');
        ($_[0]{"${h}_bucket$slow"} // 0) - ($_[0]{"${h}_bucket$fast"} // 0)
            >= 2
    }, 15);
    kmock_rtt(0);
    ok($m->{"${h}_bucket$slow"} - $m->{"${h}_bucket$fast"} >= 2,
       'brokers 150 ms late: their RTT observed between 100 and 250 ms');
    ok($m->{"${h}_sum"} / $m->{"${h}_count"} > 0.01,
       "the sum follows: " . $m->{"${h}_sum"} . " s over "
       . $m->{"${h}_count"});
    $stop->();
    no_log_problems("$prefix/logs/error.log", 'rtt: no alert, no crash');
}


# --- the producer defaults, and aai_kafka_property over them ---------------
#
# librdkafka's "msg" debug context logs each produce request with the
# client id, the producer id (idempotence) and the compression codec.

my ($def_port, $def_stop, $def_prefix, $def_t0);
{
    my ($port, $stop, $prefix) = start_nginx_instance('k046def', <<"_EOC_");
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property debug msg;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / { aai_kafka_event $topic; return 200 "ok\\n"; }
        location /metrics { aai_metrics; }
    }
_EOC_
    $def_t0 = time;
    ($def_port, $def_stop, $def_prefix) = ($port, $stop, $prefix);
    http_get($port, "/d$_") for 1 .. 2;
    my @p;
    ok(wait_until(10, sub { @p = produce_lines($prefix) }),
       'defaults: a produce request logged');
    my ($init) = grep { /librdkafka: INIT: / } file_lines("$prefix/logs/error.log");
    like($init // '', qr/ aai-nginx#producer-\d+ initialized/,
         'defaults: client.id aai-nginx');
    like($p[0] // '', qr/PID\{Id:\d+,Epoch:\d+\}, gzip\)$/,
         'defaults: idempotent (a producer id) and gzip');
    # statistics.interval.ms 10000: no RTT observed in the first seconds
    my $rtt = metrics_get($port)->{aai_kafka_broker_rtt_seconds_count};
    my $at = time - $def_t0;
    ok($at >= 9 || $rtt == 0,
       sprintf('defaults: no statistics %.1f s after the start', $at));

    ($port, $stop, $prefix) = start_nginx_instance('k046set', <<"_EOC_");
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property debug msg;
    aai_kafka_property client.id k046-own;
    aai_kafka_property compression.type none;
    aai_kafka_property acks 1;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / { aai_kafka_event $topic; return 200 "ok\\n"; }
    }
_EOC_
    http_get($port, "/s$_") for 1 .. 2;
    ok(wait_until(10, sub { @p = produce_lines($prefix) }),
       'overridden: a produce request logged');
    ($init) = grep { /librdkafka: INIT: / } file_lines("$prefix/logs/error.log");
    like($init // '', qr/ k046-own#producer-\d+ initialized/,
         'aai_kafka_property client.id replaces the default');
    like($p[0] // '', qr/PID\{Invalid\}, uncompressed\)$/,
         'compression.type none replaces gzip; acks 1 turns idempotence off');
    $stop->();
    no_log_problems("$prefix/logs/error.log", 'overridden: no alert, no crash');
}


# the defaults' instance, still running: its first statistics (the RTT
# metric) come after statistics.interval.ms, 10 s
{
    my $m = metrics_wait($def_port, '/metrics', sub {
        http_get($def_port, '/stats');
        ($_[0]{aai_kafka_broker_rtt_seconds_count} // 0) >= 1 }, 20);
    my $at = time - $def_t0;
    ok($m->{aai_kafka_broker_rtt_seconds_count} >= 1 && $at > 9.5
       && $at < 15, sprintf('defaults: the first statistics after %.1f s '
                            . '(statistics.interval.ms 10000)', $at));
    $def_stop->();
    no_log_problems("$def_prefix/logs/error.log",
                    'defaults: no alert, no crash');
}


# --- a fast stop (SIGTERM) waits at most 1 s for the queued events ---------

{
    my ($port, $stop, $prefix) = start_nginx_instance('k046term', <<"_EOC_");
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 20s;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / { aai_kafka_event $topic; return 200 "ok\\n"; }
        location /metrics { aai_metrics; }
    }
_EOC_
    my $master = master_pid($prefix);
    my $worker;
    ok(wait_until(5, sub { ($worker) = worker_pids($master) }), 'a worker');
    ok(metrics_wait($port, '/metrics', sub {
        http_get($port, '/warm');
        ($_[0]{'aai_kafka_events_total{outcome="delivered"}'} // 0) >= 1
    }), 'the producer delivers');
    is(metrics_wait($port, '/metrics', sub {
        ($_[0]{aai_kafka_queue_depth} // 1) == 0 })->{aai_kafka_queue_depth},
       0, 'nothing queued');

    kafka_broker_down($_) for 1 .. 3;
    http_get($port, "/t$_") for 1 .. 5;
    my $m = metrics_wait($port, '/metrics', sub {
        ($_[0]{aai_kafka_queue_depth} // 0) >= 5 });
    is($m->{aai_kafka_queue_depth}, 5, 'brokers down: five events queued');
    my $failed0 = $m->{'aai_kafka_events_total{outcome="failed"}'};

    # the worker alone: a fast stop of its own, the master respawns it
    my $t0 = time;
    kill 'TERM', $worker;
    wait_until(15, sub { !AaiTest::_alive($worker) });
    my $took = time - $t0;
    # 1 s and its exit; a loaded machine or ASan may add a second or two
    ok($took < 5, sprintf('SIGTERM: the worker exits in %.2f s, not after '
                            . 'aai_kafka_flush_timeout 20s', $took));
    ok($took > 0.8, sprintf('having waited for the brokers (%.2f s)', $took));
    my @new;
    ok(wait_until(5, sub { @new = worker_pids($master) }),
       'the master starts a new worker');
    $m = metrics_wait($port, '/metrics', sub {
        ($_[0]{aai_kafka_queue_depth} // 1) == 0 });
    is($m->{'aai_kafka_events_total{outcome="failed"}'} - $failed0, 5,
       'the five queued events counted as failed');
    is($m->{aai_kafka_queue_depth}, 0, 'the queue depth back to 0');

    # the whole nginx: the master's SIGKILL (after about 1.5 s) is not needed
    http_get($port, "/u$_") for 1 .. 3;
    metrics_wait($port, '/metrics', sub {
        ($_[0]{aai_kafka_queue_depth} // 0) >= 3 });
    $t0 = time;
    kill 'TERM', $master;
    wait_until(15, sub { !AaiTest::_alive($master) });
    $took = time - $t0;
    ok($took < 10, sprintf('SIGTERM to the master: nginx is gone in %.2f s',
                            $took));
    kafka_all_brokers_up();
    my @killed = grep { /exited on signal 9/ } file_lines("$prefix/logs/error.log");
    is(scalar @killed, 0, 'no worker killed by the master');
    no_log_problems("$prefix/logs/error.log", 'term: no alert, no crash');
    $stop->();
}

kafka_all_brokers_up();
kmock_rtt(0);

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: the RTT histogram in the runner's nginx, nothing observed yet
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location /metrics { aai_metrics; }
--- request
GET /metrics
--- response_body_like eval
qr/^aai_kafka_broker_rtt_seconds_bucket\{le="2.5"\} 0\n(?s:.*)^aai_kafka_broker_rtt_seconds_count 0$/m
