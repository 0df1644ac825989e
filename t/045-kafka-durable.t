# ngx_http_aai_kafka_module's events across the life of nginx (issue 13):
# a binary upgrade while the brokers are down, ten reloads under traffic;
# and the debug log of an event's way (issue 10).
#
# Traffic is a child process sending /t?n=N, N counting up, one request
# after another until told to stop; it notes every answer.  Every answered
# request must arrive exactly once (counted by n).  The Kafka mock is shared
# by the whole run: every block that takes brokers down brings them up
# again in --- aai_after.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );

use File::Temp ();
use POSIX ();
use Time::HiRes ();

$ENV{TEST_NGINX_KAFKA_BROKERS} ||= '127.0.0.1:9092';
$ENV{TEST_NGINX_KRUN} = "k045x$$" . int(rand(1e6));

our $Run = $ENV{TEST_NGINX_KRUN};

our $Tmp = File::Temp::tempdir('aai-durable-XXXXXX', TMPDIR => 1,
                               CLEANUP => 1);
chmod 0777, $Tmp;
$ENV{TEST_NGINX_SPOOL} = $Tmp;

sub spool_files {
    my $dir = shift;
    return grep { -s $_ } glob("$Tmp/$dir/*.spool");
}

sub instance_conf {
    my ($name, $extra) = @_;
    $extra //= '';
    return <<"_EOC_";
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_spool \$TEST_NGINX_SPOOL/$name max_size=16m;
    aai_kafka_format n n=\$arg_n:number id=\$request_id;
$extra
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location = /t {
            aai_kafka_event \$TEST_NGINX_KRUN-$name format=n key=\$arg_n;
            return 204;
        }
        location = /metrics {
            aai_metrics;
        }
    }
_EOC_
}

# requests /t?n=N from $first up in a child until traffic_stop
sub traffic_start {
    my ($port, $first) = @_;
    my ($fh, $file) = File::Temp::tempfile('aai-traffic-XXXXXX', TMPDIR => 1,
                                           UNLINK => 1);
    close $fh;
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open my $out, '>', $file or POSIX::_exit(1);
        $out->autoflush(1);
        for (my $n = $first; !-e "$file.stop"; $n++) {
            my ($st) = AaiTest::http_get($port, "/t?n=$n");
            print $out "$n " . ($st // 0) . "\n";
            Time::HiRes::sleep(0.005);
        }
        close $out;
        POSIX::_exit(0);
    }
    return { pid => $pid, file => $file };
}

# stops it; returns (the answered numbers, the failures as text)
sub traffic_stop {
    my $t = shift;
    open my $fh, '>', "$t->{file}.stop" or die "$t->{file}.stop: $!";
    close $fh;
    if (!AaiTest::wait_until(10, sub {
            waitpid($t->{pid}, POSIX::WNOHANG()) == $t->{pid} }))
    {
        kill 'KILL', $t->{pid};
        waitpid($t->{pid}, 0);
    }
    unlink "$t->{file}.stop";
    my (@ok, @bad);
    for (AaiTest::file_lines($t->{file})) {
        my ($n, $st) = split;
        if ($st == 204) {
            push @ok, $n;
        } else {
            push @bad, "/t?n=$n: $st";
        }
    }
    return (\@ok, join(', ', @bad));
}

# every answered request arrived, and none twice
sub exactly_once {
    my ($name, $ok, $timeout) = @_;
    my ($n, $all) = AaiTest::kafka_event_numbers("$Run-$name", scalar @$ok,
                                                 $timeout);
    Test::More::is($n, join(',', sort { $a <=> $b } @$ok),
                   scalar(@$ok) . ' answered requests, each event arrived');
    Test::More::is($all, scalar @$ok, 'none twice')
        or Test::More::diag(main::partitions("$Run-$name"));
}

# what a consumer reads of each partition: count, first and last offset
sub partitions {
    my $topic = shift;
    my %p;
    for my $m (AaiTest::kafka_consume($topic, undef, 5)) {
        my $q = $p{ $m->{partition} } //= [0, $m->{offset}, $m->{offset}];
        $q->[0]++;
        $q->[1] = $m->{offset} if $m->{offset} < $q->[1];
        $q->[2] = $m->{offset} if $m->{offset} > $q->[2];
    }
    return join ', ', map { "[$_] @{ $p{$_} }" } sort keys %p;
}

sub rss_kb {
    my ($s) = grep { /^VmRSS:/ } AaiTest::file_lines("/proc/$_[0]/status");
    return defined $s && $s =~ /(\d+)/ ? $1 : undef;
}

master_on();
workers(1);
no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: a binary upgrade (USR2, then QUIT to the old master) under traffic while the brokers are down: once they are back every event arrives, none twice
--- config
    location = /t {
        return 204;
    }
--- init
# the old workers keep their events in memory (message.timeout.ms 30 s):
# they reach the spool at the old workers' exit, after the new instance
# started
my $conf = main::instance_conf('upgrade', '    aai_kafka_flush_timeout 300ms;');
my ($port, $stop, $prefix) = AaiTest::start_nginx_instance('durable045',
                                                           $conf,
                                                           workers => 2);
AaiTest::kafka_all_brokers_down();
my $t = main::traffic_start($port, 1);
Time::HiRes::sleep(1);
my ($new, $old) = AaiTest::upgrade_instance($prefix);
Test::More::ok($new != $old, "a new master $new beside the old $old");
Time::HiRes::sleep(1);
kill 'QUIT', $old;
Test::More::ok(AaiTest::wait_until(10, sub { !kill 0, $old }),
               'the old master exited');
Time::HiRes::sleep(1);
my ($ok, $bad) = main::traffic_stop($t);
Test::More::is($bad, '', 'every request answered');
Test::More::cmp_ok(scalar @$ok, '>', 20, scalar(@$ok) . ' requests');
Test::More::ok(scalar(main::spool_files('upgrade')) >= 1,
               'the old workers spooled their events at exit');
AaiTest::kafka_all_brokers_up();
main::exactly_once('upgrade', $ok, 30);
Test::More::ok(AaiTest::wait_until(15, sub {
                   main::spool_files('upgrade') == 0 }),
               'every spool file replayed and removed');
$stop->();
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 2: ten reloads under traffic, five with the brokers up and five while they are down: every event arrives once, the master does not grow
--- config
    location = /t {
        return 204;
    }
--- init
my $conf = main::instance_conf('reload', '    aai_kafka_flush_timeout 5s;');
my ($port, $stop, $prefix) = AaiTest::start_nginx_instance('durable045',
                                                           $conf,
                                                           workers => 2);
my $master = AaiTest::master_pid($prefix);
my (@stuck, %rss);

my $reloads = sub {
    my ($from, $to) = @_;
    for my $i ($from .. $to) {
        # the new workers serve; the old ones may still be flushing
        my %old = map { $_ => 1 } AaiTest::worker_pids($master);
        kill 'HUP', $master;
        AaiTest::wait_until(15, sub {
            (grep { !$old{$_} } AaiTest::worker_pids($master)) == 2 })
            or push @stuck, "reload $i";
        Time::HiRes::sleep(0.3);
        $rss{$i} = main::rss_kb($master);
    }
};

# the brokers up: the old workers deliver before they exit
my $t = main::traffic_start($port, 1);
$reloads->(1, 5);
my ($ok, $bad) = main::traffic_stop($t);
Test::More::is($bad, '', 'every request answered, brokers up');
main::exactly_once('reload', $ok, 20);

# the brokers down: the old workers spool at exit, the new ones replay
# once the brokers are back (no reload then: a replay cut short by one is
# replayed from the start, see the README)
AaiTest::kafka_all_brokers_down();
$t = main::traffic_start($port, 100000);
$reloads->(6, 10);
my ($ok2, $bad2) = main::traffic_stop($t);
Test::More::is($bad2, '', 'every request answered, brokers down');
Test::More::is(join(', ', @stuck), '', 'two new workers after each reload');
Test::More::ok(AaiTest::wait_until(15, sub {
                   my @w = AaiTest::worker_pids($master);
                   my @all = AaiTest::_children($master);
                   @w == 2 && @all == 2 }),
               'the old workers exited');
AaiTest::kafka_all_brokers_up();
main::exactly_once('reload', [@$ok, @$ok2], 40);

SKIP: {
    Test::More::skip('RSS under AddressSanitizer (quarantine)', 1)
        if $ENV{AAI_ASAN};
    my $grew = $rss{10} - $rss{3};
    Test::More::cmp_ok($grew, '<', 2048, "master RSS $rss{3} kB after "
                       . "reload 3, $rss{10} kB after reload 10");
}
my $log = "$prefix/logs/error.log";
my $reconf = grep { /signal 1 \(SIGHUP\) received.*reconfiguring/ }
             AaiTest::file_lines($log);
Test::More::is($reconf, 10, 'the master logged 10 reconfigurations');
AaiTest::no_log_problems($log);
$stop->();
--- request
GET /t
--- error_code: 204
--- aai_after
kafka_all_brokers_up();



=== TEST 3: the debug log shows an event's way: formatted, queued, delivered; not delivered, spooled, replayed, delivered
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property message.timeout.ms 1000;
    aai_kafka_spool $TEST_NGINX_SPOOL/debug;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-debug format=n if=$arg_n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
my ($st) = AaiTest::http_get($ENV{TEST_NGINX_SERVER_PORT}, '/t?n=1');
Test::More::is($st, 204, 'answered');
my ($n) = AaiTest::kafka_event_numbers("$main::Run-debug", 1, 10);
Test::More::is($n, '1', 'delivered');
AaiTest::kafka_all_brokers_down();
($st) = AaiTest::http_get($ENV{TEST_NGINX_SERVER_PORT}, '/t?n=2');
Test::More::is($st, 204, 'answered');
AaiTest::metrics_wait($ENV{TEST_NGINX_SERVER_PORT}, '/metrics', sub {
    ($_[0]->{'aai_kafka_events_total{outcome="spooled"}'} // 0) == 1 }, 10);
AaiTest::kafka_all_brokers_up();
($n) = AaiTest::kafka_event_numbers("$main::Run-debug", 2, 20);
Test::More::is($n, '1,2', 'the spooled one replayed');
--- request
GET /t
--- error_code: 204
--- error_log eval
[
qr/aai_kafka: event formatted, format "n", \d+ bytes/,
qr/aai_kafka: event queued for "k045x\w+-debug", 1 in flight/,
qr/aai_kafka: event delivered to "k045x\w+-debug" \[\d+\] at offset \d+/,
qr/aai_kafka: event for "k045x\w+-debug" not delivered: /,
qr/aai_kafka: event for "k045x\w+-debug" spooled: /,
qr/aai_kafka: 1 events written to "[^"]+\.spool"/,
qr/aai_kafka: spooled event replayed, queued for "k045x\w+-debug"/,
qr/aai_kafka: event \(replayed\) delivered to "k045x\w+-debug" \[\d+\] at offset \d+/,
qr/aai_kafka: event 0 skipped by if=/,
]
--- aai_after
kafka_all_brokers_up();
