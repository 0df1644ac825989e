# What the README promises across the modules that no other file proves:
# the metrics of every module are summed over all workers (shared memory)
# and kept over a reload that keeps the set of zones; the Kafka module's
# default event works without the other modules loaded, its user,
# ratelimit and cache fields then null.  (The limiter deciding before the
# cache looks up, and each event carrying the user, the limit outcome and
# the cache outcome of its own request, are in t/070-cross-module.t.)

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $topic = "x071x$$" . int(rand(1e6));

redis_flushdb();

# --- metrics summed over two workers, kept over a reload --------------------

my ($port, $stop, $prefix) = start_nginx_instance('x071', <<"_EOC_",
    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=2s
                        connect_timeout=2s;
    aai_cache_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=2s
                    connect_timeout=2s;
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    aai_ratelimit_zone x071 key=\$arg_u rate=100000r/m;

    server {
        # reuseport: the kernel spreads the connections over both workers
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT reuseport;
        location /c/ {
            aai_ratelimit x071;
            aai_cache on;
            aai_cache_valid 200 1m;
            aai_kafka_event $topic;
            add_header X-Pid \$pid always;
            add_header X-Status \$aai_cache_status always;
            proxy_pass http://127.0.0.1:\$TEST_NGINX_INSTANCE_PORT/app/;
        }
        location /app/ { return 200 "app\\n"; }
        location /metrics { aai_metrics; }
    }
_EOC_
    workers => 2);

my %pids;
my %status;
my $n = 0;
# requests until both workers served some (bounded), at least 20
while ($n < 20 || (keys %pids < 2 && $n < 400)) {
    $n++;
    my ($st, $h) = http_get($port, '/c/a?u=x071');
    $pids{ $h->{'x-pid'} // 'none' }++;
    $status{ ($st // 'none') . ' ' . ($h->{'x-status'} // '') }++;
}
is(scalar keys %pids, 2, "both workers served requests ($n requests: "
   . join(', ', map { "$_: $pids{$_}" } sort keys %pids) . ')');
is(($status{'200 MISS'} // 0) + ($status{'200 HIT'} // 0), $n,
   'every request passed, a hit or a miss');

my @fam = ('aai_ratelimit_requests_total{zone="x071",outcome="passed"}',
           'aai_cache_requests_total{status="miss"}',
           'aai_cache_requests_total{status="hit"}',
           'aai_kafka_events_total{outcome="produced"}',
           'aai_kafka_events_total{outcome="delivered"}');

sub totals {
    my $m = shift;
    return join ' ', map { $m->{$_} // 'none' } @fam;
}

my $m = metrics_wait($port, '/metrics', sub {
    ($_[0]{$fam[4]} // 0) >= $n });
my $want = join ' ', $n, $status{'200 MISS'} // 0, $status{'200 HIT'} // 0,
                     $n, $n;
is(totals($m), $want,
   'passed, misses, hits, produced, delivered: the sums of both workers');

# the same whichever worker answers (/metrics is not in the families)
my @reads = map { totals(metrics_get($port)) } 1 .. 10;
is(scalar(grep { $_ ne $want } @reads), 0,
   'ten reads of /metrics, whichever worker answers: the same sums');

# a reload keeps them (the zones did not change)
my @new = hup_wait($prefix, 10);
is(scalar @new, 2, 'reloaded: two new workers');
is(totals(metrics_get($port)), $want, 'the sums survive the reload');

my ($st, $h) = http_get($port, '/c/a?u=x071');
is("$st $h->{'x-status'}", '200 HIT', 'after the reload: a hit');
$m = metrics_wait($port, '/metrics', sub { ($_[0]{$fam[4]} // 0) > $n });
is(totals($m), join(' ', $n + 1, $status{'200 MISS'} // 0,
                    ($status{'200 HIT'} // 0) + 1, $n + 1, $n + 1),
   'and the new workers add to them');

my @e = kafka_events($topic, $n + 1);
is(scalar @e, $n + 1, 'every event arrived once');

$stop->();
no_log_problems("$prefix/logs/error.log", 'metrics: no alert, no crash');


# --- the Kafka module alone: the default event's other fields are null -----

{
    my ($kafka) = grep { /ngx_http_aai_kafka_module\.so$/ }
                  split /\s+/, $ENV{TEST_NGINX_LOAD_MODULES} // '';
    ok($kafka, 'the Kafka module is built');
    local $ENV{TEST_NGINX_LOAD_MODULES} = $kafka;
    my $t2 = "${topic}k";
    my ($p, $s, $pre) = start_nginx_instance('x071k', <<"_EOC_");
    aai_kafka_brokers \$TEST_NGINX_KAFKA_BROKERS;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / { aai_kafka_event $t2; return 200 "ok\\n"; }
    }
_EOC_
    my @mods = grep { /aai/ } file_lines("$pre/conf/nginx.conf");
    is(scalar(grep { /load_module/ } @mods), 1, 'only the Kafka module loaded');
    my ($st) = http_get($p, '/alone', { Authorization => 'Bearer x.y.z' });
    is($st, 200, 'served');
    my ($ev) = kafka_events($t2, 1);
    my $e = $ev ? $ev->{event} : {};
    is(join(' ', map { exists $e->{$_} ? $e->{$_} // 'null' : 'absent' }
                 qw( uri user ratelimit cache )),
       '/alone null null null',
       'the default event: user, ratelimit and cache null');
    $s->();
    no_log_problems("$pre/logs/error.log", 'kafka alone: no alert, no crash');
}

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: the three modules' families in one aai_metrics, HEAD too
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_ratelimit_zone m071 key=$arg_u rate=1r/s;
--- config
    location /metrics { aai_metrics; }
--- request eval
["GET /metrics", "HEAD /metrics"]
--- error_code eval
[200, 200]
--- response_body_like eval
[qr/\A(?=(?s:.*)^aai_ratelimit_requests_total\{zone="m071",outcome="passed"\} 0$)(?=(?s:.*)^aai_cache_stored_total 0$)(?=(?s:.*)^aai_kafka_queue_depth 0$)/m,
 qr/^$/]
