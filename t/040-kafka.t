# ngx_http_aai_kafka_module: what arrives in Kafka (fields, types, escaping,
# keys and partitions, if=, inheritance, default format, metrics).
#
# Needs the Kafka mock of t/run-tests (TEST_NGINX_KAFKA_BROKERS).  Each block
# writes to topics of its own (auto-created, named after this run) or, for
# the partition test, filters the shared 12-partition topic by a key prefix
# unique to this run, so blocks and runs never see each other's events.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;

$ENV{TEST_NGINX_KAFKA_BROKERS} ||= '127.0.0.1:9092';
$ENV{TEST_NGINX_KRUN} = "k040x$$" . int(rand(1e6));

# read by "aai_kafka_property client.id env:..." when nginx reads its
# configuration
$ENV{AAI_KAFKA_TEST_CLIENT_ID} = 'aai-kafka-test';

our $Run = $ENV{TEST_NGINX_KRUN};

# the events of a topic of this run, decoded; fails on invalid ones
sub events_of {
    my ($suffix, $count, $match) = @_;
    my @e = kafka_events("$Run-$suffix", $count, 10, $match);
    my @bad = grep { !defined $_->{event} } @e;
    is(scalar @bad, 0, "$suffix: every event is valid JSON")
        or diag($bad[0]{error});
    return grep { defined $_->{event} } @e;
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: typed fields: numbers, booleans, nulls, strings, literals
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format typed
        ts=$msec:number uri=$uri status=$status:number
        latency=$request_time:number n=$arg_n:number bad=$arg_bad:number
        b1=$arg_b1:bool b0=$arg_b0:bool bx=$arg_bx:bool
        missing=$http_x_missing empty=$arg_empty lit=const
        combo=${arg_a}-$arg_b s=$arg_s:string status_str=$status;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-typed format=typed;
        return 200 "ok\n";
    }
--- request
GET /t?n=-1.5e3&bad=0x1F&b1=on&b0=false&bx=maybe&a=x&b=y&s=42&empty=
--- response_body
ok
--- aai_after
my @e = events_of('typed', 1);
is(scalar @e, 1, 'one event');
my $raw = $e[0]{payload};
like($raw, qr/^\{"ts":\d+\.\d{3},"uri":"\/t","status":200,"latency":\d+\.\d+,/,
     'field order and number types');
like($raw, qr/"n":-1.5e3,"bad":null,/, 'number kept as written, non-number null');
like($raw, qr/"b1":true,"b0":false,"bx":null,/, 'booleans');
like($raw, qr/"missing":null,"empty":null,"lit":"const",/, 'null and literal');
like($raw, qr/"combo":"x-y","s":"42","status_str":"200"\}$/, 'strings');
is_deeply([sort keys %{ $e[0]{event} }],
          [sort qw(ts uri status latency n bad b1 b0 bx missing empty lit
                   combo s status_str)], 'all fields, nothing else');
--- no_error_log
[error]



=== TEST 2: default format when no format= is given
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location = /d {
        aai_kafka_event $TEST_NGINX_KRUN-default;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location = /backend {
        return 200 "backend\n";
    }
--- request
GET /d?q=1
--- response_body
backend
--- aai_after
my @e = events_of('default', 1);
is(scalar @e, 1, 'one event');
my $ev = $e[0]{event};
is_deeply([sort keys %$ev],
          [sort qw(ts ip method uri status latency user ratelimit cache
                   upstream_time bytes)], 'default field set');
is($ev->{ip}, '127.0.0.1', 'ip');
is($ev->{method}, 'GET', 'method');
is($ev->{uri}, '/d', 'uri');
is($ev->{user}, undef, 'no identity: user is null');
my $raw = $e[0]{payload};
like($raw, qr/"status":200,"latency":\d+\.\d+,/, 'status and latency numbers');
like($raw, qr/"upstream_time":\d+\.\d+,"bytes":\d+\}$/,
     'upstream_time and bytes numbers');
--- no_error_log
[error]



=== TEST 3: the key decides the partition: same user, same partition
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format u user=$arg_user n=$arg_n:number;
--- config
    location = /u {
        aai_kafka_event user-events format=u key=$TEST_NGINX_KRUN-$arg_user;
        return 204;
    }
--- request eval
[map { my $u = $_ % 8; "GET /u?user=u$u&n=$_" } 1 .. 24]
--- error_code eval
[(204) x 24]
--- aai_after
my @e = kafka_events('user-events', 24, 10,
                     sub { ($_[0]{key} // '') =~ /^\Q$Run\E-/ });
is(scalar @e, 24, 'all 24 events in user-events');
my (%part, %all);
for my $m (@e) {
    $part{$m->{key}}{$m->{partition}} = 1;
    $all{$m->{partition}} = 1;
    is($m->{key}, "$Run-" . $m->{event}{user}, 'key is the user');
}
is(scalar keys %part, 8, 'eight users');
for my $k (sort keys %part) {
    is(scalar keys %{ $part{$k} }, 1, "$k: one partition");
}
cmp_ok(scalar keys %all, '>', 1, 'users spread over partitions');



=== TEST 4: if= (empty or "0" skips) and several events per request
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /if {
        aai_kafka_event $TEST_NGINX_KRUN-all format=n;
        aai_kafka_event $TEST_NGINX_KRUN-cond format=n if=$arg_send;
        return 204;
    }
--- request eval
["GET /if?n=1&send=1", "GET /if?n=2&send=0", "GET /if?n=3&send=",
 "GET /if?n=4", "GET /if?n=5&send=yes", "GET /if?n=6&send=00"]
--- error_code eval
[(204) x 6]
--- aai_after
my @all = events_of('all', 6);
is(join(',', sort map { $_->{event}{n} } @all), '1,2,3,4,5,6',
   'unconditional event for every request');
my @cond = events_of('cond', 3);
sleep 0.5;
@cond = events_of('cond', 3);
is(join(',', sort map { $_->{event}{n} } @cond), '1,5,6',
   'conditional event only when if= is neither empty nor "0"');



=== TEST 5: hostile URI and header bytes give valid JSON
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format h uri=$uri evil=$http_x_evil ok=$http_x_ok;
--- config
    location /h/ {
        aai_kafka_event $TEST_NGINX_KRUN-hostile format=h;
        return 200 "ok\n";
    }
--- more_headers eval
"X-Evil: a\"b\\c\x01\x1b\x7f\xff\xfe\xc3(\xe2\x82 tail\n"
. "X-Ok: \xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e"
--- request eval
"GET /h/%22q%5C%01%0A%1F%7F%FF%C0%AF%ED%A0%80%F4%90%80%80end?x=%22"
--- response_body
ok
--- aai_after
my @e = events_of('hostile', 1);
is(scalar @e, 1, 'one event, strict UTF-8 JSON');
my $raw = $e[0]{payload};
unlike($raw, qr/[\x00-\x1f]/, 'no raw control characters');
my $fffd = "\xef\xbf\xbd";
ok(index($raw, '"evil":"a\\"b\\\\c\\u0001\\u001b' . "\x7f" . ($fffd x 3)
             . '(' . $fffd . ' tail"') >= 0,
   'escapes as written: \\" \\\\ \\u00XX in lower case, DEL as is')
    or diag($raw);
my $r = "\x{FFFD}";
is($e[0]{event}{uri}, "/h/\"q\\\x01\n\x1f\x7f" . ($r x 10) . "end",
   'URI: escapes kept, invalid sequences replaced one by one');
is($e[0]{event}{evil}, "a\"b\\c\x01\x1b\x7f$r$r$r($r tail",
   'header: escapes kept, invalid sequences replaced');
is($e[0]{event}{ok}, "\x{e9}\x{20ac}\x{1d11e}", 'valid UTF-8 kept as is');
--- no_error_log
[error]



=== TEST 6: inheritance like access_log, and "aai_kafka_event off"
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format n n=$arg_n:number;
--- config
    aai_kafka_event $TEST_NGINX_KRUN-srv format=n;

    location = /inherit {
        return 204;
    }
    location = /own {
        aai_kafka_event $TEST_NGINX_KRUN-own format=n;
        return 204;
    }
    location = /off {
        aai_kafka_event off;
        return 204;
    }
--- request eval
["GET /inherit?n=1", "GET /own?n=2", "GET /off?n=3", "GET /inherit?n=4"]
--- error_code eval
[204, 204, 204, 204]
--- aai_after
my @srv = events_of('srv', 2);
my @own = events_of('own', 1);
sleep 0.5;
@srv = events_of('srv', 2);
is(join(',', sort map { $_->{event}{n} } @srv), '1,4',
   'server level events inherited, replaced and switched off');
is(join(',', map { $_->{event}{n} } @own), '2', 'location level event');



=== TEST 7: env: property, acks=1 (idempotence then off), and counters
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property acks 1;
    aai_kafka_property client.id env:AAI_KAFKA_TEST_CLIENT_ID;
    aai_kafka_property debug conf;
    aai_kafka_format n n=$arg_n:number;
--- config
    location = /t {
        aai_kafka_event $TEST_NGINX_KRUN-acks format=n;
        return 204;
    }
    location = /metrics {
        aai_metrics;
    }
--- init
# runs in the runner's package: qualify names
my $port = $ENV{TEST_NGINX_SERVER_PORT};
AaiTest::answered_ok($port, '/t?n=%s', [1 .. 5]);
AaiTest::metrics_wait($port, '/metrics', sub {
    ($_[0]{'aai_kafka_events_total{outcome="delivered"}'} // 0) >= 5
});
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="produced"\} 5
aai_kafka_events_total\{outcome="delivered"\} 5
aai_kafka_events_total\{outcome="failed"\} 0
aai_kafka_events_total\{outcome="dropped"\} 0
(?s:.*)aai_kafka_queue_depth 0
--- aai_after
my @e = events_of('acks', 5);
is(join(',', sort map { $_->{event}{n} } @e), '1,2,3,4,5', 'five events');
# librdkafka's "debug conf" prints the producer's configuration
my $log = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '/logs/error.log';
my $conf = join '', grep { /aai_kafka: librdkafka: CONF/ } file_lines($log);
like($conf, qr/\bclient\.id = aai-kafka-test\b/, 'client.id from env:');
# (its first lines only: the module limits librdkafka's lines a second.
# acks=1 with the default idempotence on would not create a producer at
# all: the five deliveries show idempotence was turned off)
--- no_error_log
[error]
