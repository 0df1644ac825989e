# ngx_http_aai_kafka_module hardened (issue 9): a byte bound on each
# worker's queue by default, drops counted by reason, reconnection within a
# second of the brokers' return, the share of a killed worker counted as
# lost, aai_kafka_flush_timeout bounded, and a producer rebuilt after a
# fatal error without blocking the worker.
#
# The Kafka mock is shared by the whole run: every block that takes brokers
# down brings them up again in --- aai_after, whatever happened.
# --- init code runs in the runner's package: names there are qualified.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );

use File::Temp ();

$ENV{TEST_NGINX_KAFKA_BROKERS} ||= '127.0.0.1:9092';
$ENV{TEST_NGINX_KRUN} = "k043x$$" . int(rand(1e6));

our $Run = $ENV{TEST_NGINX_KRUN};

# the test plugin t/kslow.c: destroying a producer that had a fatal error
# takes 3 s
our $Tmp = File::Temp::tempdir('aai-kslow-XXXXXX', TMPDIR => 1,
                               CLEANUP => 1);
chmod 0755, $Tmp;
$ENV{TEST_NGINX_KSLOW} = "$Tmp/kslow.so";
system('cc', '-shared', '-fPIC', '-o', "$Tmp/kslow.so", 't/kslow.c',
       '-lrdkafka') == 0 or die "cannot build t/kslow.c\n";

# an event of about $n * 7000 bytes: a field repeats a 7000-byte argument
our $Arg = 'a' x 7000;

sub big_format {
    my ($name, $n) = @_;
    return "aai_kafka_format $name b=" . ('$arg_x' x $n) . ";\n";
}

sub port {
    return $ENV{TEST_NGINX_SERVER_PORT};
}

# waits until the counters read as expected; checks them
sub counts_are {
    my ($want, $name, $timeout) = @_;
    return kafka_counts_are(port(),
                            [qw(produced delivered failed dropped lost depth)],
                            $want, $name, $timeout);
}

# requests /t?n=N for each N; each must answer 204 at once
sub requests {
    answered_ok(port(), '/t?n=%s', [@_], within => 0.5);
}

sub event_numbers {
    my ($suffix, $count, $timeout) = @_;
    return kafka_numbers("$Run-$suffix", $count, $timeout);
}

master_on();
workers(1);
no_shuffle();
run_tests();

# TEST 5 kills a worker of its nginx
logs_once_more(allow => [qr/worker process \d+ exited on signal 9\b/]);

__DATA__

=== TEST 1: aai_kafka_flush_timeout above 24.8 days (rd_kafka_flush() takes an int) fails, naming the directive and the value
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 25d;
--- config
--- must_die
--- error_log
invalid value "25d" in "aai_kafka_flush_timeout" directive, it must not be more than 2147483647 ms (24.8 days)



=== TEST 2: aai_kafka_flush_timeout of 24 days is accepted
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 24d;
--- config
    location = /metrics {
        aai_metrics;
    }
--- request
GET /metrics
--- response_body_like
aai_kafka_queue_depth 0
--- no_error_log
[emerg]



=== TEST 3: brokers down for 7 s and back: delivery to every broker resumes within about a second (default reconnect.backoff.max.ms 1000)
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-back format=n key=$arg_n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(1);
main::counts_are('produced=1 delivered=1 failed=0 dropped=0 lost=0 depth=0',
                 'connected and delivered');
AaiTest::kafka_all_brokers_down();
# keyed: every partition gets events, so the producer reconnects to every
# broker, for 7 s: long enough for librdkafka's own backoff (up to 10 s) to
# grow past 2 s
main::requests(2 .. 31);
select(undef, undef, undef, 7);
AaiTest::kafka_all_brokers_up();
my $t = Time::HiRes::time();
main::counts_are('produced=31 delivered=31 failed=0 dropped=0 lost=0 '
                 . 'depth=0', 'delivered once the brokers are back', 15);
my $dt = Time::HiRes::time() - $t;
Test::More::diag(sprintf('delivery resumed %.2f s after the brokers '
                         . 'returned', $dt));
Test::More::cmp_ok($dt, '<', 2, 'delivery resumed within 2 s');
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="delivered"\} 31
--- aai_after
kafka_all_brokers_up();
is(event_numbers('back', 31), join(',', 1 .. 31), 'every event arrived');



=== TEST 4: the default byte bound (32 MiB a worker) drops events of 700 kB past 47 queued, counted as queue_full; an event over message.max.bytes as too_large
--- http_config eval
'    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 100ms;
' . main::big_format('big', 100) . main::big_format('huge', 150)
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-bytes format=big;
        return 204;
    }
    location = /huge {
        aai_kafka_event $TEST_NGINX_KRUN-bytes format=huge;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
AaiTest::kafka_all_brokers_down();
for my $i (1 .. 60) {
    my ($st) = AaiTest::http_get(main::port(), "/t?x=$main::Arg");
    Test::More::is($st, 204, "big event $i answered") if $i == 60;
}
my ($st) = AaiTest::http_get(main::port(), "/huge?x=$main::Arg");
Test::More::is($st, 204, 'huge event answered');
# {"b":"..."}: 700008 bytes; librdkafka queues while the bytes stay within
# 32768 kB
my $q = int(32768 * 1024 / 700008);
my $d = 60 - $q + 1;
my $m = main::counts_are("produced=$q delivered=0 failed=0 dropped=$d "
                         . "lost=0 depth=$q",
                         "$q queued, the rest dropped", 0);
Test::More::is($m->{'aai_kafka_dropped_total{reason="queue_full"}'},
               60 - $q, 'dropped because the queue is full');
Test::More::is($m->{'aai_kafka_dropped_total{reason="too_large"}'}, 1,
               'dropped because larger than message.max.bytes');
Test::More::is($m->{'aai_kafka_dropped_total{reason="no_producer"}'}, 0,
               'no other reason');
# the queued ones are given up when nginx stops (aai_kafka_flush_timeout)
--- request
GET /metrics
--- response_body_like
aai_kafka_dropped_total\{reason="queue_full"\} 13
--- error_log eval
qr/aai_kafka: \d+ events dropped, last error: Local: Queue full/
--- aai_after
kafka_all_brokers_up();



=== TEST 5: a worker killed with events queued: the new worker takes its share off the queue depth and counts it as lost
--- config
    location = /t {
        return 204;
    }
--- init
# an instance of its own: the runner fails a block whose nginx logs a worker
# "exited on signal"
my ($port, $stop, $prefix) = AaiTest::start_nginx_instance('kill043',
    <<'_EOC_', workers => 1);
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format n n=$arg_n:number;
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location = /t {
            aai_kafka_event $TEST_NGINX_KRUN-killed format=n;
            return 204;
        }
        location = /metrics {
            aai_metrics;
        }
    }
_EOC_
local $ENV{TEST_NGINX_SERVER_PORT} = $port;
AaiTest::kafka_all_brokers_down();
main::requests(1 .. 7);
main::counts_are('produced=7 delivered=0 failed=0 dropped=0 lost=0 depth=7',
                 'queued while the brokers are down', 0);
my $master = AaiTest::master_pid($prefix);
my @old = AaiTest::worker_pids($master);
Test::More::is(scalar @old, 1, 'one worker');
kill 'KILL', $old[0];
my $deadline = Time::HiRes::time() + 10;
my @new;
while (Time::HiRes::time() < $deadline) {
    @new = grep { $_ != $old[0] } AaiTest::worker_pids($master);
    last if @new;
    select(undef, undef, undef, 0.05);
}
Test::More::is(scalar @new, 1, 'the master started a new worker');
main::counts_are('produced=7 delivered=0 failed=0 dropped=0 lost=7 depth=0',
                 'the killed worker\'s events counted as lost', 5);
Test::More::ok(
    (grep { /aai_kafka: 7 events lost: worker $old[0] exited without delivering them/ }
     AaiTest::file_lines("$prefix/logs/error.log")),
    'the loss is logged');
AaiTest::kafka_all_brokers_up();
main::requests(8);
main::counts_are('produced=8 delivered=1 failed=0 dropped=0 lost=7 depth=0',
                 'the new worker delivers');
$stop->();
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 6: a producer rebuilt after a fatal error whose destruction takes 3 s (t/kslow.c) does not block the worker
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property plugin.library.paths $TEST_NGINX_KSLOW;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-slow format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(1);
main::counts_are('produced=1 delivered=1 failed=0 dropped=0 lost=0 depth=0',
                 'delivered before the error');
AaiTest::_kmock_ctl('produce_errors 45 1');
my ($worst, $restarts) = (0, 0);
my $end = Time::HiRes::time() + 4;
my $n = 1;
while (Time::HiRes::time() < $end) {
    $n++;
    my $t = Time::HiRes::time();
    my ($st) = AaiTest::http_get(main::port(), "/t?n=$n");
    my $dt = Time::HiRes::time() - $t;
    $worst = $dt if $dt > $worst;
    Test::More::is($st, 204, "request $n answered") unless $st && $st == 204;
    select(undef, undef, undef, 0.05);
}
my $m = AaiTest::metrics_get(main::port());
Test::More::is($m->{aai_kafka_producer_restarts_total}, 1,
               'the producer was rebuilt once');
Test::More::cmp_ok($worst, '<', 1, 'no request waited for the destruction');
Test::More::diag(sprintf('%d requests, the slowest took %.3f s', $n - 1,
                         $worst));
# the event in the rejected Produce failed (and any queued behind it in
# the old producer), every other one is delivered
$m = AaiTest::metrics_wait(main::port(), '/metrics', sub {
    AaiTest::kafka_metric($_[0], 'depth') == 0
    && AaiTest::kafka_metric($_[0], 'delivered') + AaiTest::kafka_metric($_[0], 'failed') == $n
}, 15);
Test::More::is(AaiTest::kafka_metric($m, 'produced'), $n, 'every event produced');
Test::More::cmp_ok(AaiTest::kafka_metric($m, 'failed'), '>=', 1,
                   'the rejected event failed');
Test::More::is(AaiTest::kafka_metric($m, 'delivered') + AaiTest::kafka_metric($m, 'failed'),
               $n, 'the others delivered');
--- request
GET /metrics
--- response_body_like
aai_kafka_producer_restarts_total 1
--- error_log eval
[qr/aai_kafka: fatal producer error: \S*OUT_OF_ORDER_SEQUENCE_NUMBER.*rebuilding the producer/,
 qr/aai_kafka: producer rebuilt/]



=== TEST 7: aai_kafka_property overrides the byte bound: 8 kB holds one event of 7 kB
--- http_config eval
'    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property queue.buffering.max.kbytes 8;
    aai_kafka_flush_timeout 100ms;
' . main::big_format('one', 1)
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-kbytes format=one;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
AaiTest::kafka_all_brokers_down();
AaiTest::answered_ok(main::port(), "/t?x=$main::Arg&i=%s", [1 .. 3]);
my $m = main::counts_are('produced=1 delivered=0 failed=0 dropped=2 lost=0 '
                         . 'depth=1', 'one queued, two dropped', 0);
Test::More::is($m->{'aai_kafka_dropped_total{reason="queue_full"}'}, 2,
               'dropped because the queue is full');
--- request
GET /metrics
--- response_body_like
aai_kafka_dropped_total\{reason="queue_full"\} 2
--- aai_after
kafka_all_brokers_up();



=== TEST 8: no producer (acks=1 with enable.idempotence=true: rd_kafka_new() refuses it, which only nginx -t checks): requests still answered, every event dropped as no_producer, the cause logged once
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property acks 1;
    aai_kafka_property enable.idempotence true;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-noproducer format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(1 .. 5);
my $m = main::counts_are('produced=0 delivered=0 failed=0 dropped=5 lost=0 '
                         . 'depth=0', 'every event dropped, none queued');
Test::More::is($m->{'aai_kafka_dropped_total{reason="no_producer"}'}, 5,
               'dropped because there is no producer');
my $log = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '/logs/error.log';
# the drops are logged at most once a second, with their count
my $logged = 0;
AaiTest::wait_until(5, sub {
    $logged = 0;
    for (AaiTest::file_lines($log)) {
        $logged += $1 if /aai_kafka: (\d+) events dropped, last error: (?:Local: Erroneous state)/;
    }
    $logged >= 5;
});
Test::More::is($logged, 5, 'the drops logged with their count');
my @why = grep { /could not create the producer: `acks` must be set to `all` when `enable\.idempotence` is true, events will be dropped/ }
          AaiTest::file_lines($log);
Test::More::is(scalar @why, 1, 'why, logged once');
--- request
GET /metrics
--- response_body_like
aai_kafka_dropped_total\{reason="no_producer"\} 5
