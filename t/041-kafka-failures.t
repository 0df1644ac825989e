# ngx_http_aai_kafka_module when Kafka fails: brokers down at start and
# mid-run, undeliverable events, a full local queue, reload and worker exit.
# The accounting checked everywhere: every event is produced (queued) or
# dropped, and every produced one ends delivered or failed.
#
# The Kafka mock is shared by the whole run: every block that takes brokers
# down brings them up again in --- aai_after, whatever happened.
# --- init code runs in the runner's package: names there are qualified.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );

$ENV{TEST_NGINX_KAFKA_BROKERS} ||= '127.0.0.1:9092';
$ENV{TEST_NGINX_KRUN} = "k041x$$" . int(rand(1e6));

our $Run = $ENV{TEST_NGINX_KRUN};
our $T0;

sub port {
    return $ENV{TEST_NGINX_SERVER_PORT};
}

# waits until the counters read as expected; checks them
sub counts_are {
    my ($want, $name, $timeout) = @_;
    return kafka_counts_are(port(),
                            [qw(produced delivered failed dropped depth)],
                            $want, $name, $timeout);
}

# requests /t?n=N for each N; each must answer 204 at once
sub requests {
    answered_ok(port(), '/t?n=%s', [@_], within => 0.5);
}

sub event_numbers {
    my ($suffix, $count, $timeout) = @_;
    return kafka_numbers("$Run-$suffix", $count, $timeout, check_json => 1);
}

master_on();
workers(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: all brokers down at start: nginx starts at once, requests are not delayed, the events arrive once the brokers are back
--- aai_before
kafka_all_brokers_down();
$T0 = Time::HiRes::time();
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property reconnect.backoff.max.ms 200;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-late format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
Test::More::cmp_ok(Time::HiRes::time() - $main::T0, '<', 3,
                   'nginx started at once');
main::requests(1 .. 10);
main::counts_are('produced=10 delivered=0 failed=0 dropped=0 depth=10',
                 'queued while the brokers are down', 0);
AaiTest::kafka_all_brokers_up();
main::counts_are('produced=10 delivered=10 failed=0 dropped=0 depth=0',
                 'delivered once the brokers are back');
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="produced"\} 10
aai_kafka_events_total\{outcome="delivered"\} 10
--- aai_after
kafka_all_brokers_up();
is(event_numbers('late', 10), '1,2,3,4,5,6,7,8,9,10', 'no event lost');



=== TEST 2: all brokers down mid-run and back: no event lost, counts add up
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property reconnect.backoff.max.ms 200;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-mid format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(1 .. 5);
main::counts_are('produced=5 delivered=5 failed=0 dropped=0 depth=0',
                 'delivered while the brokers are up');
AaiTest::kafka_all_brokers_down();
main::requests(6 .. 15);
select(undef, undef, undef, 1);
main::counts_are('produced=15 delivered=5 failed=0 dropped=0 depth=10',
                 'queued while the brokers are down', 0);
AaiTest::kafka_all_brokers_up();
main::counts_are('produced=15 delivered=15 failed=0 dropped=0 depth=0',
                 'delivered once the brokers are back');
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="produced"\} 15
aai_kafka_events_total\{outcome="delivered"\} 15
--- aai_after
kafka_all_brokers_up();
is(event_numbers('mid', 15), join(',', 1 .. 15),
   'every event exactly once');



=== TEST 3: an event that cannot be delivered within message.timeout.ms is counted as failed
--- aai_before
kafka_all_brokers_down();
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property message.timeout.ms 1000;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-timeout format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(1 .. 5);
main::counts_are('produced=5 delivered=0 failed=5 dropped=0 depth=0',
                 'failed after the message timeout');
AaiTest::kafka_all_brokers_up();
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="failed"\} 5
--- error_log eval
qr/aai_kafka: \d events not delivered, last error: Local: Message timed out/
--- aai_after
kafka_all_brokers_up();
is(event_numbers('timeout', undef, 2), '', 'none of them arrived');



=== TEST 4: a full local queue drops events, counts and logs them
--- aai_before
kafka_all_brokers_down();
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property queue.buffering.max.messages 10;
    aai_kafka_property reconnect.backoff.max.ms 200;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-full format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(1 .. 25);
main::counts_are('produced=10 delivered=0 failed=0 dropped=15 depth=10',
                 'ten queued, fifteen dropped', 0);
AaiTest::kafka_all_brokers_up();
main::counts_are('produced=10 delivered=10 failed=0 dropped=15 depth=0',
                 'the queued ones delivered');
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="dropped"\} 15
--- error_log eval
qr/aai_kafka: \d+ events dropped, last error: Local: Queue full/
--- aai_after
kafka_all_brokers_up();
is(event_numbers('full', 10), join(',', 1 .. 10),
   'the first ten arrived');



=== TEST 5: "nginx -s reload" under a stream of requests loses no event
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-reload format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
my $port = main::port();
my $master = AaiTest::master_pid();
pipe(my $r, my $w) or die "pipe: $!";
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0) {
    close $r;
    my $end = Time::HiRes::time() + 1.5;
    my $n = 0;
    while (Time::HiRes::time() < $end) {
        $n++;
        my ($st) = AaiTest::http_get($port, "/t?n=$n");
        syswrite($w, "$n " . ($st // 0) . "\n");
        select(undef, undef, undef, 0.002);
    }
    close $w;
    POSIX::_exit(0);
}
close $w;
select(undef, undef, undef, 0.4);
kill 'HUP', $master;
select(undef, undef, undef, 0.5);
kill 'HUP', $master;
my @res = <$r>;
waitpid($pid, 0);
my @ok = map { /^(\d+) 204$/ ? $1 : () } @res;
Test::More::cmp_ok(scalar @res, '>', 50, 'a stream of requests');
Test::More::is(scalar @ok, scalar @res, 'every request answered 204');
$main::Sent = join ',', @ok;
my $n = @ok;
main::counts_are("produced=$n delivered=$n failed=0 dropped=0 depth=0",
                 'every event delivered across two reloads');
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="failed"\} 0
--- aai_after
my @n = split /,/, $Sent;
is(event_numbers('reload', scalar @n), $Sent, 'every event exactly once');



=== TEST 6: a worker that exits with the brokers down flushes for aai_kafka_flush_timeout, then counts what it gave up
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 1s;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-exit format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
AaiTest::kafka_all_brokers_down();
main::requests(1 .. 5);
my $master = AaiTest::master_pid();
my @old = AaiTest::worker_pids($master);
Test::More::is(scalar @old, 1, 'one worker');
my $t = Time::HiRes::time();
kill 'HUP', $master;
my $deadline = $t + 10;
select(undef, undef, undef, 0.05)
    while kill(0, $old[0]) && -e "/proc/$old[0]/stat"
          && (main::file_lines("/proc/$old[0]/stat"))[0] !~ /^\d+ \(.*\) Z /
          && Time::HiRes::time() < $deadline;
my $dt = Time::HiRes::time() - $t;
Test::More::cmp_ok($dt, '>=', 0.9, 'the old worker tried to flush');
Test::More::cmp_ok($dt, '<', 2.5, 'within the flush timeout');
main::counts_are('produced=5 delivered=0 failed=5 dropped=0 depth=0',
                 'given up events counted as failed');
AaiTest::kafka_all_brokers_up();
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="failed"\} 5
--- error_log eval
qr/aai_kafka: 5 events not delivered, last error: Local: Purged in queue/
--- aai_after
kafka_all_brokers_up();



=== TEST 7: a fatal producer error (a Produce answered OUT_OF_ORDER_SEQUENCE_NUMBER) rebuilds the producer, requests are served and later events arrive
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-fatal format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(1);
main::counts_are('produced=1 delivered=1 failed=0 dropped=0 depth=0',
                 'delivered before the error');

# the head-of-line request of an idempotent producer rejected for its
# sequence: librdkafka raises a fatal error
AaiTest::_kmock_ctl('produce_errors 45 1');
main::requests(2);
my $m = AaiTest::metrics_wait(main::port(), '/metrics', sub {
    ($_[0]{aai_kafka_producer_restarts_total} // 0) >= 1
}, 15);
Test::More::is($m->{aai_kafka_producer_restarts_total}, 1,
               'the producer was rebuilt once');
main::requests(3 .. 5);
main::counts_are('produced=5 delivered=4 failed=1 dropped=0 depth=0',
                 'the rejected event failed, the later ones delivered');
--- request
GET /metrics
--- response_body_like
aai_kafka_producer_restarts_total 1
--- error_log eval
[qr/aai_kafka: fatal producer error: \S*OUT_OF_ORDER_SEQUENCE_NUMBER.*rebuilding the producer/,
 qr/aai_kafka: producer rebuilt/]
--- aai_after
is(event_numbers('fatal', 4), '1,3,4,5',
   'the events before and after the rebuild arrived');
