# ngx_http_aai_kafka_module's disk spool (issue 13): events Kafka did not
# take or finally refused are written to aai_kafka_spool's directory by a
# thread pool and replayed once the brokers are back, also by the next
# start after a stop; bounded by max_size; corrupt records are skipped and
# counted; nothing is written while Kafka keeps up.
#
# Events are counted by their number n (the request's id in production:
# see the README).  The Kafka mock is shared by the whole run: every block
# that takes brokers down brings them up again in --- aai_after.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );

use File::Temp ();

$ENV{TEST_NGINX_KAFKA_BROKERS} ||= '127.0.0.1:9092';
$ENV{TEST_NGINX_KRUN} = "k044x$$" . int(rand(1e6));

our $Run = $ENV{TEST_NGINX_KRUN};

our $Tmp = File::Temp::tempdir('aai-spool-XXXXXX', TMPDIR => 1,
                               CLEANUP => 1);
chmod 0777, $Tmp;
$ENV{TEST_NGINX_SPOOL} = $Tmp;

our $Magic = "\xffAK\xfe";

sub port {
    return $ENV{TEST_NGINX_SERVER_PORT};
}

sub counts_are {
    my ($want, $name, $timeout, $port) = @_;
    return kafka_counts_are($port // port(),
        [qw(spooled replayed dropped spool_full spool_corrupt)],
        $want, $name, $timeout);
}

# requests /t?n=N for each N; each must answer 204
sub requests {
    my ($port, @n) = @_;
    answered_ok($port, '/t?n=%s', \@n);
}

# the distinct numbers that arrived, and how many events in all
sub arrived {
    my ($suffix, $count, $timeout) = @_;
    return kafka_event_numbers("$Run-$suffix", $count, $timeout);
}

sub spool_files {
    my $dir = shift;
    return grep { -s $_ } glob("$Tmp/$dir/*.spool");
}

sub instance_conf {
    my ($dir, $suffix) = @_;
    return <<"_EOC_";
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 300ms;
    aai_kafka_spool \$TEST_NGINX_SPOOL/$dir max_size=1m;
    aai_kafka_format n n=\$arg_n:number id=\$request_id;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location = /t {
            aai_kafka_event \$TEST_NGINX_KRUN-$suffix format=n;
            return 204;
        }
        location = /metrics {
            aai_metrics;
        }
    }
_EOC_
}

master_on();
workers(1);
no_shuffle();
run_tests();

# a worker is killed (its spool files replayed by the next)
logs_once_more(allow => [qr/worker process \d+ exited on signal 9\b/]);

__DATA__

=== TEST 1: a bad max_size fails, naming the directive and the value
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_spool $TEST_NGINX_SPOOL/bad max_size=lots;
--- config
--- must_die
--- error_log
invalid max_size "max_size=lots" in "aai_kafka_spool", it must be a size of at least 4k



=== TEST 2: a bad rate fails, naming the directive and the value
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_spool $TEST_NGINX_SPOOL/bad rate=0;
--- config
--- must_die
--- error_log
invalid rate "rate=0" in "aai_kafka_spool", it must be 1 to 1000000 events per second



=== TEST 3: the happy path writes nothing to disk
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_spool $TEST_NGINX_SPOOL/happy;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-happy format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(main::port(), 1 .. 20);
my $m = AaiTest::metrics_wait(main::port(), '/metrics', sub {
    ($_[0]->{'aai_kafka_events_total{outcome="delivered"}'} // 0) == 20 });
Test::More::is(AaiTest::kafka_metric($m, 'delivered'), 20, 'all delivered');
main::counts_are('spooled=0 replayed=0 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'nothing spooled');
my @f = glob("$main::Tmp/happy/*");
Test::More::is(scalar @f, 0, 'no file in the spool directory');
--- request
GET /metrics
--- response_body_like
aai_kafka_spool_bytes 0
--- no_error_log
[error]



=== TEST 4: brokers down for longer than message.timeout.ms under traffic, then up: every event delivered from the spool
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property message.timeout.ms 1000;
    aai_kafka_spool $TEST_NGINX_SPOOL/outage;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-outage format=n key=$arg_n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
AaiTest::kafka_all_brokers_down();
for my $i (0 .. 5) {
    main::requests(main::port(), $i * 5 + 1 .. $i * 5 + 5);
    select(undef, undef, undef, 0.25);
}
main::counts_are('spooled=30 replayed=0 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'every event timed out, spooled', 10);
Test::More::ok(AaiTest::wait_until(10, sub { main::spool_files('outage') >= 1 }),
               'written to a spool file');
AaiTest::kafka_all_brokers_up();
main::counts_are('spooled=30 replayed=30 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'replayed once the brokers are back',
                 20);
my ($n, $all) = main::arrived('outage', 30);
Test::More::is($n, join(',', 1 .. 30), 'every event arrived');
Test::More::diag("$all events arrived for 30 requests");
Test::More::ok(AaiTest::wait_until(10, sub { main::spool_files('outage') == 0 }),
               'the replayed file is removed');
my $m = AaiTest::metrics_wait(main::port(), '/metrics', sub {
    ($_[0]->{aai_kafka_spool_bytes} // -1) == 0 }, 5);
Test::More::is($m->{aai_kafka_spool_bytes}, 0, 'spool bytes back to 0');
--- request
GET /metrics
--- response_body_like
aai_kafka_spool_bytes 0
--- aai_after
kafka_all_brokers_up();



=== TEST 5: a stop (QUIT) while the brokers are down, then a start after they are back: the spooled events arrive
--- config
    location = /t {
        return 204;
    }
--- init
my $conf = main::instance_conf('stop', 'stop');
my ($port, $stop) = AaiTest::start_nginx_instance('spool044', $conf);
AaiTest::kafka_all_brokers_down();
main::requests($port, 1 .. 20);
$stop->();
my @f = main::spool_files('stop');
Test::More::is(scalar @f, 1, 'the exiting worker wrote its events to disk');
AaiTest::kafka_all_brokers_up();
($port, $stop) = AaiTest::start_nginx_instance('spool044', $conf);
my ($n) = main::arrived('stop', 20);
Test::More::is($n, join(',', 1 .. 20), 'the spooled events arrived');
main::counts_are('spooled=0 replayed=20 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'replayed by the new start', 10,
                 $port);
Test::More::ok(AaiTest::wait_until(10, sub { main::spool_files('stop') == 0 }),
               'the replayed file is removed');
$stop->();
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 6: a corrupt record and a record cut short are skipped and counted, the rest replayed
--- config
    location = /t {
        return 204;
    }
--- init
my $conf = main::instance_conf('bad', 'bad');
my ($port, $stop) = AaiTest::start_nginx_instance('spool044', $conf);
AaiTest::kafka_all_brokers_down();
main::requests($port, 1 .. 20);
$stop->();
my ($f) = main::spool_files('bad');
open my $fh, '+<', $f or die "$f: $!";
binmode $fh;
local $/;
my $data = <$fh>;
my @at;
my $p = -1;
push @at, $p while ($p = index($data, $main::Magic, $p + 1)) >= 0;
Test::More::is(scalar @at, 20, '20 records on disk');
# the records are in the order the producer gave the events up (by
# partition), not in the order of the requests: which ones are hit
my @lost = map {
    my $end = $_ < $#at ? $at[$_ + 1] : length $data;
    substr($data, $at[$_], $end - $at[$_]) =~ /"n":(\d+)/ ? $1 : 0;
} 9, 19;
# a byte of the 10th record's event flipped; the 20th cut short
substr($data, $at[9] + 30, 1) ^= "\x01";
$data = substr($data, 0, length($data) - 5);
seek $fh, 0, 0;
truncate $fh, 0;
print $fh $data;
close $fh;
AaiTest::kafka_all_brokers_up();
($port, $stop) = AaiTest::start_nginx_instance('spool044', $conf);
main::counts_are('spooled=0 replayed=18 dropped=2 spool_full=0 '
                 . 'spool_corrupt=2', 'two skipped and counted', 10, $port);
my ($n) = main::arrived('bad', 18);
my %lost = map { $_ => 1 } @lost;
Test::More::is($n, join(',', grep { !$lost{$_} } 1 .. 20),
               "the others arrived (all but @lost)");
$stop->();
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 7: a full spool drops and counts exactly
--- http_config eval
# one event queued (queue.buffering.max.messages 1), the next 20 for the
# spool, which holds 10.5 records of 24 + topic + 408 bytes
my $rec = 24 + length("$main::Run-full") + 408;
'    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property queue.buffering.max.messages 1;
    aai_kafka_spool $TEST_NGINX_SPOOL/full max_size=' . int($rec * 10.5) . ';
    aai_kafka_format p p=$arg_p;
'
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-full format=p;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
AaiTest::kafka_all_brokers_down();
my $p = 'a' x 400;
my $ok = 0;
for my $i (1 .. 21) {
    my ($st) = AaiTest::http_get(main::port(), "/t?p=$p");
    $ok++ if $st == 204;
}
Test::More::is($ok, 21, 'answered');
main::counts_are('spooled=10 replayed=0 dropped=10 spool_full=10 '
                 . 'spool_corrupt=0', '10 spooled, 10 dropped as spool_full');
AaiTest::kafka_all_brokers_up();
main::counts_are('spooled=10 replayed=10 dropped=10 spool_full=10 '
                 . 'spool_corrupt=0', 'the 10 replayed', 20);
my @e = AaiTest::kafka_events("$main::Run-full", 11, 10);
Test::More::is(scalar @e, 11, 'the queued one and the 10 spooled arrived');
# the first spooled event was written before the first worker counted the
# files already there: counted once
my $m = AaiTest::metrics_wait(main::port(), '/metrics', sub {
    ($_[0]->{aai_kafka_spool_bytes} // -1) == 0 }, 5);
Test::More::is($m->{aai_kafka_spool_bytes}, 0, 'spool bytes back to 0');
--- request
GET /metrics
--- response_body_like
aai_kafka_dropped_total\{reason="spool_full"\} 10
--- aai_after
kafka_all_brokers_up();



=== TEST 8: five reloads under traffic while the brokers are down, then up: no event lost
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 200ms;
    aai_kafka_spool $TEST_NGINX_SPOOL/reload;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-reload format=n key=$arg_n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
my $root = $ENV{TEST_NGINX_SERVROOT} || 't/servroot';
my ($l) = AaiTest::file_lines("$root/logs/nginx.pid");
my ($master) = $l =~ /^(\d+)/;
AaiTest::kafka_all_brokers_down();
for my $i (0 .. 5) {
    main::requests(main::port(), $i * 10 + 1 .. $i * 10 + 10);
    kill 'HUP', $master if $i < 5;
    select(undef, undef, undef, 0.3);
}
AaiTest::kafka_all_brokers_up();
my ($n, $all) = main::arrived('reload', 60, 30);
Test::More::is($n, join(',', 1 .. 60), 'every event arrived');
Test::More::diag("$all events arrived for 60 requests");
Test::More::ok(AaiTest::wait_until(15, sub { main::spool_files('reload') == 0 }),
               'every spool file replayed and removed');
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 9: header=name:expression: an invalid one fails, naming it
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location = /t {
        aai_kafka_event t header=trace;
        return 204;
    }
--- must_die
--- error_log
invalid parameter "header=trace" in "aai_kafka_event"



=== TEST 10: record headers, delivered at once and through the spool
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property message.timeout.ms 1000;
    aai_kafka_spool $TEST_NGINX_SPOOL/headers;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-headers format=n
                        header=trace:t-$arg_n header=schema:v1;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
main::requests(main::port(), 1);
my @e = AaiTest::kafka_events("$main::Run-headers", 1, 10);
Test::More::is_deeply($e[0]{headers}, ['trace', 't-1', 'schema', 'v1'],
                      'the headers of an event delivered at once');
AaiTest::kafka_all_brokers_down();
main::requests(main::port(), 2, 3);
main::counts_are('spooled=2 replayed=0 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'timed out, spooled', 10);
AaiTest::kafka_all_brokers_up();
main::counts_are('spooled=2 replayed=2 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'replayed', 20);
@e = sort { $a->{event}{n} <=> $b->{event}{n} }
     AaiTest::kafka_events("$main::Run-headers", 3, 10);
Test::More::is_deeply([ map { $_->{headers} } @e[1, 2] ],
                      [ ['trace', 't-2', 'schema', 'v1'],
                        ['trace', 't-3', 'schema', 'v1'] ],
                      'the headers of the replayed events');
--- request
GET /t?n=0
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 11: a topic from variables without topics= fails
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location = /t {
        aai_kafka_event $arg_topic;
        return 204;
    }
--- must_die
--- error_log
a topic from variables requires topics=, and topics= a topic from variables, in "aai_kafka_event"



=== TEST 12: a topic from a variable goes to the topic it names among topics=; any other is dropped and counted
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-$arg_t format=n
                        topics=$TEST_NGINX_KRUN-ta,$TEST_NGINX_KRUN-tb;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
for my $q ('n=1&t=ta', 'n=2&t=tb', 'n=3&t=tc', 'n=4&t=ta') {
    my ($st) = AaiTest::http_get(main::port(), "/t?$q");
    Test::More::is($st, 204, "request $q answered");
}
my $m = AaiTest::metrics_wait(main::port(), '/metrics', sub {
    ($_[0]->{'aai_kafka_events_total{outcome="delivered"}'} // 0) == 3 });
Test::More::is(
    $m->{'aai_kafka_dropped_total{reason="unknown_topic"}'}, 1,
    'the unknown topic dropped and counted');
my @a = AaiTest::kafka_events("$main::Run-ta", 2, 10);
Test::More::is(join(',', sort map { $_->{event}{n} } @a), '1,4', 'ta');
my @b = AaiTest::kafka_events("$main::Run-tb", 1, 10);
Test::More::is(join(',', map { $_->{event}{n} } @b), '2', 'tb');
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="delivered"\} 3



=== TEST 13: a worker killed (a crash) after it spooled: the worker that replaces it replays its file
--- config
    location = /t {
        return 204;
    }
--- init
my $conf = main::instance_conf('crash', 'crash');
$conf =~ s/(aai_kafka_flush_timeout 300ms;)/$1
    aai_kafka_property message.timeout.ms 1000;/;
my ($port, $stop, $prefix) = AaiTest::start_nginx_instance('spool044', $conf);
AaiTest::kafka_all_brokers_down();
main::requests($port, 1 .. 10);
main::counts_are('spooled=10 replayed=0 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'timed out, spooled', 10, $port);
Test::More::ok(AaiTest::wait_until(10, sub { main::spool_files('crash') == 1 }),
               'written to disk');
my ($l) = AaiTest::file_lines("$prefix/logs/nginx.pid");
my ($master) = $l =~ /^(\d+)/;
my @old = AaiTest::_children($master);
kill 'KILL', @old;
AaiTest::kafka_all_brokers_up();
my ($n) = main::arrived('crash', 10);
Test::More::is($n, join(',', 1 .. 10), 'the killed worker\'s events arrived');
Test::More::ok(AaiTest::wait_until(10, sub { main::spool_files('crash') == 0 }),
               'its file is removed');
$stop->();
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 14: two workers at a start find the same files: each file is replayed by one of them only (its lock), no event twice
--- config
    location = /t {
        return 204;
    }
--- init
# rate=10: a replay lasts seconds, the other worker looks meanwhile
my $conf = main::instance_conf('two', 'two');
$conf =~ s/max_size=1m;/max_size=1m rate=10;/ or die;
my ($port, $stop) = AaiTest::start_nginx_instance('spool044', $conf,
                                                  workers => 2);
AaiTest::kafka_all_brokers_down();
main::requests($port, 1 .. 40);
$stop->();
Test::More::cmp_ok(scalar(main::spool_files('two')), '>=', 1, 'spooled');
AaiTest::kafka_all_brokers_up();
($port, $stop) = AaiTest::start_nginx_instance('spool044', $conf,
                                               workers => 2);
main::counts_are('spooled=0 replayed=40 dropped=0 spool_full=0 '
                 . 'spool_corrupt=0', 'replayed once each', 15, $port);
# anything replayed twice would be there by now
select(undef, undef, undef, 1);
my ($n, $all) = main::arrived('two', 40);
Test::More::is($n, join(',', 1 .. 40), 'every event arrived');
Test::More::is($all, 40, 'none twice');
Test::More::ok(AaiTest::wait_until(10, sub { main::spool_files('two') == 0 }),
               'the files are removed');
$stop->();
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();
