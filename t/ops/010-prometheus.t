# The monitoring of deploy/monitoring proven on a real Prometheus (Debian's
# prometheus package): a Prometheus on a free loopback port, with its own
# data directory and deploy/monitoring/prometheus.yml (this nginx as the
# target, 1 s intervals), scrapes a real nginx with the three modules and
# evaluates deploy/monitoring/alerts.yml while traffic goes through two
# phases:
#
#   1. healthy: passes, rejections (and the blocklist), dry-run
#      rejections, delayed requests, cache misses, hits, bypasses, bytes
#      from the cache, stale and expired entries, Kafka events delivered
#      with broker RTT statistics, one fatal producer error (a restart);
#   2. failing: the limiter's Redis hangs (SIGSTOP: timeouts, then the
#      circuit opens and requests get the fallback), the cache's Redis
#      refuses writes (maxmemory), every Kafka broker is down (events fail
#      after message.timeout.ms, the small queue fills and drops).
#
# Then, at one instant T at which Prometheus holds a non-empty Kafka
# queue, every query of the Grafana dashboard (template variables
# substituted as Grafana would, the $instance and $zone "All" as ".*") and
# every alert expression (as Prometheus parsed them from alerts.yml) is
# evaluated through the HTTP API.  Asserted: each evaluates without error,
# each dashboard query has a non-zero value and each alert expression a
# non-empty result, except the few listed in %NoData with the reason; the
# template variables' label queries find the instance and the zones; and
# Prometheus reports every rule healthy.  A table of all of them is
# printed (diag).
#
# Run by make ops-test (not by make test: it needs the prometheus package
# and takes about a minute).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest;
use JSON::PP ();
use File::Temp ();
use File::Spec ();
use POSIX qw( :sys_wait_h SIGTERM SIGKILL SIGSTOP SIGCONT );
use Time::HiRes qw( time sleep );

my $Prometheus = $ENV{AAI_PROMETHEUS} || '/usr/bin/prometheus';
plan skip_all => "no $Prometheus (scripts/install-deps --ops)"
    unless -x $Prometheus;
plan skip_all => 'needs the three modules and the Kafka mock'
    unless ($ENV{TEST_NGINX_LOAD_MODULES} // '') =~ /ratelimit/
        && $ENV{TEST_NGINX_LOAD_MODULES} =~ /cache/
        && $ENV{TEST_NGINX_LOAD_MODULES} =~ /kafka/
        && $ENV{TEST_NGINX_KAFKA_BROKERS};

my $Mon = File::Spec->rel2abs('deploy/monitoring');
my $Dashboard = "$Mon/grafana/dashboards/aai-nginx.json";
my $Range = '2m';      # $__rate_interval and $__range: the whole test

# queries expected to have no data here, and why
my %NoData = (
    'alert AaiKafkaQueueNearFull' =>
        'fires at 80000 queued events; the queue here holds 2 x 20',
    'alert AaiMetricsDown' => 'nginx is up: up == 0 is rightly empty',
);

my $tmp = File::Temp::tempdir('aai-ops-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $tag = "$$-" . int(time);
my $topic = "aai-ops-$tag";
my @procs;

END {
    local $?;
    for my $p (@procs) {
        kill SIGCONT, $p;
        kill SIGTERM, $p;
    }
    for my $p (@procs) {
        my $deadline = time + 5;
        while (time < $deadline && waitpid($p, WNOHANG) == 0) {
            sleep 0.05;
        }
        kill SIGKILL, $p if waitpid($p, WNOHANG) == 0;
    }
    eval { kafka_all_brokers_up() };
}

sub spawn {
    my ($log, @cmd) = @_;
    my $pid = fork();
    die "fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $log;
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    push @procs, $pid;
    return $pid;
}

sub wait_for {
    my ($what, $secs, $cond) = @_;
    my $deadline = time + $secs;
    until ($cond->()) {
        die "timed out waiting for $what\n" if time > $deadline;
        sleep 0.1;
    }
}

# --- Redis: our own servers, so that they can hang and refuse ------------

sub redis_server {
    my $port = free_port();
    mkdir "$tmp/redis-$port";
    my $pid = spawn("$tmp/redis-$port.log", 'redis-server', '--port', $port,
                    '--bind', '127.0.0.1', '--save', '', '--appendonly',
                    'no', '--dir', "$tmp/redis-$port");
    wait_for("redis on $port", 10, sub {
        my $r = eval { redis_cmd_port($port, 'PING') };
        defined $r && $r eq 'PONG';
    });
    return ($port, $pid);
}

my ($rl_port, $rl_pid) = redis_server();
my ($cache_port) = redis_server();

# --- nginx with the three modules ---------------------------------------

my ($port) = start_nginx_instance('ops', <<"_EOC_", workers => 2);
    aai_ratelimit_redis 127.0.0.1:$rl_port connect_timeout=100ms
                        timeout=100ms;
    aai_ratelimit_fallback allow;
    aai_ratelimit_zone open   key=\$arg_u rate=100000r/s;
    aai_ratelimit_zone strict key=\$arg_u rate=1r/m;
    aai_ratelimit_zone burst  key=\$arg_u rate=20r/s burst=5;

    aai_cache_redis 127.0.0.1:$cache_port connect_timeout=100ms
                    timeout=100ms;

    aai_kafka_brokers $ENV{TEST_NGINX_KAFKA_BROKERS};
    aai_kafka_property queue.buffering.max.messages 20;
    aai_kafka_property message.timeout.ms 3000;
    aai_kafka_property statistics.interval.ms 1000;

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;

        location = /metrics {
            aai_metrics;
        }

        # the application stand-in
        location /app/ {
            if (\$arg_mode = fail) {
                return 500;
            }
            return 200 "a response body of \$uri\\n";
        }

        location = /api {
            aai_ratelimit open;
            aai_kafka_event $topic key=\$arg_u;
            proxy_pass http://127.0.0.1:\$TEST_NGINX_INSTANCE_PORT/app/api;
        }

        location = /strict {
            aai_ratelimit strict;
            aai_kafka_event $topic;
            proxy_pass http://127.0.0.1:\$TEST_NGINX_INSTANCE_PORT/app/strict;
        }

        location = /dry {
            aai_ratelimit strict;
            aai_ratelimit_dry_run on;
            proxy_pass http://127.0.0.1:\$TEST_NGINX_INSTANCE_PORT/app/dry;
        }

        location = /burst {
            aai_ratelimit burst;
            proxy_pass http://127.0.0.1:\$TEST_NGINX_INSTANCE_PORT/app/burst;
        }

        location /c/ {
            aai_cache on;
            aai_cache_key \$uri;
            aai_cache_valid 200 1s;
            aai_cache_use_stale error http_500;
            aai_cache_bypass \$arg_nocache;
            aai_kafka_event $topic;
            set \$app http://127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
            proxy_pass \$app/app\$uri?\$args;
        }

        location /e/ {
            aai_cache on;
            aai_cache_key \$uri;
            aai_cache_valid 200 1s;
            proxy_pass http://127.0.0.1:\$TEST_NGINX_INSTANCE_PORT/app\$uri;
        }
    }
_EOC_

# --- Prometheus ----------------------------------------------------------

my $pport = free_port();

# deploy/monitoring/prometheus.yml itself, with this nginx as the target,
# its alerts.yml by absolute path, and 1 s intervals for a short test
open my $in, '<', "$Mon/prometheus.yml" or die "$Mon/prometheus.yml: $!\n";
my $pconf = do { local $/; <$in> };
close $in;
for ([qr/scrape_interval: 15s/, "scrape_interval: 1s\n  scrape_timeout: 1s"],
     [qr/evaluation_interval: 15s/, 'evaluation_interval: 1s'],
     [qr/- alerts\.yml/, "- $Mon/alerts.yml"],
     [qr/'front:80'/, "'127.0.0.1:$port'"])
{
    $pconf =~ s/$_->[0]/$_->[1]/
        or BAIL_OUT("prometheus.yml has no $_->[0]");
}
open my $cf, '>', "$tmp/prometheus.yml" or die "$!\n";
print $cf $pconf;
close $cf;

spawn("$tmp/prometheus.log", $Prometheus,
      "--config.file=$tmp/prometheus.yml",
      "--storage.tsdb.path=$tmp/data",
      "--web.listen-address=127.0.0.1:$pport",
      '--log.level=warn');

sub prom {
    my ($path, %args) = @_;
    my $q = join '&', map {
        my $v = $args{$_};
        $v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
        "$_=$v";
    } sort keys %args;
    my ($st, undef, $body) = http_get($pport, $q ? "$path?$q" : $path);
    my $r = eval { JSON::PP->new->decode($body // '') };
    return $r || { status => 'error', error => "HTTP "
                   . ($st // 'none') . ": " . substr($body // '', 0, 200) };
}

wait_for('Prometheus ready', 30, sub {
    my ($st) = http_get($pport, '/-/ready');
    defined $st && $st == 200;
});
wait_for('the first scrape', 15, sub {
    my $r = prom('/api/v1/query', query => 'up{job="aai-nginx"} == 1');
    $r->{status} eq 'success' && @{ $r->{data}{result} };
});
pass('Prometheus scrapes nginx');

# --- phase 1: healthy ---------------------------------------------------
#
# Enough requests for the alerts' thresholds: their rates are over 5 and
# 10 minute windows (which Prometheus divides by the whole window), e.g.
# more than 1 rejection/s takes more than 300 rejections in 5 minutes.

sub get { my @r = http_get($port, $_[0]); return $r[0] // 0 }

my $t0 = time;
is(get('/c/stale'), 200, 'an entry to serve stale later');
is(get('/e/expiring'), 200, 'an entry to expire');

for my $round (1 .. 6) {
    get("/api?u=a$round") for 1 .. 5;
    get('/strict?u=hammer') for 1 .. 80;
    get('/dry?u=dry') for 1 .. 2;
    get('/burst?u=b') for 1 .. 4;
    get("/c/miss-$round-$_") for 1 .. 150;
    get('/c/hot') for 1 .. 2;
    get('/c/hot?nocache=1');
    sleep 0.5;
}

is(get('/c/stale?mode=fail'), 200, 'the expired entry served stale');
is(get('/e/expiring'), 200, 'the expired entry fetched again');

# a fatal producer error (kmock fails a Produce: lost idempotence sequence)
AaiTest::_kmock_ctl('produce_errors 45 1');
get("/api?u=fatal$_") for 1 .. 4;
my $m = metrics_wait($port, '/metrics', sub {
    ($_[0]{aai_kafka_producer_restarts_total} // 0) >= 1
    && ($_[0]{'aai_kafka_events_total{outcome="delivered"}'} // 0) >= 10
}, 20);
cmp_ok($m->{aai_kafka_producer_restarts_total} // 0, '>=', 1,
       'a producer was rebuilt');
cmp_ok($m->{'aai_kafka_broker_rtt_seconds_count'} // 0, '>', 0,
       'broker RTT observed');

# --- phase 2: failing ---------------------------------------------------

kafka_broker_down($_) for 1 .. 3;
kill SIGSTOP, $rl_pid;
redis_cmd_port($cache_port, 'CONFIG', 'SET', 'maxmemory', '1');

for my $round (1 .. 8) {
    get("/api?u=f$round") for 1 .. 3;
    get("/strict?u=f$round");
    get("/c/down-$round-$_") for 1 .. 6;
    get('/c/hot');
    sleep 0.3;
}

$m = metrics_wait($port, '/metrics', sub {
    my $m = shift;
    get("/api?u=wait");
    ($m->{'aai_kafka_events_total{outcome="failed"}'} // 0) > 0
    && ($m->{'aai_kafka_events_total{outcome="dropped"}'} // 0) > 0
    && ($m->{'aai_ratelimit_redis_errors_total{reason="unavailable"}'}
        // 0) > 0
    && ($m->{aai_cache_store_failures_total} // 0) > 0
}, 20);
for my $k ('aai_kafka_events_total{outcome="failed"}',
           'aai_kafka_events_total{outcome="dropped"}',
           'aai_ratelimit_redis_errors_total{reason="timeout"}',
           'aai_ratelimit_redis_errors_total{reason="unavailable"}',
           'aai_ratelimit_requests_total{zone="open",outcome="error"}',
           'aai_cache_store_failures_total')
{
    cmp_ok($m->{$k} // 0, '>', 0, "$k counts in the failing phase");
}

# the instant T: the last scrape holds a non-empty queue
my $T;
wait_for('a queued event scraped', 20, sub {
    get("/api?u=queue$_") for 1 .. 5;
    my $r = prom('/api/v1/query',
                 query => 'timestamp(sum(aai_kafka_queue_depth) > 0)');
    return 0 unless $r->{status} eq 'success' && @{ $r->{data}{result} };
    $T = $r->{data}{result}[0]{value}[1];
    return 1;
});
diag(sprintf('traffic %.1f s, evaluating at T = %s', time - $t0, $T));

# let the rules be evaluated at T at least once
sleep 1.5;

# --- every dashboard query and alert expression -------------------------

open my $fh, '<', $Dashboard or die "$Dashboard: $!\n";
my $dash = JSON::PP->new->decode(do { local $/; <$fh> });
close $fh;

my @queries;
my @panels = @{ $dash->{panels} };
while (my $p = shift @panels) {
    push @panels, @{ $p->{panels} || [] };
    for my $t (@{ $p->{targets} || [] }) {
        push @queries, ["panel \"$p->{title}\" $t->{refId}", $t->{expr}, 1];
    }
}
cmp_ok(scalar @queries, '>=', 25, 'dashboard queries found');

my $rules = prom('/api/v1/rules');
is($rules->{status}, 'success', 'rules listed');
my $nrules = 0;
for my $g (@{ $rules->{data}{groups} || [] }) {
    for my $r (@{ $g->{rules} }) {
        $nrules++;
        is($r->{health}, 'ok', "rule $r->{name} healthy")
            or diag($r->{lastError});
        push @queries, ["alert $r->{name}", $r->{query}, 0];
    }
}
cmp_ok($nrules, '>=', 10, 'alert rules loaded from alerts.yml');

my @table;
for my $q (@queries) {
    my ($name, $expr, $is_panel) = @$q;
    (my $e = $expr) =~ s/\$__rate_interval|\$__range/$Range/g;
    $e =~ s/\$(instance|zone)\b/.*/g;
    unlike($e, qr/\$/, "$name: no unsubstituted variable");
    my $r = prom('/api/v1/query', query => $e, time => $T);
    is($r->{status}, 'success', "$name evaluates")
        or diag("$e: $r->{error}");
    my @res = @{ $r->{data}{result} || [] };
    my @vals = map { $_->{value}[1] } @res;
    my $nonzero = grep { $_ !~ /NaN|Inf/ && $_ != 0 } @vals;
    my $state = !@res ? 'empty' : $nonzero ? 'data' : 'zero/NaN';
    push @table, sprintf('%-9s %-60s %s', $state, $name,
                         join(' ', map { /^(-?\d+(?:\.\d{1,4})?)/ ? $1 : $_ }
                                   @vals[0 .. ($#vals < 2 ? $#vals : 2)]));
    if ($NoData{$name}) {
        ok(!@res, "$name: no data here ($NoData{$name})");
    } elsif ($is_panel) {
        ok($nonzero, "$name has a non-zero value") or diag($e);
    } else {
        ok(scalar @res, "$name holds (the traffic makes it true)")
            or diag($e);
    }
}
diag(sprintf('%-9s %-60s %s', 'state', 'query', 'values at T'));
diag($_) for @table;

# the template variables (label_values(selector, label) in Grafana)
for my $v (@{ $dash->{templating}{list} }) {
    my ($sel, $label) = ($v->{definition} // '')
                        =~ /^label_values\((.*),\s*(\w+)\)$/ or next;
    $sel =~ s/\$(instance|zone)\b/.*/g;
    my $r = prom("/api/v1/label/$label/values", 'match[]' => $sel);
    ok(@{ $r->{data} || [] }, "variable \$$v->{name} finds values")
        and diag("\$$v->{name}: @{ $r->{data} }");
}

my @zones = @{ prom('/api/v1/label/zone/values')->{data} || [] };
is("@zones", 'burst open strict', 'the zones');

# alerts Prometheus itself has pending or firing
my $alerts = prom('/api/v1/alerts');
diag('pending or firing in Prometheus: ' . join ', ',
     map { "$_->{labels}{alertname}($_->{state})" }
     @{ $alerts->{data}{alerts} || [] });

done_testing();
