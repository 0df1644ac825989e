# ngx_http_aai_kafka_module: invalid configuration fails at startup (and
# "nginx -t") with a message naming the directive and the value.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );   # nginx_t: "nginx -t" on a text

use File::Path qw( make_path remove_tree );

$ENV{TEST_NGINX_KAFKA_BROKERS} ||= '127.0.0.1:9092';

# read at configuration time by "env:" property values
$ENV{AAI_KAFKA_TEST_BAD_LINGER} = 'secret-abc';
delete $ENV{AAI_KAFKA_TEST_UNSET};

# the topic of this run (TEST 23 sends an event to it)
$ENV{TEST_NGINX_K042} = "k042x$$" . int(rand(1e6));


# "nginx -t" also checks the properties as a whole, as librdkafka does
# when it creates the producer (the master never creates one)
{
    my $b = "aai_kafka_brokers $ENV{TEST_NGINX_KAFKA_BROKERS};";
    my ($code, $out) = nginx_t("$b\naai_kafka_property acks 1;\n"
                               . "aai_kafka_property enable.idempotence "
                               . "true;");
    isnt($code, 0, 'nginx -t: acks=1 with enable.idempotence=true fails');
    like($out, qr/invalid Kafka producer configuration in "aai_kafka_property": `acks` must be set to `all` when `enable.idempotence` is true/,
         'nginx -t: names the directive and the conflict');

    ($code, $out) = nginx_t("$b\naai_kafka_property message.timeout.ms 5;");
    isnt($code, 0, 'nginx -t: message.timeout.ms below linger.ms fails');
    like($out, qr/"aai_kafka_property": `message.timeout.ms` must be greater than `linger.ms`/,
         'nginx -t: names the conflict');

    ($code, $out) = nginx_t("$b\naai_kafka_property acks 1;");
    is($code, 0, 'nginx -t: acks=1 alone turns the idempotent default off')
        or diag($out);

    ($code, $out) = nginx_t("$b\naai_kafka_property security.protocol ssl;"
                            . "\naai_kafka_property ssl.ca.location "
                            . "/nonexistent/ca.pem;");
    isnt($code, 0, 'nginx -t: a missing CA file fails');
    like($out, qr/"aai_kafka_property": ssl\.ca\.location failed/,
         'nginx -t: names the TLS property');

    ($code, $out) = nginx_t("$b\naai_kafka_format f a=\$uri;\n"
                            . "server { listen 127.0.0.1:1; "
                            . "aai_kafka_event t1 format=f; }");
    is($code, 0, 'nginx -t: a valid configuration passes') or diag($out);
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: unknown property
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property foo.bar 1;
--- config
--- must_die
--- error_log
invalid property "foo.bar" "1" in "aai_kafka_property": No such configuration property: "foo.bar"



=== TEST 2: invalid property value
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property compression.type zzz;
--- config
--- must_die
--- error_log
invalid property "compression.type" "zzz" in "aai_kafka_property": Invalid value "zzz"



=== TEST 3: invalid number
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property linger.ms abc;
--- config
--- must_die
--- error_log
invalid property "linger.ms" "abc" in "aai_kafka_property"



=== TEST 4: env: names an unset variable
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property sasl.password env:AAI_KAFKA_TEST_UNSET;
--- config
--- must_die
--- error_log
environment variable "AAI_KAFKA_TEST_UNSET" for property "sasl.password" in "aai_kafka_property" is not set



=== TEST 5: an invalid value from the environment is reported, not printed
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property linger.ms env:AAI_KAFKA_TEST_BAD_LINGER;
--- config
--- must_die
--- error_log
invalid value of environment variable "AAI_KAFKA_TEST_BAD_LINGER" for property "linger.ms" in "aai_kafka_property"
--- no_error_log
secret-abc



=== TEST 6: log.queue is the module's
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_property log.queue false;
--- config
--- must_die
--- error_log
property "log.queue" in "aai_kafka_property" is managed by the module



=== TEST 7: events without brokers
--- config
    location / {
        aai_kafka_event events;
    }
--- must_die
--- error_log
"aai_kafka_event" requires "aai_kafka_brokers"



=== TEST 8: invalid topic name
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location / {
        aai_kafka_event "user events";
    }
--- must_die
--- error_log
invalid topic name "user events" in "aai_kafka_event"



=== TEST 9: unknown format
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location / {
        aai_kafka_event events format=nope;
    }
--- must_die
--- error_log
unknown format "nope" in "aai_kafka_event"



=== TEST 10: unknown parameter
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location / {
        aai_kafka_event events partition=3;
    }
--- must_die
--- error_log
invalid parameter "partition=3" in "aai_kafka_event"



=== TEST 11: empty key=
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location / {
        aai_kafka_event events key=;
    }
--- must_die
--- error_log
invalid parameter "key=" in "aai_kafka_event"



=== TEST 12: "off" with parameters
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location / {
        aai_kafka_event off if=$arg_x;
    }
--- must_die
--- error_log
invalid parameter "if=$arg_x" in "aai_kafka_event"



=== TEST 13: "off" and events at the same level
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location / {
        aai_kafka_event off;
        aai_kafka_event events;
    }
--- must_die
--- error_log
"aai_kafka_event off" and events at the same level



=== TEST 14: field without a value
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format f status;
--- config
--- must_die
--- error_log
invalid field "status" in "aai_kafka_format", expected name=value



=== TEST 15: invalid field name
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format f "a b=$uri";
--- config
--- must_die
--- error_log
invalid field name "a b" in "aai_kafka_format"



=== TEST 16: duplicate field
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format f a=$uri a=$status;
--- config
--- must_die
--- error_log
duplicate field "a" in "aai_kafka_format"



=== TEST 17: duplicate format
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format f a=$uri;
    aai_kafka_format f b=$uri;
--- config
--- must_die
--- error_log
duplicate format "f" in "aai_kafka_format"



=== TEST 18: a field with an unknown variable
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_format f a=$no_such_variable_here;
--- config
--- must_die
--- error_log
unknown "no_such_variable_here" variable



=== TEST 19: invalid flush timeout
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_flush_timeout 3parsecs;
--- config
--- must_die
--- error_log
invalid value "3parsecs" in "aai_kafka_flush_timeout" directive



=== TEST 20: duplicate broker list
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
--- must_die
--- error_log
"aai_kafka_brokers" directive is duplicate



=== TEST 21: empty entry in the broker list
--- http_config
    aai_kafka_brokers 127.0.0.1:9092,,127.0.0.1:9093;
--- config
--- must_die
--- error_log
invalid broker list "127.0.0.1:9092,,127.0.0.1:9093" in "aai_kafka_brokers"



=== TEST 22: formats are defined at the http level only
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS;
--- config
    location / {
        aai_kafka_format f a=$uri;
    }
--- must_die
--- error_log
"aai_kafka_format" directive is not allowed here



=== TEST 23: a valid configuration starts; brokers as several arguments
--- http_config
    aai_kafka_brokers $TEST_NGINX_KAFKA_BROKERS 127.0.0.1:1;
    aai_kafka_property client.id aai-test;
    aai_kafka_flush_timeout 500ms;
    aai_kafka_format f a=$uri:string b=$status:number c=$arg_c:bool;
--- config
    aai_kafka_event $TEST_NGINX_K042 format=f key=$arg_k if=$arg_send;
    location = /t {
        return 200 "ok\n";
    }
    location = /metrics {
        aai_metrics;
    }
--- init
# runs in the runner's package: qualify names.  if= off, then on
my $port = $ENV{TEST_NGINX_SERVER_PORT};
for my $q ('/t?k=no&c=1', '/t?send=0&k=zero&c=1', '/t?send=1&k=yes&c=1') {
    my ($st) = AaiTest::http_get($port, $q);
    Test::More::is($st, 200, "request $q");
}
AaiTest::metrics_wait($port, '/metrics', sub {
    ($_[0]{'aai_kafka_events_total{outcome="delivered"}'} // 0) >= 1
});
--- request
GET /metrics
--- response_body_like
aai_kafka_events_total\{outcome="produced"\} 1
--- aai_after
my @e = kafka_events($ENV{TEST_NGINX_K042}, 1);
is(scalar @e, 1, 'if=: one event, of the request that set it');
is($e[0]{key}, 'yes', 'if=: the event of /t?send=1');
is(join(' ', map { $e[0]{event}{$_} // 'undef' } qw(a b)), '/t 200',
   'if=: the fields of the format');
--- no_error_log
[emerg]
[alert]
